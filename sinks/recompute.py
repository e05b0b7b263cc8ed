"""History recompute in ClickHouse: stage records and KPI windows rebuilt from raw ``events``.

Why: when the rules change (an SLA tightened, a stage added, an owner map edited) the command
centre wants last year's trend under the new rule in seconds, not a day of replay through the
processors. ``backbone recompute`` runs the SQL of :mod:`sinks.recompute_sql`, generated from the
missions file the processors also load, so there is one definition of the rules.

**Versions.** Each run writes a new, complete version into its own tables ``stage_records_v<N>``
and ``kpi_windows_v<N>`` (columns as the stream's tables; ``record_id``/``kpi_id`` are ALIAS
columns). Only when both are written does it re-create the board views ``stage_records_latest``
and ``kpi_windows_latest`` with ``CREATE OR REPLACE VIEW`` (atomic per view on chdb and on a
ClickHouse server with an Atomic database): a query sees the old version or the new one, never
a half-written one. Older versions stay until dropped (``--drop-old`` or ``backbone recompute drop
N``); ``backbone recompute activate N`` switches back (``0``: the stream's results only). The log
of versions is the ``recompute_versions`` table; which version the board shows is read from the
views.

**Recomputed history and the live stream.** The processors keep writing ``stage_records`` and
``kpi_windows`` while and after a recompute. A version records its snapshot time ``T`` (server
clock when it started) and the events watermark ``W`` (newest ``occurred_at`` it read). The views
then show, per id:

* a stage record: the stream's latest row if the stream stored any row of that record after
  ``T - stream_overlap`` (the processors saw something newer: a later end, a correction), else
  the recomputed row;
* a KPI window that ended by ``W - grace`` (closed for the processors when the recompute ran):
  always the recomputed row. The processors can only re-emit such a window with a late-event
  count and without the late completions, while the recompute counts every completion whose
  events are stored (backfills included);
* a KPI window that ends later (still open): the stream's row if stored after ``T - overlap``,
  else the recomputed row.

So deploy a new missions file to the processors first (restart them), then recompute: rows the
stream writes from then on follow the same rules. Windows that were open when the processors
restarted can mix old and new SLA flags in the stream's rows until they close; the next recompute
makes them exact. Stream rows of records or groups that the new rules no longer produce (a
removed stage, an owner moved) are not shown unless the stream re-emits them after ``T``. The
overlap (default 5 min) covers a sink that stored a processor output a moment before the raw event
it came from.

**--from DATE.** Recomputes every case that has an event on or after DATE (with all of its events,
also the earlier ones, so start times, owners and durations stay exact) and every KPI window that
ends after DATE. Cases whose events all precede DATE, and windows that ended by DATE, are copied
unchanged from what the board showed (the active version or the stream), so a rule change can be
applied "from DATE on". Hopping windows that straddle DATE combine both.

In the embedded setup the chdb path belongs to one process: run the recompute while the sink is
stopped (or from the process that owns the database); a ClickHouse server has no such limit.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client

from schemas.alert_wording import human_duration
from sinks.recompute_sql import (
    KPI_WINDOW_COLUMNS,
    STAGE_RECORD_COLUMNS,
    RecomputeSql,
    ms_literal,
    table_ddl,
)
from stream_processors.missions import Missions

log = logging.getLogger(__name__)

STAGE_VIEW = "stage_records_latest"
KPI_VIEW = "kpi_windows_latest"
STREAM_STAGE_TABLE = "stage_records"
STREAM_KPI_TABLE = "kpi_windows"
VERSIONS_TABLE = "recompute_versions"
DEFAULT_STREAM_OVERLAP_MS = 5 * 60_000
KPI_SLICE_RECORDS = 1_000_000
"""Closed stage records per KPI-windows INSERT (:func:`_write_kpi_windows`).

Why slices: the KPI step's memory grows with the windows it builds at once (each hopping window
holds its completions' durations to find the exact quantiles), and on this machine the first
touch of fresh memory is dear (system time of page faults). Measured with ``backbone bench``,
A/B on the same generated events: 3M events (1.2M records, 5M windows) KPI step 5.2 s in one
INSERT, 3.5-3.6 s in two slices (500k per slice: 3.5-3.7 s, 300k: 4.4 s); 20M events (8.3M
records, 11.4M windows) 18.8 s in one INSERT and a 7.1 GB peak RSS, 13.6 s and 3.6 GB in slices
of 1M, so the memory stays bounded as history grows.
"""
_VERSION_TABLE = re.compile(r"^(?:stage_records|kpi_windows|recompute_pivot)_v(\d+)$")
"""A version's tables, its scratch pivot included (a build killed mid-way leaves it behind)."""
_VIEW_VERSION = re.compile(r"\bstage_records_v(\d+)\b|\bkpi_windows_v(\d+)\b")
STAGE_KEY = "(case_id, mission, journey, stage)"
KPI_KEY = "(window, window_start, mission, journey, stage, owner_agency, province, port)"


class RecomputeError(RuntimeError):
    """A recompute, switch or drop could not be done; the message names the version and the reason."""


def stage_table(version: int) -> str:
    return f"stage_records_v{version}"


def kpi_table(version: int) -> str:
    return f"kpi_windows_v{version}"


def stored_columns(columns: tuple[tuple[str, str], ...]) -> list[str]:
    """Columns an INSERT fills (not the ALIAS ids, not ``ingested_at``, which defaults to now)."""
    return [n for n, t in columns if "ALIAS" not in t and n != "ingested_at"]


def _visible(columns: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(f"`{n}`" for n, _ in columns)


@dataclass(frozen=True)
class VersionInfo:
    """One version as the log and the database know it."""

    version: int
    status: str
    missions_file: str = ""
    snapshot_at: datetime | None = None
    from_time: datetime | None = None
    """``--from`` of a partial recompute (None: all of history)."""
    stage_records: int = 0
    kpi_windows: int = 0
    seconds: float = 0.0
    tables_present: bool = False
    active: bool = False


@dataclass
class RecomputeResult:
    """What a recompute did, with the time of each phase (seconds)."""

    version: int
    events: int
    stage_records: int
    kpi_windows: int
    snapshot_ms: int
    stream_after_ms: int
    window_cutoff_ms: int
    from_ms: int | None
    seconds: float
    phases: dict[str, float] = field(default_factory=dict)
    dropped: list[int] = field(default_factory=list)
    kpi_slices: int = 1
    """How many INSERTs (slices of history) built the KPI windows."""

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


# -- views ---------------------------------------------------------------------------------------


def stage_view_sql(version: int, stream_after_ms: int) -> str:
    """``stage_records_latest`` over version ``version`` and the stream rows stored after the cut."""
    cols = _visible(STAGE_RECORD_COLUMNS)
    after = (
        f"SELECT {STAGE_KEY[1:-1]} FROM {STREAM_STAGE_TABLE} "
        f"WHERE ingested_at > {ms_literal(stream_after_ms)}"
    )
    return (
        f"CREATE OR REPLACE VIEW {STAGE_VIEW} AS\n"
        f"SELECT {cols} FROM {stage_table(version)}\nWHERE {STAGE_KEY} NOT IN ({after})\n"
        f"UNION ALL\n"
        f"SELECT {cols} FROM {STREAM_STAGE_TABLE} FINAL\nWHERE {STAGE_KEY} IN ({after})"
    )


def kpi_view_sql(version: int, stream_after_ms: int, window_cutoff_ms: int) -> str:
    """``kpi_windows_latest``: closed windows from the version, open ones from the stream if newer."""
    cols = _visible(KPI_WINDOW_COLUMNS)
    cutoff = ms_literal(window_cutoff_ms)
    after = (
        f"SELECT {KPI_KEY[1:-1]} FROM {STREAM_KPI_TABLE} "
        f"WHERE window_end > {cutoff} AND ingested_at > {ms_literal(stream_after_ms)}"
    )
    return (
        f"CREATE OR REPLACE VIEW {KPI_VIEW} AS\n"
        f"SELECT {cols} FROM {kpi_table(version)}\n"
        f"WHERE window_end <= {cutoff} OR {KPI_KEY} NOT IN ({after})\n"
        f"UNION ALL\n"
        f"SELECT {cols} FROM {STREAM_KPI_TABLE} FINAL\nWHERE window_end > {cutoff} AND {KPI_KEY} IN ({after})"
    )


STREAM_ONLY_VIEWS = (
    f"CREATE OR REPLACE VIEW {STAGE_VIEW} AS SELECT * FROM {STREAM_STAGE_TABLE} FINAL",
    f"CREATE OR REPLACE VIEW {KPI_VIEW} AS SELECT * FROM {STREAM_KPI_TABLE} FINAL",
)


def active_version(client: Client) -> int | None:
    """The version the board views read (None: the stream only), from the views' own SQL."""
    rows = client.query(
        "SELECT name, as_select FROM system.tables "
        "WHERE database = currentDatabase() AND name IN ({a:String}, {b:String})",
        parameters={"a": STAGE_VIEW, "b": KPI_VIEW},
    ).result_rows
    found: set[int] = set()
    for _name, select in rows:
        for m in _VIEW_VERSION.finditer(select):
            found.add(int(m.group(1) or m.group(2)))
    if len(found) > 1:
        raise RecomputeError(
            f"the board views read different versions {sorted(found)}; run `backbone recompute activate N`"
        )
    return found.pop() if found else None


def _switch(client: Client, version: int, stream_after_ms: int, window_cutoff_ms: int) -> None:
    client.command(kpi_view_sql(version, stream_after_ms, window_cutoff_ms))
    client.command(stage_view_sql(version, stream_after_ms))


# -- the log of versions -----------------------------------------------------------------------


def _log_row(client: Client, version: int, status: str, **values: Any) -> None:
    row = {
        "version": version,
        "status": status,
        "missions_file": "",
        "missions_sha256": "",
        "from_time": None,
        "snapshot_at": datetime.fromtimestamp(0, UTC),
        "stream_after": datetime.fromtimestamp(0, UTC),
        "window_cutoff": datetime.fromtimestamp(0, UTC),
        "events_read": 0,
        "stage_records": 0,
        "kpi_windows": 0,
        "seconds": 0.0,
        "detail": "",
    }
    previous = _latest_log(client).get(version)
    if previous:
        row.update({k: v for k, v in previous.items() if k in row and k not in ("status", "detail")})
    row.update(values)
    row["status"] = status
    client.insert(VERSIONS_TABLE, [list(row.values())], column_names=list(row))


def _latest_log(client: Client) -> dict[int, dict[str, Any]]:
    result = client.query(f"SELECT * FROM {VERSIONS_TABLE} FINAL ORDER BY version")
    return {int(r["version"]): r for r in result.named_results()}


def _version_tables(client: Client) -> set[int]:
    names = client.query("SELECT name FROM system.tables WHERE database = currentDatabase()").result_rows
    return {int(m.group(1)) for (n,) in names if (m := _VERSION_TABLE.match(n))}


def list_versions(client: Client) -> list[VersionInfo]:
    """Every version in the log or with tables present, oldest first."""
    log_rows = _latest_log(client)
    tables = _version_tables(client)
    active = active_version(client)
    out = []
    for v in sorted(set(log_rows) | tables):
        r = log_rows.get(v, {})
        out.append(
            VersionInfo(
                version=v,
                status=str(r.get("status", "unknown")),
                missions_file=str(r.get("missions_file", "")),
                snapshot_at=r.get("snapshot_at"),
                from_time=r.get("from_time"),
                stage_records=int(r.get("stage_records", 0)),
                kpi_windows=int(r.get("kpi_windows", 0)),
                seconds=float(r.get("seconds", 0.0)),
                tables_present=v in tables,
                active=v == active,
            )
        )
    return out


def _next_version(client: Client) -> int:
    return max({0} | set(_latest_log(client)) | _version_tables(client)) + 1


# -- recompute ---------------------------------------------------------------------------------


def check_stream_columns(client: Client) -> None:
    """The version tables must have the stream tables' columns (names, types, order), or the
    views could not union them: a new schema field fails here, naming the column."""
    for table, columns in (
        (STREAM_STAGE_TABLE, STAGE_RECORD_COLUMNS),
        (STREAM_KPI_TABLE, KPI_WINDOW_COLUMNS),
    ):
        stream = client.query(
            "SELECT name, type FROM system.columns WHERE database = currentDatabase() AND table = {t:String} "
            "ORDER BY position",
            parameters={"t": table},
        ).result_rows
        if not stream:
            raise RecomputeError(f"table {table} does not exist; run `backbone db migrate` first")
        ours = [(n, t.split(" ALIAS ")[0].split(" CODEC")[0].split(" DEFAULT ")[0]) for n, t in columns]
        if [tuple(r) for r in stream] != ours:
            theirs = dict((str(n), str(t)) for n, t in stream)
            mine = dict(ours)
            diff = sorted(set(theirs.items()) ^ set(mine.items()))
            raise RecomputeError(
                f"{table} and the recompute disagree on columns ({diff or 'column order'}); "
                "update sinks/recompute_sql.py"
            )


def _scalar(client: Client, sql: str) -> Any:
    return client.query(sql).result_rows[0][0]


def rule_differences(client: Client, missions: Missions) -> list[str]:
    """Where ``missions`` and the processors' stored stage records disagree, one line per stage.

    Why: a recompute applies the file it is given, whatever the processors ran. Before it
    writes anything, the operator sees what will change on the board: an SLA tightened (the
    intended change), or a file that is not the one the processors ran (the demo's time-scaled
    file against the unscaled one: every stage would meet its SLA). Compared by the ``sla_ms``
    each stored record carries (``stage_records``, every row the sink stored).
    """
    stored: dict[tuple[str, str, str], tuple[list[int], int]] = {}
    for mission, journey, stage, slas, n in client.query(
        "SELECT mission, journey, stage, arraySort(groupUniqArray(sla_ms)), uniqExact(case_id) "
        f"FROM {STREAM_STAGE_TABLE} GROUP BY mission, journey, stage ORDER BY mission, journey, stage"
    ).result_rows:
        stored[(str(mission), str(journey), str(stage))] = ([int(s) for s in slas], int(n))
    name = missions.source.name if missions.source is not None else "the missions file"
    lines = []
    for ref in missions.stages:
        key, sla = ref.key, ref.stage.sla_ms
        if key not in stored:
            lines.append(
                f"{'/'.join(key)}: SLA {human_duration(sla)} in {name}; no stored records (a new stage?)"
            )
            continue
        slas, n = stored.pop(key)
        if slas != [sla]:
            theirs = " and ".join(human_duration(s) for s in slas)
            lines.append(
                f"{'/'.join(key)}: SLA {human_duration(sla)} in {name}; {theirs} in {n:,} stored records"
            )
    for key, (_slas, n) in stored.items():
        lines.append(f"{'/'.join(key)}: {n:,} stored records, not in {name} (no recomputed records)")
    return lines


def missions_digest(missions: Missions) -> str:
    if missions.source is not None and Path(missions.source).exists():
        return hashlib.sha256(Path(missions.source).read_bytes()).hexdigest()
    return hashlib.sha256(missions.spec.model_dump_json().encode()).hexdigest()


def recompute(
    client: Client,
    missions: Missions,
    *,
    grace_ms: int,
    from_ms: int | None = None,
    drop_old: bool = False,
    stream_overlap_ms: int = DEFAULT_STREAM_OVERLAP_MS,
    on_phase: Callable[[str, float], None] | None = None,
    kpi_slice_records: int = KPI_SLICE_RECORDS,
) -> RecomputeResult:
    """Write a new version from ``events`` under ``missions`` and switch the board views to it.

    On failure the half-written version is dropped, the views are untouched and
    :class:`RecomputeError` says which phase failed and why.
    """
    check_stream_columns(client)
    sql = RecomputeSql(missions)
    version = _next_version(client)
    started = time.perf_counter()
    phases: dict[str, float] = {}

    def phase(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        try:
            return fn()
        except Exception as exc:
            raise RecomputeError(f"version {version}: {name} failed: {exc}") from exc
        finally:
            phases[name] = time.perf_counter() - t0
            if on_phase:
                on_phase(name, phases[name])

    snapshot_ms = int(_scalar(client, "SELECT toUnixTimestamp64Milli(now64(3))"))
    stream_after_ms = snapshot_ms - stream_overlap_ms
    common = {
        "missions_file": str(missions.source or ""),
        "missions_sha256": missions_digest(missions),
        "from_time": None if from_ms is None else datetime.fromtimestamp(from_ms / 1000, UTC),
        "snapshot_at": datetime.fromtimestamp(snapshot_ms / 1000, UTC),
        "stream_after": datetime.fromtimestamp(stream_after_ms / 1000, UTC),
    }
    _log_row(client, version, "building", **common)
    stage_t, kpi_t = stage_table(version), kpi_table(version)
    try:
        watermark = _scalar(client, "SELECT toUnixTimestamp64Milli(max(occurred_at)) FROM events")
        events = int(_scalar(client, "SELECT count() FROM events"))
        window_cutoff_ms = int(watermark or 0) - grace_ms
        phase("create tables", lambda: _create_tables(client, version))
        case_filter = None
        if from_ms is not None:
            case_filter = (
                f"case_id IN (SELECT case_id FROM events WHERE occurred_at >= {ms_literal(from_ms)})"
            )
        stage_cols = ", ".join(stored_columns(STAGE_RECORD_COLUMNS))
        kpi_cols = ", ".join(stored_columns(KPI_WINDOW_COLUMNS))
        phase(
            "stage records",
            lambda: _write_stage_records(client, sql, version, stage_cols, case_filter),
        )
        if from_ms is not None:
            phase(
                "copy records before --from",
                lambda: client.command(
                    f"INSERT INTO {stage_t} ({stage_cols}) SELECT {stage_cols} FROM {STAGE_VIEW} "
                    f"WHERE NOT ({case_filter})"
                ),
            )
        kpi_slices = phase(
            "kpi windows",
            lambda: _write_kpi_windows(client, sql, version, kpi_cols, from_ms, kpi_slice_records),
        )
        if from_ms is not None:
            phase(
                "copy windows before --from",
                lambda: client.command(
                    f"INSERT INTO {kpi_t} ({kpi_cols}) SELECT {kpi_cols} FROM {KPI_VIEW} "
                    f"WHERE window_end <= {ms_literal(from_ms)}"
                ),
            )
        stage_rows = int(_scalar(client, f"SELECT count() FROM {stage_t}"))
        kpi_rows = int(_scalar(client, f"SELECT count() FROM {kpi_t}"))
        previous = active_version(client)
        phase("switch views", lambda: _switch(client, version, stream_after_ms, window_cutoff_ms))
    except Exception as exc:
        _discard(client, version, str(exc))
        if isinstance(exc, RecomputeError):
            raise
        raise RecomputeError(f"version {version}: {exc}") from exc
    seconds = time.perf_counter() - started
    done = {
        **common,
        "window_cutoff": datetime.fromtimestamp(window_cutoff_ms / 1000, UTC),
        "events_read": events,
        "stage_records": stage_rows,
        "kpi_windows": kpi_rows,
        "seconds": seconds,
    }
    _log_row(client, version, "active", **done)
    if previous is not None:
        _log_row(client, previous, "retired")
    dropped = []
    if drop_old:
        for v in sorted(_version_tables(client) - {version}):
            drop_version(client, v)
            dropped.append(v)
    log.info(
        "recompute done",
        extra={
            "version": version,
            "events": events,
            "stage_records": stage_rows,
            "kpi_windows": kpi_rows,
            "seconds": round(seconds, 3),
        },
    )
    return RecomputeResult(
        version=version,
        events=events,
        stage_records=stage_rows,
        kpi_windows=kpi_rows,
        snapshot_ms=snapshot_ms,
        stream_after_ms=stream_after_ms,
        window_cutoff_ms=window_cutoff_ms,
        from_ms=from_ms,
        seconds=seconds,
        phases=phases,
        dropped=dropped,
        kpi_slices=kpi_slices,
    )


def pivot_table(version: int) -> str:
    """The scratch table of a recompute's per-case pivot (dropped when its stages are written)."""
    return f"recompute_pivot_v{version}"


def tables_of(version: int) -> tuple[str, ...]:
    """Every table a version may have (what :data:`_VERSION_TABLE` matches), scratch pivot included."""
    return stage_table(version), kpi_table(version), pivot_table(version)


def _write_stage_records(
    client: Client, sql: RecomputeSql, version: int, columns: str, case_filter: str | None
) -> None:
    """Pivot the events per case into a scratch table, then write every stage's records from it."""
    pivot = pivot_table(version)
    client.command(f"DROP TABLE IF EXISTS {pivot}")
    try:
        client.command(sql.pivot_table_ddl(pivot, "events", case_filter))
        client.command(f"INSERT INTO {stage_table(version)} ({columns}) {sql.stage_records_select(pivot)}")
    finally:
        client.command(f"DROP TABLE IF EXISTS {pivot}")


def _write_kpi_windows(
    client: Client, sql: RecomputeSql, version: int, columns: str, from_ms: int | None, slice_records: int
) -> int:
    """Write the version's KPI windows from its stage records, a slice of history per INSERT.

    The slices cut history at end times that split the closed records into parts of at most
    ``slice_records``; each INSERT builds the windows that start in its slice (see
    :meth:`RecomputeSql.kpi_windows_select`), so the result is the same for any cut. Returns
    how many INSERTs it ran.
    """
    records, table = stage_table(version), kpi_table(version)
    closed = int(_scalar(client, f"SELECT count() FROM {records} WHERE {sql.closed_records_filter(from_ms)}"))
    slices = max(1, -(-closed // max(1, slice_records)))
    edges: list[int] = []
    if slices > 1:
        edges = sorted({int(e) for e in _scalar(client, sql.kpi_slice_edges(records, slices, from_ms))})
    for starts in zip([None, *edges], [*edges, None], strict=True):
        client.command(f"INSERT INTO {table} ({columns}) {sql.kpi_windows_select(records, from_ms, starts)}")
    return len(edges) + 1


NO_MERGES = (
    "SETTINGS max_bytes_to_merge_at_max_space_in_pool = 1, max_bytes_to_merge_at_min_space_in_pool = 1"
)
"""Table settings under which ClickHouse never merges a version table's parts in the background.

Why: a version is written once (a part per ~1M rows of each INSERT) and then only read, so a
merge buys a board almost nothing and costs the machine a lot. Measured on the bench's 3M
events: merging the KPI windows' six parts into one took 5.4-6.1 s of CPU after the switch, more
than the KPI step itself. (Before, merges were stopped with ``SYSTEM STOP MERGES`` during the
build and resumed after the switch; that flag also does not survive a restart.)
"""


def _create_tables(client: Client, version: int) -> None:
    """The version's two MergeTree tables (they must survive a restart; they are never merged,
    see :data:`NO_MERGES`).

    The KPI table is sorted by ``window_end`` only: the board reads it by a ``window_end`` range,
    and sorting millions of rows on insert by the stream table's eight-column key (LowCardinality
    strings first) cost about a CPU second per 5M windows, more than the key saves a reader.
    """
    client.command(
        table_ddl(
            stage_table(version),
            STAGE_RECORD_COLUMNS,
            f"ENGINE = MergeTree ORDER BY (mission, journey, stage, case_id) {NO_MERGES}",
        )
    )
    client.command(
        table_ddl(
            kpi_table(version),
            KPI_WINDOW_COLUMNS,
            f"ENGINE = MergeTree ORDER BY window_end {NO_MERGES}",
        )
    )


def _discard(client: Client, version: int, reason: str) -> None:
    """Drop a version that failed half-way (never the one the views read) and log why."""
    for table in tables_of(version):
        try:
            client.command(f"DROP TABLE IF EXISTS {table}")
        except Exception:  # noqa: BLE001 - best effort: the failure being reported matters more
            log.exception("could not drop a failed version's table", extra={"table": table})
    _log_row(client, version, "failed", detail=reason[:2000])


# -- activate and drop -------------------------------------------------------------------------


def activate(client: Client, version: int) -> None:
    """Point the board views at ``version`` (its own cut-offs), or at the stream only for 0."""
    if version == 0:
        previous = active_version(client)
        for statement in STREAM_ONLY_VIEWS:
            client.command(statement)
        if previous is not None:  # no version is shown now: `recompute list` must not call it active
            _log_row(client, previous, "retired")
        return
    if version not in _version_tables(client):
        raise RecomputeError(f"version {version} has no tables (dropped or never written)")
    row = _latest_log(client).get(version)
    if row is None or row["status"] not in ("active", "retired", "ready"):
        raise RecomputeError(f"version {version} is not complete (status {row and row['status']})")
    previous = active_version(client)
    _switch(client, version, _ms(row["stream_after"]), _ms(row["window_cutoff"]))
    _log_row(client, version, "active")
    if previous is not None and previous != version:
        _log_row(client, previous, "retired")


def drop_version(client: Client, version: int) -> None:
    """Drop a version's tables; the version the board reads cannot be dropped."""
    if active_version(client) == version:
        raise RecomputeError(
            f"version {version} is what the board shows; activate another version (or 0) before dropping it"
        )
    for table in tables_of(version):
        client.command(f"DROP TABLE IF EXISTS {table}")
    if version in _latest_log(client):
        _log_row(client, version, "dropped")


def _ms(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(round(value.timestamp() * 1000))


def parse_from(text: str, now: datetime | None = None) -> int:
    """``--from``: a date (``2026-01-31``, UTC midnight) or an ISO time, not in the future (no
    case is active after "now": it would recompute nothing and only copy the old version);
    epoch milliseconds."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise RecomputeError(f"--from {text!r} is not a date like 2026-01-31 or 2026-01-31T06:00") from exc
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    if value > now:
        raise RecomputeError(
            f"--from {text!r} is in the future (now is {now:%Y-%m-%dT%H:%M}Z): nothing would be recomputed"
        )
    return _ms(value)
