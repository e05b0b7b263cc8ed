"""Migrations (versioned, idempotent, checksummed) and the dedup views / rollups they create (real chdb)."""

from __future__ import annotations

from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client
from sink_fixtures import BASE_MS, HOUR_MS, alert, chdb, stage_record  # noqa: F401

from backbone.config import load_settings
from sinks.client import open_client
from sinks.migrate import MigrationError, applied_migrations, discover, migrate

pytestmark = pytest.mark.integration

TABLES = {"events", "stage_records", "kpi_windows", "alerts", "dead_letters", "backlog", "feed_freshness"}
VIEWS = {
    "events_distinct",
    "stage_records_latest",
    "kpi_windows_latest",
    "backlog_latest",
    "feed_freshness_latest",
    "alerts_current",
    "alerts_history",
    "dead_letters_latest",
    "kpi_daily_summary",
}


def _tables(client: Client) -> set[str]:
    return {r[0] for r in client.query("SHOW TABLES").result_rows}


def test_migrate_applies_all_in_order_and_records_them(tmp_path: Path) -> None:
    client = open_client(load_settings(data_dir=tmp_path))
    try:
        applied = migrate(client)
        files = sorted(p.name for p in (Path(__file__).parent.parent / "sinks" / "migrations").glob("*.sql"))
        assert [f"{m.label}.sql" for m in applied] == files
        recorded = applied_migrations(client)
        assert {v: n for v, (n, _) in recorded.items()} == {m.version: m.name for m in applied}
        assert {v: c for v, (_, c) in recorded.items()} == {m.version: m.checksum for m in applied}
        assert TABLES | VIEWS <= _tables(client)
        # idempotent: nothing left to apply, nothing recorded twice
        assert migrate(client) == []
        assert client.query("SELECT count() FROM schema_migrations").result_rows[0][0] == len(files)
    finally:
        client.close()


def _write(directory: Path, name: str, sql: str) -> None:
    (directory / name).write_text(sql)


def test_edited_applied_migration_is_an_error(tmp_path: Path) -> None:
    mdir = tmp_path / "migrations"
    mdir.mkdir()
    _write(mdir, "0001_one.sql", "CREATE TABLE IF NOT EXISTS one (a Int32) ENGINE = MergeTree ORDER BY a;\n")
    client = open_client(load_settings(data_dir=tmp_path / "d"))
    try:
        assert [m.label for m in migrate(client, discover(mdir))] == ["0001_one"]
        _write(
            mdir, "0001_one.sql", "CREATE TABLE IF NOT EXISTS one (a Int64) ENGINE = MergeTree ORDER BY a;\n"
        )
        with pytest.raises(MigrationError, match=r"0001_one\.sql: already applied .* must not change"):
            migrate(client, discover(mdir))
    finally:
        client.close()


def test_failed_migration_names_the_file_and_rerun_completes_it(tmp_path: Path) -> None:
    mdir = tmp_path / "migrations"
    mdir.mkdir()
    _write(
        mdir, "0001_base.sql", "CREATE TABLE IF NOT EXISTS base (a Int32) ENGINE = MergeTree ORDER BY a;\n"
    )
    _write(
        mdir,
        "0002_more.sql",
        "-- a comment line\nCREATE TABLE IF NOT EXISTS more1 (a Int32) ENGINE = MergeTree ORDER BY a;\n"
        "CREATE TABLE IF NOT EXISTS more2 (a NoSuchType) ENGINE = MergeTree ORDER BY a;\n",
    )
    client = open_client(load_settings(data_dir=tmp_path / "d"))
    try:
        with pytest.raises(MigrationError, match=r"0002_more\.sql: statement 2"):
            migrate(client, discover(mdir))
        assert set(applied_migrations(client)) == {1}  # 0002 not recorded: it did not finish
        # the fix before anyone applied it completely: re-running re-executes the whole file safely
        _write(
            mdir,
            "0002_more.sql",
            "CREATE TABLE IF NOT EXISTS more1 (a Int32) ENGINE = MergeTree ORDER BY a;\n"
            "CREATE TABLE IF NOT EXISTS more2 (a Int32) ENGINE = MergeTree ORDER BY a;\n",
        )
        assert [m.label for m in migrate(client, discover(mdir))] == ["0002_more"]
        assert {"base", "more1", "more2"} <= _tables(client)
    finally:
        client.close()


def test_bad_file_names_and_duplicate_versions_are_refused(tmp_path: Path) -> None:
    _write(tmp_path, "1_bad.sql", "SELECT 1;\n")
    with pytest.raises(MigrationError, match="1_bad.sql: migration files are named"):
        discover(tmp_path)
    (tmp_path / "1_bad.sql").unlink()
    _write(tmp_path, "0001_a.sql", "SELECT 1;\n")
    _write(tmp_path, "0001_b.sql", "SELECT 1;\n")
    with pytest.raises(MigrationError, match="version 1 is also used"):
        discover(tmp_path)


def _insert(client: Client, table: str, rows: list[dict[str, object]]) -> None:
    from schemas.codec import ms_to_datetime, paisa_to_decimal

    names = list(rows[0])
    timestamps = {n for n in names if n.endswith(("_at", "_start", "_end"))}
    money = {"amount_pkr", "amount_pkr_open"}

    def value(name: str, v: object) -> object:
        if v is None:
            return None
        if name in timestamps:
            return ms_to_datetime(v)  # type: ignore[arg-type]
        if name in money:
            return paisa_to_decimal(v)  # type: ignore[arg-type]
        return v

    data = [[value(n, r[n]) for n in names] for r in rows]
    client.insert(table, data, column_names=names)


def test_latest_views_show_one_row_per_id_with_the_highest_version(chdb: Client) -> None:  # noqa: F811
    _insert(chdb, "stage_records", [stage_record("C1", 1, "OPEN"), stage_record("C2", 1, "OPEN")])
    _insert(chdb, "stage_records", [stage_record("C1", 3, "CLOSED"), stage_record("C1", 2, "OPEN")])
    _insert(chdb, "stage_records", [stage_record("C1", 3, "CLOSED")])  # a replayed copy
    rows = chdb.query("SELECT case_id, state, version FROM stage_records_latest ORDER BY case_id").result_rows
    assert rows == [("C1", "CLOSED", 3), ("C2", "OPEN", 1)]
    # a filter on a non-key column sees the latest version only
    assert chdb.query("SELECT count() FROM stage_records_latest WHERE state = 'OPEN'").result_rows == [(1,)]

    _insert(chdb, "alerts", [alert(1, "FIRING", BASE_MS + 10), alert(2, "FIRING", BASE_MS + 10)])
    _insert(chdb, "alerts", [alert(1, "RESOLVED", BASE_MS + 20), alert(1, "FIRING", BASE_MS + 30)])  # replay
    current = chdb.query("SELECT alert_id, state FROM alerts_current ORDER BY case_id").result_rows
    assert [s for _, s in current] == ["RESOLVED", "FIRING"]
    history = chdb.query(
        "SELECT state, count() FROM alerts_history GROUP BY state ORDER BY state"
    ).result_rows
    assert history == [("FIRING", 2), ("RESOLVED", 1)]


def test_kpi_daily_rollup_counts_each_completion_once(chdb: Client) -> None:  # noqa: F811
    durations = [1, 2, 3, 30, 5, 6, 7, 8, 9, 10]  # hours; 30 h breaks the 24 h SLA
    records = []
    for i, h in enumerate(durations):
        ended = BASE_MS + h * HOUR_MS
        records.append(stage_record(f"C{i}", 1, "OPEN"))
        records.append(
            stage_record(f"C{i}", 2, "CLOSED", ended_at=ended, duration_ms=h * HOUR_MS, sla_met=h <= 24)
        )
    _insert(chdb, "stage_records", records)
    _insert(chdb, "stage_records", records[1::2])  # every CLOSED version inserted twice (a replay)
    chdb.command("SYSTEM REFRESH VIEW kpi_daily_refresh")
    chdb.command("SYSTEM WAIT VIEW kpi_daily_refresh")
    rows = chdb.query(
        "SELECT day, sum(completions), sum(sla_met), sum(duration_ms_sum) FROM kpi_daily "
        "WHERE stage = 'customs_clearance' GROUP BY day ORDER BY day"
    ).result_rows
    by_day: dict[str, list[int]] = {}
    for h in durations:
        day = "2026-01-02" if h >= 24 else "2026-01-01"
        by_day.setdefault(day, []).append(h)
    expected = [
        (d, len(hs), sum(1 for h in hs if h <= 24), sum(hs) * HOUR_MS) for d, hs in sorted(by_day.items())
    ]
    assert [(str(r[0]), r[1], r[2], r[3]) for r in rows] == expected
    summary = chdb.query(
        "SELECT completions, sla_met, p50_ms FROM kpi_daily_summary WHERE day = '2026-01-01'"
    ).result_rows
    first_day = sorted(h for h in durations if h < 24)
    assert summary == [(len(first_day), len(first_day), first_day[(len(first_day) - 1) // 2] * HOUR_MS)]


def test_backlog_ageing_buckets_open_cases_by_age(chdb: Client) -> None:  # noqa: F811
    import time

    now_ms = int(time.time() * 1000)
    day = 24 * HOUR_MS
    ages = [1, 10, 45, 45, 75, 200]
    records = [
        stage_record(
            f"R{i}",
            1,
            "OPEN",
            started_at=now_ms - a * day,
            amount_pkr=1000_00 + i,
            stage="rebate_payment",
            journey="rebate_claim",
        )
        for i, a in enumerate(ages)
    ]
    records.append(stage_record("R-done", 5, "CLOSED", stage="rebate_payment", journey="rebate_claim"))
    _insert(chdb, "stage_records", records)
    chdb.command("SYSTEM REFRESH VIEW backlog_ageing_refresh")
    chdb.command("SYSTEM WAIT VIEW backlog_ageing_refresh")
    rows = dict(
        (b, (n, m))
        for b, n, m in chdb.query(
            "SELECT age_bucket, open_cases, amount_pkr_open FROM backlog_ageing "
            "WHERE stage = 'rebate_payment'"
        ).result_rows
    )
    from decimal import Decimal

    def bucket(a: int) -> str:
        return "0-30d" if a <= 30 else "31-60d" if a <= 60 else "61-90d" if a <= 90 else "90d+"

    expected: dict[str, tuple[int, Decimal]] = {}
    for i, a in enumerate(ages):
        n, m = expected.get(bucket(a), (0, Decimal(0)))
        expected[bucket(a)] = (n + 1, m + Decimal(1000_00 + i) / 100)
    assert rows == expected


def test_events_daily_counts_a_reinserted_event_once(chdb: Client) -> None:  # noqa: F811
    import uuid

    from schemas.codec import ms_to_datetime

    ids = [uuid.uuid4() for _ in range(5)]
    cols = [
        "event_id",
        "case_id",
        "topic",
        "agency",
        "province",
        "status",
        "occurred_at",
        "published_at",
        "kafka_partition",
        "kafka_offset",
    ]
    rows = [
        [
            i,
            "C",
            "customs.clearances.v1",
            "FBR-CUSTOMS",
            "PK-PB",
            "FILED",
            ms_to_datetime(BASE_MS),
            ms_to_datetime(BASE_MS),
            0,
            n,
        ]
        for n, i in enumerate(ids)
    ]
    chdb.insert("events", rows, column_names=cols)
    chdb.insert("events", rows[:3], column_names=cols)
    assert chdb.query("SELECT uniqExactMerge(events) FROM events_daily").result_rows == [(5,)]
    assert chdb.query("SELECT count() FROM events_distinct").result_rows == [(5,)]
