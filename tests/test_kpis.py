"""Hop 2 (KpiEngine): windows, late events, corrections, backlog, idempotency and KPI/feed alerts.

Expected KPI values are computed here from the durations the test itself chose (brute force over
every window definition), never from the engine's own panes or sketches.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections import defaultdict
from typing import Any

from engine_fixtures import DAY, HOUR, MIN, T0, C, Pipeline, R, event, export_case
from stream_processors.kpis import KpiEngine

CUSTOMS_GROUP = "export_competitiveness|export_shipment|customs_clearance|FBR-CUSTOMS|PK-PB|KPT"
WINDOWS = {"1m": (MIN, MIN), "1h": (HOUR, 5 * MIN), "24h": (DAY, HOUR)}


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def expected_windows(completions: list[tuple[int, int, int]]) -> dict[tuple[str, int], dict[str, Any]]:
    """(window, start) → KPIs, from (ended_at, duration, sla_ms) by brute force over window starts."""
    out: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)
    for ended, duration, sla in completions:
        for name, (size, step) in WINDOWS.items():
            start = ended - ended % step
            while start > ended - size:
                out[(name, start)].append((duration, sla))
                start -= step
    result = {}
    for (name, start), items in out.items():
        durations = sorted(d for d, _ in items)
        n = len(durations)
        result[(name, start)] = {
            "completions": n,
            "sla_met": sum(1 for d, sla in items if d <= sla),
            "mean_ms": sum(durations) / n,
            "p50": durations[math.floor(0.5 * (n - 1))],
            "p90": durations[math.floor(0.9 * (n - 1))],
        }
    return result


def windows_of(p: Pipeline, stage: str = "customs_clearance") -> dict[tuple[str, int], dict[str, Any]]:
    return {(w["window"], w["window_start"]): w for w in p.windows().values()
            if w["stage"] == stage and w["completions"] > 0}


def assert_windows_match(p: Pipeline, completions: list[tuple[int, int, int]]) -> None:
    got = windows_of(p)
    want = expected_windows(completions)
    assert set(got) == set(want)
    for key, w in want.items():
        g = got[key]
        assert (g["completions"], g["sla_met"]) == (w["completions"], w["sla_met"]), key
        assert math.isclose(g["mean_ms"], w["mean_ms"])
        assert abs(g["p50_ms"] - w["p50"]) <= 0.01 * w["p50"] and abs(g["p90_ms"] - w["p90"]) <= 0.01 * w["p90"]
        assert g["sla_compliance"] == w["sla_met"] / w["completions"]
        assert math.isclose(g["throughput_per_h"], w["completions"] / (WINDOWS[key[0]][0] / HOUR))
        group = "|".join((g["mission"], g["journey"], g["stage"], g["owner_agency"], g["province"], g["port"]))
        assert g["kpi_id"] == sha1(f"{key[0]}|{key[1]}|{group}")
        assert g["window_end"] == key[1] + WINDOWS[key[0]][0]


def customs_cases(n: int, seed: int = 1) -> tuple[list[tuple[str, dict]], list[tuple[int, int, int]]]:
    import random

    rng = random.Random(seed)
    events, completions = [], []
    for i in range(n):
        filed = T0 + rng.randint(0, 6 * HOUR)
        duration = rng.choice([0, rng.randint(1, 40 * HOUR)])
        events += [(C, event(C, f"EXP-{i}", "FILED", filed)), (C, event(C, f"EXP-{i}", "CLEARED", filed + duration))]
        completions.append((filed + duration, duration, 24 * HOUR))
    return events, completions


def test_windows_equal_a_brute_force_computation_whatever_the_arrival_order() -> None:
    events, completions = customs_cases(120)
    import random

    random.Random(5).shuffle(events)
    p = Pipeline()  # grace 1h, while the shuffle spreads events over ~46 h: use a huge grace instead
    p = Pipeline(settings=p.settings.model_copy(update={"grace_ms": 100 * DAY}))
    for i in range(0, len(events), 25):
        p.push(events[i:i + 25], T0 + 3 * DAY)
        p.tick(T0 + 3 * DAY)
    assert_windows_match(p, completions)
    assert sum(p.out.late_events.values()) == 0


def test_closed_windows_are_final_and_later_completions_are_counted_as_late() -> None:
    p = Pipeline()  # grace 1 hour
    p.push([(C, event(C, "A", "FILED", T0)), (C, event(C, "A", "CLEARED", T0 + 10 * MIN))], T0 + 10 * MIN)
    # Within the grace an out-of-order completion for the same minute is folded in.
    p.push([(C, event(C, "B", "FILED", T0 + 5 * MIN)), (C, event(C, "B", "CLEARED", T0 + 10 * MIN + 30_000)),
            (C, event(C, "X", "FILED", T0 + 70 * MIN))], T0 + 70 * MIN)
    p.tick(T0 + 70 * MIN)
    minute = windows_of(p)[("1m", T0 + 10 * MIN)]
    assert (minute["completions"], minute["late_events"]) == (2, 0)
    # The watermark moves past the minute's end + grace; the tick closes it for good.
    p.push([(C, event(C, "Y", "FILED", T0 + 3 * HOUR))], T0 + 3 * HOUR)
    closed = p.tick(T0 + 3 * HOUR)
    assert any(w["window"] == "1m" and w["window_start"] == T0 + 10 * MIN for w in closed.kpi_windows)
    out = p.push([(C, event(C, "C", "FILED", T0)), (C, event(C, "C", "CLEARED", T0 + 10 * MIN + 1))],
                 T0 + 3 * HOUR)
    minute = windows_of(p)[("1m", T0 + 10 * MIN)]
    assert (minute["completions"], minute["late_events"]) == (2, 1)  # re-emitted, not folded in
    assert out.late_events == {("export_competitiveness", "customs_clearance"): 1}
    # The 24h window that holds the same minute is still open: the completion is folded in there.
    day_windows = [w for (name, _), w in windows_of(p).items() if name == "24h"]
    p.tick(T0 + 3 * HOUR)
    day_windows = [w for (name, start), w in windows_of(p).items() if name == "24h" and start == T0]
    assert day_windows[0]["completions"] == 3 and day_windows[0]["late_events"] == 0


def test_a_correction_moves_a_completion_between_windows() -> None:
    p = Pipeline(settings=Pipeline().settings.model_copy(update={"grace_ms": 10 * DAY}))
    p.push([(C, event(C, "A", "FILED", T0)), (C, event(C, "A", "CLEARED", T0 + 5 * HOUR))], T0 + 5 * HOUR)
    p.tick(T0 + 5 * HOUR)
    assert_windows_match(p, [(T0 + 5 * HOUR, 5 * HOUR, 24 * HOUR)])
    # An earlier CLEARED (a correction from the source system) moves the completion to 2 h.
    p.push([(C, event(C, "A", "CLEARED", T0 + 2 * HOUR))], T0 + 5 * HOUR)
    p.tick(T0 + 5 * HOUR)
    assert_windows_match(p, [(T0 + 2 * HOUR, 2 * HOUR, 24 * HOUR)])
    old = [w for w in p.windows().values() if w["window"] == "1m" and w["window_start"] == T0 + 5 * HOUR]
    assert [w["completions"] for w in old] == [0]  # the emptied window is re-emitted with 0


def test_backlog_counts_open_cases_their_oldest_start_and_money_locked() -> None:
    p = Pipeline()
    p.push([(R, event(R, "R1", "FILED", T0, amount=100_00)), (R, event(R, "R2", "FILED", T0 + HOUR, amount=250_50)),
            (R, event(R, "R3", "FILED", T0 + 2 * HOUR, amount=1_00))], T0 + 2 * HOUR)
    rebate_group = "export_competitiveness|rebate_claim|rebate_payment|FBR-DRAWBACK|PK-PB|"
    b = p.backlog()[sha1(rebate_group)]
    assert (b["open_cases"], b["oldest_started_at"], b["amount_pkr_open"]) == (3, T0, 351_50)
    p.push([(R, event(R, "R1", "PAID", T0 + DAY)), (R, event(R, "R3", "REJECTED", T0 + DAY))], T0 + DAY)
    b = p.backlog()[sha1(rebate_group)]
    assert (b["open_cases"], b["oldest_started_at"], b["amount_pkr_open"]) == (1, T0 + HOUR, 250_50)
    p.push([(R, event(R, "R2", "PAID", T0 + 2 * DAY))], T0 + 2 * DAY)
    b = p.backlog()[sha1(rebate_group)]
    assert (b["open_cases"], b["oldest_started_at"], b["amount_pkr_open"]) == (0, None, 0)
    customs = p.backlog().get(sha1(CUSTOMS_GROUP))
    assert customs is None
    p.push([(C, event(C, "E1", "FILED", T0))], T0 + 2 * DAY)
    assert p.backlog()[sha1(CUSTOMS_GROUP)]["amount_pkr_open"] is None  # customs tracks no money


def kpi_snapshot(states: dict[str, Any]) -> dict[str, Any]:
    """KPI state without versions (which follow the clock)."""
    snap = copy.deepcopy(states)
    for v in snap.values():
        if isinstance(v, dict):
            for k in ("bv", "v", "w"):
                v.pop(k, None)
    return snap


def test_replaying_facts_after_a_crash_leaves_the_kpi_state_unchanged() -> None:
    events = []
    for i in range(20):
        events += export_case(f"EXP-{i}", T0 + i * 20 * MIN, customs_h=1 + i % 5)
    events += [(R, event(R, "R1", "FILED", T0)), (R, event(R, "R1", "PAID", T0 + 10 * HOUR))]
    p = Pipeline()
    for i in range(0, len(events), 9):
        p.push(events[i:i + 9], T0 + 3 * DAY)
    uninterrupted = kpi_snapshot(p.kpi_states)
    # A worker that crashed after applying the facts but before committing re-reads them from an
    # earlier offset: every fact it had applied is skipped.
    restarted = KpiEngine(p.missions, p.settings)
    restarted.rebuild_index(p.kpi_states)
    msgs = p.fact_messages
    restarted.apply(msgs[len(msgs) // 3:], p.kpi_states, T0 + 3 * DAY)
    restarted.apply(msgs, p.kpi_states, T0 + 3 * DAY)
    assert kpi_snapshot(p.kpi_states) == uninterrupted
    # The same holds for windows closed by ticks in between.
    p.tick(T0 + 3 * DAY)
    closed = kpi_snapshot(p.kpi_states)
    restarted.rebuild_index(p.kpi_states)
    restarted.apply(msgs, p.kpi_states, T0 + 3 * DAY)
    assert kpi_snapshot(p.kpi_states) == closed


def test_kpi_target_fires_on_the_first_breached_window_and_resolves_on_the_next_good_one() -> None:
    p = Pipeline(settings=Pipeline().settings.model_copy(update={"grace_ms": 0}))
    # Day 0: 6 customs clearances, 2 late (>24 h): 66% < 85% target, >= 5 completions: breach.
    events = []
    ends = [T0 - 20 * HOUR + i * MIN for i in range(6)]
    for i, cleared in enumerate(ends):
        duration = 30 * HOUR if i < 2 else 2 * HOUR
        events += [(C, event(C, f"A{i}", "FILED", cleared - duration)), (C, event(C, f"A{i}", "CLEARED", cleared))]
    p.push(events, T0)
    target = "customs_within_24h"
    fired = []
    for hour in range(1, 60):
        p.push([(C, event(C, f"tick{hour}", "FILED", T0 + hour * HOUR))], T0 + hour * HOUR)
        fired += [a for a in p.tick(T0 + hour * HOUR).alerts if a["kind"] == "KPI_TARGET"]
    firing = [a for a in fired if a["state"] == "FIRING"]
    assert len(firing) == 1
    first_bad = firing[0]
    # The first 24h window (1h hop) that holds all six: the one starting at the hour before the first end - 1 day.
    first_start = (ends[0] - DAY) - (ends[0] - DAY) % HOUR + HOUR
    assert first_bad["alert_id"] == sha1(f"KPI_TARGET|{target}|{CUSTOMS_GROUP}|{first_start}")
    assert first_bad["starts_at"] == first_start + DAY
    assert first_bad["value"] < 0.85 and first_bad["threshold"] == 0.85
    assert [a["state"] for a in fired if a["alert_id"] == first_bad["alert_id"]] == ["FIRING"]
    # Now a good day: 5 fast clearances; the next closed window meeting the target resolves it.
    good = []
    for i in range(5):
        good += [(C, event(C, f"G{i}", "FILED", T0 + 60 * HOUR + i * MIN)),
                 (C, event(C, f"G{i}", "CLEARED", T0 + 61 * HOUR + i * MIN))]
    p.push(good, T0 + 62 * HOUR)
    resolved = []
    for hour in range(62, 110):
        p.push([(C, event(C, f"t{hour}", "FILED", T0 + hour * HOUR))], T0 + hour * HOUR)
        resolved += [a for a in p.tick(T0 + hour * HOUR).alerts if a["kind"] == "KPI_TARGET"]
    assert [(a["alert_id"], a["state"]) for a in resolved] == [(first_bad["alert_id"], "RESOLVED")]
    assert resolved[0]["starts_at"] == first_bad["starts_at"] and resolved[0]["ends_at"] > first_bad["starts_at"]


def test_feed_freshness_and_feed_silent_fire_once_per_silence_and_resolve_on_a_new_event() -> None:
    p = Pipeline()
    out = p.push([(R, event(R, "R1", "FILED", T0, published_at=T0 + 5_000)),
                  (R, event(R, "R2", "FILED", T0 - HOUR, published_at=T0 + 9_000))], T0 + MIN)
    fresh = {f["agency"]: f for f in out.feed_freshness}["FBR-DRAWBACK"]
    assert (fresh["last_occurred_at"], fresh["last_published_at"], fresh["events_total"], fresh["topic"]) == (
        T0, T0 + 9_000, 2, R)  # the newest occurred_at, the newest published_at
    threshold = 6 * HOUR  # feeds.silence.FBR-DRAWBACK in config/missions.yaml
    assert [a for a in p.tick(T0 + threshold).alerts if a["kind"] == "FEED_SILENT"] == []
    fired = [a for a in p.tick(T0 + threshold + 1).alerts if a["kind"] == "FEED_SILENT"]
    assert [(a["alert_id"], a["state"], a["agency"]) for a in fired] == [
        (sha1(f"FEED_SILENT|FBR-DRAWBACK|{T0}"), "FIRING", "FBR-DRAWBACK")]
    assert fired[0]["starts_at"] == T0 + threshold
    assert [a for a in p.tick(T0 + 2 * threshold).alerts if a["kind"] == "FEED_SILENT"] == []
    out = p.push([(R, event(R, "R3", "FILED", T0 + DAY))], T0 + DAY)
    assert [(a["alert_id"], a["state"], a["ends_at"]) for a in out.alerts if a["kind"] == "FEED_SILENT"] == [
        (fired[0]["alert_id"], "RESOLVED", T0 + DAY)]
    again = [a for a in p.tick(T0 + DAY + threshold + 1).alerts if a["kind"] == "FEED_SILENT"]
    assert [a["alert_id"] for a in again] == [sha1(f"FEED_SILENT|FBR-DRAWBACK|{T0 + DAY}")]


def test_a_silence_seen_only_in_arriving_event_times_fires_and_resolves_at_once() -> None:
    p = Pipeline()
    threshold = 6 * HOUR
    out = p.push([(R, event(R, "R1", "FILED", T0)), (R, event(R, "R2", "FILED", T0 + HOUR)),
                  (R, event(R, "R3", "FILED", T0 + HOUR + threshold + 1))], T0 + 8 * HOUR)
    silent = [(a["alert_id"], a["state"], a["starts_at"], a["ends_at"]) for a in out.alerts if a["kind"] == "FEED_SILENT"]
    gap_id = sha1(f"FEED_SILENT|FBR-DRAWBACK|{T0 + HOUR}")
    assert silent == [(gap_id, "FIRING", T0 + HOUR + threshold, None),
                      (gap_id, "RESOLVED", T0 + HOUR + threshold, T0 + HOUR + threshold + 1)]
    # A gap of exactly the threshold is not a silence.
    out = p.push([(R, event(R, "R4", "FILED", T0 + HOUR + 2 * threshold + 1))], T0 + DAY)
    assert [a for a in out.alerts if a["kind"] == "FEED_SILENT"] == []


def test_a_group_whose_instances_closed_before_anyone_saw_them_open_still_has_a_zero_backlog_row() -> None:
    p = Pipeline()
    p.push([(C, event(C, "A", "CLEARED", T0 + HOUR))], T0 + HOUR)
    p.push([(C, event(C, "A", "FILED", T0))], T0 + HOUR)
    b = p.backlog()[sha1(CUSTOMS_GROUP)]
    assert (b["open_cases"], b["oldest_started_at"]) == (0, None)
