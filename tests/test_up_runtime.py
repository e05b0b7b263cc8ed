"""Pieces of `backbone up` that keep the embedded broker cheap: the burst-reading topic counter and
the processors' cadence and compression on the embedded broker."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Producer

from alerting.stack import JOB_PROCESSORS, stack_for_settings
from backbone.config import FORWARDER_METRICS_PORT, Settings, load_settings
from backbone.embedded.broker import TansuBroker
from backbone.kafka import ensure_topics
from backbone.runtime import (
    EMBEDDED_PROCESSOR_CADENCE,
    EMBEDDED_PROCESSOR_COMPRESSION,
    TopicCounter,
    _exit_reason,
    planned_services,
)
from stream_processors.worker import WorkerOptions


def _processor_argv(**settings: object) -> list[str]:
    services = planned_services(load_settings(**settings), simulate=False, rate=1, workers=1, seed=1)
    return next(s.argv for s in services if s.name == "processor-1")


def test_processors_flush_less_often_and_gzip_only_on_the_embedded_broker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BACKBONE_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    argv = _processor_argv()
    embedded = [*EMBEDDED_PROCESSOR_CADENCE, *EMBEDDED_PROCESSOR_COMPRESSION]
    assert argv[-len(embedded) :] == embedded
    production = _processor_argv(kafka_bootstrap_servers="kafka:9092")
    assert "--timer-interval" not in production and "--compression" not in production


@pytest.mark.parametrize(
    "ports",
    [
        {},
        {"processor_metrics_port": 9000, "sink_metrics_port": 9001, "board_port": 9003},
        {"processor_metrics_port": 8049},  # the board's 8050 is next
    ],
)
def test_each_worker_of_up_gets_its_own_metrics_port_and_prometheus_scrapes_them_all(
    ports: dict[str, int],
) -> None:
    """``up --workers 4``: four processor ports, none the sink's, the forwarder's or the board's
    (QA: worker 2 took the sink's 9465 by default and ``up --workers 2`` died at start)."""
    settings = load_settings(**ports)
    workers = [WorkerOptions(worker_id=i).resolved_metrics_port(settings) for i in range(1, 5)]
    assert len(set(workers)) == 4 and workers[0] == settings.processor_metrics_port
    others = {settings.sink_metrics_port, FORWARDER_METRICS_PORT, settings.board_port}
    assert not set(workers) & others
    services = {s.name: s.argv for s in planned_services(settings, simulate=False, rate=1, workers=4, seed=1)}
    assert [f"processor-{i}" for i in range(1, 5)] == [n for n in services if n.startswith("processor-")]
    stack_argv = services["alerting-stack"]
    assert stack_argv[stack_argv.index("--workers") + 1] == "4"
    scraped = stack_for_settings(settings, workers=4).scrape_targets[JOB_PROCESSORS]
    assert scraped == [f"127.0.0.1:{port}" for port in workers]
    assert WorkerOptions(worker_id=3).resolved_metrics_port(load_settings(processor_metrics_port=0)) == 0


def test_processors_refuse_a_codec_their_own_consumer_cannot_read() -> None:
    """lz4/zstd/snappy would be written fine and then break the worker's changelog recovery."""
    done = subprocess.run(
        [sys.executable, "-m", "backbone", "process", "--compression", "lz4", "--bootstrap", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "--compression 'lz4': expected one of none, gzip" in done.stderr


def _wait_counts(counter: TopicCounter, want: dict[str, int], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(counter.counts[t] < n for t, n in want.items()):
        time.sleep(0.1)


@pytest.mark.integration
def test_topic_counter_counts_each_message_once_across_its_pauses(
    broker: TansuBroker, settings: Settings, unique: str
) -> None:
    """The counter pauses its partitions between bursts. Under steady traffic (as in ``up``) a
    burst must wait for the fetch that a resume restarts (about a second on Tansu), or it never
    counts anything; and no message may be skipped or counted twice across the pauses."""
    topics = (f"count-a-{unique}", f"count-b-{unique}")
    ensure_topics(settings, broker.bootstrap, topics, partitions=3)
    counter = TopicCounter({"bootstrap.servers": broker.bootstrap, "log_level": 0}, topics)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
    sent: Counter[str] = Counter()
    steady = threading.Event()

    def publish() -> None:
        i = 0
        while not steady.is_set():
            topic = topics[i % 2]
            producer.produce(topic, b"v", str(i).encode())
            sent[topic] += 1
            producer.poll(0)
            i += 1
            time.sleep(0.01)

    publisher = threading.Thread(target=publish)
    counter.start()
    publisher.start()
    try:
        time.sleep(3 * (TopicCounter.EVERY_S + TopicCounter.IDLE_BURST_S))  # at least two bursts
        assert sum(counter.counts.values()) > 0, "no burst counted anything under steady traffic"
        steady.set()
        publisher.join()
        assert producer.flush(30) == 0
        _wait_counts(counter, dict(sent))
        time.sleep(TopicCounter.EVERY_S + 2)  # another burst: nothing may be counted twice
        assert dict(counter.counts) == dict(sent)
    finally:
        steady.set()
        counter.stop()
        counter.join(10)


def test_a_failed_child_is_explained_by_its_own_error_line_of_this_run(tmp_path: Path) -> None:
    """QA pass 5: the alerting stack and the forwarder died on taken ports and `up` said nothing;
    `up` now prints why (the log is appended to across runs: an older run's error must not show)."""
    log = tmp_path / "alert-forwarder.log"
    log.write_text("error: from an earlier run\n")
    offset = log.stat().st_size
    with log.open("a") as f:
        f.write('{"level": "info", "event": "starting"}\n')
        f.write("error: cannot serve metrics on 127.0.0.1:9466: Address already in use\n\n")
    assert _exit_reason(log, offset) == "cannot serve metrics on 127.0.0.1:9466: Address already in use"
    with log.open("a") as f:
        f.write("Traceback (most recent call last):\nOSError: [Errno 98] Address already in use\n")
    later = log.stat().st_size - len(
        "Traceback (most recent call last):\nOSError: [Errno 98] Address already in use\n"
    )
    assert _exit_reason(log, later) == "OSError: [Errno 98] Address already in use"
    assert _exit_reason(tmp_path / "missing.log", 0) == "no output"
