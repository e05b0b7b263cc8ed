"""``backbone up``: supervise the embedded stack as child processes.

One process per role, as in production: the simulator (agencies), the stream processor
worker(s), the sink (which also owns the chdb database and serves the built-in board, since a
chdb path can be open in one process only), the alert forwarder, and, where the Debian
binaries exist, Prometheus and Alertmanager. Ctrl-C stops them in reverse order.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, TopicPartition

from backbone.config import Settings
from backbone.embedded.broker import TansuBroker
from backbone.kafka import BrokerUnreachable, client_config, ensure_topics
from schemas import contracts

log = logging.getLogger("backbone.up")


@dataclass
class Service:
    """A child process of ``backbone up``."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    required: bool = True
    process: subprocess.Popen[bytes] | None = None
    log_offset: int = 0
    """Size of its log (appended to across runs) when this run started it: this run's lines follow."""


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "backbone", *args]


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


EMBEDDED_PROCESSOR_CADENCE = ("--batch-within", "1.0", "--timer-interval", "2.0")
"""On the embedded broker, ``up``'s processors close a batch (and flush its outputs) up to a second
after its first event, and run their timer every 2 s (production: 0.1 s and 0.5 s).

Why: Tansu's memory engine keeps every batch it receives, and each fetch that finds new data
lists every batch of that partition, so the broker's CPU grows with the batches stored times
the batches fetched. At demo rates nearly every flush is a batch per partition it touches, so
the flush and timer cadence, not the traffic, set how fast the broker slows down. The board
shows a stage record up to about a second later, a KPI window up to about 1.5 s later.
"""


EMBEDDED_PROCESSOR_COMPRESSION = ("--compression", "gzip")
"""On the embedded broker, ``up``'s processors gzip what they produce.

Why: Tansu's memory engine never drops a batch, so the broker's memory grows with every byte
produced; the processors' KPI state changelog (~10 KB of JSON a write) is most of it. Measured
in ``up`` (default rate, 4 minutes): +40 MB/min uncompressed, +12.5 MB/min gzipped, broker CPU
unchanged (11-12 % of a core). A real Kafka compacts the changelog, so production keeps none.
"""


SIMULATOR_SERIALS_PER_RUN = 1_000_000
"""Case-id serials each ``up`` run's simulator may use: run k numbers its cases from
``(k - 1) * SIMULATOR_SERIALS_PER_RUN + 1``, so a restarted demo's cases (EXP-2026-1000001...)
never take the ids of earlier runs' cases, whose history ClickHouse keeps and replays."""

SETUP_STEPS = ("db-migrate", "history-replay")
"""Services ``up`` waits for, in order, before starting the next: tables, then the history."""


def next_run_number(data_dir: Path) -> int:
    """Count this ``up`` run in the data dir (1 for the first) and return its number."""
    path = data_dir / "up.runs"
    try:
        previous = int(path.read_text(encoding="utf-8").strip() or 0)
    except (FileNotFoundError, ValueError):
        previous = 0
    path.write_text(f"{previous + 1}\n", encoding="utf-8")
    return previous + 1


def planned_services(
    settings: Settings,
    simulate: bool,
    rate: float,
    workers: int,
    seed: int,
    time_scale: float = 1.0,
    run_number: int = 1,
) -> list[Service]:
    """The services ``up`` runs, in start order. Areas that are not installed are skipped."""
    services: list[Service] = []
    if _has("sinks.cli"):
        services.append(Service("db-migrate", _cli("db", "migrate"), required=False))
        if settings.embedded_kafka:
            # the embedded broker starts empty: replay ClickHouse's events so the processors
            # rebuild their state (open cases, panes, backlog) from the whole history
            services.append(Service("history-replay", _cli("sink", "replay-history"), required=False))
    if _has("alerting.stack"):
        services.append(
            Service("alerting-stack", _cli("alerting", "stack", "--workers", str(workers)), required=False)
        )
    if _has("sinks.cli"):
        services.append(Service("sink", _cli("sink", "run", "--serve-board")))
    if _has("stream_processors.cli"):
        embedded = EMBEDDED_PROCESSOR_CADENCE + EMBEDDED_PROCESSOR_COMPRESSION
        options = embedded if settings.embedded_kafka else ()
        for i in range(workers):
            argv = _cli("process", "--worker-id", str(i + 1), *options)
            services.append(Service(f"processor-{i + 1}", argv))
    if _has("alerting.forwarder"):
        services.append(Service("alert-forwarder", _cli("alerting", "forward"), required=False))
    if simulate:
        services.append(
            Service(
                "simulator",
                _cli(
                    "simulate",
                    "--live",
                    "--rate",
                    str(rate),
                    "--seed",
                    str(seed),
                    "--delay-scale",
                    f"{1 / time_scale:.6g}",
                    "--warmup",
                    "30m",
                    "--first-serial",
                    str((run_number - 1) * SIMULATOR_SERIALS_PER_RUN + 1),
                ),
            )
        )
    return services


class TopicCounter(threading.Thread):
    """Counts messages per topic by reading them (Tansu's watermarks are wrong, see the docs).

    It reads in bursts, about one per 5-second status line, and pauses its partitions in between.
    Each fetch that finds new data makes Tansu list every batch the partition has ever stored (its
    memory engine keeps them all), so a third consumer following every topic live added about a
    third to the embedded broker's growing CPU (measured in ``up``: +3.0 % of a core per minute
    with it following live, +2.3 % without it).
    """

    EVERY_S = 3.5
    """Pause between bursts; a burst itself takes about a second (see :meth:`_burst`)."""
    READ_BATCH = 5000
    IDLE_BURST_S = 2.0
    """How long a burst waits for its first message: fetching restarts ~1 s after a resume."""

    def __init__(self, conf: dict[str, object], topics: tuple[str, ...]) -> None:
        super().__init__(daemon=True, name="topic-counter")
        self.counts: Counter[str] = Counter()
        self._stopping = threading.Event()
        self._conf = {**conf, "group.id": "backbone-up-counter", "enable.auto.commit": False}
        self._topics = topics

    def run(self) -> None:
        consumer = Consumer(self._conf)
        try:
            md = consumer.list_topics(timeout=10)
            partitions = [
                TopicPartition(t, p, 0)
                for t in self._topics
                if t in md.topics
                for p in md.topics[t].partitions
            ]
            consumer.assign(partitions)
            while not self._stopping.is_set():
                self._burst(consumer)
                consumer.pause(partitions)
                self._stopping.wait(self.EVERY_S)
                consumer.resume(partitions)
        except KafkaException as exc:
            log.warning("topic counter stopped: %s", exc)
        finally:
            consumer.close()

    def _burst(self, consumer: Consumer) -> None:
        """Count what arrives until a read comes back short after data came (caught up, as far
        as this burst goes), or until nothing came for :attr:`IDLE_BURST_S`."""
        started = time.monotonic()
        got = False
        while not self._stopping.is_set():
            batch = consumer.consume(num_messages=self.READ_BATCH, timeout=0.5)
            for msg in batch:
                if msg.error() is None:
                    self.counts[msg.topic()] += 1
            got = got or bool(batch)
            if (got and len(batch) < self.READ_BATCH) or (
                not got and time.monotonic() - started >= self.IDLE_BURST_S
            ):
                return

    def stop(self) -> None:
        self._stopping.set()


def _log_lines(path: Path, offset: int = 0) -> list[str]:
    """The non-empty lines a child wrote to its log since ``offset`` (logs are appended across runs)."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return [line for line in text.splitlines() if line.strip()]


def _last_line(path: Path, offset: int = 0) -> str:
    """The last non-empty line a step wrote to its log since ``offset`` (its summary)."""
    lines = _log_lines(path, offset)
    return lines[-1] if lines else "no output"


def _exit_reason(path: Path, offset: int) -> str:
    """Why a child exited: its last ``error:`` line this run (every command words its failures so),
    else its last line (a traceback's ends with the exception)."""
    lines = _log_lines(path, offset)
    errors = [line for line in lines if line.startswith("error: ")]
    if errors:
        return errors[-1].removeprefix("error: ")
    return lines[-1] if lines else "no output"


def _start(service: Service, env: dict[str, str], log_dir: Path) -> None:
    out = open(log_dir / f"{service.name}.log", "ab")  # noqa: SIM115 - owned by the child for its life
    service.log_offset = out.tell()
    service.process = subprocess.Popen(
        service.argv, env={**env, **service.env}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )


def _stop(service: Service, timeout_s: float = 15.0) -> None:
    p = service.process
    if p is None or p.poll() is not None:
        return
    p.send_signal(signal.SIGINT)
    try:
        p.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


DRAIN_S = 5.0
"""How long ``up`` lets the pipeline run on after the simulator stops, on the embedded broker
(which keeps nothing across runs): the processors' last batch (up to 1 s, see
:data:`EMBEDDED_PROCESSOR_CADENCE`), the facts hop and a KPI tick (every 2 s), the sink's batch
age (0.5 s). Without it the last 2-5 s of completions never reached the KPI windows in
ClickHouse until the next ``up`` replayed them (QA pass 5: 405-980 windows short)."""
SINK_DRAIN_S = 1.5
"""After the processors stop: the sink's fetch and batch age for their last outputs."""


def _stop_draining(services: list[Service], drain: bool, hurry: threading.Event) -> None:
    """Stop the services in reverse start order, the agencies' traffic first; with ``drain``, let
    what is in flight reach ClickHouse before the processors and then the sink stop (a second
    Ctrl-C sets ``hurry`` and skips the waits)."""

    def running(name: str) -> bool:
        return any(
            s.name.startswith(name) and s.process is not None and s.process.poll() is None for s in services
        )

    for service in reversed(services):
        if service.name == "simulator":
            _stop(service)
    if drain and running("processor-") and running("sink") and not hurry.is_set():
        print(
            f"draining: {DRAIN_S:g} s for the last events to reach ClickHouse (Ctrl-C again skips)",
            flush=True,
        )
        hurry.wait(DRAIN_S)
    for service in reversed(services):
        if service.name == "sink" and drain and not hurry.is_set():
            hurry.wait(SINK_DRAIN_S)
        _stop(service)


class DataDirBusy(RuntimeError):
    """Another ``backbone up`` holds the data directory."""


LOCK_FILE = "up.lock"


@contextmanager
def hold_data_dir(data_dir: Path) -> Iterator[None]:
    """Hold ``data_dir/up.lock`` exclusively (``flock``) for the life of ``up``.

    Two ``up`` on one data directory would share the chdb path, the logs and the time-scaled
    missions file; the second must refuse before it touches any of them. The kernel drops the
    lock when its holder exits, however it exits, so a lock file left behind never blocks.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise DataDirBusy(f"another backbone up is running on {data_dir} (pid {owner})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def run_up(
    settings: Settings,
    simulate: bool,
    rate: float,
    duration: float,
    workers: int,
    seed: int,
    time_scale: float = 1.0,
) -> int:
    """Run the stack until Ctrl-C or ``duration``; 2 (nothing started) if the data dir is taken, 3 if
    the configured Kafka does not answer."""
    data_dir = settings.data_dir.resolve()
    try:
        with hold_data_dir(data_dir):
            return _run_stack(settings, data_dir, simulate, rate, duration, workers, seed, time_scale)
    except DataDirBusy as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except BrokerUnreachable as exc:
        print(f"error: {exc} (BACKBONE_KAFKA_BOOTSTRAP_SERVERS)", file=sys.stderr, flush=True)
        return 3


def _run_stack(
    settings: Settings,
    data_dir: Path,
    simulate: bool,
    rate: float,
    duration: float,
    workers: int,
    seed: int,
    time_scale: float,
) -> int:
    log_dir = data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    missions_file = settings.missions_file.resolve()
    if time_scale != 1.0:
        from stream_processors.missions import time_scaled

        missions_file = time_scaled(missions_file, time_scale, data_dir / "missions.time-scaled.yaml")
        print(f"demo time: agency delays and SLAs compressed {time_scale:g}x ({missions_file})", flush=True)
    broker: TansuBroker | None = None
    if settings.embedded_kafka:
        broker = TansuBroker(log_file=log_dir / "broker.log").start()
        bootstrap = broker.bootstrap
        print(f"embedded Kafka (Tansu) on {bootstrap}", flush=True)
    else:
        bootstrap = settings.kafka_bootstrap_servers
    try:
        created = ensure_topics(settings, bootstrap)
    except BrokerUnreachable:
        if broker is not None:
            broker.stop()
        raise
    print(f"topics ready ({len(created)} created, {settings.topic_partitions} partitions each)", flush=True)

    env = {
        **os.environ,
        "BACKBONE_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "BACKBONE_DATA_DIR": str(data_dir),
        "BACKBONE_MISSIONS_FILE": str(missions_file),
    }
    # The processors run on the wall clock, as in production (``BACKBONE_CLOCK`` overrides). The
    # simulator's warm-up of history is a backlog like any other: sweeps judge it at the catch-up
    # clock (the newest event time of the partitions still being read), so it raises no false
    # CASE_SLA. (Up to 2026-12 `up` forced the event clock, whose timer waits for a second of quiet
    # input that live agencies never leave: not one KPI window reached the board.)
    run_number = next_run_number(data_dir)
    services = planned_services(settings, simulate, rate, workers, seed, time_scale, run_number)
    stopping = threading.Event()
    hurry = threading.Event()  # a second Ctrl-C: skip the drain

    def _on_signal(signum: int, _frame: object) -> None:
        if stopping.is_set():
            hurry.set()
        stopping.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    counter = TopicCounter(
        client_config(settings, bootstrap), contracts.INPUT_TOPICS + contracts.OUTPUT_TOPICS
    )
    counter.start()
    exit_code = 0
    try:
        for service in services:
            _start(service, env, log_dir)
            log_file = log_dir / (service.name + ".log")
            if service.name in SETUP_STEPS and service.process is not None:
                # tables, then the history, before the sink and processors (Ctrl-C still stops)
                while service.process.poll() is None and not stopping.wait(0.2):
                    pass
                if stopping.is_set():
                    break
                summary = _last_line(log_file, service.log_offset)
                print(f"{service.name}: {summary} (log: {log_file})", flush=True)
                continue
            print(f"started {service.name} (logs: {log_file})", flush=True)
        print(f"board: http://127.0.0.1:{settings.board_port}/  — Ctrl-C to stop", flush=True)
        started = time.monotonic()
        warned: set[str] = set()
        while not stopping.is_set():
            stopping.wait(5.0)
            for s in services:
                if s.process is None or s.process.poll() in (None, 0) or s.name in warned:
                    continue
                log_file = log_dir / (s.name + ".log")
                reason = _exit_reason(log_file, s.log_offset)
                why = f"{s.name} exited with code {s.process.returncode}: {reason} (log: {log_file})"
                if s.required:
                    print(f"error: {why}", flush=True)
                    exit_code = 1
                    stopping.set()
                else:  # optional (alerting): say so on screen, keep the rest running
                    print(f"warning: {why}; the rest keeps running without it", flush=True)
                    warned.add(s.name)
            counts = " ".join(
                f"{t}={counter.counts.get(t, 0)}" for t in contracts.INPUT_TOPICS + contracts.OUTPUT_TOPICS
            )
            print(f"[{time.strftime('%H:%M:%S')}] messages per topic: {counts}", flush=True)
            if duration and time.monotonic() - started >= duration:
                break
    finally:
        print("stopping...", flush=True)
        try:
            _stop_draining(services, drain=broker is not None, hurry=hurry)
            counter.stop()
            counter.join(timeout=5)
        finally:  # never leave the embedded broker running, whatever failed above
            if broker is not None:
                broker.stop()
        print("stopped", flush=True)
    return exit_code
