"""``backbone recompute``: history rebuilt in ClickHouse equals the oracle and the stream processors.

Real chdb, the real migrations, seeded simulated traffic with duplicates (stored twice, merges
stopped so the copies stay), out-of-order and late deliveries, stalled and rejected (cancelled)
cases. Expected values come from ``tests/oracle.py`` (pandas over the raw events) and from the
pure stream engines driven as the worker drives them; nothing is read back from the SQL under
test to build an expectation.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import oracle
import pandas as pd
import pytest
import yaml
from clickhouse_connect.driver.client import Client
from engine_fixtures import DAY, HOUR, T0, Pipeline, latest, partition_of
from kpi_fixtures import assert_stream_windows_match, faulty_traffic

from backbone.config import DEFAULT_MISSIONS_FILE, Settings, load_settings
from schemas import contracts
from schemas.alert_wording import human_duration
from schemas.codec import Codec
from sinks import rows
from sinks.client import open_client
from sinks.migrate import migrate
from sinks.recompute import (
    KPI_SLICE_RECORDS,
    RecomputeError,
    activate,
    active_version,
    drop_version,
    list_versions,
    parse_from,
    recompute,
    rule_differences,
)
from sinks.recompute_sql import KPI_WINDOW_COLUMNS, RecomputeSql, table_ddl
from stream_processors.api import InputMessage, Outputs
from stream_processors.missions import Missions, load_missions

pytestmark = pytest.mark.integration

GRACE_MS = 2 * DAY
SMALL_SLICE = 40
"""Closed records per KPI-windows INSERT that cut the test traffic's history into many slices."""
STAGE_SELECT = (
    "SELECT record_id, case_id, mission, journey, stage, owner_agency, province, port, state, "
    "toUnixTimestamp64Milli(started_at) AS started_at, toUnixTimestamp64Milli(ended_at) AS ended_at, "
    "duration_ms, sla_ms, sla_met, toInt64(amount_pkr * 100) AS amount_pkr FROM stage_records_latest"
)
KPI_SELECT = (
    "SELECT kpi_id, window, toUnixTimestamp64Milli(window_start) AS window_start, "
    "toUnixTimestamp64Milli(window_end) AS window_end, "
    "mission, journey, stage, owner_agency, province, port, "
    "completions, sla_met, sla_compliance, p50_ms, p90_ms, mean_ms, throughput_per_h FROM kpi_windows_latest"
)


# -- inputs ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def traffic() -> list[Any]:
    """Seeded simulated events in delivery order (every fault the simulator has, invalid ones too)."""
    return faulty_traffic(T0, seed=23, cases=220, span_ms=4 * DAY, stall_share=0.06)


@pytest.fixture(scope="module")
def now_ms(traffic: list[Any]) -> int:
    return max(e.deliver_at for e in traffic) + HOUR


@pytest.fixture(scope="module")
def stream(traffic: list[Any], now_ms: int) -> Outputs:
    """Both stream engines over the traffic in delivery order, batches of 25, timers between."""
    codec, partitions = Codec(), 4
    pipeline = Pipeline(Settings(grace_ms=GRACE_MS), partitions=partitions)
    offsets: dict[tuple[str, int], int] = defaultdict(int)
    clock = 0
    for i in range(0, len(traffic), 25):
        batch = []
        for e in traffic[i : i + 25]:
            p = partition_of(e.raw["case_id"], partitions)
            key = e.raw["case_id"].encode()
            batch.append(
                InputMessage(
                    e.topic, p, offsets[(e.topic, p)], key, codec.encode(e.topic, e.raw), e.deliver_at
                )
            )
            offsets[(e.topic, p)] += 1
        clock = max(clock, max(m.timestamp_ms for m in batch))
        pipeline.push_messages(batch, clock)
        pipeline.tick(clock)
    pipeline.tick(now_ms)
    return pipeline.out


def valid_copies(traffic: list[Any], now_ms: int) -> list[tuple[str, dict[str, Any]]]:
    """What the sink stores: every valid delivery, duplicates included."""
    from schemas.validation import InvalidRecord, validate_event

    kept = []
    for e in traffic:
        try:
            validate_event(e.topic, e.raw, now_ms)
        except InvalidRecord:
            continue
        kept.append((e.topic, e.raw))
    return kept


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Client]:
    client = open_client(load_settings(data_dir=tmp_path / "chdb"))
    migrate(client)
    try:
        yield client
    finally:
        client.close()


def store_events(client: Client, events: list[tuple[str, dict[str, Any]]]) -> None:
    """Insert like the sink (first copies, then re-sent copies in a second part, merges stopped)."""
    client.command("SYSTEM STOP MERGES events")
    seen: set[str] = set()
    first, again = [], []
    for i, (topic, raw) in enumerate(events):
        (again if raw["event_id"] in seen else first).append(rows.event_row(topic, raw, 0, i))
        seen.add(raw["event_id"])
    spec = rows.events_spec()
    for part in (first, again):
        if part:
            client.insert_arrow("events", spec.to_arrow(part))


def store_stream(client: Client, out: Outputs) -> None:
    """The stream's outputs into the stream tables, as the sink stores them."""
    for topic, records in (
        (contracts.STAGE_RECORDS, out.stage_records),
        (contracts.KPI_WINDOWS, out.kpi_windows),
    ):
        spec = rows.output_spec(topic)
        client.insert_arrow(spec.table, spec.to_arrow([rows.output_row(topic, r) for r in records]))


def with_sla(tmp_path: Path, stage: str, sla: str) -> Missions:
    data = yaml.safe_load(DEFAULT_MISSIONS_FILE.read_text())
    for m in data["missions"]:
        for j in m["journeys"]:
            for s in j["stages"]:
                if s["id"] == stage:
                    s["sla"] = sla
    path = tmp_path / f"missions-{stage}-{sla}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_missions(path)


def table_names(client: Client) -> set[str]:
    rows = client.query("SELECT name FROM system.tables WHERE database = currentDatabase()").result_rows
    return {str(r[0]) for r in rows}


def view_records(client: Client) -> dict[str, dict[str, Any]]:
    out = {}
    for r in client.query(STAGE_SELECT).named_results():
        out[r["record_id"]] = r
    return out


def view_windows(client: Client) -> dict[str, dict[str, Any]]:
    return {r["kpi_id"]: r for r in client.query(KPI_SELECT).named_results()}


def na(v: Any) -> Any:
    return None if oracle._is_na(v) else v


def assert_records_equal(got: dict[str, dict[str, Any]], want: pd.DataFrame) -> None:
    expected = oracle.as_mapping(want, "record_id")
    assert set(got) == set(expected)
    for rid, exp in expected.items():
        assert {c: got[rid][c] for c in oracle.STAGE_COLUMNS} == {
            c: na(exp[c]) for c in oracle.STAGE_COLUMNS
        }, rid


def assert_windows_equal(got: dict[str, dict[str, Any]], want: pd.DataFrame) -> None:
    expected = oracle.as_mapping(want, "kpi_id")
    assert set(got) == set(expected)
    for kid, exp in expected.items():
        g = got[kid]
        exact = [c for c in oracle.KPI_COLUMNS if c not in ("mean_ms", "sla_compliance", "throughput_per_h")]
        assert {c: g[c] for c in exact} == {c: na(exp[c]) for c in exact}, kid
        for c in ("mean_ms", "sla_compliance", "throughput_per_h"):
            assert math.isclose(g[c], exp[c], rel_tol=1e-12), (kid, c)


# -- tests -----------------------------------------------------------------------------------------


def test_uuid_order_used_for_start_ties_is_the_order_of_the_uuid_text(db: Client) -> None:
    ordered = db.query(
        "SELECT groupArray(toString(u)) FROM "
        "(SELECT u FROM (SELECT generateUUIDv4(number) AS u FROM numbers(20000)) "
        "ORDER BY toUInt128(u))"
    ).result_rows[0][0]
    assert ordered == sorted(ordered)


def test_version_tables_derive_the_window_ratios_as_the_stream_does(db: Client) -> None:
    """``sla_compliance`` and ``throughput_per_h`` are ALIAS columns of a version table: they must
    equal the stream's ``met / n if n else None`` and ``n / size_hours``, also for a window without
    completions that ``--from`` copies from the stream."""
    table = "kpi_windows_v99"
    db.command(table_ddl(table, KPI_WINDOW_COLUMNS, "ENGINE = MergeTree ORDER BY window_end"))
    start = T0
    rows = [("24h", DAY, 3, 2), ("1h", HOUR, 0, 0)]
    for window, size, n, met in rows:
        db.command(
            f"INSERT INTO {table} (window, window_start, window_end, mission, journey, stage, owner_agency, "
            "province, port, completions, sla_met, p50_ms, p90_ms, mean_ms, late_events, version) VALUES "
            f"('{window}', fromUnixTimestamp64Milli({start}, 'UTC'), "
            f"fromUnixTimestamp64Milli({start + size}, 'UTC'), "
            f"'m', 'j', 's', 'A', 'PK-SD', '', {n}, {met}, NULL, NULL, NULL, 0, 0)"
        )
    got = {
        r["window"]: r
        for r in db.query(f"SELECT window, sla_compliance, throughput_per_h FROM {table}").named_results()
    }
    for window, size, n, met in rows:
        assert got[window]["sla_compliance"] == (met / n if n else None)
        assert got[window]["throughput_per_h"] == n / (size / 3_600_000)


@pytest.mark.parametrize("slice_records", [KPI_SLICE_RECORDS, SMALL_SLICE], ids=["one-slice", "sliced"])
def test_recompute_equals_the_oracle_and_the_stream_processors(
    db: Client, traffic: list[Any], now_ms: int, stream: Outputs, slice_records: int
) -> None:
    stored = valid_copies(traffic, now_ms)
    store_events(db, stored)
    distinct, total = db.query("SELECT uniqExact(event_id), count() FROM events").result_rows[0]
    assert total > distinct  # the re-sent copies are really there, unmerged
    result = recompute(
        db, load_missions(DEFAULT_MISSIONS_FILE), grace_ms=GRACE_MS, kpi_slice_records=slice_records
    )
    assert (result.version, active_version(db)) == (1, 1)
    # Built in one INSERT, or a slice of history at a time (windows straddle every cut).
    assert (result.kpi_slices == 1) == (slice_records == KPI_SLICE_RECORDS) and result.kpi_slices < 50
    # A version is written once and then only read: ClickHouse must not spend CPU merging its parts.
    engines = db.query(
        "SELECT name, engine_full FROM system.tables WHERE database = currentDatabase() "
        "AND name IN ('stage_records_v1', 'kpi_windows_v1')"
    ).result_rows
    assert len(engines) == 2
    assert all("max_bytes_to_merge_at_max_space_in_pool = 1" in engine for _, engine in engines), engines

    want = oracle.compute([(e.topic, e.raw) for e in traffic], now_ms=now_ms, validation_now_ms=now_ms)
    assert want.duplicates > 0 and len(want.invalid) > 0
    states = set(want.stage_records["state"])
    assert states == {"OPEN", "CLOSED", "CANCELLED"}  # stalled and rejected cases are in the data
    records = view_records(db)
    assert_records_equal(records, want.stage_records)
    assert_windows_equal(view_windows(db), want.kpi_windows)
    assert result.stage_records == len(want.stage_records) and result.kpi_windows == len(want.kpi_windows)

    # The stream processors' latest records are the same rows, field for field.
    streamed = latest(stream.stage_records, "record_id")
    assert set(streamed) == set(records)
    for rid, r in streamed.items():
        assert {c: r[c] for c in oracle.STAGE_COLUMNS} == {c: records[rid][c] for c in oracle.STAGE_COLUMNS}
    # ...and their KPI windows: the same counts; quantiles within the sketch's 1%.
    assert_stream_windows_match(stream.kpi_windows, view_windows(db))


def test_changing_one_sla_changes_exactly_its_flags_and_kpis(
    db: Client, traffic: list[Any], now_ms: int, tmp_path: Path
) -> None:
    store_events(db, valid_copies(traffic, now_ms))
    recompute(db, load_missions(DEFAULT_MISSIONS_FILE), grace_ms=GRACE_MS)
    before_records, before_windows = view_records(db), view_windows(db)
    tighter = with_sla(tmp_path, "permit_handoff", "6h")
    recompute(db, tighter, grace_ms=GRACE_MS)
    after_records, after_windows = view_records(db), view_windows(db)

    assert set(after_records) == set(before_records)
    flipped = 0
    for rid, b in before_records.items():
        a = after_records[rid]
        changed = {c for c in b if a[c] != b[c]}
        if b["stage"] != "permit_handoff":
            assert changed == set(), rid
            continue
        assert a["sla_ms"] == 6 * HOUR and b["sla_ms"] == 12 * HOUR
        should_flip = b["state"] == "CLOSED" and 6 * HOUR < b["duration_ms"] <= 12 * HOUR
        assert changed == ({"sla_ms", "sla_met"} if should_flip else {"sla_ms"}), rid
        flipped += should_flip
    assert flipped > 0
    assert set(after_windows) == set(before_windows)
    moved = 0
    for kid, b in before_windows.items():
        a = after_windows[kid]
        changed = {c for c in b if a[c] != b[c]}
        if b["stage"] != "permit_handoff":
            assert changed == set(), kid
        else:
            assert changed <= {"sla_met", "sla_compliance"}, kid
            moved += bool(changed)
    assert moved > 0
    want = oracle.compute(
        [(e.topic, e.raw) for e in traffic], now_ms=now_ms, missions=tighter, validation_now_ms=now_ms
    )
    assert_records_equal(after_records, want.stage_records)
    assert_windows_equal(after_windows, want.kpi_windows)


def test_the_rules_are_compared_with_the_processors_stored_records(
    db: Client, stream: Outputs, tmp_path: Path
) -> None:
    """Before it writes, a recompute says where the file's rules differ from the SLAs the stored
    records carry (QA: the demo's unscaled file silently gave every stage a met SLA)."""
    store_stream(db, stream)
    cases: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for r in stream.stage_records:
        cases[(r["mission"], r["journey"], r["stage"])].add(r["case_id"])
    default = load_missions(DEFAULT_MISSIONS_FILE)

    def unseen(name: str, missions: Missions) -> list[str]:
        return [
            f"{'/'.join(ref.key)}: SLA {human_duration(ref.stage.sla_ms)} in {name}; "
            "no stored records (a new stage?)"
            for ref in missions.stages
            if ref.key not in cases
        ]

    assert rule_differences(db, default) == unseen("missions.yaml", default)
    handoff = ("export_competitiveness", "export_shipment", "permit_handoff")
    assert len(cases[handoff]) > 0
    tighter = with_sla(tmp_path, "permit_handoff", "6h")
    name = "missions-permit_handoff-6h.yaml"
    assert rule_differences(db, tighter) == [
        f"export_competitiveness/export_shipment/permit_handoff: SLA 6 h in {name}; "
        f"12 h in {len(cases[handoff]):,} stored records",
        *unseen(name, tighter),
    ]
    data = yaml.safe_load(DEFAULT_MISSIONS_FILE.read_text())
    shipment = data["missions"][0]["journeys"][0]
    shipment["stages"] = [s for s in shipment["stages"] if s["id"] != "port_loading"]
    path = tmp_path / "no-port-loading.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    without = load_missions(path)
    loading = ("export_competitiveness", "export_shipment", "port_loading")
    assert rule_differences(db, without) == [
        *unseen(path.name, without),
        f"export_competitiveness/export_shipment/port_loading: {len(cases[loading]):,} stored records, "
        f"not in {path.name} (no recomputed records)",
    ]


def test_from_date_recomputes_cases_active_from_it_and_keeps_earlier_history(
    db: Client, traffic: list[Any], now_ms: int, tmp_path: Path
) -> None:
    stored = valid_copies(traffic, now_ms)
    store_events(db, stored)
    default = load_missions(DEFAULT_MISSIONS_FILE)
    recompute(db, default, grace_ms=GRACE_MS)
    tighter = with_sla(tmp_path, "customs_clearance", "8h")
    cut = parse_from("2026-01-03")
    assert cut == T0 + 2 * DAY
    result = recompute(db, tighter, grace_ms=GRACE_MS, from_ms=cut, kpi_slice_records=SMALL_SLICE)
    assert result.kpi_slices > 1

    events = [(e.topic, e.raw) for e in traffic]
    old = oracle.compute(events, now_ms=now_ms, missions=default, validation_now_ms=now_ms)
    new = oracle.compute(events, now_ms=now_ms, missions=tighter, validation_now_ms=now_ms)
    ev = old.events
    active = set(ev.loc[ev["occurred_at"] >= cut, "case_id"])
    assert 0 < len(active) < ev["case_id"].nunique()
    mixed = pd.concat(
        [
            new.stage_records[new.stage_records["case_id"].isin(active)],
            old.stage_records[~old.stage_records["case_id"].isin(active)],
        ],
        ignore_index=True,
    )
    assert_records_equal(view_records(db), mixed)
    later = oracle.kpi_windows(mixed, tighter)
    want_windows = pd.concat(
        [later[later["window_end"] > cut], old.kpi_windows[old.kpi_windows["window_end"] <= cut]],
        ignore_index=True,
    )
    assert_windows_equal(view_windows(db), want_windows)
    assert result.from_ms == cut


def test_stream_rows_after_the_snapshot_win_except_for_closed_windows(
    db: Client, traffic: list[Any], now_ms: int, stream: Outputs
) -> None:
    store_events(db, valid_copies(traffic, now_ms))
    store_stream(db, stream)
    before = view_records(db)
    result = recompute(db, load_missions(DEFAULT_MISSIONS_FILE), grace_ms=GRACE_MS, stream_overlap_ms=0)
    records, windows = view_records(db), view_windows(db)
    assert set(records) == set(before)

    # A processor emits a correction after the recompute: the board shows it.
    rec = next(r for r in stream.stage_records if r["state"] == "CLOSED")
    newer = {
        **latest(stream.stage_records, "record_id")[rec["record_id"]],
        "version": 2**62,
        "province": "PK-GB",
    }
    db.insert_arrow(
        "stage_records",
        rows.output_spec(contracts.STAGE_RECORDS).to_arrow([rows.output_row(contracts.STAGE_RECORDS, newer)]),
    )
    # ...and re-emits a window closed before the recompute ran (late event): the recompute's row stays;
    # a window still open at the recompute's cut-off: the stream's newer row wins.
    spec = rows.output_spec(contracts.KPI_WINDOWS)
    stream_windows = latest(stream.kpi_windows, "kpi_id")
    closed = next(
        w
        for w in stream_windows.values()
        if w["completions"] > 0 and w["window_end"] <= result.window_cutoff_ms
    )
    open_ = next(
        w
        for w in stream_windows.values()
        if w["completions"] > 0 and w["window_end"] > result.window_cutoff_ms
    )
    late = [
        {**w, "version": 2**62, "late_events": 1, "completions": w["completions"] + 100}
        for w in (closed, open_)
    ]
    db.insert_arrow("kpi_windows", spec.to_arrow([rows.output_row(contracts.KPI_WINDOWS, w) for w in late]))

    after = view_records(db)
    assert len(after) == len(records)
    assert after[rec["record_id"]]["province"] == "PK-GB"
    assert {k: v for k, v in after.items() if k != rec["record_id"]} == {
        k: v for k, v in records.items() if k != rec["record_id"]
    }
    after_windows = view_windows(db)
    assert len(after_windows) == len(windows)
    assert after_windows[closed["kpi_id"]] == windows[closed["kpi_id"]]
    assert after_windows[open_["kpi_id"]]["completions"] == open_["completions"] + 100


def test_the_board_views_switch_atomically_for_a_concurrent_reader(
    db: Client, traffic: list[Any], now_ms: int, stream: Outputs, tmp_path: Path
) -> None:
    store_events(db, valid_copies(traffic, now_ms))
    store_stream(db, stream)
    digest_records = (
        "SELECT count(), sum(cityHash64(record_id, state, sla_ms, sla_met)) FROM stage_records_latest"
    )
    digest_windows = "SELECT count(), sum(cityHash64(kpi_id, sla_met, completions)) FROM kpi_windows_latest"

    def digests() -> tuple[tuple[int, int], tuple[int, int]]:
        return tuple(db.query(digest_records).result_rows[0]), tuple(db.query(digest_windows).result_rows[0])

    stream_only = digests()
    recompute(db, with_sla(tmp_path, "port_loading", "30h"), grace_ms=GRACE_MS, stream_overlap_ms=0)
    old = digests()
    assert old != stream_only
    settings = load_settings(data_dir=tmp_path / "chdb")
    reader = open_client(settings)
    seen: list[tuple[tuple[int, int], tuple[int, int]]] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    def read() -> None:
        try:
            while not stop.is_set():
                seen.append(
                    (
                        tuple(reader.query(digest_records).result_rows[0]),
                        tuple(reader.query(digest_windows).result_rows[0]),
                    )
                )
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            failures.append(exc)

    thread = threading.Thread(target=read)
    thread.start()
    try:
        recompute(db, load_missions(DEFAULT_MISSIONS_FILE), grace_ms=GRACE_MS, stream_overlap_ms=0)
    finally:
        stop.set()
        thread.join(30)
        reader.close()
    assert not failures, failures
    new = digests()
    assert new != old
    assert len(seen) >= 3
    assert {s[0] for s in seen} <= {old[0], new[0]}
    assert {s[1] for s in seen} <= {old[1], new[1]}
    assert seen[0] == old


def test_drop_old_versions_activate_and_refusals(
    db: Client, traffic: list[Any], now_ms: int, stream: Outputs, tmp_path: Path
) -> None:
    store_events(db, valid_copies(traffic, now_ms))
    store_stream(db, stream)
    stream_only = view_records(db)
    missions = load_missions(DEFAULT_MISSIONS_FILE)
    recompute(db, missions, grace_ms=GRACE_MS)
    v1 = view_records(db)
    recompute(db, with_sla(tmp_path, "customs_clearance", "2h"), grace_ms=GRACE_MS)
    with pytest.raises(RecomputeError, match="what the board shows"):
        drop_version(db, 2)
    activate(db, 1)  # rollback
    assert (active_version(db), view_records(db)) == (1, v1)
    activate(db, 0)  # the stream only
    assert active_version(db) is None and view_records(db) == stream_only
    third = recompute(db, missions, grace_ms=GRACE_MS, drop_old=True)
    assert third.dropped == [1, 2]
    names = table_names(db)
    assert {"stage_records_v3", "kpi_windows_v3"} <= names
    assert not names & {"stage_records_v1", "kpi_windows_v1", "stage_records_v2", "kpi_windows_v2"}
    listed = {v.version: v for v in list_versions(db)}
    assert listed[3].active and listed[3].status == "active"
    assert listed[1].status == listed[2].status == "dropped" and not listed[1].tables_present
    with pytest.raises(RecomputeError, match="no tables"):
        activate(db, 1)
    assert view_records(db) == v1


def test_a_build_killed_mid_way_is_listed_and_dropped_with_its_scratch_pivot(
    db: Client, traffic: list[Any], now_ms: int
) -> None:
    """kill -9 during a recompute runs no cleanup: its tables, the scratch pivot included, stay."""
    store_events(db, valid_copies(traffic, now_ms))
    missions = load_missions(DEFAULT_MISSIONS_FILE)
    recompute(db, missions, grace_ms=GRACE_MS)
    board = view_records(db)
    db.command(RecomputeSql(missions).pivot_table_ddl("recompute_pivot_v2", "events"))
    db.command(table_ddl("kpi_windows_v2", KPI_WINDOW_COLUMNS, "ENGINE = MergeTree ORDER BY window_end"))

    listed = {v.version: v for v in list_versions(db)}
    assert listed[2].tables_present and not listed[2].active and listed[2].status == "unknown"
    with pytest.raises(RecomputeError, match="not complete"):
        activate(db, 2)
    drop_version(db, 2)
    assert not table_names(db) & {"recompute_pivot_v2", "kpi_windows_v2"}
    assert recompute(db, missions, grace_ms=GRACE_MS, drop_old=True).dropped == [1]
    assert "recompute_pivot_v2" not in table_names(db) and view_records(db) == board


def test_a_failed_recompute_leaves_the_board_and_names_the_problem(
    db: Client, traffic: list[Any], now_ms: int
) -> None:
    store_events(db, valid_copies(traffic, now_ms))
    missions = load_missions(DEFAULT_MISSIONS_FILE)
    recompute(db, missions, grace_ms=GRACE_MS)
    shown = view_records(db)
    db.command("ALTER TABLE stage_records ADD COLUMN reviewer String DEFAULT ''")
    with pytest.raises(RecomputeError, match="reviewer"):
        recompute(db, missions, grace_ms=GRACE_MS)
    assert active_version(db) == 1 and view_records(db) == shown


def test_backbone_recompute_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, traffic: list[Any], now_ms: int
) -> None:
    from typer.testing import CliRunner

    from backbone.cli import app

    monkeypatch.setenv("BACKBONE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("BACKBONE_CLICKHOUSE_URL", raising=False)
    settings = load_settings()
    client = open_client(settings)
    migrate(client)
    store_events(client, valid_copies(traffic, now_ms))
    client.close()
    runner = CliRunner()
    empty = runner.invoke(app, ["recompute", "list"])
    assert empty.exit_code == 0 and "no recomputed versions" in empty.output, empty.output
    first = runner.invoke(app, ["recompute"])
    assert first.exit_code == 0, first.output
    assert "version 1 active" in first.output
    # no stream records stored here: every stage is reported as new before the recompute
    assert "note: the rules differ from those of the processors' stored records:" in first.output
    assert (
        "export_competitiveness/export_shipment/customs_clearance: SLA 1 d in missions.yaml; " in first.output
    )
    second = runner.invoke(app, ["recompute", "--from", "2026-01-03", "--drop-old"])
    assert second.exit_code == 0 and "dropped 1" in second.output, second.output
    listed = runner.invoke(app, ["recompute", "list"])
    assert "* v2 active" in listed.output, listed.output
    assert "from 2026-01-03T00:00:00Z" in listed.output and "all history" in listed.output, listed.output
    again = runner.invoke(app, ["recompute", "drop", "1"])  # --drop-old dropped it (QA: "dropped" twice)
    assert again.exit_code == 1 and "version 1 is already dropped" in again.output, again.output
    refused = runner.invoke(app, ["recompute", "drop", "2"])
    assert refused.exit_code == 1 and "what the board shows" in refused.output
    missing = runner.invoke(app, ["recompute", "drop", "99"])
    assert missing.exit_code == 1 and "no version 99" in missing.output, missing.output
    assert "dropped" not in missing.output
    stream = runner.invoke(app, ["recompute", "drop", "0"])
    assert stream.exit_code == 2 and "0 means the stream results" in stream.output, stream.output
    bad = runner.invoke(app, ["recompute", "--from", "yesterday"])
    assert bad.exit_code == 2 and "--from 'yesterday'" in bad.output and "2026-01-31" in bad.output
    for text in ("", "2099-01-01"):  # QA: both recomputed nothing and said "version 3 active"
        refused_from = runner.invoke(app, ["recompute", "--from", text])
        assert refused_from.exit_code == 2 and f"--from {text!r}" in refused_from.output, refused_from.output
    # back to the stream only: no version is shown, so none is listed as active
    assert runner.invoke(app, ["recompute", "activate", "0"]).exit_code == 0
    listed = runner.invoke(app, ["recompute", "list"]).output
    assert "  v2 retired" in listed and "active" not in listed and "*" not in listed, listed
