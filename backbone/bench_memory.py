"""Memory: peak RSS per component at N and 10×N events, and whether case state grows with history.

For each size, on a fresh Tansu broker: a producer child process publishes the events with the
:class:`~producers.publisher.Publisher`; then ``backbone process`` reads them all; then
``backbone sink run`` stores events and outputs in a private chdb database. Each component's
peak resident set (``VmHWM`` from ``/proc``) is read before it stops.

State size: the processor's case table is read back from its changelog topic (the latest value
per key): live case states, eviction tombstones and the number of distinct cases seen. If
completed cases are evicted, live keys stay near the number of cases open in the retention
window instead of growing with the events.

N = ``max(opts.events // 10, 2000)`` so that the default run stays within a few minutes here.
A journey starts every :data:`CASE_INTERVAL_MS` of event time, so the 10× run covers 10× the
history (about 11 days, then 16 weeks): long enough that journeys complete and are evicted,
which is what the state rows are there to show. (At the other sections' one journey a minute,
even 20k events are two days of history and no journey has finished.)
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from backbone.bench import BenchOptions, BenchRow, fresh_dir
from backbone.bench_data import simulated_events
from backbone.bench_peers.jobs import JobProcess, JobRun, peak_rss_bytes
from backbone.bench_processor import WATCHED, job_env, our_job_argv, our_job_drained
from backbone.config import load_settings
from backbone.embedded.broker import TansuBroker, free_port
from backbone.kafka import ensure_topics
from schemas import contracts
from stream_processors.api import FACTS_TOPIC

SECTION = "memory"
APP_ID = "bench-memory"
CASE_CHANGELOG = f"{APP_ID}-journey_state-changelog"
CASE_INTERVAL_MS = 3_600_000  # a journey an hour of event time
QUIET_S = 3.0  # the changelog is read until no record came for this long


def publish_child(events: int, seed: int) -> None:
    """Child entry: publish the seeded events with the Publisher, print the peak RSS (bytes)."""
    from producers.publisher import Publisher

    settings = load_settings()
    evs = simulated_events(events, seed, CASE_INTERVAL_MS)
    newest = max(e.raw["published_at"] for e in evs)
    publisher = Publisher(settings, settings.kafka_bootstrap_servers, clock=lambda: newest)
    by_topic: dict[str, list[dict]] = {}  # type: ignore[type-arg]
    for e in evs:
        by_topic.setdefault(e.topic, []).append(e.raw)
    rejected = sum(len(publisher.publish_many(topic, records)) for topic, records in by_topic.items())
    failed = sum(1 for r in publisher.flush(120) if not r.ok)
    if rejected or failed:
        raise SystemExit(f"producer: {rejected} rejected, {failed} failed")
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across execve, so a child forked from
    # the bench reported the bench's own resident set (1,470 MB for 2k and for 20k events)
    print(f"peak_rss_bytes={peak_rss_bytes(os.getpid())}", flush=True)


def case_state_size(bootstrap: str, run: JobRun) -> dict[str, int]:
    """Latest value per key of the journey table's changelog: live case states and tombstones."""
    count = int(run.counters.total("backbone_records_out_total", topic=CASE_CHANGELOG))
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-state-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "log_level": 0,
        }
    )
    latest: dict[bytes | None, bytes | None] = {}
    try:
        md = consumer.list_topics(CASE_CHANGELOG, timeout=30)
        consumer.assign([TopicPartition(CASE_CHANGELOG, p, 0) for p in md.topics[CASE_CHANGELOG].partitions])
        read = 0
        deadline = time.monotonic() + 120
        last_read = time.monotonic()
        # Read past ``count`` until the topic is quiet: the metric counts a changelog when its
        # acknowledgement is taken, and the worker's last one (the final sweep's evictions) is
        # sent after the last flush, so the count stops short of it, and a partition's end
        # says nothing about a changelog still on its way.
        while time.monotonic() < deadline and (read < count or time.monotonic() - last_read < QUIET_S):
            for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                if msg.error() is None:
                    latest[msg.key()] = msg.value()
                    read += 1
                    last_read = time.monotonic()
    finally:
        consumer.close()
    # The table's changelog value is ``[partition, state]`` (stream_processors.state); None = deleted.
    # An evicted case's state is a tombstone, a dict with an "x" (stream_processors.journeys).
    sizes = {"live": [0, 0], "tombstone": [0, 0]}  # kind -> [keys, JSON bytes]
    for value in latest.values():
        if value:
            state = json.loads(value)[1]
            kind = sizes["tombstone" if isinstance(state, dict) and "x" in state else "live"]
            kind[0] += 1
            kind[1] += len(value)
    return {
        "keys": sizes["live"][0] + sizes["tombstone"][0],
        "live_cases": sizes["live"][0],
        "live_bytes": sizes["live"][1],
        "tombstones": sizes["tombstone"][0],
        "tombstone_bytes": sizes["tombstone"][1],
        "cases_seen": len(latest),
    }


def run_size(opts: BenchOptions, n: int, root: Path) -> list[BenchRow]:
    fresh_dir(root)
    with TansuBroker(log_file=root / "tansu.log") as broker:
        bootstrap = broker.bootstrap
        settings = load_settings(kafka_bootstrap_servers=bootstrap, topic_partitions=opts.partitions)
        ensure_topics(
            settings,
            bootstrap,
            (*contracts.INPUT_TOPICS, *contracts.OUTPUT_TOPICS, FACTS_TOPIC),
            partitions=opts.partitions,
        )
        env = job_env(bootstrap, root / "data", opts.partitions)
        producer = JobProcess(
            "producer",
            [sys.executable, "-m", "backbone.bench_memory", "publish", str(n), str(opts.seed)],
            env,
            root / "producer.log",
        ).start()
        assert producer.process is not None
        if producer.process.wait(600) != 0:
            raise RuntimeError(f"memory bench producer failed:\n{producer.log_tail()}")
        producer_rss = int(producer.log_path.read_text().split("peak_rss_bytes=")[1].split()[0])
        processor = JobProcess(
            "processor", our_job_argv(APP_ID, stock=False), env, root / "processor.log"
        ).start()
        try:
            proc_run = processor.run_until_done(n, our_job_drained, WATCHED, 1800)
        finally:
            processor.stop()
        state = case_state_size(bootstrap, proc_run)
        port = free_port()
        sink = JobProcess(
            "sink",
            [sys.executable, "-m", "backbone", "sink", "run"],
            {**env, "BACKBONE_SINK_METRICS_PORT": str(port)},
            root / "sink.log",
        ).start()
        sink.port = port
        try:
            sink.wait_for_http(120)
            sink_run = sink.run_until_done(
                n,
                lambda _c: True,
                ("backbone_sink_rows_total",),
                1800,
                # skipped (undecodable/invalid) events count as consumed: waiting for them hangs
                consumed_by=lambda c: (
                    c.total("backbone_sink_rows_total", table="events")
                    + c.total("backbone_sink_skipped_events_total")
                ),
            )
        finally:
            sink.stop()
    mb = 2**20
    return [
        BenchRow(SECTION, f"producer peak RSS ({n:,} events)", producer_rss / mb, "MB"),
        BenchRow(
            SECTION,
            f"processor worker peak RSS ({n:,} events)",
            proc_run.peak_rss_bytes / mb,
            "MB",
            notes=f"{proc_run.events_per_s:,.0f} ev/s",
        ),
        BenchRow(
            SECTION,
            f"live case states after {n:,} events",
            float(state["live_cases"]),
            "key",
            notes=f"open cases and cases completed < retention ago; {state['live_bytes'] / 1024:,.0f} KiB "
            f"of JSON; {state['cases_seen']:,} cases seen",
        ),
        BenchRow(
            SECTION,
            f"case table keys after {n:,} events",
            float(state["keys"]),
            "key",
            notes=f"live states + {state['tombstones']:,} eviction tombstones "
            f"({state['tombstone_bytes'] / 1024:,.0f} KiB; kept 24 h of event time for re-sends, "
            "which a replay does not reach)",
        ),
        BenchRow(
            SECTION,
            f"sink peak RSS ({n:,} events)",
            sink_run.peak_rss_bytes / mb,
            "MB",
            notes=f"{sink_run.counters.total('backbone_sink_rows_total'):,.0f} rows",
        ),
    ]


def run(opts: BenchOptions) -> list[BenchRow]:
    n = max(opts.events // 10, 2000)
    root = fresh_dir((opts.out / "memory").resolve())
    small = run_size(opts, n, root / f"n{n}")
    large = run_size(opts, 10 * n, root / f"n{10 * n}")
    for s_row, l_row in zip(small, large, strict=True):
        l_row.ceiling_name, l_row.ceiling_value = s_row.name, s_row.value
        l_row.notes = f"{l_row.notes}; x{l_row.value / s_row.value:.2f} for 10x the events".lstrip("; ")
    return small + large


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "publish":
        publish_child(int(sys.argv[2]), int(sys.argv[3]))
    else:
        raise SystemExit("usage: python -m backbone.bench_memory publish EVENTS SEED")
