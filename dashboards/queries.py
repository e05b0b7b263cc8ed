"""Every query of the command view, defined once: the Grafana panels and the built-in board run this SQL.

A query is ClickHouse SQL written for the grafana-clickhouse-datasource plugin: time through the
plugin's macros (``$__timeFilter_ms(col)``, ``$__toTime_ms``, ``$__dateFilter(day)``...), dashboard
variables as ``${mission:singlequote}`` inside ``$__conditionalAll(...)`` (so "All" means no
filter), the case id as ``${case_id:singlequote}``. Grafana expands it in the browser and the
plugin; the built-in board expands the macros with :mod:`dashboards.macros` and binds the
variables as ClickHouse parameters (:func:`dashboards.variables.bind`), so no browser input ever
becomes SQL text.

"Now" is the end of the selected time range (``$__toTime_ms``): in Grafana that is the current
time, and a board opened on a past range shows waits and freshness as they were then.

Stage facts (names, order, span/hand-over/money/energy stages, targets, feed thresholds) are
generated from the missions file (:mod:`dashboards.mission_facts`), never written here.

Column naming is a contract with both front ends (units follow the suffix): ``*_ms`` durations
in milliseconds, ``*_pkr`` exact money (Decimal), ``*compliance``/``*share`` ratios 0..1,
``*_at``/``time`` timestamps (UTC), ``status`` traffic lights (GREEN, AMBER, RED, NO DATA).

Medians and p90 are the lower quantile ``sorted(x)[floor(q * (n - 1))]`` of SEMANTICS.md (exact,
over any time range, from ``stage_records_latest``), computed with integer arithmetic on the
sorted array so they match the processors' KPI windows and the test oracle exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

from dashboards.mission_facts import MissionFacts

AMBER_BAND = 0.05
"""A KPI within this much below its target is AMBER (a delivery unit's "at risk"), further below RED."""

LONGEST_WAITING_LIMIT = 15
ALERTS_LIMIT = 100
CASE_VARIABLE = "case_id"


@dataclass(frozen=True)
class Query:
    """One panel query: its SQL (plugin macros + variables) and the columns it returns, in order."""

    id: str
    title: str
    description: str
    sql: str
    columns: tuple[str, ...]

    @property
    def uses_case(self) -> bool:
        return f"${{{CASE_VARIABLE}:singlequote}}" in self.sql


# -- SQL building blocks --------------------------------------------------------------------------
def lit(text: str) -> str:
    """A ClickHouse string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _array(items: Iterable[str]) -> str:
    return "[" + ", ".join(lit(i) for i in items) + "]"


def _key(prefix: str = "") -> str:
    return f"concat({prefix}mission, '/', {prefix}stage)"


def key_in(keys: Sequence[tuple[str, str]], prefix: str = "", negate: bool = False) -> str:
    """``(mission, stage)`` membership as SQL; constant when the set is empty."""
    if not keys:
        return "1" if negate else "0"
    op = "NOT IN" if negate else "IN"
    return f"{_key(prefix)} {op} ({', '.join(lit(f'{m}/{s}') for m, s in keys)})"


def lower_quantile(sorted_array: str, q: Fraction) -> str:
    """SEMANTICS.md's exact lower quantile of an already sorted array (NULL when empty)."""
    return (
        f"if(empty({sorted_array}), NULL, "
        f"{sorted_array}[intDiv({q.numerator} * (length({sorted_array}) - 1), {q.denominator}) + 1])"
    )


P50 = Fraction(1, 2)
P90 = Fraction(9, 10)
NOW = "$__toTime_ms"
DONE_IN_RANGE = (
    "state = 'CLOSED' AND duration_ms IS NOT NULL AND ended_at IS NOT NULL AND $__timeFilter_ms(ended_at)"
)


def _since(col: str) -> str:
    return f"dateDiff('millisecond', {col}, {NOW})"


def filters(
    prefix: str = "", mission: bool = True, agency_col: str = "owner_agency", geo: bool = True
) -> str:
    """The dashboard variables as filters; each is a no-op when its variable is All."""
    parts = []
    if mission:
        parts.append(f"$__conditionalAll({prefix}mission IN (${{mission:singlequote}}), $mission)")
    if agency_col:
        parts.append(f"$__conditionalAll({prefix}{agency_col} IN (${{agency:singlequote}}), $agency)")
    if geo:
        parts.append(f"$__conditionalAll({prefix}province IN (${{province:singlequote}}), $province)")
        parts.append(f"$__conditionalAll({prefix}port IN (${{port:singlequote}}), $port)")
    return " AND ".join(parts) if parts else "1"


class QueryBuilder:
    """Builds the catalog of queries for one missions file."""

    def __init__(self, facts: MissionFacts) -> None:
        self.facts = facts

    # generated expressions -------------------------------------------------------------------
    def stage_name(self, prefix: str = "") -> str:
        names = self.facts.stage_names
        keys = list(names)
        return f"transform({_key(prefix)}, {_array(keys)}, {_array(names[k] for k in keys)}, {prefix}stage)"

    def stage_order(self, prefix: str = "") -> str:
        return f"indexOf({_array(self.facts.stage_keys)}, {_key(prefix)})"

    def not_span(self, prefix: str = "") -> str:
        return key_in(self.facts.span_keys, prefix, negate=True)

    def targets_table(self) -> str:
        rows = [
            f"({lit(t.mission)}, {lit(t.target)}, {lit(t.name)}, {lit(t.stage)}, {lit(t.window)}, "
            f"{t.window_step_ms}, {t.min_sla_compliance!r}, {t.min_completions})"
            for t in self.facts.targets
        ]
        if not rows:
            rows = ["('', '', '', '', '', 1, 1.0, 1)"]
        return (
            "values('mission String, target String, target_name String, stage String, window String, "
            "step_ms Int64, target_compliance Float64, min_completions Int64', " + ", ".join(rows) + ")"
        )

    def silence_threshold(self, col: str) -> str:
        agencies = list(self.facts.registry.agencies)
        thresholds = [str(self.facts.silence_ms(a)) for a in agencies]
        default = self.facts.missions.feeds.default_silence_ms
        return f"transform({col}, {_array(agencies)}, [{', '.join(thresholds)}], {default})"

    # the catalog -----------------------------------------------------------------------------
    def build(self) -> dict[str, Query]:
        queries = [
            self.kpi_targets(),
            self.throughput_today(),
            self.backlog_by_agency(),
            self.longest_waiting(),
            self.live_alerts(),
            self.resolved_alerts(),
            self.feed_freshness(),
            self.rejected_input(),
            self.stage_funnel(),
            self.stage_time_by_agency(),
            self.stage_time_by_port_province(),
            self.hand_over_gaps(),
            self.agency_scorecard(),
            self.agency_trend(),
            self.collaboration_trend(),
            self.money_locked(),
            self.money_ageing(),
            self.money_paid(),
            self.energy_lag(),
            self.energy_cases(),
            self.case_current(),
            self.case_stages(),
            self.case_timeline(),
            self.case_alerts(),
        ]
        queries += [self.kpi_target(t.target) for t in self.facts.targets]
        catalog = {q.id: q for q in queries}
        if len(catalog) != len(queries):
            raise ValueError("two queries share an id")
        return catalog

    # national command view -------------------------------------------------------------------
    def _kpi_targets_sql(self) -> str:
        return f"""SELECT t.mission AS mission, t.target AS target, t.target_name AS target_name,
  t.stage AS stage,
  t.window AS window, fromUnixTimestamp64Milli(t.window_end_ms, 'UTC') AS window_end,
  toInt64(k.window_completions) AS completions, toInt64(k.window_sla_met) AS sla_met,
  if(completions > 0, sla_met / completions, NULL) AS sla_compliance,
  t.target_compliance AS target_compliance, t.min_completions AS min_completions,
  multiIf(completions < t.min_completions, 'NO DATA', sla_compliance >= t.target_compliance, 'GREEN',
          sla_compliance >= t.target_compliance - {AMBER_BAND!r}, 'AMBER', 'RED') AS status
FROM (
  SELECT *, intDiv(toUnixTimestamp64Milli({NOW}), step_ms) * step_ms AS window_end_ms
  FROM {self.targets_table()}
) AS t
LEFT JOIN (
  SELECT mission, stage, window, toUnixTimestamp64Milli(window_end) AS window_end_ms,
    sum(completions) AS window_completions, sum(sla_met) AS window_sla_met
  FROM kpi_windows_latest
  WHERE window_end <= {NOW} AND window_end > {NOW} - INTERVAL {self._max_step_s()} SECOND
  GROUP BY mission, stage, window, window_end_ms
) AS k ON k.mission = t.mission AND k.stage = t.stage AND k.window = t.window
  AND k.window_end_ms = t.window_end_ms"""

    def _max_step_s(self) -> int:
        return max((w.step_ms for w in self.facts.missions.windows), default=86_400_000) // 1000 + 1

    _KPI_COLUMNS = (
        "mission",
        "target",
        "target_name",
        "stage",
        "window",
        "window_end",
        "completions",
        "sla_met",
        "sla_compliance",
        "target_compliance",
        "min_completions",
        "status",
    )

    def kpi_targets(self) -> Query:
        return Query(
            "kpi_targets",
            "Mission KPIs against target",
            "Each target of the missions file judged over the last complete window it names (the processors' "
            "KPI windows, as the KPI_TARGET alert sees it): GREEN at or above target, AMBER within "
            f"{AMBER_BAND:.0%} below, RED further below, NO DATA under the target's minimum completions.",
            self._kpi_targets_sql() + "\nORDER BY mission, target",
            self._KPI_COLUMNS,
        )

    def kpi_target(self, target: str) -> Query:
        return Query(
            f"kpi_target__{target}",
            f"KPI {target}",
            f"The {target} row of kpi_targets (one traffic light).",
            f"SELECT * FROM (\n{self._kpi_targets_sql()}\n) WHERE target = {lit(target)}",
            self._KPI_COLUMNS,
        )

    def throughput_today(self) -> Query:
        return Query(
            "throughput_today",
            "Today's throughput",
            "Stage completions since 00:00 UTC of the board's day, and how many met the SLA.",
            f"""SELECT mission, stage, {self.stage_name()} AS stage_name, {self.stage_order()} AS stage_order,
  toInt64(count()) AS completions, toInt64(countIf(sla_met)) AS within_sla
FROM stage_records_latest
WHERE state = 'CLOSED' AND ended_at >= toStartOfDay({NOW}, 'UTC') AND ended_at <= {NOW}
  AND {filters()}
GROUP BY mission, stage
ORDER BY mission, stage_order""",
            ("mission", "stage", "stage_name", "stage_order", "completions", "within_sla"),
        )

    def backlog_by_agency(self) -> Query:
        return Query(
            "backlog_by_agency",
            "Open backlog by owner agency",
            "Cases open now per accountable agency (processors' backlog), the oldest wait and the money "
            "locked in them. Whole-journey (span) stages are left out.",
            f"""SELECT owner_agency, toInt64(sum(open_cases)) AS open_total,
  min(oldest_started_at) AS oldest_since, {_since("oldest_since")} AS oldest_wait_ms,
  sum(amount_pkr_open) AS locked_pkr
FROM backlog_latest
WHERE {self.not_span()} AND {filters()}
GROUP BY owner_agency
HAVING open_total > 0
ORDER BY open_total DESC, owner_agency""",
            ("owner_agency", "open_total", "oldest_since", "oldest_wait_ms", "locked_pkr"),
        )

    def longest_waiting(self) -> Query:
        return Query(
            "longest_waiting",
            "Longest-waiting cases",
            "Open stage instances, oldest first, with the agency that must act and how long it has waited.",
            f"""SELECT case_id, mission, stage, {self.stage_name()} AS stage_name,
  owner_agency, province, port,
  started_at AS waiting_since, {_since("started_at")} AS waiting_ms, sla_ms,
  waiting_ms > sla_ms AS overdue
FROM stage_records_latest
WHERE state = 'OPEN' AND started_at IS NOT NULL AND started_at <= {NOW}
  AND {self.not_span()} AND {filters()}
ORDER BY waiting_since ASC, case_id ASC
LIMIT {LONGEST_WAITING_LIMIT}""",
            (
                "case_id",
                "mission",
                "stage",
                "stage_name",
                "owner_agency",
                "province",
                "port",
                "waiting_since",
                "waiting_ms",
                "sla_ms",
                "overdue",
            ),
        )

    _ALERT_COLUMNS = (
        "alert_id",
        "kind",
        "severity",
        "mission",
        "stage",
        "agency",
        "province",
        "port",
        "case_id",
        "summary",
        "starts_at",
    )

    def _alert_filters(self) -> str:
        return (
            "$__conditionalAll(mission IN (${mission:singlequote}, ''), $mission) AND "
            "$__conditionalAll(agency IN (${agency:singlequote}), $agency)"
        )

    def live_alerts(self) -> Query:
        return Query(
            "live_alerts",
            "Live alerts",
            "Alerts firing now (latest state FIRING), critical first, then the longest firing.",
            f"""SELECT {", ".join(self._ALERT_COLUMNS)}, {_since("starts_at")} AS firing_ms
FROM alerts_current
WHERE state = 'FIRING' AND starts_at <= {NOW} AND {self._alert_filters()}
ORDER BY severity = 'critical' DESC, starts_at ASC, alert_id ASC
LIMIT {ALERTS_LIMIT}""",
            (*self._ALERT_COLUMNS, "firing_ms"),
        )

    def resolved_alerts(self) -> Query:
        return Query(
            "resolved_alerts",
            "Resolved alerts",
            "Alerts that cleared within the time range, newest first, with how long they fired.",
            f"""SELECT {", ".join(self._ALERT_COLUMNS)}, ends_at,
  dateDiff('millisecond', starts_at, assumeNotNull(ends_at)) AS fired_ms
FROM alerts_current
WHERE state = 'RESOLVED' AND ends_at IS NOT NULL AND $__timeFilter_ms(ends_at) AND {self._alert_filters()}
ORDER BY ends_at DESC, alert_id ASC
LIMIT {ALERTS_LIMIT}""",
            (*self._ALERT_COLUMNS, "ends_at", "fired_ms"),
        )

    def feed_freshness(self) -> Query:
        return Query(
            "feed_freshness",
            "Feed freshness per agency",
            "Time since each agency's newest event against its silence threshold (missions file), and the "
            "distinct events stored today (UTC day).",
            f"""SELECT f.agency AS agency, f.topic AS topic, f.last_occurred_at AS last_event_at,
  {_since("f.last_occurred_at")} AS silent_ms,
  {self.silence_threshold("f.agency")} AS silence_threshold_ms,
  silent_ms > silence_threshold_ms AS silent,
  toInt64(e.events_today) AS events_today
FROM feed_freshness_latest AS f
LEFT JOIN (
  SELECT agency, uniqExactMerge(events) AS events_today
  FROM events_daily
  WHERE day = toDate({NOW}, 'UTC')
  GROUP BY agency
) AS e ON e.agency = f.agency
WHERE {filters("f.", mission=False, agency_col="agency", geo=False)}
ORDER BY silent DESC, silent_ms DESC, agency ASC""",
            (
                "agency",
                "topic",
                "last_event_at",
                "silent_ms",
                "silence_threshold_ms",
                "silent",
                "events_today",
            ),
        )

    def rejected_input(self) -> Query:
        """What agencies sent that the pipeline could not use, so a feed's owner sees why.

        Not filtered by mission or agency: an undecodable record names neither. Counted per
        distinct dead letter (``dead_letters_latest``: a record stored again after a restart is one row).
        """
        return Query(
            "rejected_input",
            "Rejected input (dead letters)",
            "Records parked in the dead letters in the time range, per topic, reason and the component "
            "that rejected them, with the newest one's key and detail. Not filtered by mission or agency.",
            """SELECT topic, reason, source, toInt64(count()) AS records, max(received_at) AS last_at,
  toValidUTF8(ifNull(argMax(key, (received_at, dead_letter_id)), '')) AS example_key,
  argMax(detail, (received_at, dead_letter_id)) AS example_detail
FROM dead_letters_latest
WHERE $__timeFilter_ms(received_at)
GROUP BY topic, reason, source
ORDER BY records DESC, topic ASC, reason ASC, source ASC""",
            ("topic", "reason", "source", "records", "last_at", "example_key", "example_detail"),
        )

    # export journey ----------------------------------------------------------------------------
    def stage_funnel(self) -> Query:
        return Query(
            "stage_funnel",
            "Stage funnel",
            "Cases that entered each stage in the time range, and where they are now.",
            f"""SELECT mission, stage, {self.stage_name()} AS stage_name, {self.stage_order()} AS stage_order,
  toInt64(count()) AS entered, toInt64(countIf(state = 'CLOSED')) AS completed,
  toInt64(countIf(state = 'OPEN')) AS still_open, toInt64(countIf(state = 'CANCELLED')) AS cancelled,
  if(entered > 0, completed / entered, NULL) AS completion_share
FROM stage_records_latest
WHERE started_at IS NOT NULL AND $__timeFilter_ms(started_at) AND {filters()}
GROUP BY mission, stage
ORDER BY mission, stage_order""",
            (
                "mission",
                "stage",
                "stage_name",
                "stage_order",
                "entered",
                "completed",
                "still_open",
                "cancelled",
                "completion_share",
            ),
        )

    def _durations(self, where: str, group: str) -> str:
        return f"""SELECT {group}, toInt64(count()) AS completions, toInt64(countIf(sla_met)) AS within_sla,
    toInt64(sum(assumeNotNull(duration_ms))) AS total_ms,
    arraySort(groupArray(assumeNotNull(duration_ms))) AS sorted_ms
  FROM stage_records_latest
  WHERE state = 'CLOSED' AND duration_ms IS NOT NULL AND ended_at IS NOT NULL AND $__timeFilter_ms(ended_at)
    AND {where}
  GROUP BY {group}"""

    def stage_time_by_agency(self) -> Query:
        return Query(
            "stage_time_by_agency",
            "Time decomposition by agency",
            "Time-Release-Study breakdown of completions in the range: median and p90 per stage and owner, "
            "and each row's share of all the time spent in the journey's (non-span) stages.",
            f"""SELECT mission, stage, {self.stage_name()} AS stage_name, {self.stage_order()} AS stage_order,
  owner_agency, completions,
  {lower_quantile("sorted_ms", P50)} AS p50_ms, {lower_quantile("sorted_ms", P90)} AS p90_ms,
  total_ms / completions AS mean_ms,
  within_sla / completions AS sla_compliance,
  total_ms / sum(total_ms) OVER (PARTITION BY mission) AS time_share
FROM (
  {self._durations(f"{self.not_span()} AND {filters()}", "mission, stage, owner_agency")}
)
ORDER BY mission, stage_order, owner_agency""",
            (
                "mission",
                "stage",
                "stage_name",
                "stage_order",
                "owner_agency",
                "completions",
                "p50_ms",
                "p90_ms",
                "mean_ms",
                "sla_compliance",
                "time_share",
            ),
        )

    def stage_time_by_port_province(self) -> Query:
        return Query(
            "stage_time_by_port_province",
            "Stage time per port and province",
            "Median and p90 of every stage (whole journey included) per port and province, completions "
            "in the range.",
            f"""SELECT mission, stage, {self.stage_name()} AS stage_name, {self.stage_order()} AS stage_order,
  port, province, completions,
  {lower_quantile("sorted_ms", P50)} AS p50_ms, {lower_quantile("sorted_ms", P90)} AS p90_ms,
  within_sla / completions AS sla_compliance
FROM (
  {self._durations(filters(), "mission, stage, port, province")}
)
ORDER BY mission, stage_order, port, province""",
            (
                "mission",
                "stage",
                "stage_name",
                "stage_order",
                "port",
                "province",
                "completions",
                "p50_ms",
                "p90_ms",
                "sla_compliance",
            ),
        )

    def _hand_over_table(self) -> str:
        rows = [
            f"({lit(h.mission)}, {lit(h.from_stage)}, {lit(h.to_stage)}, {int(h.measure_to_end)})"
            for h in self.facts.hand_overs
        ] or ["('', '', '', 0)"]
        return (
            "values('mission String, from_stage String, to_stage String, measure_to_end UInt8', "
            + ", ".join(rows)
            + ")"
        )

    def hand_over_gaps(self) -> Query:
        from_keys = sorted({(h.mission, h.from_stage) for h in self.facts.hand_overs})
        to_keys = sorted({(h.mission, h.to_stage) for h in self.facts.hand_overs})
        return Query(
            "hand_over_gaps",
            "Hand-over gaps: who waits on whom",
            "For consecutive stages A → B of a case: the time from A finishing to B acting (B's end when B "
            "starts at A's end, else B's start); A finished within the time range.",
            f"""SELECT mission, from_stage, from_agency, to_stage, to_agency,
  toInt64(length(sorted_ms)) AS cases,
  {lower_quantile("sorted_ms", P50)} AS p50_ms, {lower_quantile("sorted_ms", P90)} AS p90_ms
FROM (
  SELECT h.mission AS mission, h.from_stage AS from_stage, a.owner_agency AS from_agency,
    h.to_stage AS to_stage, b.owner_agency AS to_agency,
    arraySort(groupArray(dateDiff('millisecond', a.finished_at,
      if(h.measure_to_end = 1, assumeNotNull(b.ended_at), assumeNotNull(b.started_at))))) AS sorted_ms
  FROM (
    SELECT case_id, mission, stage, owner_agency, assumeNotNull(ended_at) AS finished_at
    FROM stage_records_latest
    WHERE state = 'CLOSED' AND ended_at IS NOT NULL AND $__timeFilter_ms(ended_at) AND {key_in(from_keys)}
      AND {filters(agency_col="")}
  ) AS a
  INNER JOIN {self._hand_over_table()} AS h ON h.mission = a.mission AND h.from_stage = a.stage
  INNER JOIN (
    SELECT case_id, mission, stage, owner_agency, started_at, ended_at
    FROM stage_records_latest
    WHERE {key_in(to_keys)} AND $__conditionalAll(mission IN (${{mission:singlequote}}), $mission)
  ) AS b ON b.case_id = a.case_id AND b.mission = h.mission AND b.stage = h.to_stage
  WHERE (h.measure_to_end = 1 AND b.ended_at IS NOT NULL)
     OR (h.measure_to_end = 0 AND b.started_at IS NOT NULL)
  GROUP BY mission, from_stage, from_agency, to_stage, to_agency
)
WHERE $__conditionalAll((from_agency IN (${{agency:singlequote}})
  OR to_agency IN (${{agency:singlequote}})), $agency)
ORDER BY mission, p50_ms DESC""",
            ("mission", "from_stage", "from_agency", "to_stage", "to_agency", "cases", "p50_ms", "p90_ms"),
        )

    # agency scorecard ----------------------------------------------------------------------------
    def agency_scorecard(self) -> Query:
        handoff = key_in(self.facts.handoff_stage_keys)
        done = DONE_IN_RANGE
        return Query(
            "agency_scorecard",
            "Agency scorecard",
            "Per accountable agency: SLA compliance of stages completed in the range, median and p90, cases "
            "open and overdue now, and the collaboration KPI: the same on hand-off stages (how fast the "
            "agency acts once another hands over).",
            f"""SELECT owner_agency, completions, within_sla,
  if(completions > 0, within_sla / completions, NULL) AS sla_compliance,
  {lower_quantile("sorted_ms", P50)} AS p50_ms, {lower_quantile("sorted_ms", P90)} AS p90_ms,
  open_now, overdue_now, handoff_completions,
  if(handoff_completions > 0, handoff_within_sla / handoff_completions, NULL) AS handoff_compliance,
  {lower_quantile("handoff_sorted_ms", P50)} AS handoff_p50_ms
FROM (
  SELECT owner_agency,
    toInt64(countIf({done})) AS completions,
    toInt64(countIf({done} AND sla_met)) AS within_sla,
    arraySort(groupArrayIf(assumeNotNull(duration_ms), {done})) AS sorted_ms,
    toInt64(countIf(state = 'OPEN' AND started_at IS NOT NULL)) AS open_now,
    toInt64(countIf(state = 'OPEN' AND started_at IS NOT NULL AND {_since("started_at")} > sla_ms))
      AS overdue_now,
    toInt64(countIf({done} AND {handoff})) AS handoff_completions,
    toInt64(countIf({done} AND {handoff} AND sla_met)) AS handoff_within_sla,
    arraySort(groupArrayIf(assumeNotNull(duration_ms), {done} AND {handoff})) AS handoff_sorted_ms
  FROM stage_records_latest
  WHERE {self.not_span()} AND {filters()}
  GROUP BY owner_agency
)
WHERE completions > 0 OR open_now > 0
ORDER BY owner_agency""",
            (
                "owner_agency",
                "completions",
                "within_sla",
                "sla_compliance",
                "p50_ms",
                "p90_ms",
                "open_now",
                "overdue_now",
                "handoff_completions",
                "handoff_compliance",
                "handoff_p50_ms",
            ),
        )

    def _daily_trend(self, qid: str, title: str, description: str, stages: str) -> Query:
        return Query(
            qid,
            title,
            description,
            f"""SELECT toDateTime(day, 'UTC') AS time, owner_agency,
  toInt64(sum(completions)) AS day_completions, sum(sla_met) / day_completions AS sla_compliance
FROM kpi_daily
WHERE $__dateFilter(day) AND {stages} AND {filters()}
GROUP BY day, owner_agency
HAVING day_completions > 0
ORDER BY time, owner_agency""",
            ("time", "owner_agency", "day_completions", "sla_compliance"),
        )

    def agency_trend(self) -> Query:
        return self._daily_trend(
            "agency_trend",
            "SLA compliance trend per agency",
            "Daily SLA compliance per accountable agency (kpi_daily rollup, completion day UTC).",
            self.not_span(),
        )

    def collaboration_trend(self) -> Query:
        return self._daily_trend(
            "collaboration_trend",
            "Collaboration KPI trend",
            "Daily SLA compliance of hand-off stages per acting agency (kpi_daily rollup).",
            key_in(self.facts.handoff_stage_keys),
        )

    # rebates and energy -------------------------------------------------------------------------
    def money_locked(self) -> Query:
        return Query(
            "money_locked",
            "Money locked",
            "Open cases of money stages (rebates filed and not paid) and the exact PKR they hold.",
            f"""SELECT mission, stage, {self.stage_name()} AS stage_name,
  toInt64(sum(open_cases)) AS open_total,
  sum(amount_pkr_open) AS locked_pkr, min(oldest_started_at) AS oldest_since,
  {_since("oldest_since")} AS oldest_wait_ms
FROM backlog_latest
WHERE {key_in(self.facts.money_stage_keys)} AND {filters(mission=False)}
GROUP BY mission, stage
ORDER BY mission, stage""",
            ("mission", "stage", "stage_name", "open_total", "locked_pkr", "oldest_since", "oldest_wait_ms"),
        )

    def money_ageing(self) -> Query:
        return Query(
            "money_ageing",
            "Money locked by age",
            "Open money-stage cases by days waiting (0-30, 31-60, 61-90, 90+; backlog_ageing rollup, "
            "refreshed every minute against the clock).",
            f"""SELECT b.age_bucket AS age_bucket, toInt64(sum(a.open_cases)) AS open_total,
  sum(a.amount_pkr_open) AS locked_pkr
FROM values('age_bucket String, bucket_order UInt8',
  ('0-30d', 1), ('31-60d', 2), ('61-90d', 3), ('90d+', 4)) AS b
LEFT JOIN (
  SELECT age_bucket, open_cases, amount_pkr_open
  FROM backlog_ageing
  WHERE {key_in(self.facts.money_stage_keys)} AND {filters(mission=False)}
) AS a ON a.age_bucket = b.age_bucket
GROUP BY b.age_bucket, b.bucket_order
ORDER BY b.bucket_order""",
            ("age_bucket", "open_total", "locked_pkr"),
        )

    def money_paid(self) -> Query:
        return Query(
            "money_paid",
            "Paid within SLA",
            "Money-stage cases paid in the time range: how many, how many within the SLA, PKR paid, median "
            "and p90 time to pay.",
            f"""SELECT mission, stage, {self.stage_name()} AS stage_name, completions AS paid, within_sla,
  within_sla / completions AS sla_compliance, paid_pkr,
  {lower_quantile("sorted_ms", P50)} AS p50_ms, {lower_quantile("sorted_ms", P90)} AS p90_ms
FROM (
  SELECT mission, stage, toInt64(count()) AS completions, toInt64(countIf(sla_met)) AS within_sla,
    sum(amount_pkr) AS paid_pkr, arraySort(groupArray(assumeNotNull(duration_ms))) AS sorted_ms
  FROM stage_records_latest
  WHERE state = 'CLOSED' AND duration_ms IS NOT NULL AND ended_at IS NOT NULL AND $__timeFilter_ms(ended_at)
    AND {key_in(self.facts.money_stage_keys)} AND {filters(mission=False)}
  GROUP BY mission, stage
)
ORDER BY mission, stage""",
            (
                "mission",
                "stage",
                "stage_name",
                "paid",
                "within_sla",
                "sla_compliance",
                "paid_pkr",
                "p50_ms",
                "p90_ms",
            ),
        )

    def energy_lag(self) -> Query:
        energy = key_in(self.facts.energy_stage_keys)
        done = DONE_IN_RANGE
        return Query(
            "energy_lag",
            "Determination → notification lag",
            "Energy stages (owned by an energy-lane agency): lag of those completed in the range (median, "
            "p90, worst), SLA compliance, and determinations still waiting now.",
            f"""SELECT mission, stage, {self.stage_name()} AS stage_name, {self.stage_order()} AS stage_order,
  completions, if(completions > 0, within_sla / completions, NULL) AS sla_compliance,
  {lower_quantile("sorted_ms", P50)} AS p50_ms, {lower_quantile("sorted_ms", P90)} AS p90_ms,
  if(empty(sorted_ms), NULL, arrayMax(sorted_ms)) AS max_ms, open_now, oldest_wait_ms
FROM (
  SELECT mission, stage, toInt64(countIf({done})) AS completions,
    toInt64(countIf({done} AND sla_met)) AS within_sla,
    arraySort(groupArrayIf(assumeNotNull(duration_ms), {done})) AS sorted_ms,
    toInt64(countIf(state = 'OPEN' AND started_at IS NOT NULL)) AS open_now,
    if(open_now > 0, {_since("minIf(started_at, state = 'OPEN')")}, NULL) AS oldest_wait_ms
  FROM stage_records_latest
  WHERE {energy} AND {filters(mission=False)}
  GROUP BY mission, stage
)
ORDER BY mission, stage_order""",
            (
                "mission",
                "stage",
                "stage_name",
                "stage_order",
                "completions",
                "sla_compliance",
                "p50_ms",
                "p90_ms",
                "max_ms",
                "open_now",
                "oldest_wait_ms",
            ),
        )

    def energy_cases(self) -> Query:
        return Query(
            "energy_cases",
            "Energy determinations",
            "Energy-stage cases open now or started in the range: lag so far or final, against the SLA.",
            f"""SELECT case_id, stage, {self.stage_name()} AS stage_name, owner_agency, state,
  started_at, ended_at,
  if(state = 'OPEN', {_since("started_at")}, duration_ms) AS lag_ms, sla_ms, lag_ms > sla_ms AS overdue
FROM stage_records_latest
WHERE started_at IS NOT NULL AND {key_in(self.facts.energy_stage_keys)}
  AND (state = 'OPEN' OR $__timeFilter_ms(started_at)) AND {filters(mission=False)}
ORDER BY started_at DESC, case_id ASC, stage ASC
LIMIT 100""",
            (
                "case_id",
                "stage",
                "stage_name",
                "owner_agency",
                "state",
                "started_at",
                "ended_at",
                "lag_ms",
                "sla_ms",
                "overdue",
            ),
        )

    # case tracker -------------------------------------------------------------------------------
    def case_current(self) -> Query:
        return Query(
            "case_current",
            "Current owner",
            "The open stage(s) of the case (whole-journey stages aside): who must act and how long the case "
            "has waited on them. No row: nothing is open.",
            f"""SELECT case_id, mission, stage, {self.stage_name()} AS stage_name,
  owner_agency AS current_owner,
  started_at AS waiting_since, {_since("started_at")} AS waiting_ms, sla_ms, waiting_ms > sla_ms AS overdue
FROM stage_records_latest
WHERE case_id = ${{{CASE_VARIABLE}:singlequote}} AND state = 'OPEN' AND started_at IS NOT NULL
  AND {self.not_span()}
ORDER BY waiting_since ASC, stage ASC""",
            (
                "case_id",
                "mission",
                "stage",
                "stage_name",
                "current_owner",
                "waiting_since",
                "waiting_ms",
                "sla_ms",
                "overdue",
            ),
        )

    def case_stages(self) -> Query:
        return Query(
            "case_stages",
            "Case stages",
            "Every stage the case has entered, in journey order: owner, state, time taken or waiting, SLA.",
            f"""SELECT mission, journey, stage, {self.stage_name()} AS stage_name,
  {self.stage_order()} AS stage_order,
  owner_agency, state, started_at, ended_at,
  multiIf(state = 'CLOSED', duration_ms,
          state = 'OPEN' AND started_at IS NOT NULL, {_since("started_at")}, NULL)
    AS elapsed_ms,
  sla_ms, elapsed_ms > sla_ms AS over_sla, amount_pkr
FROM stage_records_latest
WHERE case_id = ${{{CASE_VARIABLE}:singlequote}}
ORDER BY mission, stage_order""",
            (
                "mission",
                "journey",
                "stage",
                "stage_name",
                "stage_order",
                "owner_agency",
                "state",
                "started_at",
                "ended_at",
                "elapsed_ms",
                "sla_ms",
                "over_sla",
                "amount_pkr",
            ),
        )

    def case_timeline(self) -> Query:
        detail = (
            "arrayStringConcat(arrayFilter(x -> x != '', ["
            "hs_code, "
            "if(declared_value_pkr IS NULL, '', "
            "concat('declared PKR ', toDecimalString(assumeNotNull(declared_value_pkr), 2))), "
            "ifNull(gd_number, ''), "
            "if(from_province = '' AND to_province = '', '', concat(from_province, ' → ', to_province)), "
            "vehicle_reg, terminal, container_id, ifNull(vessel, ''), "
            "if(amount_pkr IS NULL, '', concat('PKR ', toDecimalString(assumeNotNull(amount_pkr), 2))), "
            "regulator, instrument, sector]), ' · ')"
        )
        return Query(
            "case_timeline",
            "Case timeline",
            "Every event of the case across agencies, in the order it happened at the source.",
            f"""SELECT occurred_at, agency, topic, status, province, port, {detail} AS detail, published_at,
  toString(event_id) AS event_id
FROM events_distinct
WHERE case_id = ${{{CASE_VARIABLE}:singlequote}}
ORDER BY occurred_at ASC, event_id ASC""",
            (
                "occurred_at",
                "agency",
                "topic",
                "status",
                "province",
                "port",
                "detail",
                "published_at",
                "event_id",
            ),
        )

    def case_alerts(self) -> Query:
        return Query(
            "case_alerts",
            "Case alerts",
            "Alerts raised about the case, with their latest state.",
            f"""SELECT alert_id, kind, state, severity, stage, agency, summary, starts_at, ends_at
FROM alerts_current
WHERE case_id = ${{{CASE_VARIABLE}:singlequote}}
ORDER BY starts_at ASC, alert_id ASC""",
            ("alert_id", "kind", "state", "severity", "stage", "agency", "summary", "starts_at", "ends_at"),
        )


def build_queries(facts: MissionFacts) -> dict[str, Query]:
    """The query catalog for a missions file, keyed by query id."""
    return QueryBuilder(facts).build()
