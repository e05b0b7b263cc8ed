# ruff: noqa: F811 - module_broker is a pytest fixture imported from processor_fixtures
"""The processor worker on a real broker: simulated traffic in, outputs equal the oracle.

``python -m backbone process`` runs as a child process against a fresh Tansu broker. H2's
simulator publishes a few thousand correlated agency events (duplicates, out-of-order,
stalled and contract-invalid events included); the stage records, KPI windows, backlog and
CASE_SLA alerts read back from the output topics must equal what the independent pandas oracle
(``tests/oracle.py``) computes from the same events, and the poison messages must come back
as dead letters with their reasons while the worker keeps running.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
from processor_fixtures import (  # noqa: F401 - module_broker is a fixture
    OutputReader,
    WorkerProcess,
    create_topics,
    differences,
    module_broker,
    oracle_for,
    producer,
    publish_live,
    publish_raw,
    scrape_metrics,
    simulated_events,
    wait_until,
    worker_env,
)

from backbone.embedded.broker import TansuBroker
from schemas import contracts
from schemas.codec import Codec

pytestmark = pytest.mark.integration


def poison_messages(events: list[tuple[str, dict]]) -> list[tuple[str, bytes | None, bytes | None, str]]:
    """(topic, key, value, expected dead-letter reason) for messages no agency should send."""
    codec = Codec()
    topic, raw = next((t, r) for t, r in events if t == contracts.CUSTOMS)
    invalid = dict(raw, event_id="00000000-0000-4000-8000-00000000dead", province="PK-XX")
    return [
        (contracts.PERMITS, b"POISON-1", os.urandom(64), "bad_framing"),
        (
            contracts.PERMITS,
            b"POISON-2",
            codec.encode(contracts.CUSTOMS, dict(raw, case_id="POISON-2")),
            "wrong_topic",
        ),
        (
            contracts.CUSTOMS,
            invalid["case_id"].encode(),
            codec.encode(contracts.CUSTOMS, invalid),
            "invalid_record",
        ),
        (contracts.PORTS, b"POISON-4", b"", "empty"),
        (contracts.CUSTOMS, b"POISON-5", codec.encode(contracts.CUSTOMS, raw)[:-7], "undecodable"),
    ]


def test_simulated_traffic_equals_oracle_and_poison_is_dead_lettered(
    module_broker: TansuBroker, tmp_path: Path
) -> None:
    events = simulated_events(cases=300, seed=11)
    expected = oracle_for(events)
    poison = poison_messages(events)
    assert len(events) > 2000 and expected.invalid, "the simulation should include invalid events"

    create_topics(module_broker.bootstrap)
    worker = WorkerProcess(
        worker_env(module_broker.bootstrap, tmp_path / "data"), tmp_path / "worker.log", app_id="proc-it"
    ).start()
    reader = OutputReader(module_broker.bootstrap)
    try:
        half = len(events) // 2
        publish_live(module_broker.bootstrap, events[:half])
        p = producer(module_broker.bootstrap)
        for topic, key, value, _ in poison:
            publish_raw(p, topic, key, value)
        assert p.flush(30) == 0
        publish_live(module_broker.bootstrap, events[half:])

        ok = wait_until(reader, lambda: not differences(reader, expected), timeout_s=150, workers=[worker])
        problems = differences(reader, expected, limit=20)
        assert ok and not problems, (
            "outputs differ from the oracle:\n"
            + "\n".join(problems)
            + "\n--- worker log ---\n"
            + worker.log_tail()
        )

        dead = reader.records[contracts.DEAD_LETTERS]
        by_key = {d["key"]: d for d in dead}
        for topic, key, value, reason in poison:
            assert key in by_key, f"no dead letter for poison {key!r} ({reason})"
            d = by_key[key]
            assert (d["topic"], d["reason"], d["value"]) == (topic, reason, value or None) or (
                d["topic"],
                d["reason"],
                d["value"],
            ) == (topic, reason, value), d
        invalid_reasons = Counter(d["reason"] for d in dead if d["key"] not in {k for _, k, _, _ in poison})
        assert sum(invalid_reasons.values()) == len(expected.invalid), invalid_reasons
        assert worker.alive, worker.log_tail()

        metrics = scrape_metrics(worker)
        assert metrics.get(("backbone_events_in_total", contracts.CUSTOMS), 0) > 0, metrics
        assert metrics.get(("backbone_dead_letters_total", "bad_framing"), 0) >= 1, metrics
        assert metrics.get(("backbone_alerts_emitted_total", "CASE_SLA"), 0) >= len(expected.firing_ids()), (
            metrics
        )
    finally:
        reader.close()
        code = worker.stop()
    assert code == 0, f"worker did not stop cleanly (exit {code}):\n{worker.log_tail()}"
