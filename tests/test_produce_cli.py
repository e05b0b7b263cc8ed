# ruff: noqa: F811 - pytest fixtures imported from producers_fixtures are parameters here
"""``backbone produce``: every line of a batch file is acknowledged by the broker or rejected with its
line number and reason; what was acknowledged is exactly what a consumer reads back."""

from __future__ import annotations

import csv
import json
import subprocess
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from producers_fixtures import (  # noqa: F401 - fixtures
    REPO,
    broker_settings,
    consume_all,
    expected_raw,
    fresh_broker,
    iso_to_ms,
    sample,
    unreachable_bootstrap,
)
from typer.testing import CliRunner

from backbone.cli import app
from backbone.config import Settings, load_settings
from backbone.embedded.broker import TansuBroker
from producers.batch_upload import upload_file
from producers.publisher import Publisher, PublisherError
from schemas import contracts
from schemas.codec import Codec

runner = CliRunner()


def produce(*args: str) -> Any:
    return runner.invoke(app, ["produce", *args])


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def read_back(bootstrap: str, topic: str, expected: int) -> dict[str, dict[str, Any]]:
    codec = Codec()
    decoded = [codec.decode(topic, m.value()) for m in consume_all(bootstrap, topic, expected)]
    by_event = {r["event_id"]: r for r in decoded}
    assert len(by_event) == len(decoded), "a record was delivered twice"
    return by_event


def summary_counts(output: str) -> tuple[int, int, int, int]:
    line = next(x for x in output.splitlines() if " read, " in x and " sent, " in x and "→" in x)
    numbers = [int(part.split()[0].replace(",", "")) for part in line.split(": ", 1)[1].split(", ")]
    return numbers[0], numbers[1], numbers[2], numbers[3]


@pytest.mark.integration
def test_jsonl_file_is_published_and_read_back_exactly(
    broker_settings: Settings, fresh_broker: TansuBroker, tmp_path: Path
) -> None:
    records = [
        sample(contracts.CUSTOMS, case_id=f"EXP-{i % 700:04d}", hs_code=f"52{i:05d}") for i in range(2500)
    ]
    for i, record in enumerate(records):  # money as JSON numbers and as strings, both PKR
        record["declared_value_pkr"] = Decimal(f"{i}.25") if i % 2 else f"{i}.50"
    path = write_jsonl(tmp_path / "clearances.jsonl", [json.dumps(r, default=str) for r in records])

    result = produce("--topic", contracts.CUSTOMS, "--file", str(path), "--progress-every", "1000")
    assert result.exit_code == 0, result.output
    assert summary_counts(result.stdout) == (2500, 2500, 0, 0)
    assert "produce: 1,000 read" in result.stderr and "produce: 2,000 read" in result.stderr
    assert not (tmp_path / "clearances.jsonl.rejects.jsonl").exists()

    got = read_back(fresh_broker.bootstrap, contracts.CUSTOMS, 2500)
    assert len(got) == 2500
    for record in records:
        assert got[record["event_id"]] == expected_raw(contracts.CUSTOMS, record)


@pytest.mark.integration
def test_csv_file_is_published_and_read_back_exactly(
    broker_settings: Settings, fresh_broker: TansuBroker, tmp_path: Path
) -> None:
    columns = [
        "event_id",
        "case_id",
        "agency",
        "province",
        "status",
        "occurred_at",
        "port",
        "hs_code",
        "declared_value_pkr",
        "container_ids",
        "exporter_id",
    ]  # no published_at: defaults to now
    records = [
        sample(contracts.CUSTOMS, case_id=f"EXP-{i:04d}", exporter_id=None if i % 3 else f"NTN-{i}")
        for i in range(300)
    ]
    path = tmp_path / "clearances.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in records:
            writer.writerow([";".join(r[c]) if c == "container_ids" else (r[c] or "") for c in columns])
    before = time.time_ns() // 1_000_000
    result = produce("-t", contracts.CUSTOMS, "-f", str(path))
    after = time.time_ns() // 1_000_000
    assert result.exit_code == 0, result.output
    assert summary_counts(result.stdout) == (300, 300, 0, 0)

    got = read_back(fresh_broker.bootstrap, contracts.CUSTOMS, 300)
    assert len(got) == 300
    for record in records:
        decoded = got[record["event_id"]]
        assert before <= decoded.pop("published_at") <= after
        expected = expected_raw(contracts.CUSTOMS, record)
        del expected["published_at"]
        assert decoded == expected


def bad_jsonl_lines() -> list[tuple[str, str | None, str]]:
    """(line text, expected field or None when valid, expected reason fragment)."""
    good = sample(contracts.REBATES)

    def variant(**change: Any) -> str:
        record = {**sample(contracts.REBATES), **change}
        return json.dumps({k: v for k, v in record.items() if v is not _DROP})

    return [
        (json.dumps(good), None, ""),
        ('{"event_id": "6f1c1a84-0b1e-4a47-9a7f-1f1c1a840b1e", "case_id": ', "", "malformed JSON"),
        (variant(exporter_id=_DROP), "exporter_id", "missing required field"),
        (variant(status="SETTLED"), "status", "unknown status 'SETTLED'"),
        (variant(case_id=42), "case_id", "expected a string"),
        (variant(occurred_at=[2025]), "occurred_at", "expected a timestamp"),
        (variant(agency="FBR-NOBODY"), "agency", "unknown agency 'FBR-NOBODY'"),
        (variant(event_id="1234"), "event_id", "must be a UUID"),
        (variant(amount_pkr="-250.00"), "amount_pkr", "must not be negative"),
        (variant(amount_pkr=12.345), "amount_pkr", "more than 2 decimal places"),
        (variant(colour="blue"), "colour", "is not a field"),
        (variant(occurred_at="2099-01-01T00:00:00Z"), "occurred_at", "in the future"),
        ("[1, 2, 3]", "", "expected a JSON object"),
        ("NaN", "", "malformed JSON"),
        (json.dumps(sample(contracts.REBATES, amount_pkr=1500)), None, ""),  # bare integer: 1500 PKR
    ]


_DROP = object()


@pytest.mark.integration
def test_bad_lines_are_rejected_with_line_number_and_reason_and_the_rest_is_sent(
    broker_settings: Settings, fresh_broker: TansuBroker, tmp_path: Path
) -> None:
    cases = bad_jsonl_lines()
    lines = [text for text, _, _ in cases]
    lines.insert(5, "")  # a blank line is skipped, not counted
    raw_bytes = "".join(line + "\n" for line in lines).encode() + b'{"case_id": "caf\xe9"}\n'
    path = tmp_path / "claims.jsonl"
    path.write_bytes(raw_bytes)
    line_of = {text: n for n, text in enumerate(lines, start=1) if text}
    not_utf8_line = len(lines) + 1

    result = produce("--topic", contracts.REBATES, "--file", str(path))
    assert result.exit_code == 1, result.output
    bad = [(text, f, reason) for text, f, reason in cases if f is not None]
    good = [text for text, f, _ in cases if f is None]
    assert summary_counts(result.stdout) == (len(cases) + 1, len(good), len(bad) + 1, 0)

    rejects = [json.loads(x) for x in (tmp_path / "claims.jsonl.rejects.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejects] == sorted([line_of[t] for t, _, _ in bad] + [not_utf8_line])
    by_line = {r["line"]: r for r in rejects}
    for text, field, reason in bad:
        entry = by_line[line_of[text]]
        assert entry["kind"] == "rejected" and entry["field"] == field and reason in entry["reason"], entry
        assert entry["input"] == text
        assert f"line {line_of[text]}: rejected: " in result.stderr
    assert "not valid UTF-8" in by_line[not_utf8_line]["reason"]

    got = read_back(fresh_broker.bootstrap, contracts.REBATES, len(good))
    assert sorted(got) == sorted(json.loads(t)["event_id"] for t in good)
    for text in good:
        record = json.loads(text)
        assert got[record["event_id"]] == expected_raw(contracts.REBATES, record)
    assert got[json.loads(good[-1])["event_id"]]["amount_pkr"] == 150_000


@pytest.mark.integration
def test_bad_csv_rows_are_rejected_with_their_line_numbers(
    broker_settings: Settings, fresh_broker: TansuBroker, tmp_path: Path
) -> None:
    good = sample(contracts.PORTS, vessel=None)
    header = (
        "event_id,case_id,agency,province,status,occurred_at,published_at,port,terminal,container_id,vessel"
    )

    def row(**change: Any) -> str:
        r = {**good, "event_id": sample(contracts.PORTS)["event_id"], **change}
        return ",".join(str(r[c] or "") for c in header.split(","))

    lines = [
        header,
        row(),  # line 2: ok
        row(status="SAILED"),  # line 3: unknown status
        row(occurred_at="01/03/2025"),  # line 4: not a timestamp
        row()[: row().rindex(",")],  # line 5: one cell short
    ]
    text = "\n".join(lines) + "\n"
    path = tmp_path / "moves.csv"
    path.write_text(text, encoding="utf-8")
    result = produce("-t", contracts.PORTS, "-f", str(path))
    assert result.exit_code == 1, result.output
    assert summary_counts(result.stdout) == (4, 1, 3, 0)
    rejects = {
        r["line"]: r for r in map(json.loads, (tmp_path / "moves.csv.rejects.jsonl").read_text().splitlines())
    }
    assert sorted(rejects) == [3, 4, 5]
    assert rejects[3]["field"] == "status" and "unknown status 'SAILED'" in rejects[3]["reason"]
    assert rejects[4]["field"] == "occurred_at" and "not an ISO-8601 timestamp" in rejects[4]["reason"]
    assert "expected 11 cells, got 10" in rejects[5]["reason"]
    assert len(read_back(fresh_broker.bootstrap, contracts.PORTS, 1)) == 1


@pytest.mark.integration
def test_csv_header_naming_unknown_or_lacking_fields_is_a_file_error(
    broker_settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("event_id,case_id,colour\nx,y,z\n")
    result = produce("-t", contracts.PORTS, "-f", str(path))
    assert result.exit_code == 2
    assert "header names fields that pk.gov.backbone.ContainerMove does not have: colour" in result.stderr
    assert "0 sent" in result.stderr
    path.write_text("event_id,case_id\nx,y\n")
    previous = tmp_path / "bad.csv.rejects.jsonl"
    previous.write_text('{"line": 2}\n')  # an earlier run's rejects: a usage error must not delete them
    result = produce("-t", contracts.PORTS, "-f", str(path))
    assert result.exit_code == 2 and "header lacks required fields" in result.stderr
    assert previous.read_text() == '{"line": 2}\n'
    path.write_text("")  # a run, with nothing to send: the earlier run's rejects no longer describe it
    assert produce("-t", contracts.PORTS, "-f", str(path)).exit_code == 0
    assert not previous.exists()


@pytest.mark.integration
def test_unreachable_broker_is_a_clear_error_and_nothing_is_sent(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [json.dumps(sample(contracts.CUSTOMS))])
    result = produce(
        "-t", contracts.CUSTOMS, "-f", str(path), "--bootstrap", unreachable_bootstrap(), "--timeout", "2"
    )
    assert result.exit_code == 3
    assert "error: cannot reach Kafka at 127.0.0.1:" in result.stderr
    assert "0 sent" in result.stderr
    assert not (tmp_path / "c.jsonl.rejects.jsonl").exists()


@pytest.mark.integration
def test_missing_topic_on_the_broker_is_a_clear_error(fresh_broker: TansuBroker, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [json.dumps(sample(contracts.CUSTOMS))])
    result = produce("-t", contracts.CUSTOMS, "-f", str(path), "--bootstrap", fresh_broker.bootstrap)
    assert result.exit_code == 3
    assert f"topic '{contracts.CUSTOMS}' does not exist" in result.stderr


@pytest.mark.integration
def test_broker_lost_after_start_reports_failed_lines_and_keeps_them(
    broker_settings: Settings, fresh_broker: TansuBroker, tmp_path: Path
) -> None:
    records = [sample(contracts.ENERGY, case_id=f"DET-{i}") for i in range(20)]
    path = write_jsonl(tmp_path / "e.jsonl", [json.dumps(r) for r in records])
    publisher = Publisher(broker_settings, message_timeout_ms=2000)
    publisher.check_topic(contracts.ENERGY)
    fresh_broker.stop()
    summary = upload_file(publisher, contracts.ENERGY, path, "jsonl", tmp_path / "e.rejects.jsonl")
    assert (summary.read, summary.sent, summary.rejected, summary.failed) == (20, 0, 0, 20)
    rejects = [json.loads(x) for x in (tmp_path / "e.rejects.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejects] == list(range(1, 21))
    assert all(r["kind"] == "failed" and "not acknowledged" in r["reason"] for r in rejects)
    assert [json.loads(r["input"])["event_id"] for r in rejects] == [r["event_id"] for r in records]


def test_usage_errors_exit_2_and_send_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BACKBONE_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    path = write_jsonl(tmp_path / "c.jsonl", [json.dumps(sample(contracts.CUSTOMS))])
    result = produce("-t", contracts.CUSTOMS, "-f", str(path))
    assert result.exit_code == 2
    assert "pass --bootstrap HOST:PORT or set BACKBONE_KAFKA_BOOTSTRAP_SERVERS" in result.stderr

    monkeypatch.setenv("BACKBONE_KAFKA_BOOTSTRAP_SERVERS", unreachable_bootstrap())
    for topic in ("customs.clearances.v7", contracts.ALERTS):
        result = produce("-t", topic, "-f", str(path))
        assert result.exit_code == 2 and "agency topics: customs.clearances.v1" in result.stderr
    result = produce("-t", contracts.CUSTOMS, "-f", str(tmp_path / "missing.jsonl"))
    assert result.exit_code == 2 and "file not found" in result.stderr
    odd = tmp_path / "c.txt"
    odd.write_text("{}\n")
    result = produce("-t", contracts.CUSTOMS, "-f", str(odd))
    assert result.exit_code == 2 and "--format jsonl" in result.stderr


@pytest.mark.integration
def test_console_script_runs_produce(
    broker_settings: Settings, fresh_broker: TansuBroker, tmp_path: Path
) -> None:
    records = [sample(contracts.PERMITS, case_id=f"EXP-{i}") for i in range(10)]
    path = write_jsonl(tmp_path / "permits.ndjson", [json.dumps(r) for r in records])
    proc = subprocess.run(
        [str(REPO / ".venv/bin/backbone"), "produce", "--topic", contracts.PERMITS, "--file", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "10 read, 10 sent, 0 rejected, 0 failed" in proc.stdout
    got = read_back(fresh_broker.bootstrap, contracts.PERMITS, 10)
    assert {e: r["occurred_at"] for e, r in got.items()} == {
        r["event_id"]: iso_to_ms(r["occurred_at"]) for r in records
    }


def test_rejects_path_that_is_the_input_or_a_directory_is_a_usage_error_and_the_input_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BACKBONE_KAFKA_BOOTSTRAP_SERVERS", unreachable_bootstrap())
    path = write_jsonl(tmp_path / "same.jsonl", [json.dumps(sample(contracts.CUSTOMS))])
    content = path.read_bytes()
    (tmp_path / "link.jsonl").symlink_to(path)
    (tmp_path / "hard.jsonl").hardlink_to(path)
    for alias in (path, tmp_path / "link.jsonl", tmp_path / "hard.jsonl", tmp_path / "." / "same.jsonl"):
        result = produce("-t", contracts.CUSTOMS, "-f", str(path), "--rejects", str(alias))
        assert result.exit_code == 2, result.output
        assert "error: --rejects: " in result.stderr and "is the input file" in result.stderr
        assert "0 sent" in result.stderr and "Traceback" not in result.output
        assert path.read_bytes() == content
    result = produce("-t", contracts.CUSTOMS, "-f", str(path), "--rejects", str(tmp_path))
    assert result.exit_code == 2, result.output
    assert "error: --rejects: " in result.stderr and "is a directory" in result.stderr
    (tmp_path / "same.jsonl.rejects.jsonl").mkdir()  # the default rejects path
    result = produce("-t", contracts.CUSTOMS, "-f", str(path))
    assert result.exit_code == 2 and "is a directory" in result.stderr and "--rejects FILE" in result.stderr
    assert path.read_bytes() == content


def test_one_bad_line_of_any_kind_is_rejected_with_its_reason_and_never_stops_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No broker: the good lines fail (not acknowledged); every other line is rejected, none raises."""
    monkeypatch.delenv("BACKBONE_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    topic = contracts.CUSTOMS
    huge = sample(topic, container_ids=[f"MSCU{i:07d}" for i in range(200_000)])
    lines = [
        json.dumps(sample(topic)),  # 1: good
        "",  # 2: blank, skipped and counted
        "[" * 100_000 + "]" * 100_000,  # 3: nested beyond the parser's stack
        json.dumps(sample(topic, exporter_id="\ud800")),  # 4: lone surrogate in an optional string
        json.dumps(sample(topic, hs_code="\udfff")),  # 5: ... and in a required one
        json.dumps({**sample(topic), "\ud800": 1}),  # 6: lone surrogate in a field name
        json.dumps(huge),  # 7: valid, but its message is over the size limit
        "   ",  # 8: blank
        json.dumps(sample(topic)),  # 9: good
    ]
    path = write_jsonl(tmp_path / "odd.jsonl", lines)
    publisher = Publisher(load_settings(), unreachable_bootstrap(), message_timeout_ms=1000)
    summary = upload_file(publisher, topic, path, "jsonl", tmp_path / "odd.rejects.jsonl")
    assert (summary.read, summary.sent, summary.rejected, summary.failed, summary.blank) == (7, 0, 5, 2, 2)
    rejects = {
        r["line"]: r for r in map(json.loads, (tmp_path / "odd.rejects.jsonl").read_text().splitlines())
    }
    assert sorted(rejects) == [1, 3, 4, 5, 6, 7, 9]
    assert rejects[1]["kind"] == rejects[9]["kind"] == "failed"
    assert "nested too deeply" in rejects[3]["reason"]
    for line, field in ((4, "exporter_id"), (5, "hs_code")):
        assert rejects[line]["field"] == field
        assert rejects[line]["reason"] == "string is not valid Unicode (lone surrogate)"
    assert rejects[6]["field"] == "\\ud800" and "is not a field" in rejects[6]["reason"]
    size = len(publisher.codec.encode(topic, publisher.prepare(topic, huge)))
    assert rejects[7]["field"] == "record"
    assert f"encoded record is {size:,} bytes, over the 1,000,000-byte message limit" == rejects[7]["reason"]
    assert rejects[7]["input"] == lines[6]
    assert (
        "line 6: rejected: \\ud800: is not a field of pk.gov.backbone.CustomsClearance v2" in summary.problems
    )


def test_blank_csv_rows_are_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BACKBONE_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    header = "event_id,case_id,agency,province,status,occurred_at,port,terminal,container_id,vessel"
    path = tmp_path / "moves.csv"
    path.write_text(f"{header}\n\n{',' * 9}\nx{',' * 9}\n", encoding="utf-8")
    publisher = Publisher(load_settings(), unreachable_bootstrap(), message_timeout_ms=1000)
    summary = upload_file(publisher, contracts.PORTS, path, "csv", tmp_path / "r.jsonl", flush_timeout_s=1)
    assert (summary.read, summary.rejected, summary.blank) == (1, 1, 2)


class _StopsAfter(Publisher):
    """A publisher whose producer gives up for good after ``queued`` records (as on a fatal error)."""

    queued = 5

    def publish_many(self, topic: str, records: Any, refs: Any = None) -> list[Any]:
        records, refs = list(records), list(refs)
        rejected = super().publish_many(topic, records[: self.queued], refs[: self.queued])
        if len(records) > self.queued:
            raise PublisherError("cannot queue a record for customs.clearances.v1: Local: Fatal error")
        self.queued -= len(records)
        return rejected


def test_a_producer_that_gives_up_mid_run_accounts_for_every_line_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BACKBONE_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setattr("producers.batch_upload.CHUNK_RECORDS", 4)
    lines = [json.dumps(sample(contracts.CUSTOMS, case_id=f"EXP-{i}")) for i in range(10)]
    lines[5] = "{not json"
    path = write_jsonl(tmp_path / "c.jsonl", lines)
    publisher = _StopsAfter(load_settings(), unreachable_bootstrap(), message_timeout_ms=1000)
    summary = upload_file(publisher, contracts.CUSTOMS, path, "jsonl", tmp_path / "r.jsonl")
    assert summary.stopped is not None and "Fatal error" in summary.stopped and not summary.ok
    # chunk 1 (lines 1-4) queued whole; chunk 2 (lines 5-8): line 5 queued, line 6 bad, 7-8 not sent
    assert (summary.read, summary.sent, summary.rejected, summary.failed) == (8, 0, 1, 7)
    rejects = {r["line"]: r for r in map(json.loads, (tmp_path / "r.jsonl").read_text().splitlines())}
    assert sorted(rejects) == list(range(1, 9))
    assert rejects[6]["kind"] == "rejected" and "malformed JSON" in rejects[6]["reason"]
    assert all(rejects[n]["reason"].startswith("not sent: ") for n in (7, 8))
    assert all("not acknowledged" in rejects[n]["reason"] for n in (1, 2, 3, 4, 5))


@pytest.mark.integration
def test_an_oversized_record_is_rejected_and_the_rest_of_its_chunk_is_sent(
    broker_settings: Settings, fresh_broker: TansuBroker, tmp_path: Path
) -> None:
    records = [sample(contracts.CUSTOMS, case_id=f"EXP-{i}") for i in range(32)]
    huge = sample(contracts.CUSTOMS, container_ids=[f"MSCU{i:07d}" for i in range(200_000)])
    lines = [json.dumps(r) for r in records]
    lines[10:10] = [json.dumps(huge)]  # line 11, mid-chunk
    lines[20:20] = [""]  # line 21: blank
    path = write_jsonl(tmp_path / "big.jsonl", lines)
    result = produce("-t", contracts.CUSTOMS, "-f", str(path))
    assert result.exit_code == 1, result.output
    assert summary_counts(result.stdout) == (33, 32, 1, 0)
    assert "1 blank line skipped" in result.stdout and "Traceback" not in result.output
    assert "line 11: rejected: record: encoded record is " in result.stderr
    assert "over the 1,000,000-byte message limit" in result.stderr
    rejects = [json.loads(x) for x in (tmp_path / "big.jsonl.rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["kind"], r["field"]) for r in rejects] == [(11, "rejected", "record")]
    got = read_back(fresh_broker.bootstrap, contracts.CUSTOMS, 32)
    assert sorted(got) == sorted(r["event_id"] for r in records)


@pytest.mark.integration
def test_schemas_read_prints_what_was_produced_as_json_lines_and_names_what_does_not_decode(
    broker_settings: Settings, fresh_broker: TansuBroker, tmp_path: Path
) -> None:
    """The outside look into a topic (Debian's kcat cannot talk to the embedded broker)."""
    records = [sample(contracts.CUSTOMS, case_id=f"EXP-R{i}") for i in range(3)]
    for i, record in enumerate(records):
        record["declared_value_pkr"] = f"{i}.05"
    path = write_jsonl(tmp_path / "three.jsonl", [json.dumps(r) for r in records])
    assert produce("-t", contracts.CUSTOMS, "-f", str(path)).exit_code == 0
    producer = Producer({"bootstrap.servers": fresh_broker.bootstrap})
    producer.produce(contracts.CUSTOMS, b"not avro", b"EXP-R9", partition=0)
    assert producer.flush(10) == 0

    result = runner.invoke(app, ["schemas", "read", contracts.CUSTOMS, "--max", "4", "--idle", "5"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 4
    got = {line["record"]["event_id"]: line for line in lines if "record" in line}
    for i, record in enumerate(records):
        line = got[record["event_id"]]
        assert line["key"] == record["case_id"] == line["record"]["case_id"]
        assert line["record"]["declared_value_pkr"] == f"{i}.05"
        assert line["record"]["occurred_at"] == "2025-03-01T04:30:00.250Z"
    [bad] = [line for line in lines if "record" not in line]
    assert bad["key"] == "EXP-R9" and bad["error"].startswith("bad_framing")
    unknown = runner.invoke(app, ["schemas", "read", "no.such.topic"])
    assert unknown.exit_code == 2 and "unknown topic 'no.such.topic'" in unknown.output
