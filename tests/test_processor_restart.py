"""kill -9 a processor worker mid-stream, start it again: the outputs still equal the oracle.

The restarted worker recovers both tables from their changelogs (written once the outputs are
acknowledged, before offsets are committed), replays the events after the last commit, and
must end with the same latest stage records, KPI windows (no double counting: hop 2 skips
facts it already applied), backlog and CASE_SLA alerts as the oracle computes from the events.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from processor_fixtures import (
    OutputReader,
    WorkerProcess,
    create_topics,
    differences,
    oracle_for,
    publish_live,
    simulated_events,
    wait_until,
    worker_env,
)

from backbone.embedded.broker import TansuBroker
from schemas import contracts

pytestmark = pytest.mark.integration


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[TansuBroker]:
    """A fresh broker per run: the topics have fixed names and the oracle compares whole topics."""
    with TansuBroker(log_file=tmp_path / "tansu.log") as b:
        yield b


@pytest.mark.parametrize(("compression", "record_max_bytes"), [("gzip", None), ("none", 1024)])
def test_kill9_and_restart_mid_stream_equals_oracle(
    own_broker: TansuBroker, tmp_path: Path, compression: str, record_max_bytes: int | None
) -> None:
    """gzip: what ``up`` runs on the embedded broker; the restarted worker restores its state from
    gzipped changelog batches (read by Faust's aiokafka consumer).

    ``record_max_bytes`` 1 KiB: most KPI states (and some case states) are over it, so they go to
    the changelog in pieces (what a state over Kafka's 1 MB record limit does) and the restarted
    worker must put them back together. (The uncompressed changelog is what every other worker
    test writes, so it is not run a third time here with the default limit.)
    """
    events = simulated_events(cases=300, seed=23, invalid_share=0.0)
    expected = oracle_for(events)
    create_topics(own_broker.bootstrap)
    extra = {} if record_max_bytes is None else {"BACKBONE_STATE_RECORD_MAX_BYTES": str(record_max_bytes)}
    env = worker_env(own_broker.bootstrap, tmp_path / "data", **extra)
    app_id = f"proc-restart-{compression}-{record_max_bytes or 'default'}"
    args = ("--compression", compression)
    first = WorkerProcess(env, tmp_path / "worker-1.log", app_id=app_id, extra_args=args).start()
    reader = OutputReader(own_broker.bootstrap)
    second: WorkerProcess | None = None
    try:
        cut = int(len(events) * 0.45)
        publish_live(own_broker.bootstrap, events[:cut])
        # Let the worker get going, then kill it while it still has work in flight.
        assert wait_until(
            reader, lambda: len(reader.records[contracts.STAGE_RECORDS]) > 200, 60, [first], settle_s=0
        ), "the first worker produced nothing:\n" + first.log_tail()
        publish_live(own_broker.bootstrap, events[cut : cut + 300], pause_s=0.02)
        first.kill9()
        before_restart = len(reader.records[contracts.STAGE_RECORDS])
        publish_live(own_broker.bootstrap, events[cut + 300 :], pause_s=0.0)

        second = WorkerProcess(env, tmp_path / "worker-2.log", app_id=app_id, extra_args=args).start()
        ok = wait_until(reader, lambda: not differences(reader, expected), timeout_s=180, workers=[second])
        problems = differences(reader, expected, limit=20)
        assert ok and not problems, (
            "after kill -9 and restart, outputs differ from the oracle:\n"
            + "\n".join(problems)
            + "\n--- restarted worker log ---\n"
            + second.log_tail()
        )
        assert len(reader.records[contracts.STAGE_RECORDS]) > before_restart
        assert "Restore complete" in second.log_path.read_text(errors="replace")
        pieces = changelog_piece_keys(own_broker.bootstrap, f"{app_id}-kpi_state-changelog")
        if record_max_bytes is None:
            assert not pieces
        else:
            assert len(pieces) >= 10, "no KPI state was written in pieces: the test proves nothing"
    finally:
        reader.close()
        if first.alive:
            first.kill9()
        if second is not None:
            second.stop()


def changelog_piece_keys(bootstrap: str, topic: str) -> set[bytes]:
    """The keys of state pieces in a changelog topic (read to its end)."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "piece-reader",
            "enable.partition.eof": True,
            "log_level": 0,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        keys: set[bytes] = set()
        at_end: set[int] = set()
        deadline = time.monotonic() + 30
        while len(at_end) < len(partitions) and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                if msg.error() is not None:
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        at_end.add(msg.partition())
                    continue
                if b"#piece#" in (msg.key() or b""):
                    keys.add(msg.key())
        return keys
    finally:
        consumer.close()
