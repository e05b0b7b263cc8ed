"""Writes the binary records and batch files of the bad-input corpus (``manifest.yaml`` says what
each must become). Run once from the repo root: ``.venv/bin/python tests/data/bad_inputs/make_corpus.py``.

The files are committed; this script documents how their bytes were made. Base records are
written out here by hand (raw shape: epoch ms, integer paisa) and encoded with fastavro against
the repo's schemas; every corruption is one deliberate change to an otherwise valid record.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

from fastavro import schemaless_writer

from schemas import contracts

HERE = Path(__file__).resolve().parent
JAN_2 = 1_767_312_000_000  # 2026-01-02T00:00:00Z
HOUR = 3_600_000


def money(paisa: int) -> bytes:
    return paisa.to_bytes(max(1, (paisa.bit_length() + 8) // 8), "big", signed=True)


def customs(case_id: str, event_id: str, **over: Any) -> dict[str, Any]:
    rec = {
        "event_id": event_id,
        "case_id": case_id,
        "agency": "FBR-CUSTOMS",
        "province": "PK-PB",
        "status": "FILED",
        "occurred_at": JAN_2,
        "published_at": JAN_2 + 60_000,
        "port": "KPT",
        "hs_code": "520512",
        "declared_value_pkr": 250_000_00,
        "container_ids": ["MSCU1234565"],
        "exporter_id": "NTN-4410021",
        "gd_number": None,
    }
    return {**rec, **over}


def permit(case_id: str, event_id: str, **over: Any) -> dict[str, Any]:
    rec = {
        "event_id": event_id,
        "case_id": case_id,
        "agency": "PB-TRANSPORT",
        "province": "PK-PB",
        "status": "ISSUED",
        "occurred_at": JAN_2 + 2 * HOUR,
        "published_at": JAN_2 + 2 * HOUR + 30_000,
        "from_province": "PK-PB",
        "to_province": "PK-SD",
        "vehicle_reg": "LES-4521",
    }
    return {**rec, **over}


def port(case_id: str, event_id: str, **over: Any) -> dict[str, Any]:
    rec = {
        "event_id": event_id,
        "case_id": case_id,
        "agency": "PQA",
        "province": "PK-SD",
        "status": "GATE_IN",
        "occurred_at": JAN_2 + 5 * HOUR,
        "published_at": JAN_2 + 5 * HOUR + 10_000,
        "port": "PQA",
        "terminal": "QICT",
        "container_id": "MSCU1234565",
        "vessel": None,
    }
    return {**rec, **over}


def rebate(case_id: str, event_id: str, **over: Any) -> dict[str, Any]:
    rec = {
        "event_id": event_id,
        "case_id": case_id,
        "agency": "FBR-DRAWBACK",
        "province": "PK-IS",
        "status": "FILED",
        "occurred_at": JAN_2 + 7 * HOUR,
        "published_at": JAN_2 + 7 * HOUR + 1_000,
        "exporter_id": "NTN-4410021",
        "amount_pkr": 84_500_50,
    }
    return {**rec, **over}


def body(topic: str, raw: dict[str, Any]) -> bytes:
    sv = contracts.current(topic)
    rec = dict(raw)
    for name in sv.money_fields:
        if rec.get(name) is not None:
            rec[name] = money(rec[name])
    buf = io.BytesIO()
    schemaless_writer(buf, sv.parsed_raw, rec)
    return buf.getvalue()


def framed(topic: str, raw: dict[str, Any]) -> bytes:
    return b"\xc3\x01" + contracts.current(topic).fingerprint + body(topic, raw)


def eid(n: int) -> str:
    return f"0c0ffee0-0000-4000-8000-{n:012d}"


def records() -> dict[str, bytes]:
    C, P, R, M = contracts.CUSTOMS, contracts.PERMITS, contracts.REBATES, contracts.PORTS
    rng = random.Random(20260101)
    noise = bytes([0x7B]) + bytes(rng.randrange(256) for _ in range(63))  # starts with "{"
    good = framed(C, customs("EXP-CORPUS-0003", eid(3)))
    utf8 = framed(C, customs("EXP-CORPUS-0013", eid(13), exporter_id="NTN-ZZZZ"))
    assert utf8.count(b"NTN-ZZZZ") == 1
    enum = framed(C, customs("EXP-CORPUS-0021", eid(21), status="FILED"))
    status_at = 10 + len(body_of_strings([eid(21), "EXP-CORPUS-0021", "FBR-CUSTOMS", "PK-PB"]))
    assert enum[status_at] == 0  # FILED is symbol 0
    return {
        "json-text.bin": b'{"event_id": "not avro", "case_id": "EXP-CORPUS-0001"}',
        "random-64.bin": noise,
        "short-header.bin": b"\xc3\x01\x12\x34",
        "truncated-avro.bin": good[: len(good) // 2],
        "trailing-bytes.bin": framed(C, customs("EXP-CORPUS-0004", eid(4))) + b"\x00\x00",
        "unknown-fingerprint.bin": b"\xc3\x01" + b"\xab" * 8 + body(C, customs("EXP-CORPUS-0005", eid(5))),
        "confluent-schema-id.bin": b"\x00\x00\x00\x30\x39" + body(C, customs("EXP-CORPUS-0006", eid(6))),
        "wrong-family.bin": framed(P, permit("EXP-CORPUS-0007", eid(7))),
        "huge-record.bin": framed(C, customs("EXP-CORPUS-0008", eid(8))),  # padded by the manifest
        "huge-field.bin": framed(M, port("EXP-CORPUS-0009", eid(9), container_id="MSCU" * 5_000)),
        "empty.bin": b"",
        "valid-customs-10.bin": framed(C, customs("EXP-CORPUS-0010", eid(10))),
        "valid-customs-11.bin": framed(C, customs("EXP-CORPUS-0011", eid(11))),
        "valid-permit-12.bin": framed(P, permit("EXP-CORPUS-0012", eid(12))),
        "non-utf8.bin": utf8.replace(b"NTN-ZZZZ", b"NTN-\xff\xfe\xc3\x28"),
        "future.bin": framed(C, customs("EXP-CORPUS-0014", eid(14), occurred_at=7_258_118_400_000)),  # 2200
        "before-1970.bin": framed(C, customs("EXP-CORPUS-0015", eid(15), occurred_at=-86_400_000)),
        "before-2000.bin": framed(P, permit("EXP-CORPUS-0016", eid(16), occurred_at=631_152_000_000)),  # 1990
        "negative-money.bin": framed(R, rebate("DDT-CORPUS-0017", eid(17), amount_pkr=-5_000_00)),
        "unknown-agency.bin": framed(C, customs("EXP-CORPUS-0018", eid(18), agency="FBR-NOBODY")),
        "unknown-province.bin": framed(R, rebate("DDT-CORPUS-0019", eid(19), province="PK-XX")),
        "agency-on-wrong-topic.bin": framed(C, customs("EXP-CORPUS-0020", eid(20), agency="NEPRA")),
        "enum-out-of-range.bin": enum[:status_at] + b"\xc6\x01" + enum[status_at + 1 :],  # symbol 99
        "bad-event-id.bin": framed(M, port("EXP-CORPUS-0022", "not-a-uuid")),
        "empty-case-id.bin": framed(M, port("", eid(23))),
        "newline-case-id.bin": framed(C, customs("EXP-CORPUS-0024\nEXP-FORGED", eid(24))),
    }


def body_of_strings(values: list[str]) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, {"type": "array", "items": "string"}, values)
    return buf.getvalue()[1:-1]  # without the array's block count and end marker


def rebate_line(n: int, **over: Any) -> str:
    rec = {
        "event_id": eid(100 + n),
        "case_id": f"DDT-CORPUS-{100 + n:04d}",
        "agency": "FBR-DRAWBACK",
        "province": "PK-PB",
        "status": "FILED",
        "occurred_at": "2026-01-03T09:30:00+05:00",
        "published_at": "2026-01-03T09:31:00+05:00",
        "exporter_id": "NTN-4410021",
        "amount_pkr": "84500.50",
    }
    rec.update(over)
    return json.dumps({k: v for k, v in rec.items() if v is not DROP})


DROP = object()


def claims_jsonl() -> bytes:
    lines = [
        rebate_line(1),  # 1 good
        rebate_line(2, amount_pkr="-250.00"),  # 2 negative money
        rebate_line(3, agency="FBR-NOBODY"),  # 3 unknown agency
        rebate_line(4, province="PK-XX"),  # 4 unknown province
        rebate_line(5, occurred_at="2199-01-01T00:00:00Z"),  # 5 far future
        rebate_line(6, occurred_at="1969-12-31T23:59:59Z"),  # 6 before 1970
        rebate_line(7, case_id=""),  # 7 empty case id
        rebate_line(8, case_id="X" * 5_000),  # 8 huge field
        rebate_line(9, event_id="1234"),  # 9 not a UUID
        rebate_line(10)[:-1].replace('"84500.50"', "12.345") + "}",  # 10 sub-paisa money
        rebate_line(11)[:40],  # 11 truncated JSON
        "[1, 2, 3]",  # 12 not an object
        json.dumps({**json.loads(rebate_line(13)), "container_ids": ["MSCU1234565"], "port": "KPT"}),  # 13
        rebate_line(14, exporter_id=DROP),  # 14 missing required field
        rebate_line(15, agency="NEPRA"),  # 15 agency that does not publish rebates
        rebate_line(16),  # 16 good
    ]
    text = "".join(line + "\n" for line in lines).encode()
    return text + b'{"case_id": "caf\xe9 au lait"}\n'  # 17 not UTF-8 (Latin-1)


def moves_csv() -> bytes:
    header = (
        "event_id,case_id,agency,province,status,occurred_at,published_at,port,terminal,container_id,vessel"
    )
    base = {
        "case_id": "EXP-CORPUS-0300",
        "agency": "PQA",
        "province": "PK-SD",
        "status": "GATE_IN",
        "occurred_at": "2026-01-03T10:00:00Z",
        "published_at": "2026-01-03T10:01:00Z",
        "port": "PQA",
        "terminal": "QICT",
        "container_id": "MSCU1234565",
        "vessel": "",
    }

    def row(n: int, **over: str) -> str:
        r = {"event_id": eid(300 + n), **base, **over}
        return ",".join(r[c] for c in header.split(","))

    rows = [
        header,  # 1
        row(1),  # 2 good
        row(2, status="SAILED"),  # 3 unknown status
        row(3, occurred_at="01/03/2026"),  # 4 not a timestamp
        row(4)[: row(4).rindex(",")],  # 5 one cell short
        row(5, port="LHR"),  # 6 unknown port
        row(6, occurred_at="-1"),  # 7 epoch millis before 1970
        row(7, province="PK-XX"),  # 8 unknown province
        row(8, case_id=""),  # 9 empty case id (null: missing required field)
        row(9),  # 10 good
    ]
    return ("\n".join(rows) + "\n").encode()


def main() -> None:
    (HERE / "records").mkdir(exist_ok=True)
    (HERE / "files").mkdir(exist_ok=True)
    for name, value in records().items():
        (HERE / "records" / name).write_bytes(value)
    (HERE / "files" / "claims.jsonl").write_bytes(claims_jsonl())
    (HERE / "files" / "moves.csv").write_bytes(moves_csv())


if __name__ == "__main__":
    main()
