"""The reliability suite's moving parts: a whole pipeline per run, faults, and per-message accounting.

Composes what the other areas' tests already provide (nothing here re-implements them):

* ``processor_fixtures``: the ``backbone process`` child (:class:`WorkerProcess`), topic
  creation, the output-topic reader and :func:`differences` against the oracle;
* ``sink_fixtures``: committed offsets of the sink's group;
* ``test_pipeline_end_to_end.ClickHouseReader``: what the board reads, with the topic reader's
  interface, so the same :func:`differences` runs on ClickHouse;
* ``tests/oracle.py`` (through ``processor_fixtures.oracle_for``): the expected outputs.

What it adds: :class:`TrackingProducer` (every message with the partition and offset the broker
gave it, so each one can be looked up in ClickHouse or the dead letters afterwards),
:class:`SinkProcess` (``backbone sink run`` as a child, or the same :class:`sinks.sink.Sink` with
its insert seam wrapped so that ClickHouse "goes down" while a flag file exists: chdb runs inside
the sink's process and cannot be stopped on its own, as in ``tests/test_sink_faults.py``),
:class:`Pipeline` (broker + worker + sink + reader, and the faults), :func:`read_board` (opened
only while no sink runs: a chdb path is one process's at a time) and :func:`account`.

Run as a script, ``python tests/reliability_fixtures.py flaky-sink --group G --down-flag F`` is
that flaky sink.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from backbone.child_process import ChildProcess

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
if str(TESTS) not in sys.path:  # run as a script (the flaky sink): the test helpers sit beside it
    sys.path.insert(0, str(TESTS))

# The flaky sink's entry point must not pay for the test helpers' imports; everything else does.
if __name__ != "__main__":
    from confluent_kafka import KafkaError, Message, Producer
    from processor_fixtures import (
        OutputReader,
        WorkerProcess,
        create_topics,
        differences,
        worker_env,
    )
    from reliability_summary import Accounting
    from sink_fixtures import committed_total

    from backbone.config import Settings, load_settings
    from backbone.embedded.broker import TansuBroker, free_port
    from schemas import contracts

    OUTPUTS_BUT_DEAD_LETTERS = tuple(t for t in contracts.OUTPUT_TOPICS if t != contracts.DEAD_LETTERS)


# -- publishing with a receipt per message -----------------------------------------------------
@dataclass(frozen=True)
class Sent:
    """One message the broker acknowledged, where it landed, and what the test meant by it."""

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int
    offset: int
    raw: dict[str, Any] | None  # the record, when the value is one (else None: bytes only)
    kind: str  # e.g. "simulated", "truncated Avro"
    expected_reason: str | None = None  # the dead-letter reason it must get (None: it is valid)
    expected_detail: str | None = None  # the field the dead letter's detail must start with
    source: str = ""  # e.g. "corpus" or "fuzzed"

    @property
    def position(self) -> tuple[str, int, int]:
        return (self.topic, self.partition, self.offset)


class TrackingProducer:
    """A plain confluent-kafka producer that keeps a :class:`Sent` receipt for every message."""

    def __init__(self, bootstrap: str, **conf: Any) -> None:
        self._producer: Producer | None = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                **conf,
            }
        )
        self.sent: list[Sent] = []
        self.failed: list[str] = []

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        raw: dict[str, Any] | None = None,
        kind: str = "simulated",
        expected_reason: str | None = None,
        expected_detail: str | None = None,
        source: str = "",
    ) -> None:
        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                self.failed.append(f"{kind} on {topic}: {err.name()} {err.str()}")
                return
            self.sent.append(
                Sent(
                    topic,
                    key,
                    value,
                    msg.partition(),
                    msg.offset(),
                    raw,
                    kind,
                    expected_reason=expected_reason,
                    expected_detail=expected_detail,
                    source=source,
                )
            )

        producer = self._producer
        assert producer is not None, "the producer was closed"
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)

    def flush(self, timeout_s: float = 60.0) -> None:
        assert self._producer is not None, "the producer was closed"
        left = self._producer.flush(timeout_s)
        assert left == 0, f"{left} messages not acknowledged by the broker within {timeout_s:.0f} s"
        assert not self.failed, "the broker refused messages:\n" + "\n".join(self.failed[:10])

    def close(self) -> None:
        """Flush and drop the client (it would keep reconnecting to a stopped broker)."""
        if self._producer is not None:
            self.flush()
            self._producer = None


class PacedPublisher(threading.Thread):
    """Publishes ``(topic, raw)`` events in delivery order, in chunks with pauses (live traffic).

    Live pacing keeps the partitions in step (the worker's event clock is the newest event time
    across partitions; see ``processor_fixtures.publish_live``). ``gates`` are stream positions
    where the publisher waits until the main thread :meth:`release` s it: the main thread injects
    a fault there, releases the publisher at once (traffic flows on while the fault plays out) and
    only then lets it reach the next gate, so every fault lands mid-stream however long the one
    before it took.
    """

    def __init__(
        self,
        producer: TrackingProducer,
        events: Sequence[tuple[str, dict[str, Any]]],
        chunk: int,
        pause_s: float,
        gates: Sequence[int] = (),
        gate_timeout_s: float = 300.0,
    ) -> None:
        super().__init__(name="paced-publisher", daemon=True)
        from schemas.codec import Codec

        self.producer = producer
        self.events = events
        self.chunk = chunk
        self.pause_s = pause_s
        self.progress = 0
        self.error: BaseException | None = None
        self._codec = Codec()
        self._gates = {position: threading.Event() for position in gates}
        self._gate_timeout_s = gate_timeout_s
        self.waiting_at: int | None = None

    def release(self, position: int) -> None:
        self._gates[position].set()

    def run(self) -> None:
        try:
            for i in range(0, len(self.events), self.chunk):
                for position in sorted(p for p, gate in self._gates.items() if p <= i and not gate.is_set()):
                    self.waiting_at = position
                    if not self._gates[position].wait(self._gate_timeout_s):
                        raise TimeoutError(f"nobody released the publisher at event {position}")
                    self.waiting_at = None
                for topic, raw in self.events[i : i + self.chunk]:
                    self.producer.send(topic, raw["case_id"].encode(), self._codec.encode(topic, raw), raw)
                self.producer.flush()
                self.progress = min(i + self.chunk, len(self.events))
                time.sleep(self.pause_s)
        except BaseException as exc:  # surfaced by finish()
            self.error = exc

    def wait_for(self, position: int, timeout_s: float) -> int:
        """Block until the publisher reached ``position`` (or finished); returns how far it got."""
        deadline = time.monotonic() + timeout_s
        while self.progress < min(position, len(self.events)) and self.waiting_at != position:
            if not self.is_alive():
                raise AssertionError(f"publishing stopped at {self.progress} events: {self.error!r}")
            if time.monotonic() > deadline:
                raise AssertionError(f"publishing stalled at {self.progress} of {len(self.events)} events")
            time.sleep(0.05)
        return self.progress

    def finish(self, timeout_s: float = 180.0) -> None:
        for gate in self._gates.values():
            gate.set()
        self.join(timeout_s)
        assert not self.is_alive(), f"publishing did not finish within {timeout_s:.0f} s"
        if self.error is not None:
            raise AssertionError(f"publishing failed: {self.error!r}") from self.error


# -- the sink as a child process ---------------------------------------------------------------
def metrics_text(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as response:
            return str(response.read().decode())
    except (urllib.error.URLError, OSError):
        return None


def metric_sum(text: str | None, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include ``labels`` (0 when absent)."""
    total = 0.0
    for line in (text or "").splitlines():
        if not (line.startswith(name + " ") or line.startswith(name + "{")):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@dataclass
class SinkProcess(ChildProcess):
    """``backbone sink run`` (or the flaky variant, when ``down_flag`` is set) as a child process.

    :meth:`stop` sends SIGTERM: the sink flushes, commits and exits 0.
    """

    env: dict[str, str]
    log_path: Path
    group: str
    down_flag: Path | None = None
    max_batch_age_s: float = 0.5
    metrics_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    stop_timeout_s: ClassVar[float] = 60.0

    def start(self) -> SinkProcess:
        self.metrics_port = free_port()
        if self.down_flag is None:
            argv = [sys.executable, "-m", "backbone", "sink", "run", "--group", self.group]
        else:
            argv = [sys.executable, str(Path(__file__)), "flaky-sink", "--group", self.group]
            argv += ["--down-flag", str(self.down_flag)]
        argv += ["--max-batch-age", str(self.max_batch_age_s)]
        self.spawn(argv, {**self.env, "BACKBONE_SINK_METRICS_PORT": str(self.metrics_port)})
        return self

    def metric(self, name: str, **labels: str) -> float:
        return metric_sum(metrics_text(self.metrics_port), name, **labels)


def child_env(bootstrap: str, data_dir: Path) -> dict[str, str]:
    """A child's environment: this test's broker and data dir, no inherited BACKBONE_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKBONE_")}
    env.update(
        {
            "BACKBONE_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "BACKBONE_DATA_DIR": str(data_dir),
            "BACKBONE_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def wait_for(
    condition: Callable[[], bool], timeout_s: float, what: str, alive: Callable[[], str | None]
) -> None:
    """Poll ``condition``; fail with ``what`` on timeout, or at once if ``alive()`` reports a death."""
    deadline = time.monotonic() + timeout_s
    while True:
        problem = alive()
        if problem:
            raise AssertionError(f"while waiting for {what}: {problem}")
        if condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.25)


# -- reading the dead letters ------------------------------------------------------------------
def dead_letter_reader(bootstrap: str) -> OutputReader:
    """The dead-letter topic from the beginning, decoded without the codec's 1 MB limit (a dead
    letter carries the original value, which may itself be a record too large to process)."""
    from schemas.codec import Codec

    return OutputReader(bootstrap, (contracts.DEAD_LETTERS,), Codec(max_message_bytes=256 * 1024 * 1024))


def dead_letters_by_position(reader: OutputReader) -> dict[tuple[str, int, int], dict[str, Any]]:
    """The latest dead letter per original (topic, partition, offset)."""
    return {(d["topic"], d["partition"], d["offset"]): d for d in reader.records[contracts.DEAD_LETTERS]}


# -- one whole pipeline -----------------------------------------------------------------------
_ASSIGNED = "Setting newly assigned partitions"


def assignment_count(worker: WorkerProcess) -> int:
    """How many partition assignments the worker's consumer received so far (Faust logs each)."""
    try:
        return worker.log_path.read_text(errors="replace").count(_ASSIGNED)
    except FileNotFoundError:
        return 0


def worker_ready(worker: WorkerProcess) -> bool:
    try:
        return "[^Worker]: Ready" in worker.log_path.read_text(errors="replace")
    except FileNotFoundError:
        return False


class Pipeline:
    """A private Tansu broker, one ``backbone process`` worker, the sink and an output reader.

    The processors' topics have fixed names, so each run has its own broker (it starts in < 1 s).
    ``name`` makes the app id, sink group and log names. Use as a context manager; everything it
    started is stopped on exit (SIGTERM, then SIGKILL).
    """

    def __init__(
        self, tmp: Path, name: str, partitions: int = 6, worker_settings: dict[str, str] | None = None
    ) -> None:
        self.tmp = tmp
        self.worker_settings = {"BACKBONE_GRACE_MS": str(GRACE_MS), **(worker_settings or {})}
        self.name = name
        self.partitions = partitions
        self.app_id = f"rel-{name}"
        self.sink_group = f"rel-sink-{name}"
        self.broker = TansuBroker(log_file=tmp / "tansu.log")
        self.workers: list[WorkerProcess] = []
        self.retired: list[WorkerProcess] = []  # killed or stopped workers, for their logs
        self.sink: SinkProcess | None = None
        self.sink_starts = 0
        self.worker_starts = 0
        self.reader: OutputReader | None = None  # the output topics but the dead letters
        self.dead: OutputReader | None = None
        self.down_flag = tmp / "clickhouse-down"
        self.sink_data = tmp / "sink-data"

    # lifecycle
    def __enter__(self) -> Pipeline:
        self.broker.start()
        create_topics(self.bootstrap, partitions=self.partitions)
        self.workers.append(self._new_worker(1))
        self.sink = self._new_sink()
        self.reader = OutputReader(self.bootstrap, topics=OUTPUTS_BUT_DEAD_LETTERS)
        self.dead = dead_letter_reader(self.bootstrap)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.reader is not None:
                self.reader.close()
            if self.dead is not None:
                self.dead.close()
            if self.sink is not None:
                self.sink.stop(30)
            for w in self.workers:
                w.stop(30)
        finally:
            self.broker.stop()

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    @property
    def settings(self) -> Settings:
        return load_settings(kafka_bootstrap_servers=self.bootstrap, data_dir=self.sink_data)

    def _new_worker(self, worker_id: int) -> WorkerProcess:
        self.worker_starts += 1
        env = worker_env(self.bootstrap, self.tmp / f"worker-{worker_id}-data", **self.worker_settings)
        log = self.tmp / f"worker-{worker_id}-{self.worker_starts}.log"
        return WorkerProcess(env, log, worker_id=worker_id, app_id=self.app_id).start()

    def _new_sink(self, flaky: bool = False) -> SinkProcess:
        self.sink_starts += 1
        log = self.tmp / f"sink-{self.sink_starts}{'-flaky' if flaky else ''}.log"
        env = child_env(self.bootstrap, self.sink_data)
        return SinkProcess(env, log, self.sink_group, down_flag=self.down_flag if flaky else None).start()

    def problem(self) -> str | None:
        """A dead child, described with its log; None while all run."""
        for w in self.workers:
            if not w.alive:
                return f"worker {w.worker_id} died:\n{w.log_tail()}"
        if self.sink is not None and not self.sink.alive:
            return f"sink died:\n{self.sink.log_tail()}"
        return None

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        wait_for(lambda: worker_ready(self.workers[0]), timeout_s, "the worker to be ready", self.problem)
        assert self.sink is not None
        self.wait_sink_up(self.sink, timeout_s)

    # faults
    def kill_worker_and_restart(self, timeout_s: float = 120.0) -> str:
        """kill -9 the processor worker (work in flight), start it again at once, and wait until
        it has restored its tables and is ready (the next fault starts from a recovered worker:
        see the report on a rebalance that hits a worker still recovering)."""
        old = self.workers[0]
        old.kill9()
        self.retired.append(old)
        began = time.monotonic()
        new = self.workers[0] = self._new_worker(old.worker_id)
        wait_for(lambda: worker_ready(new), timeout_s, "the restarted worker to be ready", self.problem)
        return f"worker killed with work in flight, restarted, ready in {time.monotonic() - began:.1f} s"

    def rebalance(self, stay_s: float, timeout_s: float = 120.0) -> str:
        """A second worker joins the group (the partitions are split), stays ``stay_s``, then leaves."""
        first = self.workers[0]
        before = assignment_count(first)
        second = self._new_worker(2)
        self.workers.append(second)
        wait_for(
            lambda: worker_ready(second) and assignment_count(first) > before,
            timeout_s,
            "a second worker to join the group and the partitions to be split",
            self.problem,
        )
        time.sleep(stay_s)
        rejoined = assignment_count(first)
        self.workers.remove(second)
        code = second.stop(60)
        self.retired.append(second)
        assert code == 0, f"the second worker did not leave cleanly (exit {code}):\n{second.log_tail()}"
        wait_for(
            lambda: assignment_count(first) > rejoined,
            timeout_s,
            "the first worker to take every partition back",
            self.problem,
        )
        return f"2nd worker owned a share for {stay_s:.1f} s, then left"

    def kill_sink_mid_batch(self, wait_s: float = 15.0) -> str:
        """kill -9 the sink while it holds rows it has not inserted yet (if it gets any), restart."""
        sink = self.sink
        assert sink is not None
        deadline = time.monotonic() + wait_s
        pending = sink.metric("backbone_sink_pending_rows")
        while pending <= 0 and time.monotonic() < deadline:
            time.sleep(0.05)
            pending = sink.metric("backbone_sink_pending_rows")
        sink.kill9()
        began = time.monotonic()
        new = self.sink = self._new_sink()
        self.wait_sink_up(new)
        up_s = time.monotonic() - began
        return f"sink killed holding {pending:.0f} uninserted rows, restarted, up in {up_s:.1f} s"

    def wait_sink_up(self, sink: SinkProcess, timeout_s: float = 120.0) -> None:
        """Until the sink runs and owns its partitions: it has migrated, opened chdb, serves its
        metrics, installed its signal handlers (a SIGTERM before that would just kill it) and
        joined its consumer group (the next fault starts from a sink at work)."""

        def running() -> bool:
            try:
                log = sink.log_path.read_text(errors="replace")
            except FileNotFoundError:
                return False
            up = '"event": "sink running"' in log and '"event": "partitions assigned"' in log
            return up and metrics_text(sink.metrics_port) is not None

        wait_for(running, timeout_s, "the sink to run and be assigned its partitions", self.problem)

    def clickhouse_outage(self, down_s: float, timeout_s: float = 90.0) -> str:
        """ClickHouse refuses every insert for ``down_s`` (and at least a few attempts), then returns.

        The running sink is stopped cleanly and replaced by the same sink with its insert seam
        wrapped (chdb cannot be stopped apart from the sink's process); it stays on afterwards.
        """
        assert self.sink is not None
        self.down_flag.touch()
        code = self.sink.stop(60)
        assert code == 0, (
            f"the sink did not stop cleanly before the outage (exit {code}):\n{self.sink.log_tail()}"
        )
        sink = self.sink = self._new_sink(flaky=True)
        started = time.monotonic()
        wait_for(
            lambda: sink.metric("backbone_sink_errors_total", error="unavailable") >= 3,
            timeout_s,
            "the sink to see ClickHouse refuse inserts",
            self.problem,
        )
        time.sleep(max(0.0, down_s - (time.monotonic() - started)))
        refused = sink.metric("backbone_sink_errors_total", error="unavailable")
        self.down_flag.unlink()
        wait_for(
            lambda: sink.metric("backbone_sink_batches_total") > 0,
            timeout_s,
            "the sink to insert again once ClickHouse is back",
            self.problem,
        )
        return f"{refused:.0f} inserts refused over {time.monotonic() - started:.1f} s, then drained"

    # catching up
    def wait_outputs(self, done: Callable[[], bool], timeout_s: float, settle_s: float = 4.0) -> bool:
        """Read the output topics until ``done()`` holds and nothing new came for ``settle_s``."""
        assert self.reader is not None and self.dead is not None
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            if self.reader.poll(1.0) + self.dead.poll(0.5):
                quiet_since = time.monotonic()
            problem = self.problem()
            if problem:
                raise AssertionError(problem)
            if done() and time.monotonic() - quiet_since >= settle_s:
                return True
            time.sleep(0.3)
        return False

    def wait_sink_caught_up(self, input_messages: int, timeout_s: float = 120.0) -> int:
        """Until the sink's group committed every input and output message; returns that total."""
        assert self.reader is not None and self.dead is not None
        self.reader.poll(1.0)
        self.dead.poll(1.0)
        total = input_messages + sum(len(v) for r in (self.reader, self.dead) for v in r.records.values())
        topics = (*contracts.INPUT_TOPICS, *contracts.OUTPUT_TOPICS)
        settings = self.settings
        wait_for(
            lambda: committed_total(settings, self.sink_group, topics) >= total,
            timeout_s,
            f"the sink to commit all {total} messages",
            self.problem,
        )
        return total

    def stop_sink(self) -> None:
        """Stop the sink cleanly (exit 0) so that this process may open its chdb path."""
        assert self.sink is not None
        code = self.sink.stop(60)
        assert code == 0, f"the sink did not stop cleanly (exit {code}):\n{self.sink.log_tail()}"

    def stop_workers(self) -> None:
        for w in self.workers:
            code = w.stop(60)
            assert code == 0, f"worker {w.worker_id} did not stop cleanly (exit {code}):\n{w.log_tail()}"


# -- what ClickHouse holds --------------------------------------------------------------------
DEDUP_VIEWS: dict[str, str] = {
    "events_distinct": "event_id",
    "stage_records_latest": "record_id",
    "kpi_windows_latest": "kpi_id",
    "backlog_latest": "backlog_id",
    "feed_freshness_latest": "agency",
    "dead_letters_latest": "dead_letter_id",
    "alerts_history": "(alert_id, state)",
}


@dataclass
class Board:
    """ClickHouse after a run: what the board reads, read while no sink runs."""

    event_ids: set[str]
    dead_letters: dict[tuple[str, int, int], dict[str, Any]]  # (topic, partition, offset) → row
    duplicates: dict[str, tuple[int, int]]  # view → (count(), uniqExact(id)) where they differ
    reader: Any  # test_pipeline_end_to_end.ClickHouseReader: latest views, topic reader interface
    events_daily: dict[tuple[str, ...], int] = field(default_factory=dict)


def read_board(settings: Settings) -> Board:
    """Open the sink's chdb path (the sink must be stopped) and read what the board would show."""
    from test_pipeline_end_to_end import ClickHouseReader

    from sinks.client import open_client

    client = open_client(settings)
    try:
        duplicates = {}
        for view, key in DEDUP_VIEWS.items():
            n, distinct = client.query(f"SELECT count(), uniqExact({key}) FROM {view}").result_rows[0]
            if n != distinct:
                duplicates[view] = (n, distinct)
        event_ids = {r[0] for r in client.query("SELECT toString(event_id) FROM events_distinct").result_rows}
        dead = {}
        for row in client.query(
            "SELECT topic, partition, offset, source, reason, detail, isNull(key) AS no_key, "
            "hex(key) AS key, isNull(value) AS no_value, hex(value) AS value FROM dead_letters_latest"
        ).named_results():
            # Bytes as hex: clickhouse-connect shows a String that is not UTF-8 as hex text anyway.
            row["key"] = None if row.pop("no_key") else bytes.fromhex(row["key"])
            row["value"] = None if row.pop("no_value") else bytes.fromhex(row["value"])
            dead[(row["topic"], int(row["partition"]), int(row["offset"]))] = row
        daily = {
            (str(r[0]), r[1], r[2], r[3], r[4]): int(r[5])
            for r in client.query(
                "SELECT day, topic, agency, province, status, uniqExactMerge(events) FROM events_daily "
                "GROUP BY day, topic, agency, province, status"
            ).result_rows
        }
        return Board(event_ids, dead, duplicates, ClickHouseReader(client), daily)
    finally:
        client.close()


def expected_events_daily(expected: Any) -> dict[tuple[str, ...], int]:
    """The oracle's distinct valid events per UTC day x topic x agency x province x status."""
    import pandas as pd

    ev = expected.events
    day = pd.to_datetime(ev["occurred_at"], unit="ms", utc=True).dt.strftime("%Y-%m-%d")
    counts = ev.assign(day=day).groupby(["day", "topic", "agency", "province", "status"]).size()
    return {tuple(k): int(v) for k, v in counts.items()}


# -- the oracle, and the documented exception ----------------------------------------------------
GRACE_MS = 400 * 24 * 3_600_000
"""The workers' (and the oracle's) grace in these runs: longer than the simulated history.

A simulated week is published in seconds, so one second of a fault is hours of event time: a
worker that restarts or rebalances reads some partitions' backlog before others, its event-clock
watermark runs days ahead, and KPI windows would close before their completions arrive ("late",
SEMANTICS.md). Live traffic on the wall clock has no such skew. As in tests/test_scale_out.py, a
grace longer than the history closes no window early; what is compared is exactly what faults and
bad input must not change."""


def expected_outputs(events: Sequence[tuple[str, dict[str, Any]]]) -> tuple[Any, set[int]]:
    """The oracle's result for ``events`` under :data:`GRACE_MS`, and the event times the worker's
    event clock can take (those of the valid events)."""
    import oracle

    valid, _, _ = oracle.valid_distinct_events(events, oracle.FAR_FUTURE_MS)
    occurred = {int(t) for t in valid["occurred_at"]}
    newest = max(occurred)
    assert newest - min(occurred) < GRACE_MS, "the simulated history is longer than the grace"
    # "now" for open cases = what the sweeps judge against: the event clock minus the grace
    expected = oracle.compute(events, now_ms=newest - GRACE_MS, watermark_ms=newest, grace_ms=GRACE_MS)
    return expected, occurred


# -- the accounting -------------------------------------------------------------------------------
def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def delayed_end_alerts(
    reader: Any, expected: Any, occurred: set[int], grace_ms: int = GRACE_MS
) -> tuple[set[str], list[str]]:
    """CASE_SLA alerts the oracle does not expect but SEMANTICS.md allows, and any that it does not.

    The one arrival-dependent exception (SEMANTICS.md, Alerts): an instance whose end arrived only
    after the event clock had passed ``started_at + sla_ms`` fires and resolves although its final
    duration is within the SLA. Such an alert is accepted only if it is exactly that: the oracle's
    instance is CLOSED with ``sla_met``; FIRING has ``starts_at = started_at + sla_ms`` and was
    observed at a clock reading (``starts_at + value``) later than the instance's end that the
    event clock can take: the time of an event the run published, or that minus ``grace_ms``
    (sweeps judge against the event clock minus the grace); and it RESOLVED at ``ended_at``.
    Returns (the accepted alert ids, problems with the others).
    """
    import oracle

    records = {
        sha1(f"CASE_SLA|{rid}"): r
        for rid, r in oracle.as_mapping(expected.stage_records, "record_id").items()
    }
    alerts = [a for a in reader.records[contracts.ALERTS] if a["kind"] == "CASE_SLA"]
    firing = {a["alert_id"]: a for a in alerts if a["state"] == "FIRING"}
    resolved = {a["alert_id"]: a for a in alerts if a["state"] == "RESOLVED"}
    accepted: set[str] = set()
    problems: list[str] = []
    for alert_id in set(firing) - expected.firing_ids("CASE_SLA"):
        rec, fire, done = records.get(alert_id), firing[alert_id], resolved.get(alert_id)
        if rec is None or rec["state"] != "CLOSED" or not rec["sla_met"]:
            continue  # not the exception: left to differences() to report
        deadline = rec["started_at"] + rec["sla_ms"]
        seen_at = fire["starts_at"] + fire["value"]
        why = []
        if fire["starts_at"] != deadline:
            why.append(f"starts_at {fire['starts_at']} != started_at + sla {deadline}")
        readable = seen_at in occurred or seen_at + grace_ms in occurred
        if not (fire["value"] > 0 and readable and seen_at > rec["ended_at"]):
            why.append(f"observed at {seen_at}: not an event time past the end {rec['ended_at']}")
        if done is None or done["ends_at"] != rec["ended_at"]:
            why.append(f"not resolved at ended_at {rec['ended_at']}: {done}")
        if why:
            problems.append(f"CASE_SLA {alert_id} ({rec['case_id']} {rec['stage']}): " + "; ".join(why))
        else:
            accepted.add(alert_id)
    return accepted, problems


class WithoutAlerts:
    """A reader (topics or board) with the given alert ids hidden, for :func:`differences`."""

    def __init__(self, reader: Any, hidden: set[str]) -> None:
        self._reader = reader
        self.records = dict(reader.records)
        self.records[contracts.ALERTS] = [
            a for a in reader.records[contracts.ALERTS] if a["alert_id"] not in hidden
        ]

    def latest(self, topic: str, key: str, version: str | None = "version") -> dict[str, dict[str, Any]]:
        return dict(self._reader.latest(topic, key, version))


def oracle_differences(
    reader: Any, expected: Any, occurred: set[int], limit: int = 12, grace_ms: int = GRACE_MS
) -> tuple[list[str], int]:
    """:func:`processor_fixtures.differences`, allowing only the delayed-end CASE_SLA exception.

    Returns (problems, how many alerts were accepted as that exception)."""
    accepted, problems = delayed_end_alerts(reader, expected, occurred, grace_ms)
    problems += differences(WithoutAlerts(reader, accepted), expected, limit=limit)
    return problems, len(accepted)


def account(
    run: str,
    sent: Sequence[Sent],
    board: Board,
    cli_sent_event_ids: Sequence[str] = (),
    cli_rejected: int = 0,
) -> Accounting:
    """Look every acknowledged message up in ClickHouse: a stored event (or a re-sent copy of
    one) or a dead letter; what is in neither is lost. Lines given to the produce CLI count too:
    the ones it sent (``cli_sent_event_ids``) must be stored events, the ones it rejected
    (``cli_rejected``, each with its line number and reason) never reached a topic."""
    acc = Accounting(run, offered=len(sent) + len(cli_sent_event_ids) + cli_rejected, rejected=cli_rejected)
    stored: set[str] = set()
    for s in sent:
        event_id = s.raw.get("event_id") if s.raw else None
        if s.position in board.dead_letters:
            acc.dead_lettered += 1
        elif event_id in board.event_ids and event_id not in stored:
            stored.add(event_id)
            acc.stored += 1
        elif event_id in stored:
            acc.duplicates += 1
        else:
            acc.lost.append(f"{s.kind} {s.topic}[{s.partition}]@{s.offset} key={s.key!r:.40}")
    for event_id in cli_sent_event_ids:
        if event_id in stored:
            acc.duplicates += 1
        elif event_id in board.event_ids:
            stored.add(event_id)
            acc.stored += 1
        else:
            acc.lost.append(f"line sent by the produce CLI, event_id {event_id}")
    return acc


def fault_schedule(
    seed: int, kinds: Sequence[str], total: int, low: float = 0.1, high: float = 0.8
) -> list[tuple[int, str]]:
    """Each fault kind once, in a seeded random order, at seeded random points of the stream."""
    rng = random.Random(seed)
    order = list(kinds)
    rng.shuffle(order)
    points = sorted(int(total * rng.uniform(low, high)) for _ in order)
    return list(zip(points, order, strict=True))


# -- the flaky sink (a child process) ----------------------------------------------------------
class FlagToggledClickHouse:
    """The real chdb client, except that inserts are refused while ``flag`` exists.

    Refused as a ClickHouse server that cannot be reached refuses them: clickhouse-connect's
    ``OperationalError``, which the sink classifies as transient (back off, retry, keep rows).
    """

    def __init__(self, client: Any, flag: Path) -> None:
        self.client = client
        self.flag = flag
        self.refused = 0

    def insert_arrow(self, table: str, arrow_table: Any) -> Any:
        from clickhouse_connect.driver.exceptions import OperationalError

        if self.flag.exists():
            self.refused += 1
            raise OperationalError(f"injected: ClickHouse unavailable (flag {self.flag.name} present)")
        return self.client.insert_arrow(table, arrow_table)


def run_flaky_sink(group: str, down_flag: Path, max_batch_age_s: float) -> int:
    """``backbone sink run`` with :class:`FlagToggledClickHouse` as the insert seam (and short
    retry back-off so the drain after the outage starts within a second)."""
    import logging

    from backbone.config import load_settings
    from backbone.logs import setup_logging
    from backbone.metrics import Metrics, serve
    from sinks.client import open_client
    from sinks.migrate import migrate
    from sinks.sink import Sink, SinkConfig

    settings = load_settings()
    setup_logging(settings.log_level, "backbone.sink")
    client = open_client(settings)
    migrate(client)
    metrics = Metrics()
    serve(metrics, settings.sink_metrics_port)
    config = SinkConfig(group_id=group, max_batch_age_s=max_batch_age_s, retry_initial_s=0.1, retry_max_s=1.0)
    sink = Sink(settings, FlagToggledClickHouse(client, down_flag), metrics, config)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    logging.getLogger("backbone.sink").info("sink running", extra={"group": group, "flaky": True})
    try:
        sink.run(stop)
    finally:
        client.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    flaky = sub.add_parser("flaky-sink", help="the sink with ClickHouse down while --down-flag exists")
    flaky.add_argument("--group", required=True)
    flaky.add_argument("--down-flag", type=Path, required=True)
    flaky.add_argument("--max-batch-age", type=float, default=0.5)
    args = parser.parse_args(argv)
    return run_flaky_sink(args.group, args.down_flag, args.max_batch_age)


if __name__ == "__main__":
    sys.exit(main())
