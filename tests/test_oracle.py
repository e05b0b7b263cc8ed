"""The oracle on tiny hand-built event lists; every expected value is worked out by hand here.

Plus a cross-check on simulated traffic against a plain-Python loop over the same events, so the
pandas code that every KPI test trusts is itself checked by a second, simpler computation.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from typing import Any

import oracle
from kpi_fixtures import faulty_traffic

from producers.simulator import DAY
from schemas import contracts
from stream_processors.missions import load_missions

H = 3_600_000
M = 60_000
T0 = 1_780_000_000_000 // DAY * DAY  # a UTC midnight
EXPORT = ("export_competitiveness", "export_shipment")
_ids = iter(range(10_000, 10**9))  # explicit ids in the tests stay below 10,000


def sha1(s: str) -> str:
    return hashlib.sha1(s.encode()).hexdigest()


def eid(n: int | None = None) -> str:
    return f"00000000-0000-4000-8000-{(n if n is not None else next(_ids)):012d}"


def customs(status: str, case: str, t: int, province: str = "PK-PB", port: str = "KPT", **kw: Any) -> tuple:
    raw = {
        "event_id": kw.pop("event_id", None) or eid(),
        "case_id": case,
        "agency": "FBR-CUSTOMS",
        "province": province,
        "status": status,
        "occurred_at": t,
        "published_at": t + 1000,
        "port": port,
        "hs_code": "6302.2100",
        "declared_value_pkr": 100_000,
        "container_ids": ["CSQU3054383"],
        "exporter_id": None,
        "gd_number": None,
    }
    raw.update(kw)
    return (contracts.CUSTOMS, raw)


def permit(status: str, case: str, t: int, agency: str = "PB-TRANSPORT", province: str = "PK-PB") -> tuple:
    return (
        contracts.PERMITS,
        {
            "event_id": eid(),
            "case_id": case,
            "agency": agency,
            "province": province,
            "status": status,
            "occurred_at": t,
            "published_at": t,
            "from_province": province,
            "to_province": "PK-SD",
            "vehicle_reg": "LES-1234",
        },
    )


def move(
    status: str, case: str, t: int, port: str = "KPT", agency: str = "KPT", province: str = "PK-SD"
) -> tuple:
    return (
        contracts.PORTS,
        {
            "event_id": eid(),
            "case_id": case,
            "agency": agency,
            "province": province,
            "status": status,
            "occurred_at": t,
            "published_at": t,
            "port": port,
            "terminal": "T",
            "container_id": "CSQU3054383",
            "vessel": None,
        },
    )


def claim(status: str, case: str, t: int, amount: int) -> tuple:
    return (
        contracts.REBATES,
        {
            "event_id": eid(),
            "case_id": case,
            "agency": "FBR-DRAWBACK",
            "province": "PK-PB",
            "status": status,
            "occurred_at": t,
            "published_at": t,
            "exporter_id": "1234567-1",
            "amount_pkr": amount,
        },
    )


def record(result: oracle.OracleResult, case: str, stage: str, journey: tuple = EXPORT) -> dict[str, Any]:
    rid = sha1(f"{case}|{journey[0]}|{journey[1]}|{stage}")
    found = [r for r in oracle.rows(result.stage_records) if r["record_id"] == rid]
    assert len(found) == 1, (case, stage, found)
    return found[0]


# -- stage instances -------------------------------------------------------------------------------


def test_closed_stage_in_any_arrival_order_and_duplicates_once() -> None:
    filed = customs("FILED", "EXP-1", T0)
    cleared = customs("CLEARED", "EXP-1", T0 + 10 * H)
    expected = {
        "record_id": sha1("EXP-1|export_competitiveness|export_shipment|customs_clearance"),
        "case_id": "EXP-1",
        "mission": EXPORT[0],
        "journey": EXPORT[1],
        "stage": "customs_clearance",
        "owner_agency": "FBR-CUSTOMS",
        "province": "PK-PB",
        "port": "KPT",
        "state": "CLOSED",
        "started_at": T0,
        "ended_at": T0 + 10 * H,
        "duration_ms": 10 * H,
        "sla_ms": 24 * H,
        "sla_met": True,
        "amount_pkr": None,
    }
    for events in ([filed, cleared], [cleared, filed], [cleared, filed, cleared, filed]):
        result = oracle.compute(events, now_ms=T0 + 11 * H)
        assert record(result, "EXP-1", "customs_clearance") == expected
    assert oracle.compute([cleared, filed, cleared, filed], now_ms=T0).duplicates == 2
    # A re-sent id with different content: the first one seen wins (later copy ignored).
    altered = (filed[0], {**filed[1], "occurred_at": T0 - 5 * H})
    r = record(oracle.compute([filed, cleared, altered], now_ms=T0), "EXP-1", "customs_clearance")
    assert r["started_at"] == T0


def test_end_before_start_earliest_start_and_tie_break() -> None:
    events = [
        customs("CLEARED", "EXP-2", T0 + 1 * H),
        customs("FILED", "EXP-2", T0 + 3 * H, province="PK-SD", event_id=eid(900)),
        customs("FILED", "EXP-2", T0 + 2 * H, province="PK-KP", port="PQA", event_id=eid(902)),
        customs("FILED", "EXP-2", T0 + 2 * H, province="PK-BA", port="GWD", event_id=eid(901)),
    ]
    r = record(oracle.compute(events, now_ms=T0 + 4 * H), "EXP-2", "customs_clearance")
    # started_at = earliest FILED (2 h); tie between 901 and 902 → the smaller event_id (901) fixes attributes
    assert (r["started_at"], r["province"], r["port"]) == (T0 + 2 * H, "PK-BA", "GWD")
    assert (r["state"], r["ended_at"], r["duration_ms"], r["sla_met"]) == ("CLOSED", T0 + 1 * H, 0, True)


def test_owners_by_province_and_port_with_fallback() -> None:
    events = [
        customs("CLEARED", "EXP-KP", T0, province="PK-KP"),
        customs("CLEARED", "EXP-IS", T0, province="PK-IS"),
        move("GATE_IN", "EXP-G", T0, port="GWD", agency="GPA", province="PK-BA"),
        move("GATE_IN", "EXP-Q", T0, port="PQA", agency="PQA"),
        permit("ISSUED", "EXP-KP", T0 + 13 * H, agency="KP-TRANSPORT", province="PK-KP"),
    ]
    result = oracle.compute(events, now_ms=T0 + 14 * H)
    kp = record(result, "EXP-KP", "permit_handoff")
    # The start event is a customs record, which has a port: the hand-off carries it.
    assert (kp["owner_agency"], kp["port"], kp["duration_ms"], kp["sla_met"]) == (
        "KP-TRANSPORT",
        "KPT",
        13 * H,
        False,
    )
    assert record(result, "EXP-IS", "permit_handoff")["owner_agency"] == "PB-TRANSPORT"  # no IS department
    assert record(result, "EXP-G", "port_loading")["owner_agency"] == "GPA"
    assert record(result, "EXP-Q", "port_loading")["owner_agency"] == "PQA"
    # An end without a start makes no instance: EXP-KP has no FILED, so no customs record.
    assert not [r for r in oracle.rows(result.stage_records) if r["stage"] == "customs_clearance"]


# -- backlog, money, cancellation, CASE_SLA -----------------------------------------------------------


def test_stalled_and_cancelled_rebates_backlog_and_case_sla() -> None:
    rebate = ("export_competitiveness", "rebate_claim")
    events = [
        claim("FILED", "DDT-1", T0, 1_234_567),  # stalls: open forever
        claim("FILED", "DDT-2", T0 + 1 * H, 100),  # open, young
        claim("FILED", "DDT-3", T0, 5_000),
        claim("REJECTED", "DDT-3", T0 + 31 * DAY, 5_000),  # cancelled after 31 days: fired, resolved
        claim("FILED", "DDT-4", T0, 7),
        claim("REJECTED", "DDT-4", T0 + 2 * DAY, 7),  # cancelled in time: no alert
        claim("FILED", "DDT-5", T0, 9),
        claim("PAID", "DDT-5", T0 + 31 * DAY, 9),  # closed late
    ]
    now = T0 + 30 * DAY + 30 * M  # DDT-1 waited 30 d 30 min (> 30 d), DDT-2 29 d 23.5 h (< 30 d)
    result = oracle.compute(events, now_ms=now)
    states = {
        c: record(result, c, "rebate_payment", rebate)["state"]
        for c in ("DDT-1", "DDT-2", "DDT-3", "DDT-4", "DDT-5")
    }
    assert states == {
        "DDT-1": "OPEN",
        "DDT-2": "OPEN",
        "DDT-3": "CANCELLED",
        "DDT-4": "CANCELLED",
        "DDT-5": "CLOSED",
    }
    d3 = record(result, "DDT-3", "rebate_payment", rebate)
    assert (d3["ended_at"], d3["duration_ms"], d3["sla_met"], d3["amount_pkr"]) == (None, None, None, 5_000)
    backlog = oracle.rows(result.backlog)
    assert len(backlog) == 1
    assert backlog[0] == {
        "backlog_id": sha1("export_competitiveness|rebate_claim|rebate_payment|FBR-DRAWBACK|PK-PB|"),
        "mission": "export_competitiveness",
        "journey": "rebate_claim",
        "stage": "rebate_payment",
        "owner_agency": "FBR-DRAWBACK",
        "province": "PK-PB",
        "port": "",
        "open_cases": 2,
        "oldest_started_at": T0,
        "amount_pkr_open": 1_234_567 + 100,
    }
    rid = {
        c: sha1(f"{c}|export_competitiveness|rebate_claim|rebate_payment")
        for c in ("DDT-1", "DDT-3", "DDT-5")
    }
    alert = {c: sha1(f"CASE_SLA|{r}") for c, r in rid.items()}
    assert result.firing_ids() == set(alert.values())
    assert result.resolved_ids() == {alert["DDT-3"], alert["DDT-5"]}
    rows = {(a["alert_id"], a["state"]): a for a in oracle.rows(result.case_sla_alerts)}
    d1 = rows[(alert["DDT-1"], "FIRING")]
    assert (d1["starts_at"], d1["waiting_since"], d1["threshold"], d1["agency"], d1["case_id"]) == (
        T0 + 30 * DAY,
        T0,
        float(30 * DAY),
        "FBR-DRAWBACK",
        "DDT-1",
    )
    assert rows[(alert["DDT-3"], "RESOLVED")]["ends_at"] == T0 + 31 * DAY  # the cancel event's time
    assert rows[(alert["DDT-5"], "RESOLVED")]["ends_at"] == T0 + 31 * DAY
    # Earlier "now": DDT-1 is not overdue yet; the closed/cancelled ones still are (their wait is fixed).
    assert oracle.compute(events, now_ms=T0 + 29 * DAY).firing_ids() == {alert["DDT-3"], alert["DDT-5"]}
    # Once everything is settled the backlog row stays, with 0 open and 0 money locked.
    settled = oracle.rows(oracle.compute(events[2:], now_ms=now).backlog)
    assert (settled[0]["open_cases"], settled[0]["oldest_started_at"], settled[0]["amount_pkr_open"]) == (
        0,
        None,
        0,
    )


def test_invalid_events_are_excluded() -> None:
    good = customs("FILED", "EXP-9", T0)
    bad_agency = customs("CLEARED", "EXP-9", T0 + H, agency="FBR-CUSTOMZ")
    bad_id = customs("CLEARED", "EXP-9", T0 + H, event_id="not-a-uuid")
    result = oracle.compute([good, bad_agency, bad_id], now_ms=T0 + 2 * H)
    assert record(result, "EXP-9", "customs_clearance")["state"] == "OPEN"
    assert [reason.split(":")[0] for _, _, reason in result.invalid] == ["agency", "event_id"]
    future = customs("FILED", "EXP-F", T0 + 2 * H)
    kept = oracle.compute([future], now_ms=T0, validation_now_ms=T0).events
    assert kept.empty  # two hours in the future of the validation clock


# -- KPI windows --------------------------------------------------------------------------------------


def test_window_boundaries_are_half_open_and_epoch_aligned() -> None:
    noon = T0 + 12 * H
    events = [
        customs("FILED", "EXP-A", noon - 2 * H),
        customs("CLEARED", "EXP-A", noon),  # ends exactly at 12:00
        customs("FILED", "EXP-B", noon - 3 * H),
        customs("CLEARED", "EXP-B", noon - 1),  # 11:59:59.999
    ]
    kpis = oracle.rows(oracle.compute(events, now_ms=noon).kpi_windows)
    minute = {(k["window_start"], k["completions"]) for k in kpis if k["window"] == "1m"}
    assert minute == {(noon, 1), (noon - M, 1)}
    hour_starts = {k["window_start"]: k["completions"] for k in kpis if k["window"] == "1h"}
    # A's 12 windows start at 11:05 … 12:00; B's at 11:00 … 11:55 → 11:05…11:55 hold both.
    expected = {noon - 55 * M + 5 * M * i: 2 for i in range(11)} | {noon: 1, noon - H: 1}
    assert hour_starts == expected
    day = [k for k in kpis if k["window"] == "24h"]
    # A's windows start at 13:00 the day before … 12:00; B's at 12:00 the day before … 11:00.
    assert {k["window_start"] for k in day} == {noon - 24 * H + h * H for h in range(25)}
    first = next(k for k in kpis if k["window"] == "1m" and k["window_start"] == noon)
    assert first["window_end"] == noon + M and first["throughput_per_h"] == 60.0
    assert first["kpi_id"] == sha1(
        f"1m|{noon}|export_competitiveness|export_shipment|customs_clearance|FBR-CUSTOMS|PK-PB|KPT"
    )


def test_quantiles_are_exact_lower_quantiles_and_compliance_counts() -> None:
    end = T0 + 12 * H + 30_000  # all ten end in the same minute
    hours = [5, 1, 30, 2, 9, 26, 3, 7, 4, 8]  # sorted: 1 2 3 4 5 7 8 9 26 30
    events = []
    for i, h in enumerate(hours):
        events += [customs("FILED", f"EXP-Q{i}", end - h * H), customs("CLEARED", f"EXP-Q{i}", end + i)]
    k = next(r for r in oracle.rows(oracle.compute(events, now_ms=end).kpi_windows) if r["window"] == "1m")
    durations = sorted(h * H + i for i, h in enumerate(hours))
    assert k["completions"] == 10
    assert k["p50_ms"] == durations[4] == 5 * H + 0  # floor(0.5 * 9) = 4 → the 5th smallest
    assert k["p90_ms"] == durations[8] == 26 * H + 5  # floor(0.9 * 9) = 8 → the 9th smallest
    assert k["sla_met"] == 8 and k["sla_compliance"] == 0.8  # 26 h and 30 h breach 24 h
    assert k["mean_ms"] == sum(durations) / 10
    assert oracle.lower_quantile([7], 0.9) == 7 and oracle.lower_quantile([1, 2], 0.5) == 1


# -- KPI_TARGET, feeds --------------------------------------------------------------------------------


def test_kpi_target_episode_fires_once_and_resolves() -> None:
    events = []
    day1 = T0 + DAY + 10 * H
    for i in range(5):  # five customs clearances taking 30 h, all ending at day1 10:00 + i ms
        events += [customs("FILED", f"EXP-S{i}", day1 - 30 * H), customs("CLEARED", f"EXP-S{i}", day1 + i)]
    day3 = T0 + 3 * DAY + 10 * H
    for i in range(5):  # five taking 2 h, ending at day3 10:00
        events += [customs("FILED", f"EXP-F{i}", day3 - 2 * H), customs("CLEARED", f"EXP-F{i}", day3 + i)]
    result = oracle.compute(events, now_ms=day3, watermark_ms=T0 + 10 * DAY)
    alerts = oracle.rows(result.kpi_target_alerts)
    assert [a["state"] for a in alerts] == ["FIRING", "RESOLVED"]
    first_window = day1 - 23 * H  # the earliest 24 h window (hop 1 h) holding day1 10:00
    group = "export_competitiveness|export_shipment|customs_clearance|FBR-CUSTOMS|PK-PB|KPT"
    assert (
        alerts[0]["alert_id"]
        == alerts[1]["alert_id"]
        == sha1(f"KPI_TARGET|customs_within_24h|{group}|{first_window}")
    )
    assert alerts[0]["starts_at"] == first_window + DAY and alerts[0]["value"] == 0.0
    resolving = day3 - 23 * H  # the first window with the fast ones: compliance 1.0
    assert alerts[1]["ends_at"] == resolving + DAY and alerts[1]["value"] == 1.0
    # A window closes when the watermark reaches its end + grace (1 h), not a millisecond before.
    closes = first_window + DAY + H
    assert oracle.rows(oracle.compute(events, now_ms=day3, watermark_ms=closes - 1).kpi_target_alerts) == []
    just = oracle.rows(oracle.compute(events, now_ms=day3, watermark_ms=closes).kpi_target_alerts)
    assert [(a["state"], a["alert_id"]) for a in just] == [("FIRING", alerts[0]["alert_id"])]
    # Fewer than min_completions (5): no breach at all.
    assert (
        oracle.rows(oracle.compute(events[:8], now_ms=day3, watermark_ms=T0 + 10 * DAY).kpi_target_alerts)
        == []
    )


def test_feed_freshness_and_silence_episodes() -> None:
    events = [
        customs("FILED", "EXP-1", T0, event_id=eid(500), published_at=T0 + 99 * M),  # published late
        customs("FILED", "EXP-2", T0 + 10 * M, event_id=eid(502)),
        customs("FILED", "EXP-3", T0 + 10 * M, event_id=eid(501)),
        customs("FILED", "EXP-4", T0 + 50 * M),  # a 40-minute gap (> 30 min default)
        permit("REQUESTED", "EXP-1", T0 + 5 * M),
    ]
    result = oracle.compute(events[:3] + events[4:], now_ms=T0 + 20 * M)
    fresh = {r["agency"]: r for r in oracle.rows(result.feed_freshness)}
    assert fresh["FBR-CUSTOMS"] == {
        "agency": "FBR-CUSTOMS",
        "topic": contracts.CUSTOMS,
        "last_occurred_at": T0 + 10 * M,
        "last_published_at": T0 + 99 * M,
        "events_total": 3,
    }  # last_published_at is the greatest published_at, not the newest event's
    assert fresh["PB-TRANSPORT"]["events_total"] == 1
    # NLC publishes on two topics; at a tie in event time the greatest topic name wins.
    nlc = [
        move("GATE_IN", "EXP-N", T0, agency="NLC"),
        permit("REQUESTED", "EXP-N", T0, agency="NLC"),
        move("LOADED", "EXP-N", T0 - M, agency="NLC"),
    ]
    tie = oracle.rows(oracle.compute(nlc, now_ms=T0).feed_freshness)
    assert [(r["agency"], r["topic"], r["events_total"]) for r in tie] == [("NLC", contracts.PERMITS, 3)]
    assert result.firing_ids("FEED_SILENT") == set()
    later = oracle.compute(events, now_ms=T0 + 90 * M)
    silent = {(a["alert_id"], a["state"], a["ends_at"]) for a in oracle.rows(later.feed_silent_alerts)}
    assert silent == {
        (sha1(f"FEED_SILENT|FBR-CUSTOMS|{T0 + 10 * M}"), "FIRING", None),
        (sha1(f"FEED_SILENT|FBR-CUSTOMS|{T0 + 10 * M}"), "RESOLVED", T0 + 50 * M),
        (sha1(f"FEED_SILENT|FBR-CUSTOMS|{T0 + 50 * M}"), "FIRING", None),  # 40 min silent at now
        (sha1(f"FEED_SILENT|PB-TRANSPORT|{T0 + 5 * M}"), "FIRING", None),
    }


# -- cross-check on simulated traffic --------------------------------------------------------------------


def test_oracle_agrees_with_a_plain_loop_on_simulated_traffic() -> None:
    events = faulty_traffic(T0, seed=31, cases=400, span_ms=3 * DAY)
    result = oracle.compute(events, now_ms=T0 + 60 * DAY)
    missions = load_missions(oracle.DEFAULT_MISSIONS)

    seen: set[str] = set()
    valid = []
    invalid_ids = {raw["event_id"] for _, raw, _ in result.invalid}
    for e in events:
        if e.raw["event_id"] in seen or e.raw["event_id"] in invalid_ids or e.raw["case_id"].strip() == "":
            continue
        seen.add(e.raw["event_id"])
        valid.append((e.topic, e.raw))
    assert len(valid) == len(result.events)
    by_case: dict[str, list[tuple[str, dict]]] = defaultdict(list)
    for topic, raw in valid:
        by_case[raw["case_id"]].append((topic, raw))
    expected: dict[str, tuple] = {}
    for case, evs in by_case.items():
        for ref in missions.stages:
            s = ref.stage
            starts = sorted(
                (r["occurred_at"], r["event_id"], t, r)
                for t, r in evs
                if (t, r["status"]) == (s.start.topic, s.start.status)
            )
            if not starts:
                continue
            ends = [r["occurred_at"] for t, r in evs if (t, r["status"]) == (s.end.topic, s.end.status)]
            cancels = [
                r["occurred_at"]
                for t, r in evs
                if any((t, r["status"]) == (c.topic, c.status) for c in s.cancel_on)
            ]
            _, _, topic, first = starts[0]
            port = first.get("port", "") if topic in (contracts.CUSTOMS, contracts.PORTS) else ""
            state = "CLOSED" if ends else "CANCELLED" if cancels else "OPEN"
            duration = max(0, min(ends) - first["occurred_at"]) if ends else None
            rid = sha1(f"{case}|{ref.mission.id}|{ref.journey.id}|{s.id}")
            owner = s.owner_by_port.get(port) or s.owner_by_province.get(first["province"]) or s.owner
            expected[rid] = (
                state,
                first["occurred_at"],
                min(ends) if ends else None,
                duration,
                owner,
                first["province"],
                port,
            )
    got = {
        r["record_id"]: (
            r["state"],
            r["started_at"],
            r["ended_at"],
            r["duration_ms"],
            r["owner_agency"],
            r["province"],
            r["port"],
        )
        for r in oracle.rows(result.stage_records)
    }
    assert got == expected

    # KPI windows: recompute the 1h window from the completions with plain loops.
    windows: dict[tuple, list[int]] = defaultdict(list)
    for r in oracle.rows(result.stage_records):
        if r["state"] != "CLOSED":
            continue
        for back in range(12):
            start = (r["ended_at"] // (5 * M) - back) * 5 * M
            windows[(start, r["stage"], r["owner_agency"], r["province"], r["port"])].append(r["duration_ms"])
    hour = {
        (k["window_start"], k["stage"], k["owner_agency"], k["province"], k["port"]): k
        for k in oracle.rows(result.kpi_windows)
        if k["window"] == "1h"
    }
    assert set(hour) == set(windows)
    for key, durations in windows.items():
        d = sorted(durations)
        k = hour[key]
        assert (k["completions"], k["p50_ms"], k["p90_ms"]) == (
            len(d),
            d[math.floor(0.5 * (len(d) - 1))],
            d[math.floor(0.9 * (len(d) - 1))],
        )
        assert math.isclose(k["mean_ms"], sum(d) / len(d))
