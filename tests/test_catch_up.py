"""Overdue checks during a catch-up: CASE_SLA and FEED_SILENT judged at min(now, low watermark).

Expected values are computed here from the generated events (which handoffs really took longer
than their SLA), never read from the engine. "Wall" time is the Pipeline's FixedClock: every push
or tick happens at the ``now_ms`` it is given, as on the wall clock.
"""

from __future__ import annotations

import random

from engine_fixtures import HOUR, MIN, T0, C, P, Pipeline, event

from stream_processors.clock import FixedClock
from stream_processors.watermarks import DEFAULT_PARTITION_IDLE_MS, CatchUpClock

SEC = 1000
HANDOFF_SLA = 12 * HOUR  # config/missions.yaml: permit_handoff
CUSTOMS_SLA = 24 * HOUR


def firing(alerts: list[dict], kind: str, stage: str | None = None) -> set[str]:
    return {
        a["case_id"] or a["agency"]
        for a in alerts
        if a["kind"] == kind and a["state"] == "FIRING" and (stage is None or a["stage"] == stage)
    }


def handoff_cases(n: int, seed: int = 5) -> tuple[list, list, set[str]]:
    """Customs events (FILED, CLEARED) and permit events (ISSUED) of ``n`` export cases over two
    days; returns them per topic and the ids of the cases whose hand-off really breached."""
    rng = random.Random(seed)
    customs, permits, breached = [], [], set()
    for i in range(n):
        case_id = f"EXP-{i}"
        filed = T0 + rng.randrange(0, 48 * HOUR)
        cleared = filed + rng.randrange(HOUR, 20 * HOUR)
        issued = cleared + rng.randrange(MIN, 16 * HOUR)
        customs += [(C, event(C, case_id, "FILED", filed)), (C, event(C, case_id, "CLEARED", cleared))]
        permits.append((P, event(P, case_id, "ISSUED", issued)))
        if issued - cleared > HANDOFF_SLA:
            breached.add(case_id)
    customs.sort(key=lambda e: e[1]["occurred_at"])
    permits.sort(key=lambda e: e[1]["occurred_at"])
    return customs, permits, breached


def test_catch_up_where_one_topic_lags_another_fires_only_the_real_breaches() -> None:
    """After a 10-day outage the customs backlog is read first, the permits backlog later: every
    hand-off looks open against the wall clock, but only the real breaches may fire."""
    customs, permits, breached = handoff_cases(200)
    p = Pipeline(partitions=1)
    wall = T0 + 10 * 24 * HOUR  # the outage is over; the wall clock is far ahead of the backlog
    for i in range(0, len(customs), 40):
        p.push(customs[i : i + 40], wall)
        wall += SEC
        p.tick(wall)  # the runtime's sweep, once a second
    # The test can fail: judged against the wall clock, every hand-off would be overdue by now.
    assert all(wall - e[1]["occurred_at"] > HANDOFF_SLA for e in customs if e[1]["status"] == "CLEARED")
    for i in range(0, len(permits), 40):
        p.push(permits[i : i + 40], wall)
        wall += SEC
        p.tick(wall)
    assert breached and len(breached) < 200
    assert firing(p.out.alerts, "CASE_SLA", "permit_handoff") == breached
    # Nothing is open any more: later sweeps (partitions idle, judged at now) add nothing.
    p.tick(wall + DEFAULT_PARTITION_IDLE_MS + 1)
    assert firing(p.out.alerts, "CASE_SLA", "permit_handoff") == breached
    resolved = {
        a["case_id"] for a in p.out.alerts if a["stage"] == "permit_handoff" and a["state"] == "RESOLVED"
    }
    assert resolved == breached


def live_step(p: Pipeline, wall: int, n: int, latency_ms: int = 2 * SEC) -> None:
    """Live traffic: one new export case filed on the customs topic and one permit issued for an
    earlier case, occurring ``latency_ms`` before ``wall``."""
    p.push(
        [
            (C, event(C, f"LIVE-{n}", "FILED", wall - latency_ms)),
            (P, event(P, f"LIVE-{n - 1}", "ISSUED", wall - latency_ms)),
        ],
        wall,
    )


def test_a_truly_stalled_case_fires_in_near_real_time_while_traffic_is_live() -> None:
    p = Pipeline(partitions=1)
    p.push([(C, event(C, "STALLED", "FILED", T0))], T0 + SEC)
    deadline = T0 + CUSTOMS_SLA
    wall, n, fired_at = T0 + 30 * SEC, 0, None
    while fired_at is None and wall < deadline + HOUR:
        n += 1
        live_step(p, wall, n)
        out = p.tick(wall)
        if "STALLED" in firing(out.alerts, "CASE_SLA", "customs_clearance"):
            fired_at = wall
        wall += 30 * SEC if abs(wall - deadline) < 5 * MIN else 20 * MIN
    assert fired_at is not None
    # Judged at the newest live event (2 s behind the wall): within one 30 s step of the deadline.
    assert deadline < fired_at <= deadline + 2 * SEC + 30 * SEC


def test_a_silent_topic_holds_alerts_back_for_the_idle_time_only() -> None:
    """Permits deliver one old event and then fall silent; customs stays live. The stale permits
    partition holds the judge time back until it has been idle for ``partition_idle_ms``."""
    idle = DEFAULT_PARTITION_IDLE_MS
    p = Pipeline(partitions=1)
    p.push([(C, event(C, "STALLED", "FILED", T0))], T0 + SEC)
    deadline = T0 + CUSTOMS_SLA
    wall = deadline + HOUR
    # A permit event that occurred long ago (a late publication) is the last thing permits send.
    p.push([(P, event(P, "OLD", "ISSUED", T0 + HOUR))], wall)
    silent_since = wall
    fired_at = None
    step = 0
    while fired_at is None and wall < silent_since + 10 * idle:
        step += 1
        wall += 10 * SEC
        p.push([(C, event(C, f"LIVE-{step}", "FILED", wall - SEC))], wall)
        if "STALLED" in firing(p.tick(wall).alerts, "CASE_SLA", "customs_clearance"):
            fired_at = wall
    assert fired_at is not None
    assert silent_since + idle < fired_at <= silent_since + idle + 10 * SEC


def test_a_restart_does_not_judge_recovered_cases_before_their_partitions_are_read() -> None:
    """After an outage the recovered state holds open cases whose ends wait in the backlog."""
    from stream_processors.journeys import JourneyEngine

    p = Pipeline(partitions=1)
    p.push([(C, event(C, "EXP-1", "FILED", T0))], T0 + SEC)
    wall = FixedClock(T0 + 10 * 24 * HOUR)
    restarted = JourneyEngine(p.missions, p.settings, wall_clock=wall)
    restarted.rebuild_index(p.case_states)
    assert restarted.sweep(p.case_states, wall.now_ms()).alerts == []  # backlog not read yet
    cleared = p.feeder.messages([(C, event(C, "EXP-1", "CLEARED", T0 + HOUR))])
    wall.advance(SEC)
    out = restarted.process(cleared, p.case_states, wall.now_ms())
    assert [a for a in out.alerts if a["kind"] == "CASE_SLA"] == []
    # A case that really is stalled fires once the partition has been idle for the idle time.
    p.push([(C, event(C, "EXP-2", "FILED", T0 + 2 * HOUR))], T0 + 3 * HOUR)
    restarted.rebuild_index(p.case_states)
    wall.advance(SEC)
    assert restarted.sweep(p.case_states, wall.now_ms()).alerts == []
    wall.advance(DEFAULT_PARTITION_IDLE_MS + SEC)
    fired = restarted.sweep(p.case_states, wall.now_ms()).alerts
    # EXP-1's customs stage closed in 1 h; its later stages and EXP-2's are really overdue.
    assert {(a["case_id"], a["stage"]) for a in fired} == {
        ("EXP-1", "permit_handoff"),
        ("EXP-1", "export_end_to_end"),
        ("EXP-2", "customs_clearance"),
        ("EXP-2", "export_end_to_end"),
    }


def test_feed_silent_is_not_raised_while_a_backlog_is_drained() -> None:
    """Customs and permits both published every 10 minutes for two days; the customs backlog is
    read first. The permits feed must not look silent meanwhile (its events are just unread)."""
    customs, permits = [], []
    for k in range(2 * 24 * 6):
        t = T0 + k * 10 * MIN
        customs.append((C, event(C, f"C-{k}", "ASSESSED", t)))
        permits.append((P, event(P, f"P-{k}", "ISSUED", t)))
    p = Pipeline(partitions=1)
    wall = T0 + 10 * 24 * HOUR
    p.push(customs[:5] + permits[:5], wall)  # both feeds seen at the start of the backlog
    for i in range(5, len(customs), 50):
        wall += SEC
        p.push(customs[i : i + 50], wall)
        p.tick(wall)
    # The test can fail: judged against the wall clock the permits feed is days silent.
    assert wall - permits[4][1]["occurred_at"] > 30 * MIN
    for i in range(5, len(permits), 50):
        wall += SEC
        p.push(permits[i : i + 50], wall)
        p.tick(wall)
    assert firing(p.out.alerts, "FEED_SILENT") == set()  # no gap longer than 30 min in either feed
    # Caught up and then truly silent: once the partitions are idle, both feeds fire.
    p.tick(wall + DEFAULT_PARTITION_IDLE_MS + SEC)
    assert firing(p.out.alerts, "FEED_SILENT") == {"FBR-CUSTOMS", "PB-TRANSPORT"}


def test_catch_up_clock_judge_time_rules() -> None:
    wall = FixedClock(0)
    clock = CatchUpClock(("a", "b"), idle_ms=60 * SEC, wall=wall)
    assert clock.judge_time(1_000) == 1_000  # nothing known: nothing to wait for
    clock.observe("a", 0, 500, wall.now_ms())
    assert clock.judge_time(1_000, 0) < 0  # "b" of partition 0 is expected and not read yet
    wall.advance(60 * SEC + 1)
    assert clock.judge_time(10**9, 0) == 10**9  # both idle now: judged at now
    clock.observe("a", 0, 700, wall.now_ms())
    clock.observe("b", 0, 900, wall.now_ms())
    assert clock.judge_time(10**9, 0) == 700  # the slowest active topic-partition
    assert clock.judge_time(600, 0) == 600  # never later than now
    clock.observe("a", 1, 100, wall.now_ms())
    assert clock.judge_time(10**9, 0) == 700 and clock.judge_time(10**9) < 0  # partition 1's "b" unread
    clock.expect([2])
    assert sorted(clock.partitions()) == [0, 1, 2]
