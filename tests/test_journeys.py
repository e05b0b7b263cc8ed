"""Hop 1 (JourneyEngine): stage records, CASE_SLA alerts, dead letters, duplicates and eviction.

Expected values are written from SEMANTICS.md by hand (ids with hashlib), not taken from the
engine. Plain functions, dict state stores, no broker.
"""

from __future__ import annotations

import copy
import hashlib
import random

from engine_fixtures import (
    DAY,
    HOUR,
    MIN,
    PORTS,
    T0,
    C,
    P,
    Pipeline,
    R,
    event,
    export_case,
)

from backbone.config import Settings
from stream_processors.api import InputMessage

EXPORT = ("export_competitiveness", "export_shipment")


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def rid(case_id: str, stage: str, mission: str = EXPORT[0], journey: str = EXPORT[1]) -> str:
    return sha1(f"{case_id}|{mission}|{journey}|{stage}")


def case_sla(alerts: list[dict]) -> list[dict]:
    return [a for a in alerts if a["kind"] == "CASE_SLA"]


def view(p: Pipeline) -> dict[str, tuple]:
    """Latest records without versions: what must not depend on arrival order."""
    return {
        k: (
            r["state"],
            r["started_at"],
            r["ended_at"],
            r["duration_ms"],
            r["sla_met"],
            r["owner_agency"],
            r["province"],
            r["port"],
            r["amount_pkr"],
        )
        for k, r in p.records().items()
    }


def test_an_export_case_in_order_gives_one_record_per_stage_with_owner_duration_and_sla() -> None:
    p = Pipeline()
    p.push(
        export_case("EXP-1", T0, province="PK-SD", port="PQA", customs_h=10, handoff_h=13, port_h=20),
        T0 + 3 * DAY,
    )
    recs = p.records()
    cleared, issued = T0 + 10 * HOUR, T0 + 23 * HOUR
    gate_in, loaded = issued + HOUR, issued + 21 * HOUR
    assert recs[rid("EXP-1", "customs_clearance")]["duration_ms"] == 10 * HOUR
    assert recs[rid("EXP-1", "customs_clearance")]["owner_agency"] == "FBR-CUSTOMS"
    handoff = recs[rid("EXP-1", "permit_handoff")]
    assert (handoff["state"], handoff["started_at"], handoff["ended_at"]) == ("CLOSED", cleared, issued)
    assert handoff["owner_agency"] == "SD-TRANSPORT"  # owner_by_province of the start event
    assert handoff["sla_met"] is False and handoff["sla_ms"] == 12 * HOUR
    port = recs[rid("EXP-1", "port_loading")]
    assert port["owner_agency"] == "PQA" and port["port"] == "PQA"
    assert (port["started_at"], port["ended_at"]) == (gate_in, loaded)
    e2e = recs[rid("EXP-1", "export_end_to_end")]
    assert e2e["duration_ms"] == loaded - T0 and e2e["sla_met"] is True
    assert len(recs) == 4 and all(r["state"] == "CLOSED" for r in recs.values())


def test_arrival_order_and_batching_do_not_change_the_records() -> None:
    events = []
    for i in range(30):
        events += export_case(
            f"EXP-{i}",
            T0 + i * HOUR,
            province=random.Random(i).choice(["PK-PB", "PK-SD"]),
            customs_h=5 + i,
            handoff_h=1 + i % 7,
        )
    in_order = Pipeline()
    in_order.push(events, T0 + 10 * DAY)
    for seed in range(3):
        shuffled = list(events)
        random.Random(seed).shuffle(shuffled)
        p = Pipeline()
        for i in range(0, len(shuffled), 17):
            p.push(shuffled[i : i + 17], T0 + 10 * DAY)
        assert view(p) == view(in_order)


def test_an_end_before_its_start_emits_nothing_until_the_start_arrives() -> None:
    p = Pipeline()
    out = p.push([(C, event(C, "EXP-1", "CLEARED", T0 + 5 * HOUR))], T0 + 6 * HOUR)
    # CLEARED starts the hand-off (OPEN) but only *ends* customs clearance, whose start is unknown.
    assert [r["stage"] for r in out.stage_records] == ["permit_handoff"]
    out = p.push([(C, event(C, "EXP-1", "FILED", T0))], T0 + 6 * HOUR)
    customs = p.records()[rid("EXP-1", "customs_clearance")]
    assert (customs["state"], customs["duration_ms"]) == ("CLOSED", 5 * HOUR)


def test_duplicates_are_counted_once_within_and_across_batches() -> None:
    p = Pipeline()
    filed = event(C, "EXP-1", "FILED", T0)
    cleared = event(C, "EXP-1", "CLEARED", T0 + HOUR)
    p.push([(C, filed), (C, filed)], T0 + HOUR)
    out = p.push([(C, cleared), (C, filed), (C, cleared)], T0 + HOUR)
    assert out.duplicates == {C: 2}
    assert p.out.duplicates == {C: 3}
    assert p.out.valid_events == {(C, "FBR-CUSTOMS"): 2}
    p.tick(T0 + 3 * HOUR)
    one_minute = [
        w for w in p.windows().values() if w["window"] == "1m" and w["stage"] == "customs_clearance"
    ]
    assert [w["completions"] for w in one_minute] == [1]


def test_an_earlier_start_arriving_later_corrects_the_record_and_its_owner() -> None:
    p = Pipeline()
    p.push(
        [
            (C, event(C, "EXP-1", "CLEARED", T0 + 10 * HOUR, province="PK-PB")),
            (P, event(P, "EXP-1", "ISSUED", T0 + 12 * HOUR)),
        ],
        T0 + 13 * HOUR,
    )
    before = p.records()[rid("EXP-1", "permit_handoff")]
    assert before["owner_agency"] == "PB-TRANSPORT" and before["duration_ms"] == 2 * HOUR
    # A CLEARED event re-sent with a different id and an earlier time, from Sindh: the earliest start wins.
    out = p.push([(C, event(C, "EXP-1", "CLEARED", T0 + 9 * HOUR, province="PK-SD"))], T0 + 13 * HOUR)
    after = p.records()[rid("EXP-1", "permit_handoff")]
    assert (after["owner_agency"], after["province"], after["duration_ms"]) == (
        "SD-TRANSPORT",
        "PK-SD",
        3 * HOUR,
    )
    assert after["version"] > before["version"]
    # A later start changes nothing and emits nothing for that stage.
    out = p.push([(C, event(C, "EXP-1", "CLEARED", T0 + 11 * HOUR, province="PK-KP"))], T0 + 13 * HOUR)
    assert not [r for r in out.stage_records if r["stage"] == "permit_handoff"]


def test_start_ties_are_broken_by_the_smallest_event_id() -> None:
    a = event(C, "EXP-1", "FILED", T0, province="PK-KP", event_id="00000000-0000-4000-8000-000000000001")
    b = event(C, "EXP-1", "FILED", T0, province="PK-BA", event_id="00000000-0000-4000-8000-000000000002")
    for order in ([a, b], [b, a]):
        p = Pipeline()
        p.push([(C, e) for e in order], T0 + HOUR)
        assert p.records()[rid("EXP-1", "customs_clearance")]["province"] == "PK-KP"


def test_a_cancel_ends_the_instance_without_a_completion_and_a_later_end_closes_it() -> None:
    p = Pipeline()
    p.push([(R, event(R, "RBT-1", "FILED", T0, amount=150_000_00))], T0 + HOUR)
    rebate = ("export_competitiveness", "rebate_claim")
    key = rid("RBT-1", "rebate_payment", *rebate)
    assert p.records()[key]["state"] == "OPEN" and p.records()[key]["amount_pkr"] == 150_000_00
    p.push([(R, event(R, "RBT-1", "REJECTED", T0 + 2 * DAY))], T0 + 2 * DAY)
    r = p.records()[key]
    assert (r["state"], r["ended_at"], r["duration_ms"]) == ("CANCELLED", None, None)
    p.push([(R, event(R, "RBT-1", "PAID", T0 + 3 * DAY))], T0 + 3 * DAY)
    assert p.records()[key]["state"] == "CLOSED"  # an end, whenever it comes, makes it a completion


def test_undecodable_invalid_and_mis_keyed_messages_go_to_dead_letters_with_a_reason() -> None:
    p = Pipeline()
    good = event(C, "EXP-1", "FILED", T0)
    bad_province = event(C, "EXP-2", "FILED", T0, province="PK-XX")
    future = event(C, "EXP-3", "FILED", T0 + DAY)
    msgs = p.feeder.messages([(C, good), (C, bad_province), (C, future)])
    msgs.append(InputMessage(C, 0, 98, b"EXP-9", b"\xffgarbage", None))
    msgs.append(InputMessage(C, 0, 99, b"EXP-9", msgs[0].value[:-7], None))
    msgs.append(InputMessage(C, 0, 100, b"EXP-9", None, None))
    msgs.append(InputMessage(C, 0, 101, b"EXP-9", b"\xc3\x01" + b"\x00" * 8 + b"x", None))
    wrong_key = p.feeder.messages([(C, event(C, "EXP-4", "FILED", T0))])[0]
    msgs.append(InputMessage(C, wrong_key.partition, 102, b"OTHER", wrong_key.value, None))
    out = p.push_messages(msgs, T0 + HOUR)
    reasons = {(d["offset"], d["reason"]) for d in out.dead_letters}
    assert {r for _, r in reasons} == {
        "invalid_record",
        "undecodable",
        "bad_framing",
        "empty",
        "unknown_schema",
        "case_id_key_mismatch",
    }
    details = {d["reason"]: d["detail"] for d in out.dead_letters if d["reason"] == "invalid_record"}
    assert "province" in details["invalid_record"] or "occurred_at" in details["invalid_record"]
    assert sum(1 for d in out.dead_letters if d["reason"] == "invalid_record") == 2
    dl = next(d for d in out.dead_letters if d["offset"] == 102)
    assert (dl["key"], dl["value"], dl["topic"]) == (b"OTHER", wrong_key.value, C)
    assert dl["dead_letter_id"] == sha1(f"{C}|{wrong_key.partition}|102")
    assert [r["case_id"] for r in out.stage_records] == ["EXP-1", "EXP-1"]  # customs + end to end
    assert out.valid_events == {(C, "FBR-CUSTOMS"): 1}


def test_a_stalled_case_fires_from_the_sweep_escalates_once_and_resolves_once_when_it_ends() -> None:
    p = Pipeline()
    out = p.push([(C, event(C, "EXP-1", "FILED", T0))], T0 + MIN)
    assert out.alerts == []
    alert_id = sha1("CASE_SLA|" + rid("EXP-1", "customs_clearance"))
    assert case_sla(p.tick(T0 + 24 * HOUR).alerts) == []  # exactly at the SLA: not past it
    fired = case_sla(p.tick(T0 + 24 * HOUR + 1).alerts)
    assert [(a["alert_id"], a["state"], a["case_id"]) for a in fired] == [(alert_id, "FIRING", "EXP-1")]
    a = fired[0]
    assert (a["starts_at"], a["waiting_since"], a["agency"], a["value"], a["threshold"]) == (
        T0 + 24 * HOUR,
        T0,
        "FBR-CUSTOMS",
        1.0,
        24.0 * HOUR,
    )
    assert a["severity"] == "warning"
    assert case_sla(p.tick(T0 + 30 * HOUR).alerts) == []
    # SEMANTICS.md: critical once overdue by more than the SLA again (QA pass 6: it never was)
    assert case_sla(p.tick(T0 + 48 * HOUR).alerts) == []  # exactly twice the SLA: not past it
    escalated = case_sla(p.tick(T0 + 48 * HOUR + 1).alerts)
    assert [(x["alert_id"], x["state"], x["severity"], x["value"]) for x in escalated] == [
        (alert_id, "FIRING", "critical", 24.0 * HOUR + 1)
    ]
    assert escalated[0]["starts_at"] == T0 + 24 * HOUR  # the breach began at the SLA, as the warning's
    assert case_sla(p.tick(T0 + 60 * HOUR).alerts) == []
    out = p.push([(C, event(C, "EXP-1", "CLEARED", T0 + 50 * HOUR))], T0 + 61 * HOUR)
    resolved = [x for x in case_sla(out.alerts) if x["alert_id"] == alert_id]
    # resolves the alert it escalated to: the same severity label in Alertmanager
    assert [(x["state"], x["ends_at"], x["severity"]) for x in resolved] == [
        ("RESOLVED", T0 + 50 * HOUR, "critical")
    ]
    assert p.alerts("CASE_SLA").count((alert_id, "FIRING")) == 2
    assert p.alerts("CASE_SLA").count((alert_id, "RESOLVED")) == 1


def test_a_warning_resolved_before_twice_its_sla_never_escalates_and_resolves_as_warning() -> None:
    p = Pipeline()
    p.push([(C, event(C, "EXP-1", "FILED", T0))], T0 + MIN)
    alert_id = sha1("CASE_SLA|" + rid("EXP-1", "customs_clearance"))
    assert [(a["state"], a["severity"]) for a in case_sla(p.tick(T0 + 30 * HOUR).alerts)] == [
        ("FIRING", "warning")
    ]
    out = p.push([(C, event(C, "EXP-1", "CLEARED", T0 + 40 * HOUR))], T0 + 40 * HOUR)
    assert [(a["state"], a["severity"]) for a in case_sla(out.alerts)] == [("RESOLVED", "warning")]
    later = [a for a in case_sla(p.tick(T0 + 60 * HOUR).alerts) if a["alert_id"] == alert_id]
    assert later == []  # the escalation deadline finds it resolved
    assert [t for t in p.alerts("CASE_SLA") if t[0] == alert_id] == [
        (alert_id, "FIRING"),
        (alert_id, "RESOLVED"),
    ]


def test_an_escalation_deadline_survives_a_restart() -> None:
    p = Pipeline()
    p.push([(C, event(C, "EXP-1", "FILED", T0))], T0 + MIN)
    assert [a["severity"] for a in case_sla(p.tick(T0 + 30 * HOUR).alerts)] == ["warning"]
    from stream_processors.journeys import JourneyEngine

    p.journeys = JourneyEngine(p.missions, p.settings, wall_clock=p.wall)
    p.journeys.rebuild_index(p.case_states)
    assert [(a["state"], a["severity"]) for a in case_sla(p.tick(T0 + 49 * HOUR).alerts)] == [
        ("FIRING", "critical")
    ]
    assert case_sla(p.tick(T0 + 50 * HOUR).alerts) == []


def test_a_never_completing_case_is_critical_once_overdue_by_twice_its_sla_and_survives_a_restart() -> None:
    p = Pipeline()
    p.push([(R, event(R, "RBT-1", "FILED", T0))], T0)
    # A new engine over the same state (a restart or a rebalance) rebuilds its deadline index.
    from stream_processors.journeys import JourneyEngine

    p.journeys = JourneyEngine(p.missions, p.settings, wall_clock=p.wall)
    p.journeys.rebuild_index(p.case_states)
    fired = case_sla(p.tick(T0 + 61 * DAY).alerts)
    assert [(a["state"], a["severity"]) for a in fired] == [("FIRING", "critical")]
    assert case_sla(p.tick(T0 + 90 * DAY).alerts) == []


def test_a_stage_that_completed_late_before_any_sweep_fires_and_resolves_in_one_go() -> None:
    p = Pipeline()
    out = p.push(
        [(C, event(C, "EXP-1", "FILED", T0)), (C, event(C, "EXP-1", "CLEARED", T0 + 30 * HOUR))],
        T0 + 31 * HOUR,
    )
    alert_id = sha1("CASE_SLA|" + rid("EXP-1", "customs_clearance"))
    states = [
        (a["alert_id"], a["state"], a["value"]) for a in out.alerts if a["stage"] == "customs_clearance"
    ]
    assert states == [(alert_id, "FIRING", 6.0 * HOUR), (alert_id, "RESOLVED", 6.0 * HOUR)]
    assert [a for a in case_sla(p.tick(T0 + 40 * HOUR).alerts) if a["stage"] == "customs_clearance"] == []


def test_a_cancelled_overdue_case_resolves_with_the_cancel_time() -> None:
    p = Pipeline()
    p.push([(R, event(R, "RBT-1", "FILED", T0))], T0)
    assert [a["state"] for a in case_sla(p.tick(T0 + 31 * DAY).alerts)] == ["FIRING"]
    out = p.push([(R, event(R, "RBT-1", "REJECTED", T0 + 32 * DAY))], T0 + 32 * DAY)
    assert [(a["state"], a["ends_at"]) for a in case_sla(out.alerts)] == [("RESOLVED", T0 + 32 * DAY)]


def test_completed_cases_are_evicted_so_state_stays_bounded_and_late_events_cannot_reopen_them() -> None:
    p = Pipeline(case_retention_ms=2 * HOUR, tombstone_retention_ms=DAY)
    sizes = []
    for day in range(6):
        for i in range(40):
            start = T0 + day * DAY + i * 10 * MIN
            p.push(export_case(f"EXP-{day}-{i}", start, customs_h=1, handoff_h=1, port_h=1), start + 5 * HOUR)
        p.tick(T0 + (day + 1) * DAY)
        sizes.append(len(p.case_states))
    # Live cases are at most a day's worth, plus a day of tombstones: bounded, not growing with history.
    assert len(set(sizes[1:])) == 1 and sizes[-1] <= 2 * 40, sizes
    tombstoned = next(k for k, v in p.case_states.items() if "x" in v)
    out = p.push([(PORTS, event(PORTS, tombstoned, "LOADED", T0 + 6 * DAY))], T0 + 6 * DAY)
    assert [d["reason"] for d in out.dead_letters] == ["evicted_case"]
    assert out.stage_records == [] and out.facts == []
    assert "x" in p.case_states[tombstoned]
    # A re-sent event of an evicted case is still recognised as a duplicate.
    p2 = Pipeline(case_retention_ms=HOUR)
    case = export_case("EXP-A", T0, customs_h=1, handoff_h=1, port_h=1)
    p2.push(case, T0 + 4 * HOUR)
    p2.push(export_case("EXP-B", T0 + DAY), T0 + DAY)
    assert "x" in p2.case_states["EXP-A"]
    out = p2.push(case[:2], T0 + 2 * DAY)
    assert out.duplicates == {C: 2} and out.dead_letters == [] and out.stage_records == []


def test_case_retention_is_a_setting_a_late_correction_within_it_updates_the_case() -> None:
    """BACKBONE_CASE_RETENTION_MS: a start sent 6 h (event time) after the case completed, with newer
    cases in between, is dead-lettered under the default (2 x grace = 2 h) and folded in under 12 h."""
    for retention_ms, folded in ((0, False), (12 * HOUR, True)):
        p = Pipeline(Settings(grace_ms=HOUR, case_retention_ms=retention_ms))
        p.push(export_case("EXP-A", T0, customs_h=1, handoff_h=1, port_h=1), T0 + 4 * HOUR)
        p.push(export_case("EXP-B", T0 + 10 * HOUR), T0 + 10 * HOUR)
        earlier_filing = event(C, "EXP-A", "FILED", T0 - HOUR)
        out = p.push([(C, earlier_filing)], T0 + 10 * HOUR)
        if folded:
            assert out.dead_letters == []
            record = next(r for r in out.stage_records if r["stage"] == "customs_clearance")
            assert record["duration_ms"] == 2 * HOUR  # from the earlier filing to the clearance
        else:
            assert [d["reason"] for d in out.dead_letters] == ["evicted_case"]


def test_a_replays_last_batch_completes_cases_that_the_next_sweep_evicts_without_newer_events() -> None:
    # A backlog read in one batch: EXP-OLD completed long before the newest event of the batch.
    # Its eviction waits for the next call (the batch itself is being applied), and a sweep at
    # the same watermark is that call: a replay's end brings no newer event.
    p = Pipeline(case_retention_ms=2 * HOUR, tombstone_retention_ms=DAY)
    old = export_case("EXP-OLD", T0, customs_h=1, handoff_h=1, port_h=1)
    p.push([*old, *export_case("EXP-NEW", T0 + 3 * DAY)], T0 + 3 * DAY)
    assert "x" not in p.case_states["EXP-OLD"]
    p.tick(T0 + 3 * DAY)
    assert "x" in p.case_states["EXP-OLD"]
    assert "x" not in p.case_states["EXP-NEW"]  # still open


def test_reprocessing_a_batch_after_a_crash_emits_the_same_facts_and_records() -> None:
    p = Pipeline()
    first = p.feeder.messages(export_case("EXP-1", T0)[:2])
    p.push_messages(first, T0 + DAY)
    saved = copy.deepcopy(p.case_states)
    batch = p.feeder.messages(export_case("EXP-1", T0)[2:] + export_case("EXP-2", T0 + HOUR))
    a = p.journeys.process(batch, p.case_states, T0 + 3 * DAY)
    from stream_processors.journeys import JourneyEngine

    fresh = JourneyEngine(p.missions, p.settings, wall_clock=p.wall)
    fresh.rebuild_index(saved)
    b = fresh.process(batch, saved, T0 + 3 * DAY)
    assert a.facts == b.facts
    strip = [{k: v for k, v in r.items() if k != "version"} for r in a.stage_records]
    assert strip == [{k: v for k, v in r.items() if k != "version"} for r in b.stage_records]
    # And a replay over state that already holds the batch is all duplicates: no facts at all.
    c = fresh.process(batch, saved, T0 + 3 * DAY)
    assert c.facts == [] and sum(c.duplicates.values()) == len(batch)


def test_a_case_cancelled_after_waiting_past_its_sla_fires_and_resolves_at_the_cancel() -> None:
    p = Pipeline()
    out = p.push(
        [(R, event(R, "RBT-1", "FILED", T0)), (R, event(R, "RBT-1", "REJECTED", T0 + 40 * DAY))],
        T0 + 40 * DAY,
    )
    alert_id = sha1("CASE_SLA|" + rid("RBT-1", "rebate_payment", "export_competitiveness", "rebate_claim"))
    assert [(a["alert_id"], a["state"], a["ends_at"]) for a in case_sla(out.alerts)] == [
        (alert_id, "FIRING", None),
        (alert_id, "RESOLVED", T0 + 40 * DAY),
    ]
    quick = p.push(
        [(R, event(R, "RBT-2", "FILED", T0)), (R, event(R, "RBT-2", "REJECTED", T0 + DAY))], T0 + 40 * DAY
    )
    assert case_sla(quick.alerts) == []
