"""The sink against a real Tansu broker and a real chdb: what was produced is what ClickHouse holds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from sink_fixtures import (  # noqa: F401
    ALL_TOPICS,
    BASE_MS,
    HOUR_MS,
    SinkThread,
    agency_events,
    alert,
    backlog,
    committed_total,
    customs_event,
    dead_letter,
    freshness,
    kpi_window,
    private_broker,
    produce,
    produce_bytes,
    sink_settings,
    stage_record,
    wait_for,
)

from backbone.config import Settings
from schemas import contracts
from schemas.codec import Codec
from sinks import rows
from sinks.client import open_client
from sinks.migrate import migrate

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def db(sink_settings: Settings) -> Any:  # noqa: F811
    client = open_client(sink_settings)
    migrate(client)
    yield client
    client.close()


def _money(paisa: int | None) -> Decimal | None:
    return None if paisa is None else Decimal(paisa) / 100


def _latest(records: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        if r[key] not in out or r["version"] > out[r[key]]["version"]:
            out[r[key]] = r
    return out


def test_tables_have_a_column_per_contract_field(db: Client) -> None:
    """Each output table has exactly its Avro fields (+ ingested_at), with the promised types."""
    expected_types = {"timestamp": "DateTime64(3, 'UTC')", "money": "Decimal(18, 2)"}
    for topic, table in rows.OUTPUT_TABLES.items():
        described = {r[0]: r[1] for r in db.query(f"DESCRIBE TABLE {table}").result_rows}
        fields = contracts.current(topic).field_names
        assert sorted(described) == sorted([*fields, "ingested_at"]), table
        for col in rows.output_spec(topic).columns:
            if col.kind in expected_types:
                want = expected_types[col.kind]
                assert described[col.name] == (f"Nullable({want})" if col.nullable else want), (
                    table,
                    col.name,
                )
    described = {r[0]: r[1] for r in db.query("DESCRIBE TABLE events").result_rows}
    family_fields = {f for t in contracts.INPUT_TOPICS for f in contracts.current(t).field_names}
    assert family_fields | {"topic", "kafka_partition", "kafka_offset", "ingested_at"} == set(described)
    assert described["event_id"] == "UUID"
    assert described["declared_value_pkr"] == described["amount_pkr"] == "Nullable(Decimal(18, 2))"


def _events_in_clickhouse(db: Client) -> dict[str, tuple[Any, ...]]:
    result = db.query(
        "SELECT toString(event_id), case_id, topic, agency, province, status, "
        "toUnixTimestamp64Milli(occurred_at), toUnixTimestamp64Milli(published_at), port, hs_code, "
        "declared_value_pkr, container_ids, exporter_id, "
        "gd_number, from_province, to_province, vehicle_reg, terminal, container_id, vessel, amount_pkr, "
        "regulator, instrument, sector FROM events_distinct"
    )
    return {r[0]: tuple(r) for r in result.result_rows}


def _expected_event(topic: str, e: dict[str, Any]) -> tuple[Any, ...]:
    return (
        e["event_id"],
        e["case_id"],
        topic,
        e["agency"],
        e["province"],
        e["status"],
        e["occurred_at"],
        e["published_at"],
        e.get("port", ""),
        e.get("hs_code", ""),
        _money(e.get("declared_value_pkr")),
        e.get("container_ids", []),
        e.get("exporter_id"),
        e.get("gd_number"),
        e.get("from_province", ""),
        e.get("to_province", ""),
        e.get("vehicle_reg", ""),
        e.get("terminal", ""),
        e.get("container_id", ""),
        e.get("vessel"),
        _money(e.get("amount_pkr")),
        e.get("regulator", ""),
        e.get("instrument", ""),
        e.get("sector", ""),
    )


def test_sink_stores_what_was_produced_once_even_after_a_replay(
    sink_settings: Settings,  # noqa: F811
    db: Client,
) -> None:
    valid = agency_events(60, seed=3)
    duplicate = valid[5]
    bad_province = (contracts.CUSTOMS, customs_event("EXP-BAD-1", "FILED", BASE_MS, province="PK-XX"))
    produce(sink_settings, [*valid, duplicate, bad_province])
    mismatched = customs_event("EXP-KEY-1", "FILED", BASE_MS)
    produce_bytes(
        sink_settings, contracts.CUSTOMS, [Codec().encode(contracts.CUSTOMS, mismatched)], key=b"OTHER"
    )
    unkeyed = customs_event("EXP-KEY-2", "FILED", BASE_MS)  # the processors dead-letter it too
    produce_bytes(sink_settings, contracts.CUSTOMS, [Codec().encode(contracts.CUSTOMS, unkeyed)], key=None)
    produce_bytes(sink_settings, contracts.PORTS, [b"not an event"], key=b"EXP-X")

    stages = [stage_record(f"S{i}", 1, "OPEN") for i in range(20)]
    stages += [stage_record(f"S{i}", 2, "CLOSED") for i in range(0, 20, 2)]
    stages += [stage_record(f"S{i}", 2, "CLOSED") for i in range(0, 6, 2)]  # re-emitted copies
    windows = [kpi_window(i, v) for i in range(10) for v in (1, 2)]
    alerts = [alert(i, "FIRING", BASE_MS + i) for i in range(5)] + [
        alert(i, "RESOLVED", BASE_MS + 99) for i in range(3)
    ]
    dls = [dead_letter(i) for i in range(3)]
    backlogs = [backlog(i, v, n) for i in range(3) for v, n in ((1, 4), (2, 3), (3, 0))]
    feeds = [freshness(a, v) for a in ("FBR-CUSTOMS", "PQA") for v in (5, 9, 7)]
    produce(sink_settings, [(contracts.STAGE_RECORDS, r) for r in stages], key_field="record_id")
    produce(sink_settings, [(contracts.KPI_WINDOWS, r) for r in windows], key_field="kpi_id")
    produce(sink_settings, [(contracts.ALERTS, r) for r in alerts], key_field="alert_id")
    produce(sink_settings, [(contracts.DEAD_LETTERS, r) for r in dls], key_field="dead_letter_id")
    produce(sink_settings, [(contracts.BACKLOG, r) for r in backlogs], key_field="backlog_id")
    produce(sink_settings, [(contracts.FEED_FRESHNESS, r) for r in feeds], key_field="agency")
    produce_bytes(sink_settings, contracts.ALERTS, [b"\xc3\x01garbage"], key=b"A")
    total = (
        len(valid) + 5 + len(stages) + len(windows) + len(alerts) + len(dls) + len(backlogs) + len(feeds) + 1
    )

    with SinkThread(sink_settings, db, f"sink-{uuid.uuid4().hex[:8]}") as sink:
        sink.wait_committed(total)
    assert (
        sink.metric("backbone_sink_skipped_events_total", topic=contracts.CUSTOMS, reason="invalid_record")
        == 3
    )
    assert sink.metric("backbone_sink_skipped_events_total", topic=contracts.PORTS, reason="bad_framing") == 1

    def check_contents() -> None:
        assert _events_in_clickhouse(db) == {e["event_id"]: _expected_event(t, e) for t, e in valid}
        got_stages = {
            r[0]: r[1:]
            for r in db.query(
                "SELECT record_id, case_id, state, version, duration_ms, sla_met FROM stage_records_latest"
            ).result_rows
        }
        assert got_stages == {
            k: (r["case_id"], r["state"], r["version"], r["duration_ms"], r["sla_met"])
            for k, r in _latest(stages, "record_id").items()
        }
        got_windows = {
            r[0]: r[1:]
            for r in db.query(
                "SELECT kpi_id, version, completions, sla_compliance, toUnixTimestamp64Milli(window_start) "
                "FROM kpi_windows_latest"
            ).result_rows
        }
        assert got_windows == {
            k: (r["version"], r["completions"], r["sla_compliance"], r["window_start"])
            for k, r in _latest(windows, "kpi_id").items()
        }
        current = dict(db.query("SELECT alert_id, state FROM alerts_current").result_rows)
        assert current == {a["alert_id"]: "RESOLVED" if i < 3 else "FIRING" for i, a in enumerate(alerts[:5])}
        assert db.query("SELECT count() FROM alerts_history").result_rows == [(len(alerts),)]
        got_backlog = dict(db.query("SELECT backlog_id, open_cases FROM backlog_latest").result_rows)
        assert got_backlog == {k: r["open_cases"] for k, r in _latest(backlogs, "backlog_id").items()}
        got_feeds = dict(db.query("SELECT agency, events_total FROM feed_freshness_latest").result_rows)
        assert got_feeds == {"FBR-CUSTOMS": 9, "PQA": 9}
        got_dls = {
            r[0]: (r[1], r[2], bytes.fromhex(r[3]))
            for r in db.query(
                "SELECT dead_letter_id, source, reason, hex(value) FROM dead_letters_latest"
            ).result_rows
        }
        processor_dls = {d["dead_letter_id"]: ("processor", d["reason"], d["value"]) for d in dls}
        assert {k: got_dls[k] for k in processor_dls} == processor_dls
        sink_dls = [v for k, v in got_dls.items() if k not in processor_dls]
        assert sink_dls == [("sink", "bad_framing", b"\xc3\x01garbage")]

    check_contents()
    assert db.query("SELECT count() FROM dead_letters_latest WHERE source = 'processor'").result_rows == [
        (3,)
    ]
    raw_before = db.query("SELECT count() FROM events").result_rows[0][0]

    # replay every topic from the start in a new consumer group: nothing shows twice
    with SinkThread(sink_settings, db, f"replay-{uuid.uuid4().hex[:8]}") as replay:
        replay.wait_committed(total)
    assert db.query("SELECT count() FROM events").result_rows[0][0] >= raw_before  # copies until merged
    check_contents()
    db.command("OPTIMIZE TABLE events FINAL")
    db.command("OPTIMIZE TABLE stage_records FINAL")
    assert db.query("SELECT count() FROM events").result_rows == [(len(valid),)]
    assert db.query("SELECT count() FROM stage_records").result_rows == [(20,)]


def test_a_flush_stores_the_processor_outputs_before_the_raw_events(
    sink_settings: Settings,  # noqa: F811
    db: Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the boards read (stage records, KPI windows) is inserted first in each flush: its
    ``ingested_at`` must not wait for the raw events' insert, the biggest one (materialized views)."""
    from sinks import sink_writer

    jobs: list[list[str]] = []
    write = sink_writer.InsertWorker.write

    def recording_write(self: sink_writer.InsertWorker, job: sink_writer.InsertJob) -> None:
        jobs.append([b.spec.table for b in job.batches])
        write(self, job)

    monkeypatch.setattr(sink_writer.InsertWorker, "write", recording_write)
    events = agency_events(10, seed=4)
    stages = [stage_record(f"S{i}", 1, "OPEN") for i in range(5)]
    windows = [kpi_window(i, 1) for i in range(3)]
    produce(sink_settings, events)
    produce(sink_settings, [(contracts.STAGE_RECORDS, r) for r in stages], key_field="record_id")
    produce(sink_settings, [(contracts.KPI_WINDOWS, r) for r in windows], key_field="kpi_id")
    # everything is read within the batch age, so one flush holds the three tables
    with SinkThread(sink_settings, db, f"sink-{uuid.uuid4().hex[:8]}", max_batch_age_s=2.0) as sink:
        sink.wait_committed(len(events) + len(stages) + len(windows))
    assert [t for t in jobs if len(t) == 3], f"no flush held all three tables: {jobs}"
    for tables in jobs:
        assert "events" not in tables or tables[-1] == "events", jobs
    assert db.query("SELECT count() FROM kpi_windows").result_rows == [(len(windows),)]


def test_rejected_rows_are_parked_with_the_reason_and_the_rest_stored(
    sink_settings: Settings,  # noqa: F811
    db: Client,
) -> None:
    good = [stage_record(f"G{i}", 1, "OPEN") for i in range(100)]
    negative_version = stage_record("BAD-VERSION", -1, "OPEN")  # Arrow refuses UInt64 < 0
    broken_sla = stage_record("BAD-SLA", 1, "OPEN", sla_ms=0)  # ClickHouse: VIOLATED_CONSTRAINT
    far_future = kpi_window(1, 1, window_end=BASE_MS + 400 * 365 * 24 * HOUR_MS)  # beyond DateTime64(3)
    records = [(contracts.STAGE_RECORDS, r) for r in good[:37]]
    records += [(contracts.STAGE_RECORDS, negative_version), (contracts.STAGE_RECORDS, broken_sla)]
    records += [(contracts.STAGE_RECORDS, r) for r in good[37:]] + [(contracts.KPI_WINDOWS, far_future)]
    produce(sink_settings, records, key_field="record_id")

    with SinkThread(sink_settings, db, f"sink-{uuid.uuid4().hex[:8]}") as sink:
        sink.wait_committed(len(records))
    stored = {r[0] for r in db.query("SELECT case_id FROM stage_records_latest").result_rows}
    assert stored == {r["case_id"] for r in good}
    parked = db.query("SELECT source, topic, reason, detail, hex(value) FROM dead_letters_latest").result_rows
    codec = Codec()
    by_case = {}
    for source, topic, reason, detail, value in parked:
        assert source == "sink"
        raw = codec.decode(topic, bytes.fromhex(value))
        by_case[raw.get("case_id") or raw.get("kpi_id")] = (reason, detail)
    assert set(by_case) == {"BAD-VERSION", "BAD-SLA", far_future["kpi_id"]}
    assert by_case["BAD-SLA"][0] == "rejected_by_clickhouse" and "sla_is_positive" in by_case["BAD-SLA"][1]
    assert by_case["BAD-VERSION"][0] == "rejected_by_clickhouse"
    assert (
        by_case[far_future["kpi_id"]][0] == "out_of_range"
        and "window_end" in by_case[far_future["kpi_id"]][1]
    )
    assert sink.metric("backbone_sink_errors_total", table="stage_records", error="rejected") == 2


def test_db_migrate_command_is_idempotent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from backbone.cli import app

    monkeypatch.setenv("BACKBONE_DATA_DIR", str(tmp_path))
    runner = CliRunner()
    first = runner.invoke(app, ["db", "migrate"])
    assert first.exit_code == 0, first.output
    assert "applied 0001_events, 0002_pipeline_outputs" in first.output
    second = runner.invoke(app, ["db", "migrate"])
    assert second.exit_code == 0 and "none (up to date)" in second.output


def _backbone(*args: str) -> subprocess.Popen[bytes]:
    """``python -m backbone <args>`` in a child (a chdb path is one process's at a time)."""
    return subprocess.Popen(
        [sys.executable, "-m", "backbone", *args],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        start_new_session=True,
    )


def _tables(settings: Settings) -> set[str] | None:
    """The tables of the configured database, or None when the database does not exist."""
    import clickhouse_connect

    from sinks.client import client_dsn

    client = clickhouse_connect.get_client(dsn=client_dsn(settings))
    try:
        db = {"db": settings.clickhouse_database}
        found = client.query("SELECT name FROM system.databases WHERE name = {db:String}", parameters=db)
        if not found.result_rows:
            return None
        result = client.query("SELECT name FROM system.tables WHERE database = {db:String}", parameters=db)
        return {r[0] for r in result.result_rows}
    finally:
        client.close()


def test_sink_run_no_migrate_refuses_an_unmigrated_database_and_creates_nothing(
    sink_settings: Settings,  # noqa: F811
) -> None:
    child = _backbone("sink", "run", "--no-migrate")
    output, _ = child.communicate(timeout=60)
    assert child.returncode == 2, output.decode()
    assert b"lacks alerts, backlog, dead_letters, events" in output and b"backbone db migrate" in output
    assert _tables(sink_settings) is None  # nothing created: not even the database


def test_sink_run_no_migrate_stores_into_a_migrated_database(
    sink_settings: Settings,  # noqa: F811
) -> None:
    migrate_child = _backbone("db", "migrate")
    output, _ = migrate_child.communicate(timeout=60)
    assert migrate_child.returncode == 0, output.decode()
    assert {"events", "stage_records", "schema_migrations"} <= (_tables(sink_settings) or set())
    events = agency_events(30, seed=41)
    produce(sink_settings, events)
    group = f"sink-{uuid.uuid4().hex[:8]}"
    sink = _backbone("sink", "run", "--no-migrate", "--group", group)
    try:
        wait_for(lambda: committed_total(sink_settings, group, ALL_TOPICS) >= len(events), 60, "the commit")
        sink.send_signal(signal.SIGINT)
        assert sink.wait(30) == 0
    finally:
        if sink.poll() is None:
            sink.kill()
        sink.communicate()
    client = open_client(sink_settings)
    try:
        stored = {r[0] for r in client.query("SELECT toString(event_id) FROM events_distinct").result_rows}
        assert stored == {e["event_id"] for _, e in events}
    finally:
        client.close()
