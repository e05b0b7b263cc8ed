"""Processor throughput per worker: the full KPI job against its ceiling and two peers, one run.

One fresh Tansu broker; the five agency topics are filled once with ``opts.events`` seeded
simulated events over ``opts.partitions`` partitions. Then, one after the other, each reads
them all from offset 0 with its own consumer group:

1. **ceiling**: bare confluent-kafka consume + one Avro decode per event (through
   :class:`schemas.codec.Codec`, and with plain ``fastavro.schemaless_reader``);
2. **our job, tuned Faust path**: ``backbone process`` (journeys → facts → KPIs, alerts,
   backlog, feeds), a child process with its own app id;
3. **our job, stock Faust classes**: ``backbone process --stock``;
4. **naive Faust**: :mod:`backbone.bench_peers.naive_faust` (one agent, per-event state);
5. **Quix Streams**: :mod:`backbone.bench_peers.quix_job` (its own state, group-by, windows);
6. **our job on a longer replay** (:data:`SUSTAINED_EVENTS`, fresh broker) when ``opts.events`` is
   smaller: the steady-state figure the target is judged on (see :func:`sustained_run`).

A job's time runs from its first input read to its last delivered output
(:mod:`backbone.bench_peers.jobs`). Then the KPI windows of our job, the naive peer and the Quix
peer are read back and compared (:mod:`backbone.bench_peers.kpi_compare`): the section fails
loudly when they differ.

Every job uses the event clock (``BACKBONE_CLOCK=event``: a replay, "now" is the newest event
time). Our job runs with the production grace (:data:`BENCH_GRACE_MS`): its event-clock ticks wait
until every partition is read to its end, so no completion of a replay is late for it (the
"late completions" figure says so). The peers close windows as they read: in a replay the five
topics and their partitions are read at different speeds, so with a 1 h grace *which*
completions count as late depends on each peer's read order (Quix closes windows per
partition), and their windows would differ from ours for reasons that are not errors. The
peers therefore get a grace longer than the data's span (:data:`PEER_GRACE_MS`): they never
close a window early, compute the exact figures, and do no closing work (less work than ours,
so the ratios favour them).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backbone.bench import BenchOptions, BenchRow, format_table, fresh_dir
from backbone.bench_data import EncodedEvents, produce_messages, simulated_events
from backbone.bench_peers import kpi_compare, naive_faust, peer_topic, quix_job
from backbone.bench_peers.ceiling import codec_decoder, consume_and_decode, plain_fastavro_decoder
from backbone.bench_peers.jobs import Counters, JobProcess, JobRun
from backbone.config import DEFAULT_MISSIONS_FILE, load_settings
from backbone.embedded.broker import TansuBroker
from backbone.kafka import ensure_topics
from schemas import contracts
from schemas.codec import Codec
from stream_processors.api import FACTS_TOPIC
from stream_processors.missions import load_missions

SECTION = "processor"
BENCH_GRACE_MS = 3_600_000
"""Grace of our job's windows (the production default: 1 h)."""
PEER_GRACE_MS = 400 * 24 * 3_600_000
"""Grace of the peers' windows: beyond any benchmark data's span, so no read order makes a completion late."""
TARGET_EVENTS_PER_S = 15_000
STRETCH_EVENTS_PER_S = 50_000
JOB_TIMEOUT_S = 1800.0
PEER_BUDGET_S = 30.0
"""Stock, naive and Quix jobs are measured over at most this long (they take minutes on 20k events);
their outputs are compared with ours only when they finish within it (small ``--events``)."""
SUSTAINED_EVENTS = 100_000
"""Our job alone is also measured on a replay this long when ``--events`` is smaller."""
WINDOWS = load_missions(DEFAULT_MISSIONS_FILE).windows
WATCHED = ("backbone_events_in_total", "backbone_records_out_total", "backbone_batch_size")


def publish(bootstrap: str, messages: Sequence[tuple[str, bytes, bytes]]) -> None:
    """Fill the input topics once (idempotent, acks=all); raises if anything is undelivered."""
    produce_messages(bootstrap, messages, linger_ms=20)


def job_env(bootstrap: str, data_dir: Path, partitions: int, **extra: str) -> dict[str, str]:
    """A job's environment: our BACKBONE_* settings only (nothing inherited from the caller's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKBONE_")}
    env.update(
        {
            "BACKBONE_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "BACKBONE_DATA_DIR": str(data_dir),
            "BACKBONE_CLOCK": "event",
            "BACKBONE_GRACE_MS": str(BENCH_GRACE_MS),
            "BACKBONE_TOPIC_PARTITIONS": str(partitions),
            "BACKBONE_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def facts_drained(c: Counters) -> bool:
    """Hop 2 has consumed every fact hop 1 delivered (and hop 1 delivered some)."""
    facts = c.total("backbone_records_out_total", topic=FACTS_TOPIC)
    return facts > 0 and c.total("backbone_batch_size_sum", component="kpis") >= facts


def our_job_drained(c: Counters) -> bool:
    """Facts drained, and a sweep+tick ran after the last batch (its outputs delivered).

    On the event clock our worker ticks only once the input is quiet and read to its end, and
    the final tick of a large replay takes seconds: a quiet period alone can end the
    measurement before the KPI windows are out (the benchmark then saw no window rows).
    """
    batches = c.total("backbone_batch_size_count")
    return facts_drained(c) and c.total("backbone_processor_timer_batches") >= batches > 0


@dataclass
class Workspace:
    bootstrap: str
    root: Path
    partitions: int
    events: int
    env_extra: dict[str, str] = field(default_factory=dict)

    def run_job(
        self,
        name: str,
        argv: list[str],
        drained: Callable[[Counters], bool],
        budget_s: float | None = None,
        env: Mapping[str, str] | None = None,
        backlog_drained: Callable[[Counters], bool] | None = None,
    ) -> JobRun:
        # a fresh broker means fresh state: a Quix state dir left by an earlier bench run (same app
        # id, changelog offsets of the old broker) made the peer wait for ever in its recovery
        data_dir = fresh_dir(self.root / name)
        job = JobProcess(
            name,
            argv,
            job_env(self.bootstrap, data_dir, self.partitions, **{**self.env_extra, **(env or {})}),
            self.root / "logs" / f"{name}.log",
        )
        job.start()
        try:
            run = job.run_until_done(
                self.events,
                drained,
                WATCHED,
                JOB_TIMEOUT_S,
                budget_s=budget_s,
                backlog_drained=backlog_drained,
            )
        finally:
            job.stop()
        (self.root / "logs" / f"{name}.counters.txt").write_text(
            "\n".join(f"{n}{dict(labels)} {v}" for (n, labels), v in sorted(run.counters.samples.items()))
            + "\n"
        )
        return run


def our_job_argv(app_id: str, stock: bool) -> list[str]:
    argv = [sys.executable, "-m", "backbone", "process", "--app-id", app_id, "--metrics-port", "0"]
    return [*argv, "--stock"] if stock else argv


def read_our_windows(
    bootstrap: str, run: JobRun, start: dict[int, int] | None = None
) -> tuple[dict[kpi_compare.WindowKey, kpi_compare.WindowFigures], dict[int, int]]:
    codec = Codec()
    count = int(run.counters.total("backbone_records_out_total", topic=contracts.KPI_WINDOWS))
    rows, offsets = kpi_compare.read_rows(
        bootstrap, contracts.KPI_WINDOWS, count, lambda v: codec.decode(contracts.KPI_WINDOWS, v), start
    )
    return kpi_compare.latest_windows(rows), offsets


def read_peer_windows(
    bootstrap: str, run: JobRun, topic: str, decode: Callable[[bytes], Mapping[str, Any]]
) -> dict[kpi_compare.WindowKey, kpi_compare.WindowFigures]:
    count = int(run.counters.total("backbone_records_out_total", topic=contracts.KPI_WINDOWS))
    rows, _ = kpi_compare.read_rows(bootstrap, topic, count, decode)
    return kpi_compare.latest_windows(rows)


class OutputsDiffer(RuntimeError):
    """The jobs' KPI windows differ: the throughput figures compare different work."""


def peer_argv(module: str, app_id: str) -> list[str]:
    return [sys.executable, "-m", module, "--app-id", app_id, "--metrics-port", "0"]


def run(opts: BenchOptions) -> list[BenchRow]:
    events = simulated_events(opts.events, opts.seed)
    messages = EncodedEvents.from_events(events).messages
    n = len(messages)
    root = fresh_dir((opts.out / "processor").resolve())
    codec = Codec()
    naive_topic = peer_topic(naive_faust.PEER, contracts.KPI_WINDOWS)
    with TansuBroker(log_file=root / "tansu.log") as broker:
        bootstrap = broker.bootstrap
        fill(bootstrap, opts.partitions, messages)
        ceiling = consume_and_decode(bootstrap, contracts.INPUT_TOPICS, n, codec_decoder())
        ceiling_plain = consume_and_decode(bootstrap, contracts.INPUT_TOPICS, n, plain_fastavro_decoder())
        log(f"ceiling {ceiling:,.0f} ev/s (plain fastavro {ceiling_plain:,.0f})")
        ws = Workspace(bootstrap, root, opts.partitions, n)
        fast = ws.run_job(
            "our-job-fast",
            our_job_argv("bench-fast", stock=False),
            our_job_drained,
            backlog_drained=facts_drained,
        )
        log(f"our job {fast.events_per_s:,.0f} ev/s")
        ours, _offsets = read_our_windows(bootstrap, fast)
        stock = ws.run_job(
            "our-job-stock", our_job_argv("bench-stock", stock=True), our_job_drained, PEER_BUDGET_S
        )
        log(f"our job on stock Faust {stock.events_per_s:,.0f} ev/s")
        peer_env = {"BACKBONE_GRACE_MS": str(PEER_GRACE_MS)}
        naive = ws.run_job(
            "naive-faust",
            peer_argv("backbone.bench_peers.naive_faust", "bench-naive"),
            lambda _c: True,
            PEER_BUDGET_S,
            peer_env,
        )
        log(f"naive Faust {naive.events_per_s:,.0f} ev/s")
        quix = ws.run_job(
            "quix-streams",
            peer_argv("backbone.bench_peers.quix_job", "bench-quix"),
            facts_drained,
            PEER_BUDGET_S,
            peer_env,
        )
        log(f"Quix Streams {quix.events_per_s:,.0f} ev/s")
        peers: dict[str, dict[kpi_compare.WindowKey, kpi_compare.WindowFigures]] = {}
        if naive.complete:
            peers["naive Faust"] = read_peer_windows(
                bootstrap, naive, naive_topic, lambda v: codec.decode(contracts.KPI_WINDOWS, v)
            )
        if quix.complete:
            peers["Quix"] = read_peer_windows(
                bootstrap, quix, quix_job.KPI_WINDOWS_TOPIC, kpi_compare.json_rows
            )

    sustained = sustained_run(opts, root) if n < SUSTAINED_EVENTS else None
    checks = {peer: [kpi_compare.agree(ours, w, spec.name) for spec in WINDOWS] for peer, w in peers.items()}
    equal = bool(ours) and all(agreements[0].equal for agreements in checks.values())
    equality = "; ".join(
        f"vs {peer}: " + ", ".join(a.summary() for a in agreements) for peer, agreements in checks.items()
    )
    if not ours:
        equality = f"our job emitted no KPI window rows; {equality}"
    if not checks:
        equality += " peers stopped at their time budget, not compared (use a smaller --events)"
    verdict = "yes" if equal else "no" if (checks or not ours) else "not checked"
    late = fast.counters.total("backbone_late_events_total")
    ceiling_name = "bare consume + Codec.decode"

    def job_row(name: str, job: JobRun, note: str = "", target: str = "") -> BenchRow:
        budget = (
            "" if job.complete else f"; stopped at its {PEER_BUDGET_S:.0f} s budget ({job.events:,} of {n:,})"
        )
        return BenchRow(
            SECTION,
            name,
            job.events_per_s,
            "ev/s",
            ceiling_name,
            ceiling,
            target=target,
            notes=f"{job.seconds:.1f} s{budget}{'; ' + note if note else ''}",
            extra={
                "seconds": job.seconds,
                "events": float(job.events),
                "peak_rss_mb": job.peak_rss_bytes / 2**20,
                **({"backlog_seconds": job.backlog_s} if job.backlog_s is not None else {}),
            },
        )

    target = f">= {TARGET_EVENTS_PER_S:,} ev/s (stretch {STRETCH_EVENTS_PER_S:,})"
    rows = [
        BenchRow(
            SECTION,
            "ceiling: bare consume + Codec.decode",
            ceiling,
            "ev/s",
            notes=f"{n:,} events, {opts.partitions} partitions x 5 topics",
        ),
        BenchRow(
            SECTION, "ceiling: bare consume + plain fastavro", ceiling_plain, "ev/s", ceiling_name, ceiling
        ),
        job_row(
            "our KPI job, tuned Faust path (1 worker)",
            fast,
            f"{ratio(fast, naive):.1f}x naive (target >= 10x), {ratio(fast, quix):.1f}x Quix (target > 1x), "
            f"{ratio(fast, stock):.1f}x stock; late completions {late:,.0f}; {backlog_note(fast)}",
            target="" if sustained else target,
        ),
        *(
            [
                job_row(
                    f"our KPI job, tuned, {sustained.events // 1000}k-event replay",
                    sustained,
                    f"{backlog_note(sustained)}; {ratio(sustained, naive):.1f}x naive, "
                    f"{ratio(sustained, quix):.1f}x Quix, {ratio(sustained, stock):.1f}x stock "
                    "(their rates from the short run)",
                    target=target,
                )
            ]
            if sustained
            else []
        ),
        job_row("our KPI job, stock Faust classes (--stock)", stock),
        job_row("naive Faust (1 agent, per-event state)", naive),
        job_row(
            "Quix Streams (state, group_by, windows)", quix, "no backlog/feeds/alerts: less work than ours"
        ),
        BenchRow(
            SECTION,
            "KPI windows of our job (latest per window)",
            float(len(ours)),
            "win",
            notes=f"outputs equal: {verdict}; {equality}",
        ),
    ]
    (root / "comparison.txt").write_text(
        "\n\n".join(
            f"ours vs {peer}\n"
            + "\n".join(f"{a.summary()}\n" + "\n".join(a.mismatches[:50]) for a in agreements)
            for peer, agreements in checks.items()
        )
        + "\n"
    )
    if not equal and (checks or not ours):
        print(format_table(rows), file=sys.stderr)
        raise OutputsDiffer(
            f"processor bench: KPI outputs differ ({equality}); details in {root / 'comparison.txt'}"
        )
    return rows


def fill(bootstrap: str, partitions: int, messages: Sequence[tuple[str, bytes, bytes]]) -> None:
    """Create every topic the jobs use and publish ``messages`` to the agency topics."""
    settings = load_settings(kafka_bootstrap_servers=bootstrap, topic_partitions=partitions)
    peer_topics = (
        *naive_faust.output_topics().values(),
        quix_job.STAGE_RECORDS_TOPIC,
        quix_job.KPI_WINDOWS_TOPIC,
    )
    ensure_topics(
        settings,
        bootstrap,
        (*contracts.INPUT_TOPICS, *contracts.OUTPUT_TOPICS, FACTS_TOPIC, *peer_topics),
        partitions=partitions,
    )
    started = time.monotonic()
    publish(bootstrap, messages)
    log(f"{len(messages):,} events published in {time.monotonic() - started:.1f} s")


def sustained_run(opts: BenchOptions, root: Path) -> JobRun:
    """Our job alone on a :data:`SUSTAINED_EVENTS` replay (fresh broker, same seed).

    A short run's figure is dominated by the replay's fixed tail: the event clock's quiet check
    (about a second) and the last tick that emits every window of the replay. The peers are too
    slow to replay this many events within their budgets, so they are compared on the short run.
    """
    messages = EncodedEvents.from_events(simulated_events(SUSTAINED_EVENTS, opts.seed)).messages
    with TansuBroker(log_file=root / "tansu-sustained.log") as broker:
        fill(broker.bootstrap, opts.partitions, messages)
        ws = Workspace(broker.bootstrap, root, opts.partitions, len(messages))
        run = ws.run_job(
            "our-job-sustained",
            our_job_argv("bench-sustained", stock=False),
            our_job_drained,
            backlog_drained=facts_drained,
        )
    log(f"our job, {len(messages):,}-event replay: {run.events_per_s:,.0f} ev/s")
    return run


def backlog_note(run: JobRun) -> str:
    """When the backlog was drained, as against the whole run (which ends with the last tick).

    On the event clock a replay's KPI windows all come out in the last tick, after a second of
    quiet input: the drain is the catch-up speed (every event read, its stage records, alerts
    and facts delivered, hop 2 caught up); the rest is that wait and the windows' emission.
    """
    if run.backlog_s is None or run.backlog_events_per_s is None:
        return "backlog drain not observed"
    tail = run.seconds - run.backlog_s
    return (
        f"backlog drained in {run.backlog_s:.1f} s ({run.backlog_events_per_s:,.0f} ev/s), "
        f"then {tail:.1f} s of quiet wait and last tick (KPI windows)"
    )


def ratio(a: JobRun, b: JobRun) -> float:
    return a.events_per_s / b.events_per_s if b.events_per_s else float("inf")


def log(text: str) -> None:
    print(f"bench processor: {text}", file=sys.stderr, flush=True)
