"""Helpers for the processor worker tests: a broker per module, worker processes, output readers.

The worker runs as a real ``python -m backbone process`` child process (so a test can kill -9
it); inputs are published with confluent-kafka exactly as agencies would (Avro single-object
encoding, key = case_id); outputs are read back from the topics and reduced to the latest
version per id, which is what the sink and the boards keep.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import oracle
import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from backbone.child_process import ChildProcess
from backbone.embedded.broker import TansuBroker
from schemas import contracts
from schemas.codec import Codec

REPO = Path(__file__).resolve().parent.parent
CODEC = Codec()
T_START = 1_767_225_600_000  # 2026-01-01T00:00:00Z: simulated traffic well in the past


@pytest.fixture(scope="module")
def module_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    """A fresh Tansu broker for one test module (the processors' topics have fixed names)."""
    with TansuBroker(log_file=tmp_path_factory.mktemp("broker") / "tansu.log") as b:
        yield b


def create_topics(bootstrap: str, partitions: int = 6) -> None:
    """Create the input, output and facts topics first (a broker may auto-create them smaller)."""
    from backbone.config import Settings
    from backbone.kafka import ensure_topics
    from stream_processors.api import FACTS_TOPIC

    settings = Settings(kafka_bootstrap_servers=bootstrap, topic_partitions=partitions)
    ensure_topics(settings, bootstrap, (*contracts.INPUT_TOPICS, *contracts.OUTPUT_TOPICS, FACTS_TOPIC))


def worker_env(bootstrap: str, data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment of a worker process: only our BACKBONE_* settings, nothing inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKBONE_")}
    env.update(
        {
            "BACKBONE_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "BACKBONE_DATA_DIR": str(data_dir),
            "BACKBONE_CLOCK": "event",
            "BACKBONE_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


@dataclass
class WorkerProcess(ChildProcess):
    """A ``backbone process`` child; its output goes to ``log_path``."""

    env: dict[str, str]
    log_path: Path
    worker_id: int = 1
    app_id: str = "backbone-processors"
    stock: bool = False
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        argv = [
            sys.executable,
            "-m",
            "backbone",
            "process",
            "--worker-id",
            str(self.worker_id),
            "--app-id",
            self.app_id,
            "--metrics-port",
            "0",
        ]
        if self.stock:
            argv.append("--stock")
        argv.extend(self.extra_args)
        self.spawn(argv, self.env)
        return self


def producer(bootstrap: str) -> Producer:
    return Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 10}
    )


def publish_events(bootstrap: str, events: Iterable[tuple[str, dict[str, Any]]]) -> int:
    """Publish raw records (Avro single-object, key = case_id) in the given order; returns how many."""
    p = producer(bootstrap)
    n = 0
    for topic, raw in events:
        publish_raw(p, topic, raw["case_id"].encode(), CODEC.encode(topic, raw))
        n += 1
    assert p.flush(60) == 0, "input events not delivered"
    return n


def publish_live(
    bootstrap: str, events: Sequence[tuple[str, dict[str, Any]]], chunk: int = 100, pause_s: float = 0.08
) -> int:
    """Publish in delivery order at a live pace (chunks with pauses), as agencies would.

    The worker's event clock and hop 1's watermark are the newest ``occurred_at`` seen across
    all partitions, so a backlog consumed partition by partition makes a partition that is read
    early push the clock past events still waiting in others (see the report on issue 4); live
    traffic keeps the partitions in step.
    """
    n = 0
    for i in range(0, len(events), chunk):
        n += publish_events(bootstrap, events[i : i + chunk])
        time.sleep(pause_s)
    return n


def publish_raw(p: Producer, topic: str, key: bytes | None, value: bytes | None) -> None:
    while True:
        try:
            p.produce(topic, value, key)
            return
        except BufferError:
            p.poll(0.1)


@dataclass
class OutputReader:
    """Reads the output topics from the beginning; keeps every record and the latest per id."""

    bootstrap: str
    topics: Sequence[str] = contracts.OUTPUT_TOPICS
    codec: Codec = CODEC
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _consumer: Consumer | None = None

    def __post_init__(self) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "log_level": 0,
            }
        )
        md = self._consumer.list_topics(timeout=10)
        self._consumer.assign(
            [TopicPartition(t, p, 0) for t in self.topics if t in md.topics for p in md.topics[t].partitions]
        )
        self.records = {t: [] for t in self.topics}

    def poll(self, max_s: float = 1.0) -> int:
        """Read what is available (for at most ``max_s``); returns how many records were read."""
        assert self._consumer is not None
        n = 0
        deadline = time.monotonic() + max_s
        while time.monotonic() < deadline:
            msgs = self._consumer.consume(num_messages=10_000, timeout=0.2)
            if not msgs:
                break
            for m in msgs:
                if m.error() is not None:
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        raise RuntimeError(f"output read failed: {m.error()}")
                    continue
                self.records[m.topic()].append(self.codec.decode(m.topic(), m.value()))
                n += 1
        return n

    def latest(self, topic: str, key: str, version: str | None = "version") -> dict[str, dict[str, Any]]:
        """The newest record per ``key`` (highest ``version``; else the last one read)."""
        out: dict[str, dict[str, Any]] = {}
        for rec in self.records[topic]:
            k = rec[key]
            if version is None or k not in out or rec[version] >= out[k][version]:
                out[k] = rec
        return out

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def wait_until(
    reader: OutputReader,
    done: Callable[[], bool],
    timeout_s: float,
    workers: Sequence[WorkerProcess] = (),
    settle_s: float = 3.0,
) -> bool:
    """Poll outputs until ``done()`` holds and nothing new arrived for ``settle_s``; False on timeout."""
    deadline = time.monotonic() + timeout_s
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        if reader.poll(1.0):
            quiet_since = time.monotonic()
        for w in workers:
            if not w.alive:
                raise AssertionError(f"worker {w.worker_id} died:\n{w.log_tail()}")
        if done() and time.monotonic() - quiet_since >= settle_s:
            return True
        time.sleep(0.3)
    return False


# -- simulated traffic and comparison with the oracle -------------------------------------------
def simulated_events(
    cases: int = 300, seed: int = 11, invalid_share: float = 0.01
) -> list[tuple[str, dict[str, Any]]]:
    """H2's simulator: correlated traffic with stalls, duplicates, out-of-order and invalid events."""
    from producers.simulator import SimulationConfig, generate

    config = SimulationConfig(start_ms=T_START, seed=seed, cases=cases, invalid_share=invalid_share)
    return [(ev.topic, ev.raw) for ev in generate(config)]


GRACE_MS = 3_600_000  # Settings.grace_ms default


def oracle_for(events: Sequence[tuple[str, dict[str, Any]]]) -> Any:
    """The independent oracle's result for a worker on the event clock.

    Open cases are judged at the newest event time minus the grace (the worker's sweeps judge
    at that bounded-out-of-order watermark); windows close at the newest event time + grace.
    """
    newest = max(raw["occurred_at"] for _, raw in events)
    return oracle.compute(events, now_ms=newest - GRACE_MS, watermark_ms=newest)


STAGE_FIELDS = tuple(c for c in oracle.STAGE_COLUMNS if c != "record_id")
"""Compared exactly, record by record (the ids are the keys)."""
KPI_EXACT_FIELDS = ("window", "window_start", "window_end", *oracle.GROUP, "completions", "sla_met")
"""Compared exactly; the quantiles within the sketch's accuracy (SEMANTICS.md)."""
BACKLOG_FIELDS = ("open_cases", "oldest_started_at", "amount_pkr_open")


def _close(a: float | None, b: float | None, rel: float) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= rel * abs(b) + 1e-9


def differences(reader: OutputReader, expected: Any, limit: int = 8) -> list[str]:
    """Where the latest outputs differ from the oracle; empty when they agree (SEMANTICS.md)."""
    problems: list[str] = []

    def note(text: str) -> None:
        if len(problems) < limit:
            problems.append(text)

    got = reader.latest(contracts.STAGE_RECORDS, "record_id")
    want = oracle.as_mapping(expected.stage_records, "record_id")
    if set(got) != set(want):
        note(f"stage records: {len(set(want) - set(got))} missing, {len(set(got) - set(want))} unexpected")
    for rid in set(got) & set(want):
        bad = [f for f in STAGE_FIELDS if got[rid][f] != want[rid][f]]
        if bad:
            note(f"stage record {rid}: " + ", ".join(f"{f} {got[rid][f]!r} != {want[rid][f]!r}" for f in bad))

    got = reader.latest(contracts.KPI_WINDOWS, "kpi_id")
    want = oracle.as_mapping(expected.kpi_windows, "kpi_id")
    if set(got) != set(want):
        note(f"kpi windows: {len(set(want) - set(got))} missing, {len(set(got) - set(want))} unexpected")
    for kid in set(got) & set(want):
        g, w = got[kid], want[kid]
        bad = [f for f in KPI_EXACT_FIELDS if g[f] != w[f]]
        bad += [f for f in ("sla_compliance", "mean_ms", "throughput_per_h") if not _close(g[f], w[f], 1e-9)]
        bad += [f for f in ("p50_ms", "p90_ms") if not _close(g[f], w[f], 0.01)]  # DDSketch, alpha = 1 %
        if bad:
            note(f"kpi window {kid}: " + ", ".join(f"{f} {g[f]!r} != {w[f]!r}" for f in bad))

    got = reader.latest(contracts.BACKLOG, "backlog_id")
    want = oracle.as_mapping(expected.backlog, "backlog_id")
    for bid in set(want) | set(got):
        if bid not in got:
            note(f"backlog {bid} ({want[bid]['stage']}): missing")
        elif bid not in want:
            if got[bid]["open_cases"]:
                note(f"backlog {bid}: unexpected {got[bid]}")
        else:
            bad = [f for f in BACKLOG_FIELDS if got[bid][f] != want[bid][f]]
            if bad:
                note(f"backlog {bid}: " + ", ".join(f"{f} {got[bid][f]!r} != {want[bid][f]!r}" for f in bad))

    alerts = [a for a in reader.records[contracts.ALERTS] if a["kind"] == "CASE_SLA"]
    for state, want_ids in (
        ("FIRING", expected.firing_ids("CASE_SLA")),
        ("RESOLVED", expected.resolved_ids("CASE_SLA")),
    ):
        got_ids = {a["alert_id"] for a in alerts if a["state"] == state}
        if got_ids != want_ids:
            note(
                f"CASE_SLA {state}: {len(want_ids - got_ids)} missing, {len(got_ids - want_ids)} unexpected "
                f"(of {len(want_ids)})"
            )
    return problems


def scrape_metrics(worker: WorkerProcess) -> dict[tuple[str, str], float]:
    """The worker's /metrics, summed by (metric, first interesting label): topic, reason or kind
    ("" for a metric without labels)."""
    import re
    import urllib.request

    port = int(re.search(r"metrics on 127\.0\.0\.1:(\d+)", worker.log_path.read_text()).group(1))
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        m = re.match(r"^(backbone_\w+)(?:\{(.*)\})? ([0-9.e+-]+)$", line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        label = labels.get("reason") or labels.get("kind") or labels.get("topic") or ""
        out[(m.group(1), label)] = out.get((m.group(1), label), 0.0) + float(m.group(3))
    return out
