"""Every panel query of the command view, on real chdb with the real migrations and seeded data.

Each query's SQL is expanded the way Grafana + the ClickHouse plugin expand it (variables, then
the plugin's macros) and the way the built-in board runs it (bound parameters); both must return
the same rows, with the declared columns, and the values an independent pandas computation over
the seeded rows gives. The macro expansion itself is checked against the plugin's own Go test
cases (grafana/clickhouse-datasource pkg/macros/macros_test.go).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pandas as pd
import pytest
from dashboard_fixtures import DAY, ENERGY, EXPORT, HOUR, SeededDatabase, seeded_database

from backbone.config import DEFAULT_MISSIONS_FILE
from dashboards.macros import MacroError, TimeRange, expand_macros, parse_go_duration
from dashboards.mission_facts import MissionFacts
from dashboards.queries import Query, build_queries
from dashboards.variables import ALL, VariableError, Variables, apply_conditional_all, bind, interpolate
from stream_processors.missions import load_missions

# -- the plugin's macros: golden cases from its Go tests -------------------------------------------
FROM_MS = 1415792726371  # 2014-11-12T11:45:26.371Z
TO_MS = 1447328726371  # 2015-11-12T11:45:26.371Z


def _ms(text: str) -> int:
    return int(datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp() * 1000)


@pytest.mark.parametrize(
    ("sql", "expected", "from_ms", "to_ms"),
    [
        (
            "select * from foo where $__timeFilter(cast(sth as timestamp))",
            "select * from foo where cast(sth as timestamp) >= toDateTime(1415792726) AND "
            "cast(sth as timestamp) <= toDateTime(1447328726)",
            _ms("2014-11-12T11:45:26.123Z"),
            _ms("2015-11-12T11:45:26.456Z"),
        ),
        (
            "select * from foo where $__timeFilter(cast(sth as timestamp) )",
            "select * from foo where cast(sth as timestamp) >= toDateTime(1415792726) AND "
            "cast(sth as timestamp) <= toDateTime(1447328726)",
            _ms("2014-11-12T11:45:26.123Z"),
            _ms("2015-11-12T11:45:26.456Z"),
        ),
        (
            "select * from foo where $__timeFilter_ms(cast(sth as timestamp))",
            "select * from foo where cast(sth as timestamp) >= fromUnixTimestamp64Milli(1415792726123) AND "
            "cast(sth as timestamp) <= fromUnixTimestamp64Milli(1447328726456)",
            _ms("2014-11-12T11:45:26.123Z"),
            _ms("2015-11-12T11:45:26.456Z"),
        ),
        (
            "select * from foo where ( date >= $__fromTime and date <= $__toTime ) limit 100",
            "select * from foo where ( date >= toDateTime(1415792726) and "
            "date <= toDateTime(1447328726) ) limit 100",
            _ms("2014-11-12T11:45:26.123Z"),
            _ms("2015-11-12T11:45:26.456Z"),
        ),
        (
            "select * from foo where ( date >= $__fromTime_ms ) and ( date <= $__toTime_ms ) limit 100",
            "select * from foo where ( date >= fromUnixTimestamp64Milli(1415792726123) ) and "
            "( date <= fromUnixTimestamp64Milli(1447328726456) ) limit 100",
            _ms("2014-11-12T11:45:26.123Z"),
            _ms("2015-11-12T11:45:26.456Z"),
        ),
        (
            "select * from foo where $__timeFilter(coalesce(closed_at, $__toTime))",
            "select * from foo where coalesce(closed_at, toDateTime(1447328726)) >= "
            "toDateTime(1415792726) AND "
            "coalesce(closed_at, toDateTime(1447328726)) <= toDateTime(1447328726)",
            _ms("2014-11-12T11:45:26.123Z"),
            _ms("2015-11-12T11:45:26.456Z"),
        ),
        (
            "select * from foo where msg = 'it\\'s -- fine' and $__fromTime",
            "select * from foo where msg = 'it\\'s -- fine' and toDateTime(1415792726)",
            _ms("2014-11-12T11:45:26.123Z"),
            _ms("2015-11-12T11:45:26.456Z"),
        ),
        (
            "select * from foo where msg = 'it''s' and $__fromTime",
            "select * from foo where msg = 'it''s' and toDateTime(1415792726)",
            _ms("2014-11-12T11:45:26.123Z"),
            _ms("2015-11-12T11:45:26.456Z"),
        ),
        (
            "SELECT `it's` AS x, msg FROM t WHERE msg = 'a--b' AND $__timeFilter(ts)",
            "SELECT `it's` AS x, msg FROM t WHERE msg = 'a--b' AND ts >= toDateTime(1415792726) AND "
            "ts <= toDateTime(1447328726)",
            _ms("2014-11-12T11:45:26.123Z"),
            _ms("2015-11-12T11:45:26.456Z"),
        ),
        (
            "SELECT $doc$a--b$doc$ AS x FROM t WHERE $__toTime",
            "SELECT $doc$a--b$doc$ AS x FROM t WHERE toDateTime(1447328726)",
            _ms("2014-11-12T11:45:26.123Z"),
            _ms("2015-11-12T11:45:26.456Z"),
        ),
        (
            "WHERE $__dateFilter(dateCol)",
            "WHERE dateCol >= toDate('2014-11-12') AND dateCol <= toDate('2015-11-12')",
            FROM_MS,
            TO_MS,
        ),
        (
            "WHERE $__dateTimeFilter(dateCol, timeCol)",
            "WHERE (dateCol >= toDate('2014-11-12') AND dateCol <= toDate('2015-11-12')) AND "
            "(timeCol >= toDateTime(1415792726) AND timeCol <= toDateTime(1447328726))",
            FROM_MS,
            TO_MS,
        ),
        ("WHERE $__timeFrom(ts)", "WHERE ts >= toDateTime(1415792726)", FROM_MS, TO_MS),
        ("WHERE $__timeTo(ts)", "WHERE ts <= toDateTime(1447328726)", FROM_MS, TO_MS),
        ("SELECT $__unknownMacro(a, b)", "SELECT $__unknownMacro(a, b)", FROM_MS, TO_MS),
    ],
)
def test_macros_expand_like_the_plugin(sql: str, expected: str, from_ms: int, to_ms: int) -> None:
    assert expand_macros(sql, TimeRange(from_ms, to_ms)) == expected


def test_interval_macros_and_time_group_like_the_plugin() -> None:
    tr = TimeRange(0, 0, interval_ms=20_000)
    assert (
        expand_macros("$__timeInterval(col)", tr) == "toStartOfInterval(toDateTime(col), INTERVAL 20 second)"
    )
    assert (
        expand_macros("$__timeInterval_ms(col)", tr)
        == "toStartOfInterval(toDateTime64(col, 3), INTERVAL 20000 millisecond)"
    )
    assert expand_macros("$__interval_s", tr) == "20"
    nested = TimeRange(_ms("2014-11-12T11:45:26.123Z"), _ms("2015-11-12T11:45:26.456Z"), interval_ms=60_000)
    assert (
        expand_macros("SELECT $__timeInterval($__fromTime) AS from_time", nested)
        == "SELECT toStartOfInterval(toDateTime(toDateTime(1415792726)), INTERVAL 60 second) AS from_time"
    )
    assert (
        expand_macros("$__timeGroup(ts, 5m)", tr) == "toStartOfInterval(toDateTime(ts), INTERVAL 300 second)"
    )
    assert (
        expand_macros("$__timeGroup(ts, '1h')", tr)
        == "toStartOfInterval(toDateTime(ts), INTERVAL 3600 second)"
    )
    assert parse_go_duration("1h30m") == 5400
    with pytest.raises(MacroError, match="expected 2 argument"):
        expand_macros("$__timeGroup(ts)", tr)
    with pytest.raises(MacroError, match="invalid duration"):
        expand_macros("$__timeGroup(ts, not-a-duration)", tr)
    with pytest.raises(MacroError, match="expected 1 argument"):
        expand_macros("$__timeFilter()", tr)
    with pytest.raises(MacroError, match="not reproduced"):
        expand_macros("$__columns(t, k, v) FROM x", tr)


def test_conditional_all_and_variables_like_the_plugin_frontend() -> None:
    sql = (
        "WHERE $__conditionalAll(a IN (${agency:singlequote}), $agency) AND "
        "$__conditionalAll(p IN ($prov), $prov)"
    )
    chosen = Variables({"agency": ["O'Brien", "KPT"], "prov": ALL}, {"prov": ["PK-PB", "PK-SD"]})
    assert interpolate(sql, chosen) == "WHERE a IN ('O\\'Brien','KPT') AND 1=1"
    # the plugin's own formatter for an unformatted multi-value variable, and "All" expanding to every option
    assert interpolate(
        "x IN ($prov) AND y = $one", Variables({"prov": ALL, "one": "v"}, {"prov": ["A", "B"]})
    ) == ("x IN ('A','B') AND y = v")
    assert apply_conditional_all("$__conditionalAll(x = 1, $empty)", Variables({"empty": ""})) == "1=1"
    # bound parameters for the board: values never become SQL text
    sql2, params = bind(
        "WHERE case_id = ${case_id:singlequote} AND $__conditionalAll(a IN (${a:singlequote}), $a)",
        Variables({"case_id": "x' OR 1=1 --", "a": ["P", "Q"]}),
    )
    assert sql2 == "WHERE case_id = {case_id:String} AND a IN ({a_0:String},{a_1:String})"
    assert params == {"case_id": "x' OR 1=1 --", "a_0": "P", "a_1": "Q"}
    with pytest.raises(VariableError, match="outside"):
        bind("WHERE x = $a", Variables({"a": "P"}))


# -- the panel queries on seeded chdb ---------------------------------------------------------------
MISSIONS = load_missions(DEFAULT_MISSIONS_FILE)
FACTS = MissionFacts.load(MISSIONS)
QUERIES = build_queries(FACTS)
STAGE_ORDER = [f"{r.mission.id}/{r.stage.id}" for r in MISSIONS.stages]
SPANS = {(EXPORT, "export_end_to_end")}  # read off config/missions.yaml: FILED→LOADED covers the journey
HANDOFF_STAGES = {(EXPORT, "permit_handoff")}
MONEY_STAGES = {(EXPORT, "rebate_payment")}
ENERGY_STAGES = {(ENERGY, "energy_notification"), (ENERGY, "energy_effective")}
# consecutive non-span stages: (mission, A, B, B measured to its end because it starts at A's end)
HAND_OVERS = [
    (EXPORT, "customs_clearance", "permit_handoff", True),
    (EXPORT, "permit_handoff", "port_loading", False),
    (ENERGY, "energy_notification", "energy_effective", True),
]


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeededDatabase]:
    yield from seeded_database(tmp_path_factory.mktemp("dashboards-chdb"))


RANGES = {"60d": 60 * DAY, "36h": 36 * HOUR}
CASES: dict[str, Variables] = {
    "export": Variables({"mission": EXPORT, "agency": ALL, "province": ALL, "port": ALL}),
    "energy": Variables({"mission": ENERGY, "agency": ALL, "province": ALL, "port": ALL}),
    "all": Variables({"mission": ALL, "agency": ALL, "province": ALL, "port": ALL}),
    "filtered": Variables(
        {
            "mission": EXPORT,
            "agency": ["SD-TRANSPORT", "FBR-CUSTOMS", "KPT"],
            "province": ALL,
            "port": ["KPT", "PQA"],
        }
    ),
}


def _normalise(value: Any) -> Any:
    if isinstance(value, datetime):
        return int(value.replace(tzinfo=value.tzinfo or UTC).timestamp() * 1000)
    if isinstance(value, date):
        return int(datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp() * 1000)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and pd.isna(value):
        return None
    return value


def run(db: SeededDatabase, query: Query, tr: TimeRange, variables: Variables) -> list[dict[str, Any]]:
    """The query as Grafana runs it and as the board runs it: same rows, declared columns."""
    grafana_sql = expand_macros(interpolate(query.sql, variables), tr)
    grafana = db.client.query(grafana_sql)
    board_sql, params = bind(query.sql, variables)
    board = db.client.query(expand_macros(board_sql, tr), parameters=params)
    assert grafana.result_rows == board.result_rows, f"{query.id}: Grafana and board SQL disagree"
    if grafana.result_rows:
        assert tuple(grafana.column_names) == query.columns, f"{query.id}: columns {grafana.column_names}"
    return [
        {c: _normalise(v) for c, v in zip(query.columns, row, strict=True)} for row in grafana.result_rows
    ]


def lower_q(values: list[int], num: int, den: int) -> int | None:
    """SEMANTICS.md: sorted(x)[floor(q * (n - 1))]."""
    if not values:
        return None
    s = sorted(values)
    return s[num * (len(s) - 1) // den]


def chosen(variables: Variables, name: str, value: Any) -> bool:
    v = variables.values.get(name, ALL)
    if v in (ALL, ""):
        return True
    return value in ([v] if isinstance(v, str) else list(v))


def rows_where(df: pd.DataFrame, keep: Callable[[Any], bool]) -> pd.DataFrame:
    return df[pd.Series([bool(keep(r)) for _, r in df.iterrows()], index=df.index, dtype=bool)]


def picked(values: pd.Series, v: Variables, name: str) -> pd.Series:
    value = v.values.get(name, ALL)
    if value in (ALL, ""):
        return pd.Series(True, index=values.index)
    return values.isin([value] if isinstance(value, str) else list(value))


def stage_filter(
    df: pd.DataFrame, v: Variables, agency_col: str = "owner_agency", mission: bool = True
) -> pd.DataFrame:
    keep = (
        picked(df[agency_col], v, "agency")
        & picked(df["province"], v, "province")
        & picked(df["port"], v, "port")
    )
    if mission:
        keep &= picked(df["mission"], v, "mission")
    return df[keep]


def _stage_keys(df: pd.DataFrame) -> pd.Series:
    return df["mission"].astype(str) + "/" + df["stage"].astype(str)


def with_stages(df: pd.DataFrame, stages: set[tuple[str, str]]) -> pd.DataFrame:
    return df[_stage_keys(df).isin({f"{m}/{st}" for m, st in stages})] if len(df) else df


def without_stages(df: pd.DataFrame, stages: set[tuple[str, str]]) -> pd.DataFrame:
    return df[~_stage_keys(df).isin({f"{m}/{st}" for m, st in stages})] if len(df) else df


def key(r: Any) -> tuple[str, str]:
    return (r["mission"], r["stage"])


def order_of(mission: str, stage: str) -> int:
    return STAGE_ORDER.index(f"{mission}/{stage}") + 1


def money(values: list[Any]) -> Decimal | None:
    vals = [Decimal(str(x)) for x in values if x is not None and not (isinstance(x, float) and pd.isna(x))]
    return sum(vals, Decimal(0)) if vals else None


Oracle = Callable[[SeededDatabase, TimeRange, Variables], list[dict[str, Any]]]
ORACLES: dict[str, Oracle] = {}


def oracle(qid: str) -> Callable[[Oracle], Oracle]:
    def register(fn: Oracle) -> Oracle:
        ORACLES[qid] = fn
        return fn

    return register


def _closed_in(df: pd.DataFrame, tr: TimeRange) -> pd.DataFrame:
    return df[(df["state"] == "CLOSED") & (df["ended_at"] >= tr.from_ms) & (df["ended_at"] <= tr.to_ms)]


@oracle("kpi_targets")
def _kpi_targets(db: SeededDatabase, tr: TimeRange, v: Variables) -> list[dict[str, Any]]:
    k = db.seed.kpis()
    windows = {w.name: w for w in MISSIONS.windows}
    rows = []
    for m, t, _ in MISSIONS.targets:
        w = windows[t.window]
        end = tr.to_ms // w.step_ms * w.step_ms
        g = k[
            (k["mission"] == m.id)
            & (k["stage"] == t.stage)
            & (k["window"] == t.window)
            & (k["window_end"] == end)
        ]
        n, met = int(g["completions"].sum()), int(g["sla_met"].sum())
        ratio = met / n if n else None
        status = (
            "NO DATA"
            if n < t.min_completions
            else "GREEN"
            if ratio >= t.min_sla_compliance
            else "AMBER"
            if ratio >= t.min_sla_compliance - 0.05
            else "RED"
        )
        rows.append(
            {
                "mission": m.id,
                "target": t.id,
                "window_end": end,
                "completions": n,
                "sla_met": met,
                "sla_compliance": ratio,
                "target_compliance": t.min_sla_compliance,
                "status": status,
            }
        )
    return sorted(rows, key=lambda r: (r["mission"], r["target"]))


@oracle("throughput_today")
def _throughput(db: SeededDatabase, tr: TimeRange, v: Variables) -> list[dict[str, Any]]:
    s = stage_filter(db.seed.stages(), v)
    day_start = tr.to_ms // DAY * DAY
    s = s[(s["state"] == "CLOSED") & (s["ended_at"] >= day_start) & (s["ended_at"] <= tr.to_ms)]
    rows = [
        {"mission": m, "stage": st, "completions": len(g), "within_sla": int(g["sla_met"].astype(bool).sum())}
        for (m, st), g in s.groupby(["mission", "stage"])
    ]
    return sorted(rows, key=lambda r: (r["mission"], order_of(r["mission"], r["stage"])))


@oracle("backlog_by_agency")
def _backlog(db: SeededDatabase, tr: TimeRange, v: Variables) -> list[dict[str, Any]]:
    b = db.seed.backlog()
    b = stage_filter(without_stages(b, SPANS), v)
    rows = []
    for owner, g in b.groupby("owner_agency"):
        n = int(g["open_cases"].sum())
        if n == 0:
            continue
        oldest = int(g["oldest_started_at"].dropna().min())
        rows.append(
            {
                "owner_agency": owner,
                "open_total": n,
                "oldest_since": oldest,
                "oldest_wait_ms": tr.to_ms - oldest,
                "locked_pkr": money(list(g["amount_pkr_open"])),
            }
        )
    return sorted(rows, key=lambda r: (-r["open_total"], r["owner_agency"]))


@oracle("longest_waiting")
def _longest(db: SeededDatabase, tr: TimeRange, v: Variables) -> list[dict[str, Any]]:
    s = stage_filter(db.seed.stages(), v)
    s = s[(s["state"] == "OPEN") & (s["started_at"] <= tr.to_ms)]
    s = without_stages(s, SPANS).sort_values(["started_at", "case_id"]).head(15)
    return [
        {
            "case_id": r.case_id,
            "stage": r.stage,
            "owner_agency": r.owner_agency,
            "waiting_ms": tr.to_ms - int(r.started_at),
            "overdue": int(tr.to_ms - r.started_at > r.sla_ms),
        }
        for r in s.itertuples()
    ]


def _alerts(db: SeededDatabase, v: Variables) -> pd.DataFrame:
    a = db.seed.alerts_current()
    return rows_where(
        a,
        lambda r: (
            (r["mission"] == "" or chosen(v, "mission", r["mission"])) and chosen(v, "agency", r["agency"])
        ),
    )


@oracle("live_alerts")
def _live(db: SeededDatabase, tr: TimeRange, v: Variables) -> list[dict[str, Any]]:
    a = _alerts(db, v)
    a = a[(a["state"] == "FIRING") & (a["starts_at"] <= tr.to_ms)].copy()
    a["_crit"] = a["severity"] != "critical"
    a = a.sort_values(["_crit", "starts_at", "alert_id"]).head(100)
    return [
        {"alert_id": r.alert_id, "kind": r.kind, "case_id": r.case_id, "firing_ms": tr.to_ms - r.starts_at}
        for r in a.itertuples()
    ]


@oracle("resolved_alerts")
def _resolved(db: SeededDatabase, tr: TimeRange, v: Variables) -> list[dict[str, Any]]:
    a = _alerts(db, v)
    a = a[(a["state"] == "RESOLVED") & (a["ends_at"] >= tr.from_ms) & (a["ends_at"] <= tr.to_ms)]
    a = a.sort_values(["ends_at", "alert_id"], ascending=[False, True]).head(100)
    return [
        {"alert_id": r.alert_id, "ends_at": int(r.ends_at), "fired_ms": int(r.ends_at - r.starts_at)}
        for r in a.itertuples()
    ]


@oracle("rejected_input")
def _rejected_input(db: SeededDatabase, tr: TimeRange, v: Variables) -> list[dict[str, Any]]:
    """Distinct dead letters received in the range per (topic, reason, source); the variables do
    not apply (an undecodable record names no mission or agency)."""
    d = db.seed.dead_letters()
    d = d[(d["received_at"] >= tr.from_ms) & (d["received_at"] <= tr.to_ms)]
    rows = []
    for (topic, reason, source), g in d.groupby(["topic", "reason", "source"]):
        newest = g.sort_values(["received_at", "dead_letter_id"]).iloc[-1]
        rows.append(
            {
                "topic": topic,
                "reason": reason,
                "source": source,
                "records": len(g),
                "last_at": int(newest["received_at"]),
                "example_key": (newest["key"] or b"").decode("utf-8", "replace"),
                "example_detail": newest["detail"],
            }
        )
    return sorted(rows, key=lambda r: (-r["records"], r["topic"], r["reason"], r["source"]))


@oracle("feed_freshness")
def _freshness(db: SeededDatabase, tr: TimeRange, v: Variables) -> list[dict[str, Any]]:
    f = db.seed.freshness()
    ev = db.seed.distinct_events()
    today = ev[ev["occurred_at"] // DAY == tr.to_ms // DAY]
    rows = []
    for r in f.itertuples():
        if not chosen(v, "agency", r.agency):
            continue
        silent_ms = tr.to_ms - r.last_occurred_at
        threshold = MISSIONS.feeds.threshold_ms(r.agency)
        rows.append(
            {
                "agency": r.agency,
                "silent_ms": silent_ms,
                "silence_threshold_ms": threshold,
                "silent": int(silent_ms > threshold),
                "events_today": int((today["agency"] == r.agency).sum()),
            }
        )
    return sorted(rows, key=lambda r: (-r["silent"], -r["silent_ms"], r["agency"]))


@oracle("stage_funnel")
def _funnel(db: SeededDatabase, tr: TimeRange, v: Variables) -> list[dict[str, Any]]:
    s = stage_filter(db.seed.stages(), v)
    s = s[(s["started_at"] >= tr.from_ms) & (s["started_at"] <= tr.to_ms)]
    rows = [
        {
            "mission": m,
            "stage": st,
            "entered": len(g),
            "completed": int((g["state"] == "CLOSED").sum()),
            "still_open": int((g["state"] == "OPEN").sum()),
            "cancelled": int((g["state"] == "CANCELLED").sum()),
        }
        for (m, st), g in s.groupby(["mission", "stage"])
    ]
    return sorted(rows, key=lambda r: (r["mission"], order_of(r["mission"], r["stage"])))


def _time_rows(g: pd.DataFrame) -> dict[str, Any]:
    d = [int(x) for x in g["duration_ms"]]
    return {
        "completions": len(d),
        "p50_ms": lower_q(d, 1, 2),
        "p90_ms": lower_q(d, 9, 10),
        "sla_compliance": g["sla_met"].astype(bool).sum() / len(d),
    }


@oracle("stage_time_by_agency")
def _by_agency(db: SeededDatabase, tr: TimeRange, v: Variables) -> list[dict[str, Any]]:
    s = _closed_in(stage_filter(db.seed.stages(), v), tr)
    s = without_stages(s, SPANS)
    totals = s.groupby("mission")["duration_ms"].sum()
    rows = []
    for (m, st, owner), g in s.groupby(["mission", "stage", "owner_agency"]):
        rows.append(
            {
                "mission": m,
                "stage": st,
                "owner_agency": owner,
                **_time_rows(g),
                "mean_ms": g["duration_ms"].sum() / len(g),
                "time_share": g["duration_ms"].sum() / totals[m],
            }
        )
    return sorted(rows, key=lambda r: (r["mission"], order_of(r["mission"], r["stage"]), r["owner_agency"]))


@oracle("stage_time_by_port_province")
def _by_port(db: SeededDatabase, tr: TimeRange, v: Variables) -> list[dict[str, Any]]:
    s = _closed_in(stage_filter(db.seed.stages(), v), tr)
    rows = [
        {"mission": m, "stage": st, "port": p, "province": pr, **_time_rows(g)}
        for (m, st, p, pr), g in s.groupby(["mission", "stage", "port", "province"])
    ]
    return sorted(
        rows, key=lambda r: (r["mission"], order_of(r["mission"], r["stage"]), r["port"], r["province"])
    )


@oracle("hand_over_gaps")
def _hand_overs(db: SeededDatabase, tr: TimeRange, v: Variables) -> list[dict[str, Any]]:
    all_s = db.seed.stages()
    s = all_s[picked(all_s["mission"], v, "mission")]
    a_side = _closed_in(stage_filter(s, Variables({**v.values, "agency": ALL})), tr)
    gaps: dict[tuple[str, ...], list[int]] = {}
    for mission, a_stage, b_stage, to_end in HAND_OVERS:
        bs = s[(s["mission"] == mission) & (s["stage"] == b_stage)].set_index("case_id")
        for a in a_side[(a_side["mission"] == mission) & (a_side["stage"] == a_stage)].itertuples():
            if a.case_id not in bs.index:
                continue
            b = bs.loc[a.case_id]
            acted = b["ended_at"] if to_end else b["started_at"]
            if pd.isna(acted):
                continue
            gaps.setdefault((mission, a_stage, a.owner_agency, b_stage, b["owner_agency"]), []).append(
                int(acted - a.ended_at)
            )
    rows = [
        {
            "mission": k[0],
            "from_stage": k[1],
            "from_agency": k[2],
            "to_stage": k[3],
            "to_agency": k[4],
            "cases": len(g),
            "p50_ms": lower_q(g, 1, 2),
            "p90_ms": lower_q(g, 9, 10),
        }
        for k, g in gaps.items()
        if chosen(v, "agency", k[2]) or chosen(v, "agency", k[4])
    ]
    return sorted(rows, key=lambda r: (r["mission"], r["from_stage"], r["from_agency"], r["to_agency"]))


@oracle("agency_scorecard")
def _scorecard(db: SeededDatabase, tr: TimeRange, v: Variables) -> list[dict[str, Any]]:
    s = stage_filter(db.seed.stages(), v)
    s = without_stages(s, SPANS)
    rows = []
    for owner, g in s.groupby("owner_agency"):
        done = _closed_in(g, tr)
        hand = with_stages(done, HANDOFF_STAGES)
        open_ = g[g["state"] == "OPEN"]
        if not len(done) and not len(open_):
            continue
        d = [int(x) for x in done["duration_ms"]]
        hd = [int(x) for x in hand["duration_ms"]]
        rows.append(
            {
                "owner_agency": owner,
                "completions": len(done),
                "within_sla": int(done["sla_met"].astype(bool).sum()),
                "sla_compliance": done["sla_met"].astype(bool).sum() / len(done) if len(done) else None,
                "p50_ms": lower_q(d, 1, 2),
                "p90_ms": lower_q(d, 9, 10),
                "open_now": len(open_),
                "overdue_now": int(((tr.to_ms - open_["started_at"]) > open_["sla_ms"]).sum()),
                "handoff_completions": len(hand),
                "handoff_compliance": hand["sla_met"].astype(bool).sum() / len(hand) if len(hand) else None,
                "handoff_p50_ms": lower_q(hd, 1, 2),
            }
        )
    return sorted(rows, key=lambda r: r["owner_agency"])


def _daily(
    db: SeededDatabase, tr: TimeRange, v: Variables, stages: Callable[[tuple[str, str]], bool]
) -> list[dict]:
    s = stage_filter(db.seed.stages(), v)
    s = s[s["state"] == "CLOSED"]
    s = s[
        pd.Series([stages(k) for k in zip(s["mission"], s["stage"], strict=True)], index=s.index, dtype=bool)
    ].copy()
    s["day"] = s["ended_at"] // DAY * DAY
    s = s[(s["day"] >= tr.from_ms // DAY * DAY) & (s["day"] <= tr.to_ms // DAY * DAY)]
    rows = [
        {
            "time": int(day),
            "owner_agency": owner,
            "day_completions": len(g),
            "sla_compliance": g["sla_met"].astype(bool).sum() / len(g),
        }
        for (day, owner), g in s.groupby(["day", "owner_agency"])
    ]
    return sorted(rows, key=lambda r: (r["time"], r["owner_agency"]))


ORACLES["agency_trend"] = lambda db, tr, v: _daily(db, tr, v, lambda k: k not in SPANS)
ORACLES["collaboration_trend"] = lambda db, tr, v: _daily(db, tr, v, lambda k: k in HANDOFF_STAGES)


@oracle("money_locked")
def _money_locked(db: SeededDatabase, tr: TimeRange, v: Variables) -> list[dict[str, Any]]:
    b = db.seed.backlog()
    b = stage_filter(with_stages(b, MONEY_STAGES), v, mission=False)
    rows = []
    for (m, st), g in b.groupby(["mission", "stage"]):
        oldest = int(g["oldest_started_at"].dropna().min())
        rows.append(
            {
                "mission": m,
                "stage": st,
                "open_total": int(g["open_cases"].sum()),
                "locked_pkr": money(list(g["amount_pkr_open"])),
                "oldest_wait_ms": tr.to_ms - oldest,
            }
        )
    return rows


@oracle("money_ageing")
def _money_ageing(db: SeededDatabase, tr: TimeRange, v: Variables) -> list[dict[str, Any]]:
    as_of = _normalise(db.client.query("SELECT max(as_of) FROM backlog_ageing").result_rows[0][0])
    s = stage_filter(db.seed.stages(), v, mission=False)
    s = with_stages(s[s["state"] == "OPEN"], MONEY_STAGES)
    buckets: dict[str, list[Any]] = {"0-30d": [], "31-60d": [], "61-90d": [], "90d+": []}
    for r in s.itertuples():
        days = (as_of - r.started_at) // DAY
        name = "0-30d" if days <= 30 else "31-60d" if days <= 60 else "61-90d" if days <= 90 else "90d+"
        buckets[name].append(r.amount_pkr)
    return [{"age_bucket": b, "open_total": len(a), "locked_pkr": money(a)} for b, a in buckets.items()]


@oracle("money_paid")
def _money_paid(db: SeededDatabase, tr: TimeRange, v: Variables) -> list[dict[str, Any]]:
    s = _closed_in(stage_filter(db.seed.stages(), v, mission=False), tr)
    s = with_stages(s, MONEY_STAGES)
    rows = []
    for (m, st), g in s.groupby(["mission", "stage"]):
        t = _time_rows(g)
        rows.append(
            {
                "mission": m,
                "stage": st,
                "paid": t["completions"],
                "within_sla": int(g["sla_met"].astype(bool).sum()),
                "sla_compliance": t["sla_compliance"],
                "paid_pkr": money(list(g["amount_pkr"])),
                "p50_ms": t["p50_ms"],
                "p90_ms": t["p90_ms"],
            }
        )
    return rows


@oracle("energy_lag")
def _energy(db: SeededDatabase, tr: TimeRange, v: Variables) -> list[dict[str, Any]]:
    s = stage_filter(db.seed.stages(), v, mission=False)
    s = with_stages(s, ENERGY_STAGES)
    rows = []
    for (m, st), g in s.groupby(["mission", "stage"]):
        done = _closed_in(g, tr)
        d = [int(x) for x in done["duration_ms"]]
        open_ = g[g["state"] == "OPEN"]
        rows.append(
            {
                "mission": m,
                "stage": st,
                "completions": len(d),
                "sla_compliance": done["sla_met"].astype(bool).sum() / len(d) if d else None,
                "p50_ms": lower_q(d, 1, 2),
                "p90_ms": lower_q(d, 9, 10),
                "max_ms": max(d) if d else None,
                "open_now": len(open_),
                "oldest_wait_ms": tr.to_ms - int(open_["started_at"].min()) if len(open_) else None,
            }
        )
    return sorted(rows, key=lambda r: order_of(r["mission"], r["stage"]))


@oracle("energy_cases")
def _energy_cases(db: SeededDatabase, tr: TimeRange, v: Variables) -> list[dict[str, Any]]:
    s = stage_filter(db.seed.stages(), v, mission=False)
    s = with_stages(s, ENERGY_STAGES)
    s = s[(s["state"] == "OPEN") | ((s["started_at"] >= tr.from_ms) & (s["started_at"] <= tr.to_ms))]
    s = s.sort_values(["started_at", "case_id", "stage"], ascending=[False, True, True]).head(100)
    return [
        {
            "case_id": r.case_id,
            "stage": r.stage,
            "state": r.state,
            "lag_ms": tr.to_ms - int(r.started_at) if r.state == "OPEN" else int(r.duration_ms),
        }
        for r in s.itertuples()
    ]


def _target_oracle(target: str) -> Oracle:
    return lambda db, tr, v: [r for r in _kpi_targets(db, tr, v) if r["target"] == target]


for _m, _t, _ in MISSIONS.targets:
    ORACLES[f"kpi_target__{_t.id}"] = _target_oracle(_t.id)

CASE_QUERIES = {"case_current", "case_stages", "case_timeline", "case_alerts"}


def test_every_query_has_an_oracle() -> None:
    assert set(QUERIES) - CASE_QUERIES == set(ORACLES)


def _compare(
    actual: list[dict[str, Any]], expected: list[dict[str, Any]], qid: str, sort_key: Any = None
) -> None:
    if sort_key:
        actual = sorted(actual, key=sort_key)
    assert len(actual) == len(expected), f"{qid}: {len(actual)} rows, expected {len(expected)}"
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        for col, want in e.items():
            got, want = a[col], _normalise(want)
            if want is None or got is None:
                assert got is None and want is None, f"{qid} row {i} {col}: {got!r} != {want!r}"
            elif isinstance(want, float) or isinstance(got, float):
                assert got == pytest.approx(want, rel=1e-9, abs=1e-12), (
                    f"{qid} row {i} {col}: {got} != {want}"
                )
            elif isinstance(want, Decimal) or isinstance(got, Decimal):
                assert Decimal(str(got)) == want, f"{qid} row {i} {col}: {got} != {want}"
            else:
                assert got == want, f"{qid} row {i} {col}: {got!r} != {want!r}"


EXPECTED_EMPTY: dict[str, set[str]] = {
    "export": set(),
    "energy": {"collaboration_trend"},  # hand-off stages belong to the export mission
    "all": set(),
    # the agency filter (customs, Sindh transport, KPT) leaves out the rebate office and the energy ministry
    "filtered": {"energy_cases", "energy_lag", "money_locked", "money_paid"},
}
UNORDERED = {"hand_over_gaps": lambda r: (r["mission"], r["from_stage"], r["from_agency"], r["to_agency"])}


@pytest.mark.integration
@pytest.mark.parametrize(
    ("case_name", "range_name"), [("export", "60d"), ("energy", "60d"), ("all", "36h"), ("filtered", "36h")]
)
def test_panel_queries_match_an_independent_computation(
    db: SeededDatabase, case_name: str, range_name: str
) -> None:
    now = db.seed.now_ms
    tr = TimeRange(now - RANGES[range_name], now)
    variables = CASES[case_name]
    empty = set()
    for qid, compute in ORACLES.items():
        actual = run(db, QUERIES[qid], tr, variables)
        expected = compute(db, tr, variables)
        _compare(actual, expected, qid, UNORDERED.get(qid))
        if not expected:
            empty.add(qid)
    # the seed exercises every panel; only these are empty by construction of the case (an energy stage
    # completing "today" depends on the hour the test runs)
    may_be_empty = {"throughput_today"} if case_name == "energy" else set()
    assert empty - may_be_empty == EXPECTED_EMPTY[case_name], (
        f"{case_name}/{range_name}: empty {sorted(empty)}"
    )


@pytest.mark.integration
def test_seed_makes_every_traffic_light_and_bucket_non_trivial(db: SeededDatabase) -> None:
    now = db.seed.now_ms
    tr = TimeRange(now - 7 * DAY, now)
    statuses = {r["target"]: r["status"] for r in run(db, QUERIES["kpi_targets"], tr, CASES["all"])}
    assert statuses == {
        "permits_within_12h": "GREEN",
        "customs_within_24h": "AMBER",
        "rebates_within_30d": "RED",
        "notifications_within_15d": "NO DATA",
    }
    ageing = run(db, QUERIES["money_ageing"], tr, CASES["export"])
    assert all(r["open_total"] > 0 for r in ageing), ageing
    fresh = {r["agency"]: r for r in run(db, QUERIES["feed_freshness"], tr, CASES["all"])}
    assert fresh["KP-TRANSPORT"]["silent"] == 1 and fresh["FBR-CUSTOMS"]["silent"] == 0


def _open_case(db: SeededDatabase) -> str:
    s = db.seed.stages()
    s = s[(s["state"] == "OPEN") & (s["stage"] == "permit_handoff")]
    return str(s.sort_values("case_id")["case_id"].iloc[0])


@pytest.mark.integration
def test_case_tracker_queries(db: SeededDatabase) -> None:
    now = db.seed.now_ms
    tr = TimeRange(now - 60 * DAY, now)
    case_id = _open_case(db)
    v = Variables({"case_id": case_id})
    stages = db.seed.stages()
    mine = stages[stages["case_id"] == case_id]

    current = run(db, QUERIES["case_current"], tr, v)
    open_ = without_stages(mine[mine["state"] == "OPEN"], SPANS)
    open_ = open_.sort_values(["started_at", "stage"])
    assert [(r["stage"], r["current_owner"], r["waiting_ms"]) for r in current] == [
        (r.stage, r.owner_agency, now - int(r.started_at)) for r in open_.itertuples()
    ]
    assert current and current[0]["current_owner"].endswith("-TRANSPORT")

    got_stages = run(db, QUERIES["case_stages"], tr, v)
    assert [r["stage"] for r in got_stages] == sorted(mine["stage"], key=lambda st: order_of(EXPORT, st))
    for r in got_stages:
        rec = mine[mine["stage"] == r["stage"]].iloc[0]
        want = int(rec["duration_ms"]) if rec["state"] == "CLOSED" else now - int(rec["started_at"])
        assert (r["state"], r["elapsed_ms"], r["owner_agency"]) == (rec["state"], want, rec["owner_agency"])

    timeline = run(db, QUERIES["case_timeline"], tr, v)
    ev = db.seed.distinct_events()
    ev = ev[ev["case_id"] == case_id].sort_values(["occurred_at", "event_id"])
    assert [(r["occurred_at"], r["agency"], r["status"]) for r in timeline] == [
        (int(e.occurred_at), e.agency, e.status) for e in ev.itertuples()
    ]
    assert "520512" in timeline[0]["detail"]

    alerts = run(db, QUERIES["case_alerts"], tr, v)
    a = db.seed.alerts_current()
    assert sorted(r["alert_id"] for r in alerts) == sorted(a[a["case_id"] == case_id]["alert_id"])

    # a hostile case id is only ever a bound value: it finds nothing and breaks nothing
    assert run(db, QUERIES["case_stages"], tr, Variables({"case_id": "x' OR '1'='1"})) == []
