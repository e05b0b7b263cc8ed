"""Bad input: the worker never crashes, every bad record is a dead letter with its reason, the CLI
rejects with line number and reason, and nothing disappears.

One pipeline (private Tansu broker, a real ``backbone process`` worker, the ``backbone sink run``
child, chdb) takes, while live simulated traffic flows through it:

* the corpus of ``tests/data/bad_inputs`` (``manifest.yaml`` says what each record must become):
  raw records put straight onto the agency topics with a plain producer, and batch files given to
  the real ``backbone produce`` console script;
* records fuzzed with hypothesis, straight onto the topics (random bytes, truncated Avro, unknown
  fingerprints and schema ids, wrong family on a topic, huge records and fields, empty keys and
  keys that are not the case id, non-UTF-8 strings, timestamps far in the future or before
  1970/2000, negative money, unknown agencies and provinces, tombstones), each with the reason
  the contract gives it, worked out here from the framing and the contract, not by the decoder;
* batch files fuzzed with hypothesis through the produce CLI: good lines mixed with broken ones.

It must end with: the worker alive the whole time (and stopping cleanly); every bad record in the
dead-letter topic *and* in ClickHouse's ``dead_letters`` with the expected reason (and field),
its key and value bytes intact (a value too large to travel again may be cut, but only to a
prefix with the original's length and SHA-256 in the detail); every CLI reject naming its line
and reason, every other line stored as an event; the simulated traffic (plus the lines the CLI
sent) giving exactly the oracle's stage records, KPI windows, backlog and alerts; and no record
lost.
"""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from processor_fixtures import T_START, simulated_events
from producers_fixtures import expected_raw, sample
from reliability_fixtures import (
    PacedPublisher,
    Pipeline,
    TrackingProducer,
    account,
    dead_letters_by_position,
    expected_outputs,
    oracle_differences,
    read_board,
)
from reliability_summary import ReliabilityLedger
from sink_fixtures import customs_event, energy_event, permit_event, port_event, rebate_event
from typer.testing import CliRunner

from backbone.cli import app
from schemas import contracts
from schemas.codec import Codec
from schemas.registry import default_registry
from schemas.validation import validate_event

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "tests" / "data" / "bad_inputs"
RAW = "raw bytes on a topic"
CLI = "produce CLI"
MAX_MESSAGE_BYTES = 1_000_000  # the codec's limit (schemas.codec.DEFAULT_MAX_MESSAGE_BYTES)
YEAR_MS = 365 * 24 * 3_600_000
CODEC = Codec()
TOPICS = contracts.INPUT_TOPICS


@dataclass(frozen=True)
class BadRecord:
    """A message no agency should send, and the dead-letter reason the contract gives it."""

    kind: str
    topic: str
    key: bytes | None
    value: bytes | None
    reason: str
    field: str | None = None  # for invalid_record: the field the detail must name first


# -- the corpus ---------------------------------------------------------------------------------
def manifest() -> dict[str, Any]:
    return yaml.safe_load((CORPUS / "manifest.yaml").read_text(encoding="utf-8"))


def corpus_records() -> list[BadRecord]:
    """The corpus's raw records, values padded as the manifest says."""
    out = []
    for entry in manifest()["records"]:
        value = None if entry["file"] is None else (CORPUS / "records" / entry["file"]).read_bytes()
        if value is not None and entry.get("pad_to"):
            value += b"\x00" * (entry["pad_to"] - len(value))
        key = None if entry["key"] is None else str(entry["key"]).encode()
        out.append(BadRecord(entry["kind"], entry["topic"], key, value, entry["reason"], entry.get("field")))
    return out


# -- fuzzed raw records ------------------------------------------------------------------------
BUILDERS: dict[str, Callable[..., dict[str, Any]]] = {
    contracts.CUSTOMS: customs_event,
    contracts.PERMITS: permit_event,
    contracts.PORTS: port_event,
    contracts.REBATES: rebate_event,
    contracts.ENERGY: energy_event,
}
STATUS = {
    contracts.CUSTOMS: "FILED",
    contracts.PERMITS: "REQUESTED",
    contracts.PORTS: "GATE_IN",
    contracts.REBATES: "FILED",
    contracts.ENERGY: "DETERMINED",
}
MONEY = {contracts.CUSTOMS: "declared_value_pkr", contracts.REBATES: "amount_pkr"}
# a string field of each family that comes after the envelope (placeholder for non-UTF-8 bytes)
LAST_STRING = {
    contracts.CUSTOMS: "hs_code",
    contracts.PERMITS: "vehicle_reg",
    contracts.PORTS: "terminal",
    contracts.REBATES: "exporter_id",
    contracts.ENERGY: "instrument",
}
KNOWN_FINGERPRINTS = set(contracts.by_fingerprint())
PRINTABLE = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20)


@st.composite
def valid_record(draw: st.DrawFn, topic: str | None = None) -> tuple[str, dict[str, Any]]:
    """A record that passes the contract (checked here), to break in exactly one way."""
    topic = topic or draw(st.sampled_from(TOPICS))
    case_id = f"FUZZ-{draw(st.uuids()).hex[:12]}"
    occurred = T_START + draw(st.integers(0, 7 * 24 * 3_600_000))
    raw = BUILDERS[topic](case_id, STATUS[topic], occurred, event_id=str(draw(st.uuids(version=4))))
    validate_event(topic, raw, T_START + 30 * 24 * 3_600_000)
    return topic, raw


def framing_reason(value: bytes) -> str | None:
    """The decoder's verdict on random bytes, from the framing rules alone (schemas/wire.py):
    None when the bytes could name a known schema (then nothing can be predicted)."""
    if not value:
        return "empty"
    if value[:2] == b"\xc3\x01":
        if len(value) < 10:
            return "bad_framing"
        return None if value[2:10] in KNOWN_FINGERPRINTS else "unknown_schema"
    if value[0] == 0:
        return "unknown_schema"  # Confluent framing, and the worker has no Schema Registry
    return "bad_framing"


@st.composite
def random_bytes(draw: st.DrawFn) -> BadRecord:
    value = draw(st.binary(max_size=300))
    reason = framing_reason(value)
    if reason is None:
        value = b"\xc3\x01\xff" + value[3:]  # cannot name a schema: a bad header instead
        reason = framing_reason(value) or "bad_framing"
    key = draw(st.one_of(st.none(), st.binary(max_size=24)))
    return BadRecord("random bytes", draw(st.sampled_from(TOPICS)), key, value, reason)


@st.composite
def truncated_avro(draw: st.DrawFn) -> BadRecord:
    topic, raw = draw(valid_record())
    good = CODEC.encode(topic, raw)
    cut = draw(st.integers(0, len(good) - 1))
    reason = "empty" if cut == 0 else "bad_framing" if cut < 10 else "undecodable"
    return BadRecord("truncated Avro", topic, raw["case_id"].encode(), good[:cut], reason)


@st.composite
def unknown_schema(draw: st.DrawFn) -> BadRecord:
    topic, raw = draw(valid_record())
    body = CODEC.encode(topic, raw)[10:]
    if draw(st.booleans()):
        fingerprint = draw(st.binary(min_size=8, max_size=8).filter(lambda b: b not in KNOWN_FINGERPRINTS))
        value = b"\xc3\x01" + fingerprint + body
    else:
        value = b"\x00" + draw(st.binary(min_size=4, max_size=4)) + body
    return BadRecord(
        "unknown fingerprint / schema id", topic, raw["case_id"].encode(), value, "unknown_schema"
    )


@st.composite
def wrong_family(draw: st.DrawFn) -> BadRecord:
    topic, raw = draw(valid_record())
    other = draw(st.sampled_from([t for t in TOPICS if t != topic]))
    return BadRecord(
        "wrong family on a topic", other, raw["case_id"].encode(), CODEC.encode(topic, raw), "wrong_topic"
    )


OVER_LIMIT = "huge record (message over the 1 MB limit)"


@st.composite
def huge(draw: st.DrawFn) -> BadRecord:
    """A whole message over the codec's limit, or a field far past its bound in a message within it."""
    topic, raw = draw(valid_record())
    if draw(st.sampled_from(("field", "field", "field", "message"))) == "message":  # ~1 MB each: a few
        value = CODEC.encode(topic, raw)
        value += b"\x00" * (MAX_MESSAGE_BYTES + 1 - len(value) + draw(st.integers(0, 200_000)))
        return BadRecord(OVER_LIMIT, topic, raw["case_id"].encode(), value, "too_large")
    case_id = "C" * draw(st.integers(129, 300_000))
    return BadRecord(
        "huge record",
        topic,
        case_id.encode(),
        CODEC.encode(topic, {**raw, "case_id": case_id}),
        "invalid_record",
        "case_id",
    )


@st.composite
def bad_key(draw: st.DrawFn) -> BadRecord:
    topic, raw = draw(valid_record())
    if draw(st.booleans()):
        key = draw(st.sampled_from([None, b""]))
        kind = "empty key"
    else:
        key = draw(st.binary(min_size=1, max_size=40).filter(lambda k: k != raw["case_id"].encode()))
        kind = "key not the case id"
    return BadRecord(kind, topic, key, CODEC.encode(topic, raw), "case_id_key_mismatch")


@st.composite
def non_utf8(draw: st.DrawFn) -> BadRecord:
    topic, raw = draw(valid_record())
    field = LAST_STRING[topic]
    size = draw(st.integers(1, 12))
    placeholder = "\x7f" * size  # DEL: valid UTF-8, appears nowhere else in the record
    value = CODEC.encode(topic, {**raw, field: placeholder})
    assert value.count(placeholder.encode()) == 1
    junk = draw(st.binary(min_size=size, max_size=size).filter(_not_utf8))
    value = value.replace(placeholder.encode(), junk)
    return BadRecord("non-UTF-8 string", topic, raw["case_id"].encode(), value, "bad_utf8")


def _not_utf8(b: bytes) -> bool:
    """Bytes that are not UTF-8 (and hold no line break: a batch file is split on those)."""
    if any(c in b for c in b"\n\r"):
        return False
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _breach(topic: str, raw: dict[str, Any], kind: str, field: str, **change: Any) -> BadRecord:
    """Decodes fine, breaks the contract in one field: invalid_record naming that field."""
    value = CODEC.encode(topic, {**raw, field: change.pop("value"), **change})
    return BadRecord(kind, topic, raw["case_id"].encode(), value, "invalid_record", field)


@st.composite
def far_future(draw: st.DrawFn) -> BadRecord:
    topic, raw = draw(valid_record())
    field = draw(st.sampled_from(["occurred_at", "published_at"]))
    when = int(time.time() * 1000) + draw(st.integers(YEAR_MS, 200 * YEAR_MS))
    return _breach(topic, raw, "timestamp far in the future", field, value=when)


@st.composite
def before_1970(draw: st.DrawFn) -> BadRecord:
    topic, raw = draw(valid_record())
    when = draw(st.one_of(st.integers(-(2**62), -1), st.integers(0, 946_684_800_000 - 1)))
    return _breach(topic, raw, "timestamp before 1970 (or 2000)", "occurred_at", value=when)


@st.composite
def negative_money(draw: st.DrawFn) -> BadRecord:
    topic, raw = draw(valid_record(draw(st.sampled_from(sorted(MONEY)))))
    return _breach(topic, raw, "negative money", MONEY[topic], value=-draw(st.integers(1, 10**15)))


@st.composite
def unknown_agency_or_province(draw: st.DrawFn) -> BadRecord:
    topic, raw = draw(valid_record())
    registry = default_registry()
    field = draw(st.sampled_from(["agency", "province"]))
    known = registry.agencies if field == "agency" else registry.provinces
    text = draw(PRINTABLE.filter(lambda v: v not in known))
    return _breach(topic, raw, "unknown agency / province", field, value=text)


CONTROL = st.characters(min_codepoint=0, max_codepoint=31) | st.sampled_from(["\x7f", "\x85", "\x9f"])


@st.composite
def control_character_id(draw: st.DrawFn) -> BadRecord:
    """A case id with a NUL, newline, escape, ... (the message key is the same id, so only the
    contract is broken): it would forge alert labels, links and log lines downstream."""
    topic, raw = draw(valid_record())
    head = raw["case_id"]
    at = draw(st.integers(0, len(head)))
    case_id = head[:at] + draw(CONTROL) + head[at:]
    value = CODEC.encode(topic, {**raw, "case_id": case_id})
    kind = "control character in an id"
    return BadRecord(kind, topic, case_id.encode(), value, "invalid_record", "case_id")


@st.composite
def tombstone(draw: st.DrawFn) -> BadRecord:
    topic, raw = draw(valid_record())
    return BadRecord("empty value / tombstone", topic, raw["case_id"].encode(), None, "empty")


BAD_RECORDS = st.one_of(
    random_bytes(),
    truncated_avro(),
    unknown_schema(),
    wrong_family(),
    huge(),
    bad_key(),
    non_utf8(),
    far_future(),
    before_1970(),
    negative_money(),
    unknown_agency_or_province(),
    control_character_id(),
    tombstone(),
)


# -- fuzzed batch files for the produce CLI ----------------------------------------------------
@dataclass(frozen=True)
class Line:
    """One line of a batch file: its bytes, and None if good, else (field or None, reason, kind)."""

    data: bytes
    expect: tuple[str | None, str, str] | None
    event_id: str | None = None


@st.composite
def cli_line(draw: st.DrawFn, topic: str, n: int) -> Line:
    record = sample(topic, case_id=f"CLI-{uuid.uuid4().hex[:12]}")
    record["occurred_at"] = "2026-01-03T10:00:00Z"
    record["published_at"] = "2026-01-03T10:05:00Z"

    def line(expect: tuple[str | None, str, str] | None, **change: Any) -> Line:
        rec = {**record, **change}
        return Line(json.dumps(rec).encode(), expect, rec["event_id"] if expect is None else None)

    choice = draw(
        st.sampled_from(
            [
                "good",
                "good",
                "good",
                "money",
                "agency",
                "province",
                "future",
                "past",
                "case_id",
                "control",
                "huge",
                "event_id",
                "json",
                "utf8",
                "family",
            ]
        )
    )
    registry = default_registry()
    if choice == "good":
        return line(None)
    if choice == "money":
        if topic not in MONEY:
            return line(None)
        amount = f"-{draw(st.integers(1, 10**12))}.{draw(st.integers(0, 99)):02d}"
        return line((MONEY[topic], "must not be negative", "negative money"), **{MONEY[topic]: amount})
    if choice == "agency":
        text = draw(PRINTABLE.filter(lambda a: a not in registry.agencies))
        return line(("agency", "", "unknown agency / province"), agency=text)
    if choice == "province":
        text = draw(PRINTABLE.filter(lambda p: p not in registry.provinces))
        return line(("province", "", "unknown agency / province"), province=text)
    if choice == "future":
        year = draw(st.integers(2100, 9999))
        return line(
            ("occurred_at", "in the future", "timestamp far in the future"),
            occurred_at=f"{year}-06-01T00:00:00Z",
        )
    if choice == "past":
        when = draw(
            st.one_of(
                st.integers(-(2**40), 946_684_800_000 - 1),
                st.integers(1, 1969).map(lambda y: f"{y:04d}-01-01T00:00:00Z"),
            )
        )
        return line(("occurred_at", "before 2000-01-01", "timestamp before 1970 (or 2000)"), occurred_at=when)
    if choice == "case_id":
        blank = draw(st.sampled_from(["", " ", "\t "]))
        return line(("case_id", "must be a non-empty string", "broken envelope"), case_id=blank)
    if choice == "control":
        bad = draw(CONTROL)
        return line(("case_id", "control character", "control character in an id"), case_id=f"CLI-1{bad}2")
    if choice == "huge":
        return line(
            ("case_id", "longer than 128 characters", "huge record"),
            case_id="H" * draw(st.integers(129, 200_000)),
        )
    if choice == "event_id":
        text = draw(PRINTABLE)
        return line(("event_id", "must be a UUID", "broken envelope"), event_id=text)
    if choice == "json":
        text = json.dumps(record)
        return Line(
            text[: draw(st.integers(1, len(text) - 2))].encode(),
            ("", "malformed JSON", "truncated or malformed line"),
        )
    if choice == "utf8":
        junk = draw(st.binary(min_size=1, max_size=8).filter(_not_utf8))
        return Line(b'{"case_id": "' + junk + b'"}', (None, "not valid UTF-8", "non-UTF-8 string"))
    other = draw(st.sampled_from([t for t in TOPICS if t != topic]))
    foreign = sample(other, case_id=f"CLI-{n}")
    return Line(json.dumps(foreign).encode(), (None, "", "wrong family on a topic"))


@st.composite
def batch_file(draw: st.DrawFn) -> tuple[str, list[Line]]:
    topic = draw(st.sampled_from(TOPICS))
    size = draw(st.integers(1, 20))
    return topic, [draw(cli_line(topic, n)) for n in range(size)]


# -- helpers ------------------------------------------------------------------------------------
def kept(carried: bytes | None, original: bytes | None, detail: str) -> bool:
    """A dead letter carries the original bytes; one too large to travel again may be cut, but then
    it is a prefix of the original and the detail names the original's length and SHA-256 (the
    full record stays at the partition and offset the dead letter names)."""
    if carried == original:
        return True
    if carried is None or original is None or not original.startswith(carried):
        return False
    return str(len(original)) in detail and hashlib.sha256(original).hexdigest() in detail


def check_rejects(rejects_path: Path, lines: list[Line], where: str) -> dict[int, str]:
    """What is wrong with the CLI's rejects file, per line number, against what each line must get."""
    problems: dict[int, str] = {}
    rejects = {}
    if rejects_path.exists():
        for text in rejects_path.read_text(encoding="utf-8").splitlines():
            entry = json.loads(text)
            rejects[entry["line"]] = entry
    for number, line in enumerate(lines, start=1):
        entry = rejects.get(number)
        if line.expect is None:
            if entry is not None:
                problems[number] = f"{where} line {number}: a good line was rejected: {entry}"
            continue
        field, reason, kind = line.expect
        if entry is None:
            problems[number] = f"{where} line {number} ({kind}): not rejected: {line.data[:120]!r}"
        elif entry.get("kind") != "rejected" or reason not in entry.get("reason", ""):
            problems[number] = f"{where} line {number} ({kind}): rejected as {entry}, expected {reason!r}"
        elif field is not None and entry.get("field") != field:
            problems[number] = f"{where} line {number} ({kind}): field {entry.get('field')!r}, not {field!r}"
        elif kind == "wrong family on a topic" and not (
            "is not a field" in entry["reason"] or "missing required field" in entry["reason"]
        ):
            problems[number] = f"{where} line {number}: wrong family rejected for {entry['reason']!r}"
    return problems


def file_records(path: Path) -> dict[int, dict[str, Any]]:
    """Line number -> record (file shape) of a corpus batch file, for the lines that parse."""
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        header = rows[0]
        return {
            n: {k: (v or None) for k, v in zip(header, row, strict=True)}
            for n, row in enumerate(rows[1:], start=2)
            if len(row) == len(header)
        }
    out = {}
    for n, text in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            record = json.loads(text)
        except (UnicodeDecodeError, ValueError):
            continue
        if isinstance(record, dict):
            out[n] = record
    return out


def test_bad_input_is_dead_lettered_or_rejected_with_its_reason_and_nothing_is_lost(
    tmp_path: Path, reliability: ReliabilityLedger
) -> None:
    run = "bad input"
    traffic = simulated_events(cases=50, seed=101, invalid_share=0.03)
    sent_by_cli: list[tuple[str, dict[str, Any]]] = []  # (topic, file-shape record) the CLI sent
    cli_rejected = 0
    cli_problems: list[str] = []
    corpus = corpus_records()
    fuzzed: list[BadRecord] = []

    with Pipeline(tmp_path, "bad") as pipeline:
        pipeline.wait_ready()
        producer = TrackingProducer(pipeline.bootstrap, **{"message.max.bytes": 4_000_000})
        publisher = PacedPublisher(producer, traffic, chunk=40, pause_s=0.3)
        publisher.start()

        # 1. the corpus and fuzzed records, straight onto the topics, amid the live traffic
        for bad in corpus:
            producer.send(bad.topic, bad.key, bad.value, None, bad.kind, bad.reason, bad.field, "corpus")

        @settings(
            max_examples=180,
            deadline=None,
            database=None,
            suppress_health_check=[
                HealthCheck.too_slow,
                HealthCheck.data_too_large,
                HealthCheck.large_base_example,
            ],
        )
        @given(BAD_RECORDS)
        def fuzz_raw(bad: BadRecord) -> None:
            fuzzed.append(bad)
            producer.send(bad.topic, bad.key, bad.value, None, bad.kind, bad.reason, bad.field, "fuzzed")

        fuzz_raw()

        # 2. the corpus files through the real console script
        assert pipeline.sink is not None
        for entry in manifest()["files"]:
            path = tmp_path / entry["file"]
            path.write_bytes((CORPUS / "files" / entry["file"]).read_bytes())
            proc = subprocess.run(
                [str(REPO / ".venv/bin/backbone"), "produce", "--topic", entry["topic"], "--file", str(path)],
                capture_output=True,
                text=True,
                timeout=180,
                env=pipeline.sink.env,
                cwd=REPO,
            )
            assert proc.returncode == 1, (
                f"{entry['file']}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            )
            expected = {r["line"]: r for r in entry["rejects"]}
            rejects_file = path.with_name(path.name + ".rejects.jsonl")
            rejects = {r["line"]: r for r in map(json.loads, rejects_file.read_text().splitlines())}
            for number, want in expected.items():
                got = rejects.get(number)
                ok = (
                    got is not None
                    and want["reason"] in got["reason"]
                    and ("field" not in want or got["field"] == want["field"])
                    and f"line {number}: rejected: " in proc.stderr
                )
                reliability.tried(want["kind"], "corpus", CLI, ok)
                if not ok:
                    cli_problems.append(f"{entry['file']} line {number}: got {got}, expected {want}")
            assert set(rejects) == set(expected), (entry["file"], sorted(rejects), sorted(expected))
            assert f", {entry['sent']} sent, {len(expected)} rejected, 0 failed" in proc.stdout, proc.stdout
            cli_rejected += len(expected)
            good = {n: r for n, r in file_records(path).items() if n not in expected}
            assert len(good) == entry["sent"], (entry["file"], sorted(good))
            sent_by_cli += [(entry["topic"], record) for record in good.values()]

        # 3. fuzzed batch files through the CLI (in-process: the same typer app, faster)
        runner = CliRunner()
        files = 0

        @settings(max_examples=12, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
        @given(batch_file())
        def fuzz_cli(topic_lines: tuple[str, list[Line]]) -> None:
            nonlocal files, cli_rejected
            topic, lines = topic_lines
            files += 1
            path = tmp_path / f"fuzz-{files}.jsonl"
            path.write_bytes(b"".join(line.data + b"\n" for line in lines))
            args = ["produce", "-t", topic, "-f", str(path), "--bootstrap", pipeline.bootstrap]
            result = runner.invoke(app, args)
            problems = check_rejects(path.with_name(path.name + ".rejects.jsonl"), lines, path.name)
            bad_lines = [n for n, line in enumerate(lines, start=1) if line.expect is not None]
            if result.exit_code != (1 if bad_lines else 0):
                cli_problems.append(f"{path.name}: exit {result.exit_code}: {result.output[-500:]}")
            for number in bad_lines:
                expect = lines[number - 1].expect
                assert expect is not None
                reliability.tried(expect[2], "fuzzed", CLI, number not in problems)
            cli_problems.extend(problems.values())
            cli_rejected += len(bad_lines)
            sent_by_cli.extend((topic, json.loads(line.data)) for line in lines if line.expect is None)

        fuzz_cli()
        publisher.finish()
        producer.close()
        assert not cli_problems, "the produce CLI:\n" + "\n".join(cli_problems[:20])

        # 4. the worker: alive, every bad record dead-lettered, the valid traffic equal to the oracle
        events = [*traffic, *((topic, expected_raw(topic, record)) for topic, record in sent_by_cli)]
        expected_result, occurred = expected_outputs(events)
        bad_sent = [s for s in producer.sent if s.expected_reason is not None]
        assert len(bad_sent) == len(corpus) + len(fuzzed)
        reader, dead = pipeline.reader, pipeline.dead
        assert reader is not None and dead is not None

        def settled() -> bool:
            letters = dead_letters_by_position(dead)
            if not all(s.position in letters for s in bad_sent):
                return False
            return not oracle_differences(reader, expected_result, occurred)[0]

        matched = pipeline.wait_outputs(settled, timeout_s=180)
        letters = dead_letters_by_position(dead)
        missing = [s for s in bad_sent if s.position not in letters]
        assert not missing, f"{len(missing)} bad records never reached the dead letters, e.g. " + ", ".join(
            f"{s.kind} on {s.topic} ({len(s.value or b'')} bytes)" for s in missing[:8]
        )
        problems, _ = oracle_differences(reader, expected_result, occurred, limit=20)
        assert matched and not problems, (
            "valid traffic amid bad input differs from the oracle:\n" + "\n".join(problems)
        )
        pipeline.wait_sink_caught_up(len(producer.sent) + len(sent_by_cli), timeout_s=180)
        pipeline.stop_sink()
        pipeline.stop_workers()  # each must exit 0: the worker never crashed

    board = read_board(pipeline.settings)
    wrong: list[str] = []
    for s in bad_sent:
        ok = True
        for where, letter in (
            ("topic", letters.get(s.position)),
            ("table", board.dead_letters.get(s.position)),
        ):
            if letter is None:
                wrong.append(f"{s.kind} on {s.topic}: no dead letter in the {where}")
                ok = False
                continue
            detail_ok = s.expected_detail is None or letter["detail"].startswith(f"{s.expected_detail}:")
            bytes_ok = kept(letter["value"], s.value, letter["detail"]) and kept(
                letter["key"], s.key, letter["detail"]
            )
            if letter["reason"] != s.expected_reason or not detail_ok or not bytes_ok:
                ok = False
                wrong.append(
                    f"{s.kind} on {s.topic} ({where}): {letter['reason']} / {letter['detail'][:100]!r}, "
                    f"expected {s.expected_reason} / {s.expected_detail}; key and value intact: {bytes_ok}"
                )
        reliability.tried(s.kind, s.source, RAW, ok)
    accounting = reliability.account(
        account(
            run,
            producer.sent,
            board,
            cli_sent_event_ids=[record["event_id"] for _, record in sent_by_cli],
            cli_rejected=cli_rejected,
        )
    )
    assert not wrong, f"{len(wrong)} dead letters wrong:\n" + "\n".join(wrong[:20])
    assert not accounting.lost, f"{len(accounting.lost)} records lost, e.g. {accounting.lost[:5]}"
    assert not board.duplicates, board.duplicates
    assert accounting.dead_lettered == len(bad_sent) + len(expected_result.invalid)
