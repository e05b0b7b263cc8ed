"""The recompute's SQL, generated from the missions file (the one definition of the stages).

Nothing here names a stage, a status or an SLA: every boundary, owner rule, money field, SLA
and window comes from :class:`~stream_processors.missions.Missions`, so the ClickHouse
recompute and the stream processors cannot disagree about the rules. The queries implement
``stream_processors/SEMANTICS.md`` ("Stage instances", "KPI windows") over the ``events``
table:

* **Stage records**: one ``GROUP BY case_id`` pass over the events that mark a stage boundary
  (start, end or cancel of some stage). Per distinct boundary it keeps the earliest
  ``occurred_at`` and, for start boundaries, the attributes of the earliest event (ties: the
  smallest ``event_id``, compared in the byte order of its text form). Each stage then reads
  its start, end and cancel columns. ``min``/``argMin`` give the same answer however often an
  event is stored, so copies of an event that background merges have not removed yet change
  nothing: the result is a function of the *distinct* events, without a ``FINAL`` pass. The
  pivot is stored once in a ``Memory`` table and each stage is one ``SELECT`` over it.
* **KPI windows**: from the closed stage records of the new version. Completions are first
  summed per *pane* (a tumbling bucket of the window's step), then each pane is added to the
  ``size / step`` windows that contain it; the exact lower quantile is
  ``arraySort(durations)[floor(q * (n - 1)) + 1]`` as SEMANTICS.md defines it.

``record_id`` and ``kpi_id`` (sha1 hex) are ``ALIAS`` columns of the version tables: ClickHouse's
``SHA1`` costs about half a microsecond per row here, more than the rest of the recompute per
record, so the ids are computed when a query reads them (``lower(hex(SHA1(...)))`` of exactly
the SEMANTICS.md text) instead of being stored for millions of rows nobody looks up.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from schemas import contracts
from stream_processors.missions import EventRef, Missions, StageRef

NOT_SEEN = 9_223_372_036_854_775_807  # Int64 max: "no such event" in the per-case minimums
QUANTILES = (("p50_ms", 0.5), ("p90_ms", 0.9))
GROUP_COLUMNS = ("mission", "journey", "stage", "owner_agency", "province", "port")

RECORD_ID_SQL = "lower(hex(SHA1(concat(case_id, '|', mission, '|', journey, '|', stage))))"
KPI_ID_SQL = (
    "lower(hex(SHA1(concat(window, '|', toString(toUnixTimestamp64Milli(window_start)), '|', mission, '|', "
    "journey, '|', stage, '|', owner_agency, '|', province, '|', port))))"
)
SLA_COMPLIANCE_SQL = "if(completions = 0, NULL, sla_met / completions)"
THROUGHPUT_SQL = (
    "completions / ((toUnixTimestamp64Milli(window_end) - toUnixTimestamp64Milli(window_start)) / 3600000)"
)

# The version tables: the columns of the stream's tables (same names, types and order, so the
# board views can union them), with the ids and the two ratios of a KPI window (exactly the
# stream's ``met / n if n else None`` and ``n / (size_ms / 3_600_000)``, functions of stored
# columns) as ALIAS columns: computing and writing them for millions of windows cost ~10% of the
# KPI step, a reader computes them for the few rows it reads. ``version`` is 0: a recomputed row
# is not a processor emission.
STAGE_RECORD_COLUMNS: tuple[tuple[str, str], ...] = (
    ("record_id", f"String ALIAS {RECORD_ID_SQL}"),
    ("case_id", "String CODEC(ZSTD(1))"),
    ("mission", "LowCardinality(String)"),
    ("journey", "LowCardinality(String)"),
    ("stage", "LowCardinality(String)"),
    ("owner_agency", "LowCardinality(String)"),
    ("province", "LowCardinality(String)"),
    ("port", "LowCardinality(String)"),
    ("state", "LowCardinality(String)"),
    ("started_at", "Nullable(DateTime64(3, 'UTC')) CODEC(ZSTD(1))"),
    ("ended_at", "Nullable(DateTime64(3, 'UTC')) CODEC(ZSTD(1))"),
    ("duration_ms", "Nullable(Int64)"),
    ("sla_ms", "Int64"),
    ("sla_met", "Nullable(Bool)"),
    ("amount_pkr", "Nullable(Decimal(18, 2))"),
    ("version", "UInt64"),
    ("ingested_at", "DateTime64(3, 'UTC') DEFAULT now64(3) CODEC(Delta, ZSTD(1))"),
)
KPI_WINDOW_COLUMNS: tuple[tuple[str, str], ...] = (
    ("kpi_id", f"String ALIAS {KPI_ID_SQL}"),
    ("window", "LowCardinality(String)"),
    ("window_start", "DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1))"),
    ("window_end", "DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1))"),
    ("mission", "LowCardinality(String)"),
    ("journey", "LowCardinality(String)"),
    ("stage", "LowCardinality(String)"),
    ("owner_agency", "LowCardinality(String)"),
    ("province", "LowCardinality(String)"),
    ("port", "LowCardinality(String)"),
    ("completions", "Int64"),
    ("sla_met", "Int64"),
    ("sla_compliance", f"Nullable(Float64) ALIAS {SLA_COMPLIANCE_SQL}"),
    ("p50_ms", "Nullable(Int64)"),
    ("p90_ms", "Nullable(Int64)"),
    ("mean_ms", "Nullable(Float64)"),
    ("throughput_per_h", f"Float64 ALIAS {THROUGHPUT_SQL}"),
    ("late_events", "Int64"),
    ("version", "UInt64"),
    ("ingested_at", "DateTime64(3, 'UTC') DEFAULT now64(3) CODEC(Delta, ZSTD(1))"),
)


def quote(value: str) -> str:
    """A ClickHouse string literal (values come from the validated missions file)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def string_array(values: list[str]) -> str:
    return "[" + ", ".join(quote(v) for v in values) + "]"


def int_array(values: list[int]) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]"


def ms_literal(ms: int) -> str:
    return f"fromUnixTimestamp64Milli(toInt64({ms}), 'UTC')"


def _port_topics() -> frozenset[str]:
    """Families whose records carry a ``port`` (customs, container moves), from the schemas."""
    return frozenset(t for t in contracts.INPUT_TOPICS if "port" in contracts.current(t).field_names)


def table_ddl(name: str, columns: tuple[tuple[str, str], ...], tail: str) -> str:
    body = ",\n    ".join(f"`{c}` {t}" for c, t in columns)
    return f"CREATE TABLE {name}\n(\n    {body}\n)\n{tail}"


@dataclass(frozen=True)
class RecomputeSql:
    """Every query of a recompute for one missions file."""

    missions: Missions

    # -- boundaries ---------------------------------------------------------------------------
    @cached_property
    def boundaries(self) -> tuple[EventRef, ...]:
        """Distinct (topic, status) pairs that start, end or cancel some stage, in file order."""
        seen: dict[tuple[str, str], EventRef] = {}
        for ref in self.missions.stages:
            s = ref.stage
            for b in (s.start, s.end, *s.cancel_on):
                seen.setdefault((b.topic, b.status), b)
        return tuple(seen.values())

    def _index(self, b: EventRef) -> int:
        return next(i for i, x in enumerate(self.boundaries) if (x.topic, x.status) == (b.topic, b.status))

    @cached_property
    def _start_attributes(self) -> dict[int, tuple[str, ...]]:
        """Boundary index → the event columns a stage starting there needs (province, port, money)."""
        ports = _port_topics()
        out: dict[int, list[str]] = {}
        for ref in self.missions.stages:
            s = ref.stage
            cols = out.setdefault(self._index(s.start), ["province"])
            if s.start.topic in ports and "port" not in cols:
                cols.append("port")
            if s.money_field and s.money_field not in cols:
                cols.append(s.money_field)
        return {i: tuple(c) for i, c in out.items()}

    @cached_property
    def _money_columns(self) -> frozenset[str]:
        return frozenset(r.stage.money_field for r in self.missions.stages if r.stage.money_field)

    def boundary_filter(self) -> str:
        """``(topic, status) IN (...)``: only events that mark some stage boundary are read."""
        pairs = ", ".join(f"({quote(b.topic)}, {quote(b.status)})" for b in self.boundaries)
        return f"(topic, status) IN ({pairs})"

    def _boundary_index_sql(self) -> str:
        arms = ", ".join(
            f"topic = {quote(b.topic)} AND status = {quote(b.status)}, {i}"
            for i, b in enumerate(self.boundaries)
        )
        return f"multiIf({arms}, 255)"

    # -- the per-case pivot ---------------------------------------------------------------------
    def pivot(self, source: str, case_filter: str | None = None) -> str:
        """One row per case: ``b<i>`` = earliest ms of boundary i (``NOT_SEEN`` if none) and, for
        start boundaries, ``a<i>_<column>`` = that column of the earliest such event.

        The earliest event is the ``argMin`` over one UInt256 key, ``ms << 128 | event_id``:
        ``toUInt128(UUID)`` orders like the UUID's text (checked in the tests), so ties on
        ``occurred_at`` go to the smallest ``event_id`` exactly as SEMANTICS.md says, and a numeric
        key keeps ClickHouse on its fast fixed-size path. Money travels as paisa (Int64, NULL as
        ``NOT_SEEN``) because aggregate functions skip NULL arguments.
        """
        columns = ["case_id"]
        for i in range(len(self.boundaries)):
            columns.append(f"min(if(boundary = {i}, ms, {NOT_SEEN})) AS b{i}")
        for i, attrs in sorted(self._start_attributes.items()):
            for col in attrs:
                columns.append(f"argMinIf({col}, start_key, boundary = {i}) AS a{i}_{col}")
        where = self.boundary_filter()
        if case_filter:
            where += f" AND {case_filter}"
        needed = sorted({c for attrs in self._start_attributes.values() for c in attrs})
        inner = [
            "case_id",
            *(
                f"ifNull(toInt64({c} * 100), {NOT_SEEN}) AS {c}" if c in self._money_columns else c
                for c in needed
            ),
            "toUnixTimestamp64Milli(occurred_at) AS ms",
            f"{self._boundary_index_sql()} AS boundary",
            "bitOr(bitShiftLeft(toUInt256(ms), 128), toUInt256(toUInt128(event_id))) AS start_key",
        ]
        select_list = ",\n        ".join(columns)
        inner_list = ",\n               ".join(inner)
        return (
            f"SELECT\n        {select_list}\n"
            f"    FROM\n    (\n"
            f"        SELECT {inner_list}\n"
            f"        FROM {source}\n        WHERE {where}\n    )\n    GROUP BY case_id"
        )

    def ceiling(self, source: str) -> str:
        """The bare pivot the bench compares with: ``GROUP BY case_id`` with one ``minIf`` per
        stage boundary over the same events, nothing else."""
        mins = ", ".join(
            f"minIf(occurred_at, topic = {quote(b.topic)} AND status = {quote(b.status)}) AS b{i}"
            for i, b in enumerate(self.boundaries)
        )
        return f"SELECT case_id, {mins} FROM {source} WHERE {self.boundary_filter()} GROUP BY case_id"

    # -- stage records ----------------------------------------------------------------------------
    def _owner_sql(self, s: StageRef, province: str, port: str) -> str:
        stage = s.stage
        arms = [f"{port} = {quote(p)}, {quote(a)}" for p, a in stage.owner_by_port.items()]
        arms += [f"{province} = {quote(p)}, {quote(a)}" for p, a in stage.owner_by_province.items()]
        if not arms:
            return quote(stage.owner)
        return f"multiIf({', '.join(arms)}, {quote(stage.owner)})"

    def _stage_select(self, ref: StageRef, pivot: str) -> str:
        """The records of one stage: a row per case of ``pivot`` whose start boundary was seen."""
        s = ref.stage
        start = self._index(s.start)
        attrs = self._start_attributes[start]
        province = f"a{start}_province"
        port = f"a{start}_port" if "port" in attrs else "''"
        money = f"a{start}_{s.money_field}"
        amount = (
            f"if({money} = {NOT_SEEN}, NULL, toDecimal64({money}, 2) / 100)"
            if s.money_field
            else "CAST(NULL, 'Nullable(Decimal(18, 2))')"
        )
        if s.cancel_on:
            cancels = [f"b{self._index(c)}" for c in s.cancel_on]
            cancel = cancels[0] if len(cancels) == 1 else f"least({', '.join(cancels)})"
        else:
            cancel = str(NOT_SEEN)
        begin, end = f"b{start}", f"b{self._index(s.end)}"
        closed = f"{end} != {NOT_SEEN}"
        return f"""SELECT
    case_id,
    {quote(ref.mission.id)} AS mission,
    {quote(ref.journey.id)} AS journey,
    {quote(s.id)} AS stage,
    {self._owner_sql(ref, province, port)} AS owner_agency,
    {province} AS province,
    {port} AS port,
    multiIf({closed}, 'CLOSED', {cancel} != {NOT_SEEN}, 'CANCELLED', 'OPEN') AS state,
    fromUnixTimestamp64Milli({begin}, 'UTC') AS started_at,
    if({closed}, fromUnixTimestamp64Milli({end}, 'UTC'), NULL) AS ended_at,
    if({closed}, greatest({end} - {begin}, 0), NULL) AS duration_ms,
    {s.sla_ms} AS sla_ms,
    if({closed}, greatest({end} - {begin}, 0) <= {s.sla_ms}, NULL) AS sla_met,
    {amount} AS amount_pkr,
    0 AS version
FROM {pivot}
WHERE {begin} != {NOT_SEEN}"""

    def pivot_table_ddl(self, table: str, source: str, case_filter: str | None = None) -> str:
        """A ``Memory`` table holding the per-case pivot, which every stage then reads.

        Why a table: one ``SELECT`` per stage over a stored pivot (plain column arithmetic) cost
        about 30% less CPU than one query that built a tuple per stage and case and ``ARRAY JOIN``ed
        them, and ClickHouse would compute a shared subquery once per ``UNION ALL`` branch.
        """
        return f"CREATE TABLE {table} ENGINE = Memory AS\n{self.pivot(source, case_filter)}"

    def stage_records_select(self, pivot: str) -> str:
        """Rows of a stage-records version table (every column but the ALIAS id), from the
        pivot table ``pivot`` (:meth:`pivot_table_ddl`): one ``UNION ALL`` branch per stage."""
        return "\nUNION ALL\n".join(self._stage_select(ref, pivot) for ref in self.missions.stages)

    # -- KPI windows --------------------------------------------------------------------------------
    @cached_property
    def longest_window_ms(self) -> int:
        """The size of the longest KPI window: how far back a window can reach for its records."""
        return max(w.size_ms for w in self.missions.windows)

    def closed_records_filter(self, from_ms: int | None = None) -> str:
        """The records the KPI windows are built from: closed, and with ``from_ms`` only those that
        can fall in a window ending after it."""
        where = "state = 'CLOSED'"
        if from_ms is not None:
            where += f" AND ended_at > {ms_literal(from_ms - self.longest_window_ms)}"
        return where

    def kpi_slice_edges(self, records: str, slices: int, from_ms: int | None = None) -> str:
        """``slices - 1`` end times (ms, approximate quantiles) that split the closed records of
        ``records`` into ``slices`` parts of about the same size: where to cut history for
        :meth:`kpi_windows_select`'s ``starts`` (any cut gives the same windows; even parts
        bound each part's memory)."""
        levels = ", ".join(repr(i / slices) for i in range(1, slices))
        return (
            f"SELECT quantiles({levels})(toUnixTimestamp64Milli(ended_at)) "
            f"FROM {records} WHERE {self.closed_records_filter(from_ms)}"
        )

    def kpi_windows_select(
        self,
        records: str,
        from_ms: int | None = None,
        starts: tuple[int | None, int | None] = (None, None),
    ) -> str:
        """Rows of a KPI-windows version table from the closed records of ``records``.

        Completions are summed per pane (``step`` ms) and each pane is added to the ``size / step``
        windows that contain it. Why the keys look the way they do: this step emits millions of
        windows, so its cost is the hash aggregation. The KPI group is replaced by its position
        ``gi`` in the list of the groups present (a scalar subquery, read once), and the keys are
        ``(w UInt8, gi UInt16, pane UInt32)``: seven bytes that ClickHouse packs into one 64-bit
        hash key. The group's names are read back by position from one list per column (a list
        of tuples would build all six strings for each of the six reads), so no join.
        ``throwIf`` guards the narrow types. With ``from_ms``, only windows that end after it are
        computed. ``starts = (lo, hi)`` keeps the windows that start in ``[lo, hi)`` (``None``: no
        bound) and reads only the records such a window can hold (ended in ``[lo, hi + longest)``),
        so the windows can be built a slice of history at a time.
        """
        windows = self.missions.windows
        if len(windows) > 255:
            raise ValueError("the recompute keys hold at most 255 KPI window specs")
        names = string_array([w.name for w in windows])
        sizes = int_array([w.size_ms for w in windows])
        steps = int_array([w.step_ms for w in windows])
        per = int_array([w.size_ms // w.step_ms for w in windows])
        spec_ids = f"range(1, {len(windows) + 1})"
        offset = max(w.size_ms // w.step_ms for w in windows)  # keeps ``pane - j`` unsigned
        group = ", ".join(GROUP_COLUMNS)
        record_filter = self.closed_records_filter(from_ms)
        window_start = f"(toInt64(window_pane) - {offset}) * {steps}[w]"
        having = []
        if from_ms is not None:
            having.append(f"{window_start} + {sizes}[w] > {from_ms}")
        lo, hi = starts
        if lo is not None:
            record_filter += f" AND ended_at >= {ms_literal(lo)}"
            having.append(f"{window_start} >= {lo}")
        if hi is not None:
            record_filter += f" AND ended_at < {ms_literal(hi + self.longest_window_ms)}"
            having.append(f"{window_start} < {hi}")
        window_filter = f"\n    HAVING {' AND '.join(having)}" if having else ""
        group_lists = ", ".join(f"groupArray({c})" for c in GROUP_COLUMNS)
        names_of_group = ", ".join(f"groups.{n + 2}[gi] AS {c}" for n, c in enumerate(GROUP_COLUMNS))
        quantiles = ",\n    ".join(
            f"sorted[toUInt64(floor({q} * (n - 1))) + 1] AS {name}" for name, q in QUANTILES
        )
        return f"""WITH
    (
        SELECT (groupArray(cityHash64({group})), {group_lists})
        FROM (SELECT DISTINCT {group} FROM {records} WHERE {record_filter})
    ) AS groups
SELECT
    {names}[w] AS window,
    fromUnixTimestamp64Milli(window_index * {steps}[w], 'UTC') AS window_start,
    fromUnixTimestamp64Milli(window_index * {steps}[w] + {sizes}[w], 'UTC') AS window_end,
    {names_of_group},
    toInt64(n) AS completions,
    toInt64(met) AS sla_met,
    {quantiles},
    total / n AS mean_ms,
    0 AS late_events,
    0 AS version
FROM
(
    SELECT w, gi, toInt64(window_pane) - {offset} AS window_index,
           n, met, total, sorted
    FROM
    (
        SELECT w, gi, toUInt32(pane - j) AS window_pane,
               sum(pane_n) AS n, sum(pane_met) AS met, sum(pane_total) AS total,
               arraySort(groupArrayArray(pane_durations)) AS sorted
        FROM
        (
            SELECT w, gi, pane,
                   count() AS pane_n, countIf(met) AS pane_met, sum(d) AS pane_total,
                   groupArray(d) AS pane_durations
            FROM
            (
                SELECT toUInt16(indexOf(groups.1, cityHash64({group}))) AS gi,
                       assumeNotNull(duration_ms) AS d, assumeNotNull(sla_met) AS met,
                       toUnixTimestamp64Milli(assumeNotNull(ended_at)) AS end_ms,
                       toUInt8(arrayJoin({spec_ids})) AS w,
                       intDiv(end_ms, {steps}[w]) + {offset} AS wide_pane,
                       toUInt32(wide_pane + throwIf(length(groups.1) > 65535 OR wide_pane > 4294967295,
                                                    'too many KPI groups or panes for the keys')) AS pane
                FROM {records}
                WHERE {record_filter}
            )
            GROUP BY w, gi, pane
        )
        ARRAY JOIN range(toUInt32({per}[w])) AS j
        GROUP BY w, gi, window_pane{window_filter}
    )
)"""
