"""The simulator: deterministic, valid, correlated traffic with the configured faults; live pacing;
publishing to a real broker. Expected values are computed here from the raw events themselves."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import oracle
import pytest
from confluent_kafka import Consumer, TopicPartition
from typer.testing import CliRunner

from backbone.cli import app
from backbone.config import load_settings
from backbone.embedded.broker import TansuBroker
from backbone.kafka import ensure_topics
from producers.simulate_cli import Pacer, build_config
from producers.simulator import (
    DAY,
    HOUR,
    MINUTE,
    NO_CUTOFF,
    SimEvent,
    SimulationConfig,
    generate,
    iso6346_check_digit,
    uuid4_from,
)
from schemas import contracts
from schemas.codec import Codec
from schemas.registry import default_registry
from schemas.validation import InvalidRecord, validate_event

START = 1_780_000_000_000  # 2026-05-28T20:26:40Z
FAR_NOW = 2_000_000_000_000


def run(**overrides: Any) -> list[SimEvent]:
    return list(
        generate(SimulationConfig(**{"start_ms": START, "cases": 400, "span_ms": 2 * DAY, **overrides}))
    )


def fingerprint(events: list[SimEvent]) -> list[tuple[str, str, int]]:
    return [(e.topic, json.dumps(e.raw, sort_keys=True), e.deliver_at) for e in events]


# -- determinism ----------------------------------------------------------------------------------


def test_same_seed_same_events_different_seed_or_start_different() -> None:
    a, b = run(seed=11), run(seed=11)
    assert fingerprint(a) == fingerprint(b)
    c = run(seed=12)
    assert fingerprint(a) != fingerprint(c)
    assert not {e.raw["event_id"] for e in a} & {e.raw["event_id"] for e in c}
    d = run(seed=11, start_ms=START + 1000)
    assert not {e.raw["event_id"] for e in a} & {e.raw["event_id"] for e in d}


def test_uuid_and_container_check_digit_helpers() -> None:
    for bits in (0, 2**128 - 1, 0x0123456789ABCDEF0123456789ABCDEF):
        assert uuid4_from(bits) == str(uuid.UUID(int=bits, version=4))
    assert iso6346_check_digit("CSQU305438") == 3  # the ISO 6346 worked example


# -- validity -------------------------------------------------------------------------------------


def test_every_event_is_valid_round_trips_and_is_delivered_in_order() -> None:
    events = run(seed=3, cases=600)
    codec = Codec()
    for e in events:
        validate_event(e.topic, e.raw, FAR_NOW)
        assert codec.decode(e.topic, codec.encode(e.topic, e.raw)) == e.raw
        assert set(e.raw) == set(contracts.current(e.topic).field_names)
        assert e.deliver_at >= e.raw["occurred_at"]
        assert e.raw["occurred_at"] < START + 2 * DAY  # the batch cut
    assert [e.deliver_at for e in events] == sorted(e.deliver_at for e in events)
    assert {e.topic for e in run(cases=1500, span_ms=3 * DAY, until_ms=NO_CUTOFF)} == set(
        contracts.INPUT_TOPICS
    )


def test_journeys_are_correlated_across_agencies() -> None:
    """One case id across customs, the province's transport department and the port authority."""
    reg = default_registry()
    events = run(seed=5, cases=300, until_ms=NO_CUTOFF, stall_share=0.0)
    by_case: dict[str, list[SimEvent]] = defaultdict(list)
    for e in events:
        by_case[e.raw["case_id"]].append(e)
    exports = {c: evs for c, evs in by_case.items() if c.startswith("EXP-")}
    assert len(exports) > 250
    departments = {
        "PK-PB": "PB-TRANSPORT",
        "PK-SD": "SD-TRANSPORT",
        "PK-KP": "KP-TRANSPORT",
        "PK-BA": "BA-TRANSPORT",
    }
    for evs in exports.values():
        customs = [e.raw for e in evs if e.topic == contracts.CUSTOMS]
        permits = [e.raw for e in evs if e.topic == contracts.PERMITS]
        moves = [e.raw for e in evs if e.topic == contracts.PORTS]
        province, port = customs[0]["province"], customs[0]["port"]
        assert [c["status"] for c in sorted(customs, key=lambda r: r["occurred_at"])][0] == "FILED"
        assert {p["agency"] for p in permits} == {departments.get(province, "PB-TRANSPORT")}
        assert {m["port"] for m in moves} == {port}
        assert {m["agency"] for m in moves} == {reg.ports[port].authority}
        assert {m["container_id"] for m in moves} == set(customs[0]["container_ids"])
        times = {
            r["status"]: r["occurred_at"]
            for r in sorted(customs + permits + moves, key=lambda r: -r["occurred_at"])
        }
        assert (
            times["FILED"]
            < times["CLEARED"]
            < times["ISSUED"]
            < times["GATE_IN"]
            < times["LOADED"]
            < times["DEPARTED"]
        )
    claims = [e.raw for e in events if e.topic == contracts.REBATES]
    exporters = {r["exporter_id"] for e in events if e.topic == contracts.CUSTOMS for r in [e.raw]}
    assert claims and {c["exporter_id"] for c in claims} <= exporters
    assert all(isinstance(c["amount_pkr"], int) and c["amount_pkr"] > 0 for c in claims)
    energy = [e.raw for e in events if e.topic == contracts.ENERGY]
    assert {r["agency"] for r in energy if r["status"] == "DETERMINED"} <= {"NEPRA", "OGRA"}
    assert {r["agency"] for r in energy if r["status"] != "DETERMINED"} <= {"MOE-POWER"}


# -- faults ----------------------------------------------------------------------------------------


def test_duplicates_are_identical_resends_at_the_configured_share() -> None:
    events = run(seed=8, cases=1500, duplicate_share=0.05, until_ms=NO_CUTOFF)
    first: dict[str, SimEvent] = {}
    resends = 0
    for e in events:
        seen = first.get(e.raw["event_id"])
        if seen is None:
            first[e.raw["event_id"]] = e
            continue
        resends += 1
        assert (e.topic, e.raw) == (seen.topic, seen.raw)
        assert e.deliver_at >= seen.deliver_at
    assert 0.04 <= resends / len(first) <= 0.06
    assert set(Counter(e.raw["event_id"] for e in run(seed=8, duplicate_share=0.0)).values()) == {1}


def out_of_order_cases(events: list[SimEvent]) -> set[str]:
    """Cases with an event delivered after an event of the same case that occurred later."""
    latest: dict[str, int] = {}
    late: set[str] = set()
    seen: set[str] = set()
    for e in events:
        if e.raw["event_id"] in seen:
            continue
        seen.add(e.raw["event_id"])
        case, t = e.raw["case_id"], e.raw["occurred_at"]
        if t < latest.get(case, t):
            late.add(case)
        latest[case] = max(latest.get(case, t), t)
    return late


def test_out_of_order_share_and_bound() -> None:
    events = run(seed=9, cases=1500, out_of_order_share=0.1, until_ms=NO_CUTOFF)
    cases = {e.raw["case_id"] for e in events}
    share = len(out_of_order_cases(events)) / len(cases)
    assert 0.08 <= share <= 0.12
    for e in events:  # late publication stays within the hour (the processors' grace)
        assert e.raw["published_at"] - e.raw["occurred_at"] <= HOUR
    assert not out_of_order_cases(run(seed=9, cases=1500, out_of_order_share=0.0, until_ms=NO_CUTOFF))


def finished(events: list[SimEvent]) -> tuple[int, int]:
    """(journeys, journeys that never reached their last status)."""
    last = {"EXP": "DEPARTED", "DDT": ("PAID", "REJECTED"), "NEPRA": "EFFECTIVE", "OGRA": "EFFECTIVE"}
    statuses: dict[str, set[str]] = defaultdict(set)
    for e in events:
        statuses[e.raw["case_id"]].add(e.raw["status"])
    stalled = 0
    for case_id, seen in statuses.items():
        final = last[case_id.split("-")[0]]
        if not seen & ({final} if isinstance(final, str) else set(final)):
            stalled += 1
    return len(statuses), stalled


def test_stalled_share() -> None:
    total, stalled = finished(run(seed=10, cases=2000, stall_share=0.1, until_ms=NO_CUTOFF))
    assert 0.08 <= stalled / total <= 0.12
    assert finished(run(seed=10, cases=500, stall_share=0.0, until_ms=NO_CUTOFF))[1] == 0


def test_invalid_share_breaks_the_contract_and_nothing_else() -> None:
    events = run(seed=12, cases=800, invalid_share=0.03)
    bad = []
    for e in events:
        try:
            validate_event(e.topic, e.raw, FAR_NOW)
        except InvalidRecord as exc:
            bad.append(exc.field)
        Codec().encode(e.topic, e.raw)  # still Avro: the processors must dead-letter it, not crash
    assert 0.02 <= len(bad) / len(events) <= 0.04
    assert {"agency", "province", "event_id", "case_id", "occurred_at"} <= set(bad)
    valid_ids = {e.raw["event_id"] for e in run(seed=12, cases=800, invalid_share=0.0)}
    assert len(valid_ids) == len({e.raw["event_id"] for e in events if _valid(e)})


def _valid(e: SimEvent) -> bool:
    try:
        validate_event(e.topic, e.raw, FAR_NOW)
    except InvalidRecord:
        return False
    return True


# -- realism ---------------------------------------------------------------------------------------


def test_realistic_sla_breach_shares() -> None:
    """Every stage breaches its SLA sometimes but not mostly; slow provinces and ports breach more."""
    events = run(seed=21, cases=3000, span_ms=10 * DAY, until_ms=NO_CUTOFF, energy_share=0.05)
    records = oracle.compute(events, now_ms=FAR_NOW).stage_records
    done = records[records["state"] == "CLOSED"]
    breach = 1 - done.groupby("stage")["sla_met"].mean()
    assert set(breach.index) == {
        "customs_clearance",
        "permit_handoff",
        "port_loading",
        "export_end_to_end",
        "rebate_payment",
        "energy_notification",
        "energy_effective",
    }
    for stage, share in breach.items():
        assert 0.03 <= share <= 0.35, (stage, share)
    permits = done[done["stage"] == "permit_handoff"]
    by_owner = 1 - permits.groupby("owner_agency")["sla_met"].mean()
    assert by_owner["BA-TRANSPORT"] > by_owner["PB-TRANSPORT"] > by_owner["SD-TRANSPORT"]
    ports = done[done["stage"] == "port_loading"]
    by_port = 1 - ports.groupby("owner_agency")["sla_met"].mean()
    assert by_port["PQA"] > by_port["KPT"]
    customs = done[done["stage"] == "customs_clearance"]["duration_ms"]
    assert 6 * HOUR < customs.median() < 20 * HOUR  # "customs: tens of hours" with the tail


def test_generation_speed() -> None:
    config = SimulationConfig(start_ms=START, cases=4000, span_ms=3 * DAY)
    began = time.process_time()
    n = sum(1 for _ in generate(config))
    rate = n / (time.process_time() - began)
    print(f"generated {n} events at {rate:,.0f} events/s (CPU time)")
    assert rate > 8_000


# -- pacing -----------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now_ms: int) -> None:
        self.now = now_ms
        self.sleeps: list[float] = []

    def __call__(self) -> int:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert 0 < seconds <= 0.25
        self.sleeps.append(seconds)
        self.now += max(1, int(seconds * 1000))


def test_live_pacing_publishes_when_due_at_about_the_rate() -> None:
    now = 1_790_000_000_000
    clock = FakeClock(now)
    config, _ = build_config(
        live=True,
        now_ms=now,
        seed=4,
        cases=0,
        span_ms=DAY,
        start_ms=None,
        rate=5.0,
        warmup_ms=30 * MINUTE,
        shares={
            "stall_share": 0.03,
            "duplicate_share": 0.05,
            "out_of_order_share": 0.02,
            "invalid_share": 0.0,
        },
        delay_scale=1.0,
    )
    assert config.start_ms == now - 30 * MINUTE and config.cases is None
    pacer = Pacer(live=True, duration_s=300, clock=clock, sleep=clock.sleep)
    sent: list[tuple[int, SimEvent]] = []
    for batch in pacer.batches(generate(config)):
        sent.extend((clock.now, e) for e in batch)
    assert pacer.stopped_early and clock.now >= now + 300_000
    backfill = [e for t, e in sent if e.deliver_at <= now]
    live = [(t, e) for t, e in sent if e.deliver_at > now]
    assert backfill and all(e.raw["published_at"] == max(now, e.raw["occurred_at"]) for e in backfill)
    first_publication: dict[str, int] = {e.raw["event_id"]: e.raw["published_at"] for e in backfill}
    resends = 0
    for t, e in live:
        assert e.raw["occurred_at"] <= e.raw["published_at"] <= t  # nothing from the future
        eid = e.raw["event_id"]
        if eid in first_publication:
            assert e.raw["published_at"] == first_publication[eid]  # a re-send is identical
            resends += 1
            continue
        assert e.deliver_at <= e.raw["published_at"] <= e.deliver_at + 300  # published once due
        first_publication[eid] = e.raw["published_at"]
    assert resends > 0
    rate = len(live) / 300
    assert 3 <= rate <= 7.5, rate


def test_batch_pacing_respects_the_rate_cap() -> None:
    clock = FakeClock(START)
    events = run(seed=2, cases=100)
    pacer = Pacer(live=False, rate=100.0, clock=clock, sleep=clock.sleep)
    out = [e for batch in pacer.batches(events) for e in batch]
    assert out == events  # batch mode keeps the simulated published_at
    assert abs((clock.now - START) / 1000 - (len(events) - 1) / 100) < 0.5


def test_batch_config_never_reaches_into_the_future() -> None:
    now = 1_790_000_000_000
    config, note = build_config(
        live=False,
        now_ms=now,
        seed=1,
        cases=100,
        span_ms=DAY,
        start_ms=now - 2 * HOUR,
        rate=0.0,
        warmup_ms=HOUR,
        shares={},
        delay_scale=1.0,
    )
    assert note and config.end_ms is not None and config.end_ms <= now - HOUR
    for e in generate(config):
        validate_event(e.topic, e.raw, now)


# -- the command -------------------------------------------------------------------------------------


def test_cli_writes_json_lines_that_match_the_generator(tmp_path: Path) -> None:
    out = tmp_path / "sim.jsonl"
    args = ["simulate", "--cases", "60", "--span", "1d", "--seed", "5", "--start", "2026-03-01T00:00:00Z"]
    result = CliRunner().invoke(app, [*args, "--to-file", str(out)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    expected = list(generate(SimulationConfig(start_ms=1_772_323_200_000, seed=5, cases=60, span_ms=DAY)))
    assert [(x["topic"], x["event_id"]) for x in lines] == [(e.topic, e.raw["event_id"]) for e in expected]
    first = next(x for x in lines if x["topic"] == contracts.CUSTOMS)
    assert first["occurred_at"].endswith("Z") and "." in first["declared_value_pkr"]
    assert f"total: {len(expected):,} sent, 0 failed" in result.output
    split = tmp_path / "by-topic"
    result = CliRunner().invoke(app, [*args, "--to-file", str(split)])
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in split.iterdir())
    assert files == sorted(f"{t}.jsonl" for t in {e.topic for e in expected})
    permits = [json.loads(x) for x in (split / f"{contracts.PERMITS}.jsonl").read_text().splitlines()]
    assert permits and "topic" not in permits[0]


def test_cli_rejects_bad_options(tmp_path: Path) -> None:
    runner = CliRunner()
    bad_start = runner.invoke(
        app, ["simulate", "--start", "yesterday", "--to-file", str(tmp_path / "x.jsonl")]
    )
    assert bad_start.exit_code == 2 and "--start" in bad_start.output
    bad_span = runner.invoke(app, ["simulate", "--span", "7 weeks", "--to-file", str(tmp_path / "x.jsonl")])
    assert bad_span.exit_code == 2 and "--span" in bad_span.output


def test_cli_unreachable_broker_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BACKBONE_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    result = CliRunner().invoke(app, ["simulate", "--cases", "5", "--bootstrap", "127.0.0.1:1"])
    assert result.exit_code == 3, result.output
    assert "cannot reach Kafka" in result.output


@pytest.mark.integration
def test_publishes_a_seeded_run_to_a_real_broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh Tansu broker: everything the generator made arrives, decodes and equals the source."""
    for key in [k for k in __import__("os").environ if k.startswith("BACKBONE_")]:
        monkeypatch.delenv(key)
    with TansuBroker(log_file=tmp_path / "tansu.log") as broker:
        monkeypatch.setenv("BACKBONE_KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap)
        monkeypatch.setenv("BACKBONE_DATA_DIR", str(tmp_path / "data"))
        settings = load_settings()
        ensure_topics(settings, broker.bootstrap, contracts.INPUT_TOPICS, partitions=3)
        args = [
            "simulate",
            "--cases",
            "150",
            "--span",
            "2d",
            "--seed",
            "17",
            "--start",
            "2026-02-01T00:00:00Z",
            "--invalid-share",
            "0.02",
            "--duplicate-share",
            "0.03",
        ]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        config = SimulationConfig(
            start_ms=1_769_904_000_000,
            seed=17,
            cases=150,
            span_ms=2 * DAY,
            invalid_share=0.02,
            duplicate_share=0.03,
            until_ms=1_769_904_000_000 + 2 * DAY,
        )
        expected = list(generate(config))
        want = Counter(e.topic for e in expected)
        for topic, n in want.items():
            assert f"{topic}: {n:,} sent, 0 failed" in result.output

        consumer = Consumer(
            {"bootstrap.servers": broker.bootstrap, "group.id": "sim-test", "enable.auto.commit": False}
        )
        md = consumer.list_topics(timeout=10)
        consumer.assign(
            [TopicPartition(t, p, 0) for t in contracts.INPUT_TOPICS for p in md.topics[t].partitions]
        )
        got: dict[str, list[tuple[bytes, bytes]]] = defaultdict(list)
        deadline = time.monotonic() + 60
        while sum(len(v) for v in got.values()) < len(expected) and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=1.0):
                assert msg.error() is None, msg.error()
                got[msg.topic()].append((msg.key(), msg.value()))
        consumer.close()
        assert {t: len(v) for t, v in got.items()} == dict(want)
        codec = Codec()
        decoded = Counter()
        for topic, messages in got.items():
            for key, value in messages:
                raw = codec.decode(topic, value)
                assert key == raw["case_id"].encode()
                decoded[(topic, json.dumps(raw, sort_keys=True))] += 1
        assert decoded == Counter((e.topic, json.dumps(e.raw, sort_keys=True)) for e in expected)
