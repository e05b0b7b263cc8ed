"""End-to-end freshness at a sustained rate: from an event's publication to its stage record in ClickHouse.

On a fresh Tansu broker and a fresh chdb data dir, ``backbone process`` (wall clock, production
grace) and ``backbone sink run`` run as child processes. This process publishes seeded simulated
events live at ``opts.rate`` events/s for :data:`DURATION_S`, each stamped ``published_at`` = its
real send time (patched into the pre-encoded bytes, see :class:`LiveStamper`, so encoding does not
cap the rate). After the input is drained the sink is stopped (it flushes and commits) and chdb is
read. Two workloads, each on its own broker and database, from the same simulated journeys:

* **replayed history** (the rows without a prefix): the events keep their simulated
  ``occurred_at``, about two months of journeys sent within the measurement, so event time runs
  ~300,000x faster than the wall clock. Every completion lands in another window: the processor
  creates, updates and closes about 1.2 KPI window rows per event, and the sink stores them. This
  is a backfill at the live rate, the heavier case.
* **live time** (rows starting ``live:``): the same events in the same order (re-sends left out),
  each stamped ``occurred_at`` = ``published_at`` = its send time, as when agencies publish what
  happens as it happens. A case's stages then last the fraction of a second between its events,
  and completions land in the current windows, which the processor re-emits on its timer.

The measures, per workload:

* **stage record freshness**: for each stage record closed by an event published during the
  measurement, ``ingested_at`` of its first closed version (stamped by ClickHouse at insert) minus
  the ``published_at`` of the event that closed it (joined through ``events`` on case id and
  ``occurred_at = ended_at``);
* **KPI window freshness**: for the k-th completion (in publication order) of a 1-minute window,
  the first ``kpi_windows`` row of that window with at least k completions, ingested_at minus
  the completion's ``published_at`` (completions only grow in a live run without corrections).

Target: p99 < 2 s at 10,000 events/s. The reference ("ceiling") is the target itself: a bare
produce → consume → insert loop would measure the broker and chdb, not what a board sees.

A rate is *sustained* when the publisher kept to it (>= 95 %) and, at the end of publishing,
neither the processor nor the sink was more than :data:`MAX_LAG_S` seconds of input behind.
If the requested rate is not sustained, the run is repeated (at most :data:`ATTEMPTS` times in
all) at 80 % of what the slowest of them achieved, and the rows say so.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from backbone.bench import BenchOptions, BenchRow, fresh_dir
from backbone.bench_peers.jobs import Counters, JobProcess, cpu_seconds
from backbone.bench_processor import job_env, our_job_argv
from backbone.config import load_settings
from backbone.embedded.broker import TansuBroker, free_port
from backbone.kafka import ensure_topics
from producers.publisher import LINGER_MS
from producers.simulator import HOUR, SimEvent, SimulationConfig, generate, mean_events_per_case
from schemas import contracts
from schemas.codec import Codec
from schemas.fast_writer import _long as avro_long  # Avro's zigzag varint of a long
from stream_processors.api import FACTS_TOPIC

SECTION = "freshness"
DURATION_S = 15.0
"""Measured publishing time of the first attempt (at the requested rate)."""
RETRY_DURATION_S = 10.0
"""Measured publishing time of each attempt at a lowered rate."""
WARMUP_EVENTS = 300
"""Published first and waited for, so group formation and chdb start-up are not measured."""
TARGET_P99_S = 2.0
MAX_LAG_S = 3.0
"""Input backlog (seconds) allowed when publishing ends: the 2 s target, the sink's 0.5 s batch age, slack."""
ATTEMPTS = 3
MIN_RATE = 100
DRAIN_TIMEOUT_S = 120.0
PLACEHOLDER_MS = 1_700_000_000_123
"""``published_at`` the events are pre-encoded with; replaced by the send time when sent."""
OCCURRED_PLACEHOLDER_MS = 1_700_000_000_456
"""``occurred_at`` of the events of a live-time run, replaced by the send time when sent."""


class LiveStamper:
    """Pre-encoded events whose ``published_at`` is set to the send time by replacing its bytes.

    Encoding a record costs ~100 µs here, as much as the whole rate budget at 10,000 ev/s; the
    placeholder's varint is replaced in place when the send time's varint has the same length
    and the placeholder occurs exactly once in the record, else the event is encoded again.

    With ``live_time`` the event's ``occurred_at`` becomes the send time too, so the events
    happen as they are published (see :func:`run`); the order of each case's events is kept.
    """

    def __init__(self, events: list[SimEvent], codec: Codec, live_time: bool = False) -> None:
        self.codec = codec
        self.events = events
        self.live_time = live_time
        stamped = {"published_at": PLACEHOLDER_MS}
        if live_time:
            stamped["occurred_at"] = OCCURRED_PLACEHOLDER_MS
        self.placeholders = [avro_long(v) for v in stamped.values()]
        self.encoded: list[tuple[str, bytes, bytes, tuple[int, ...]]] = []
        for e in events:
            value = codec.encode(e.topic, {**e.raw, **stamped})
            self.encoded.append((e.topic, e.raw["case_id"].encode(), value, self._offsets(value)))

    def _offsets(self, value: bytes) -> tuple[int, ...]:
        """Where each placeholder is, or () if one is missing or not unique (then: encode again)."""
        offsets = []
        for placeholder in self.placeholders:
            at = value.find(placeholder)
            if at < 0 or value.find(placeholder, at + 1) >= 0:
                return ()
            offsets.append(at)
        return tuple(offsets)

    def stamped(self, i: int, now_ms: int) -> tuple[str, bytes, bytes]:
        topic, key, value, offsets = self.encoded[i]
        varint = avro_long(now_ms)
        if offsets and all(len(varint) == len(p) for p in self.placeholders):
            for at in offsets:  # same length: the other offsets stay valid
                value = value[:at] + varint + value[at + len(varint) :]
            return topic, key, value
        raw = {**self.events[i].raw, "published_at": now_ms}
        if self.live_time:
            raw["occurred_at"] = now_ms
        return topic, key, self.codec.encode(topic, raw)


def live_events(n: int, seed: int, now_ms: int) -> list[SimEvent]:
    """About ``n`` valid simulated events that all occurred before ``now_ms`` (delivery order)."""
    probe = SimulationConfig(start_ms=now_ms, seed=seed, cases=1000)
    cases = int(n / mean_events_per_case(probe) * 1.3) + 10
    span = cases * 60_000
    config = SimulationConfig(
        start_ms=now_ms - span - 45 * 24 * HOUR,
        seed=seed,
        cases=cases,
        span_ms=span,
        until_ms=now_ms - 60_000,
    )
    return [e for _, e in zip(range(n), generate(config), strict=False)]


@dataclass
class Attempt:
    rate: int
    published: int
    seconds: float
    processor_lag: float
    sink_lag: float
    stage: list[float]
    kpi: list[float]
    sink_rows: float
    cpu: dict[str, CpuUse] = field(default_factory=dict)
    """CPU each component used while the events were published (see :class:`CpuMeter`)."""

    @property
    def achieved(self) -> float:
        return self.published / self.seconds if self.seconds > 0 else 0.0

    @property
    def sustained(self) -> bool:
        allowed = MAX_LAG_S * self.rate
        return (
            self.achieved >= 0.95 * self.rate and self.processor_lag <= allowed and self.sink_lag <= allowed
        )


@dataclass(frozen=True)
class CpuUse:
    """CPU seconds one component used during the measured publishing, and the events it handled."""

    seconds: float
    events: float

    @property
    def us_per_event(self) -> float:
        return 1e6 * self.seconds / self.events if self.events > 0 else float("nan")


class CpuMeter:
    """CPU seconds of the four processes of a run, from the start of publishing to its end.

    Why: on a machine of two cores the publisher, the broker, the processor and the sink share
    the CPU, and a rate that needs more than the cores cannot be sustained however the latency is
    tuned. CPU per event is also much steadier than a p99 on a shared host. Each component's
    seconds are divided by the events it handled in that time (the processor and the sink may
    lag; the publisher and the broker handle every published event).
    """

    def __init__(self, sources: dict[str, tuple[Callable[[], float], Callable[[], float]]]) -> None:
        self.sources = sources  # name -> (cpu seconds, events handled so far)
        self.start = {name: (cpu(), events()) for name, (cpu, events) in sources.items()}

    def stop(self) -> dict[str, CpuUse]:
        out = {}
        for name, (cpu, events) in self.sources.items():
            cpu0, events0 = self.start[name]
            out[name] = CpuUse(cpu() - cpu0, events() - events0)
        return out


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def cores_needed(cpu: dict[str, CpuUse], rate: float) -> float:
    """Cores the four components together need at ``rate`` events/s, at the measured CPU per event."""
    return sum(u.us_per_event for u in cpu.values()) * rate / 1e6


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _wait_for(job: JobProcess, check: Any, timeout_s: float, what: str) -> Counters:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        counters = job.scrape()
        if check(counters):
            return counters
        time.sleep(0.2)
    raise RuntimeError(f"freshness bench: {what} not reached within {timeout_s:.0f} s:\n{job.log_tail()}")


def _drain(job: JobProcess, done: Any) -> bool:
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        if done(job.scrape()):
            return True
        time.sleep(0.2)
    return False


def events_in(c: Counters) -> float:
    return c.total("backbone_events_in_total")


def sink_events(c: Counters) -> float:
    return c.total("backbone_sink_rows_total", table="events")


def run_attempt(
    opts: BenchOptions, stamper: LiveStamper, rate: int, duration_s: float, root: Path, final: bool
) -> Attempt:
    """One live run at ``rate``; freshness is read from chdb only if the rate was sustained or
    this is the last attempt (an unsustained run's backlog would take minutes to drain)."""
    fresh_dir(root)
    total = min(len(stamper.encoded), WARMUP_EVENTS + int(rate * duration_s))
    with TansuBroker(log_file=root / "tansu.log") as broker:
        bootstrap = broker.bootstrap
        settings = load_settings(
            kafka_bootstrap_servers=bootstrap, topic_partitions=opts.partitions, data_dir=root / "data"
        )
        ensure_topics(
            settings,
            bootstrap,
            (*contracts.INPUT_TOPICS, *contracts.OUTPUT_TOPICS, FACTS_TOPIC),
            partitions=opts.partitions,
        )
        keep_every_version(settings)
        env = job_env(bootstrap, root / "data", opts.partitions)
        env["BACKBONE_CLOCK"] = "wall"
        env.pop("BACKBONE_GRACE_MS", None)
        processor = JobProcess(
            "processor", our_job_argv("bench-freshness", stock=False), env, root / "processor.log"
        ).start()
        sink_port = free_port()
        sink = JobProcess(
            "sink",
            [sys.executable, "-m", "backbone", "sink", "run"],
            {**env, "BACKBONE_SINK_METRICS_PORT": str(sink_port)},
            root / "sink.log",
        ).start()
        sink.port = sink_port
        producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": LINGER_MS,  # as agencies publishing through producers.Publisher
                "log_level": 0,
            }
        )
        try:
            processor.wait_port()
            sink.wait_for_http(120)

            def send(i: int) -> None:
                topic, key, value = stamper.stamped(i, time.time_ns() // 1_000_000)
                while True:
                    try:
                        producer.produce(topic, value, key)
                        return
                    except BufferError:
                        producer.poll(0.01)

            for i in range(WARMUP_EVENTS):
                send(i)
            producer.flush(60)
            _wait_for(processor, lambda c: events_in(c) >= WARMUP_EVENTS, 180, "processor warm-up")
            _wait_for(sink, lambda c: sink_events(c) >= WARMUP_EVENTS, 180, "sink warm-up")
            measured_from_ms = time.time_ns() // 1_000_000
            sent = WARMUP_EVENTS
            assert broker.process and processor.process and sink.process
            broker_pid, processor_pid, sink_pid = broker.process.pid, processor.process.pid, sink.process.pid
            meter = CpuMeter(
                {
                    "processor": (
                        lambda: cpu_seconds(processor_pid),
                        lambda: events_in(processor.scrape()),
                    ),
                    "sink": (lambda: cpu_seconds(sink_pid), lambda: sink_events(sink.scrape())),
                    "broker": (lambda: cpu_seconds(broker_pid), lambda: float(sent)),
                    "publisher": (own_cpu_seconds, lambda: float(sent)),
                }
            )
            started = time.monotonic()
            while sent < total:
                due = WARMUP_EVENTS + int((time.monotonic() - started) * rate)
                if due <= sent:
                    producer.poll(0)
                    time.sleep(0.002)
                    continue
                for i in range(sent, min(due, total)):
                    send(i)
                sent = min(due, total)
                producer.poll(0)
            seconds = time.monotonic() - started
            cpu = meter.stop()
            producer.flush(60)
            processor_lag = total - events_in(processor.scrape())
            sink_lag = total - sink_events(sink.scrape())
            log(
                f"{rate:,} ev/s asked, {(total - WARMUP_EVENTS) / seconds:,.0f} sent; lag at the end: "
                f"processor {processor_lag:,.0f}, sink {sink_lag:,.0f} events"
            )
            attempt = Attempt(rate, total - WARMUP_EVENTS, seconds, processor_lag, sink_lag, [], [], 0.0, cpu)
            if not attempt.sustained and not final:
                return attempt  # not reported: the next attempt runs at a lower rate
            drained = _drain(processor, lambda c: events_in(c) >= total) and _drain(
                sink, lambda c: sink_events(c) >= total
            )
            if not drained:
                log(f"not drained within {DRAIN_TIMEOUT_S:.0f} s: figures cover what reached ClickHouse")
            time.sleep(3.0)  # the last stage records and windows reach the sink's next batch
            attempt.sink_rows = sink.scrape().total("backbone_sink_rows_total")
        finally:
            sink.stop(60)
            processor.stop()
        attempt.stage, attempt.kpi = read_freshness(settings, measured_from_ms)
    return attempt


MEASURED_TABLES = ("stage_records", "kpi_windows")


def keep_every_version(settings: Any) -> None:
    """Migrate the run's database, and stop background merges of the two measured tables.

    Why: both are ``ReplacingMergeTree(version)``, whose merges keep only the newest version of a
    row, while the measures need the first row that showed a completion. With merges, a window
    emitted every half second kept only its last version: in a live-time run every 1 m window
    had one row, emitted after publishing ended, and the KPI p50 read 7 s instead of about 1 s.
    The sink migrates again at start; that changes nothing here (migrations run once).
    """
    from sinks.client import open_client
    from sinks.migrate import migrate
    from sinks.recompute import NO_MERGES

    client = open_client(settings)
    try:
        migrate(client)
        for table in MEASURED_TABLES:
            client.command(f"ALTER TABLE {table} MODIFY SETTING {NO_MERGES.removeprefix('SETTINGS ')}")
    finally:
        client.close()


STAGE_SQL = """
SELECT s.g_mission, s.g_journey, s.g_stage, s.g_owner, s.g_province, s.g_port,
       toUnixTimestamp64Milli(s.closed_at) AS ended,
       toUnixTimestamp64Milli(s.first_closed) AS ingested,
       toUnixTimestamp64Milli(max(e.published_at)) AS published
FROM (
    SELECT record_id, case_id AS r_case,
           argMin(mission, ingested_at) AS g_mission, argMin(journey, ingested_at) AS g_journey,
           argMin(stage, ingested_at) AS g_stage, argMin(owner_agency, ingested_at) AS g_owner,
           argMin(province, ingested_at) AS g_province, argMin(port, ingested_at) AS g_port,
           assumeNotNull(argMin(ended_at, ingested_at)) AS closed_at, min(ingested_at) AS first_closed
    FROM stage_records WHERE isNotNull(ended_at)
    GROUP BY record_id, case_id
) AS s
INNER JOIN events AS e ON e.case_id = s.r_case AND e.occurred_at = s.closed_at
GROUP BY s.record_id, s.g_mission, s.g_journey, s.g_stage, s.g_owner, s.g_province, s.g_port, s.closed_at,
         s.first_closed
"""

KPI_SQL = """
SELECT mission, journey, stage, owner_agency, province, port, toUnixTimestamp64Milli(window_start),
       completions, toUnixTimestamp64Milli(ingested_at)
FROM kpi_windows WHERE window = '1m'
ORDER BY ingested_at
"""


def read_freshness(settings: Any, since_ms: int) -> tuple[list[float], list[float]]:
    """Seconds from publication to ClickHouse: per closed stage record, per completion in a 1m window."""
    from sinks.client import open_client

    client = open_client(settings)
    try:
        stage_rows = client.query(STAGE_SQL).result_rows
        kpi_rows = client.query(KPI_SQL).result_rows
    finally:
        client.close()
    stage = [(ingested - published) / 1000 for *_, ingested, published in stage_rows if published >= since_ms]
    windows: dict[tuple[Any, ...], list[tuple[int, int]]] = {}
    for *group, start, completions, ingested in kpi_rows:
        windows.setdefault((*group, start), []).append((int(completions), ingested))
    by_window: dict[tuple[Any, ...], list[int]] = {}
    for *group, ended, _ingested, published in stage_rows:
        by_window.setdefault((*group, ended - ended % 60_000), []).append(published)
    kpi: list[float] = []
    for key, published_times in by_window.items():
        rows = windows.get(key)
        if not rows:
            continue
        # every completion counts for the rank (warm-up ones too); only measured ones are reported
        for k, published in enumerate(sorted(published_times), start=1):
            seen = next((ingested for completions, ingested in rows if completions >= k), None)
            if seen is not None and published >= since_ms:
                kpi.append((seen - published) / 1000)
    return stage, kpi


def run(opts: BenchOptions) -> list[BenchRow]:
    """Both workloads on the same simulated journeys (module docstring): history replayed at the
    rate, then the same events in live time."""
    root = fresh_dir((opts.out / "freshness").resolve())  # no attempt folders of earlier runs
    now_ms = time.time_ns() // 1_000_000
    wanted = WARMUP_EVENTS + int(opts.rate * DURATION_S)
    started = time.monotonic()
    events = live_events(wanted, opts.seed, now_ms)
    codec = Codec()
    replayed = LiveStamper(events, codec)
    live = LiveStamper(first_sends(events), codec, live_time=True)
    log(f"{len(events):,} events generated and encoded twice in {time.monotonic() - started:.1f} s")
    return [*measure(opts, replayed, root / "replayed", ""), *measure(opts, live, root / "live", "live: ")]


def first_sends(events: list[SimEvent]) -> list[SimEvent]:
    """The events without their re-sends (same ``event_id``): in live time a re-send would be
    stamped with another ``occurred_at``, a different event under the same id."""
    seen: set[str] = set()
    out = []
    for e in events:
        if e.raw["event_id"] not in seen:
            seen.add(e.raw["event_id"])
            out.append(e)
    return out


def measure(opts: BenchOptions, stamper: LiveStamper, root: Path, label: str) -> list[BenchRow]:
    """Attempts at the requested rate (then lower, see the module docstring) and their rows."""
    attempts: list[Attempt] = []
    rate = opts.rate
    for n in range(ATTEMPTS):
        duration = DURATION_S if n == 0 else RETRY_DURATION_S
        final = n == ATTEMPTS - 1
        attempt = run_attempt(opts, stamper, rate, duration, root / f"attempt{n + 1}-{rate}", final)
        attempts.append(attempt)
        if attempt.sustained:
            break
        slowest = min(
            attempt.achieved,
            rate * (1 - attempt.processor_lag / max(1, attempt.published)),
            rate * (1 - attempt.sink_lag / max(1, attempt.published)),
        )
        rate = int(0.8 * slowest) // 100 * 100
        if rate >= attempt.rate:
            rate = attempt.rate // 2
        if rate < MIN_RATE:
            break
    sustained = [a for a in attempts if a.sustained]
    best = sustained[0] if sustained else attempts[-1]
    tried = ", ".join(
        f"{a.rate:,} ev/s {'sustained' if a.sustained else 'not sustained'}"
        f" (sent {a.achieved:,.0f}/s, lag processor {a.processor_lag:,.0f} sink {a.sink_lag:,.0f})"
        for a in attempts
    )
    rate_note = (
        f"at {best.rate:,} ev/s ({best.published:,} events over {best.seconds:.0f} s)"
        + ("" if best.rate == opts.rate and best.sustained else f"; asked {opts.rate:,} ev/s: {tried}")
        + ("" if sustained else "; NO rate sustained: figures of the last attempt")
    )
    target = f"p99 < {TARGET_P99_S:.0f} s at 10,000 ev/s"
    ceiling_name = "the target (p99 2 s)"
    rows = [
        BenchRow(
            SECTION,
            f"{label}highest rate sustained (processor + sink)",
            float(best.rate if best.sustained else 0),
            "ev/s",
            ceiling_name="requested rate",
            ceiling_value=float(opts.rate),
            notes=tried,
        )
    ]
    for what, values in (("stage record", best.stage), ("KPI 1m window", best.kpi)):
        for q in (0.5, 0.99):
            value_s = quantile(values, q)
            rows.append(
                BenchRow(
                    SECTION,
                    f"{label}{what}: publish -> ClickHouse p{int(q * 100)}",
                    value_s * 1000,
                    "ms",
                    ceiling_name,
                    TARGET_P99_S * 1000,
                    target=target if q == 0.99 else "",
                    notes=(
                        f"{len(values):,} samples {rate_note if what == 'stage record' else 'same run'}"
                        + ("" if values else " (NO samples: see the sink log and stage_records.ended_at)")
                        if q == 0.5
                        else ""
                    ),
                    extra={"seconds": value_s, "samples": float(len(values))},
                )
            )
    if best.cpu:
        rows.append(cpu_row(best, opts.rate, label))
    return rows


def cpu_row(attempt: Attempt, target_rate: int, label: str = "") -> BenchRow:
    """Cores the four processes used while publishing, against the machine's cores, with the CPU
    each spent per event and what the target rate would need at those costs."""
    cores = os.cpu_count() or 1
    used = sum(u.seconds for u in attempt.cpu.values()) / attempt.seconds if attempt.seconds > 0 else 0.0
    per_event = ", ".join(f"{name} {u.us_per_event:,.0f}" for name, u in attempt.cpu.items())
    need = cores_needed(attempt.cpu, target_rate)
    return BenchRow(
        SECTION,
        f"{label}CPU of the 4 processes at {attempt.rate:,} ev/s",
        used,
        "cores",
        ceiling_name="cores of this machine",
        ceiling_value=float(cores),
        notes=(
            f"µs of CPU per event: {per_event}; at these costs {target_rate:,} ev/s needs "
            f"{need:.2f} cores of {cores}"
        ),
        extra={
            **{f"{name}_us_per_event": u.us_per_event for name, u in attempt.cpu.items()},
            f"cores_needed_at_{target_rate}": need,
        },
    )


def log(text: str) -> None:
    print(f"bench freshness: {text}", file=sys.stderr, flush=True)
