"""Sink throughput: the whole sink (consume, decode, validate, Arrow batches, insert, commit) vs a bare
clickhouse-connect insert of the same rows into the same table definition, in the same run.

The events are produced once to a fresh Tansu broker; the sink reads them into database
``bench_sink`` of a fresh chdb path. The ceiling inserts the very rows the sink stored, already
built as Python columns, into ``events`` of database ``bench_bare`` (same migrations, so the
same engine, sorting key and materialized views), in batches of the sink's batch size. The
sink's rate runs from its first read message to its last offset commit (group formation, a
broker matter, is not counted). Both sides are measured ``REPEATS`` times (the sink in a new
consumer group and database each time) and their medians compared: on a shared 2-core machine a
single run of either side varies by a factor of 1.5. At least :data:`MIN_EVENTS` events are used
whatever ``--events`` says.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from backbone.bench import BenchOptions, BenchRow
from backbone.bench_data import EncodedEvents, simulated_events
from backbone.config import load_settings
from backbone.embedded.broker import TansuBroker
from backbone.kafka import ensure_topics
from backbone.metrics import Metrics
from schemas import contracts
from sinks import rows
from sinks.client import open_client
from sinks.migrate import migrate
from sinks.sink import Sink, SinkConfig

BATCH_ROWS = 50_000
REPEATS = 3
MIN_EVENTS = 200_000
"""The sink is measured on at least this many events: a 20k-event run lasts ~0.1 s, most of it
fixed latency (the first fetch, the first insert round, the last commit), not throughput."""


def _produce(bootstrap: str, messages: list[tuple[str, bytes, bytes]]) -> None:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 5}
    )
    for topic, key, value in messages:
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(120):
        raise RuntimeError("bench_sink: could not deliver every event")


def _sink_rate(settings: Any, expected: int, clock_ms: int, run: int) -> tuple[float, int]:
    """Rows/s of one sink run reading every topic from the start (group and database of its own)."""
    client = open_client(settings, database="bench_sink" if run == 0 else f"bench_sink_{run}")
    migrate(client)
    sink = Sink(
        settings,
        client,
        Metrics(),
        SinkConfig(group_id=f"bench-sink-{run}", batch_rows=BATCH_ROWS),
        clock_ms=lambda: clock_ms,
    )
    stop = threading.Event()
    thread = threading.Thread(target=sink.run, args=(stop,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 600
    skipped = 0
    while time.monotonic() < deadline:
        skipped = int(
            sum(
                s.value
                for m in sink.metrics.sink_skipped.collect()
                for s in m.samples
                if s.name.endswith("_total")
            )
        )
        if sink.rows_inserted + skipped >= expected and sink._pending == 0 and sink.last_commit_at:
            break
        time.sleep(0.05)
    stop.set()
    thread.join(120)
    client.close()
    if sink.first_read_at is None or sink.last_commit_at is None or sink.rows_inserted == 0:
        raise RuntimeError("bench_sink: the sink stored nothing")
    return sink.rows_inserted / (sink.last_commit_at - sink.first_read_at), skipped


def _stored_rows(settings: Any, raw: bool) -> list[tuple[Any, ...]]:
    """The rows the sink stored: as Python values a columnar insert takes (``datetime``, ``Decimal``,
    ``UUID``), or in the sink's raw shape (epoch ms, paisa, UUID text) when ``raw``."""
    spec = rows.events_spec()
    raw_select = {
        "timestamp": "toUnixTimestamp64Milli({c})",
        "money": "if(isNull({c}), NULL, toInt64({c} * 100))",
    }
    exprs = [
        (
            raw_select[c.kind]
            if raw and c.kind in raw_select
            else "toString({c})"
            if raw and c.name == "event_id"
            else "{c}"
        ).format(c=c.name)
        for c in spec.columns
    ]
    client = open_client(settings, database="bench_sink")
    try:
        return [tuple(r) for r in client.query(f"SELECT {', '.join(exprs)} FROM events").result_rows]
    finally:
        client.close()


def _bare_rates(settings: Any) -> tuple[float, float, int]:
    """Rows/s of a bare columnar insert and of a bare Arrow insert of the sink's rows."""
    spec = rows.events_spec()
    stored = _stored_rows(settings, raw=False)
    raw_rows = _stored_rows(settings, raw=True)
    client = open_client(settings, database="bench_bare")
    migrate(client)
    columns = [list(c) for c in zip(*stored, strict=True)]

    def columnar() -> None:
        for lo in range(0, len(stored), BATCH_ROWS):
            client.insert(
                "events",
                [c[lo : lo + BATCH_ROWS] for c in columns],
                column_names=spec.names,
                column_oriented=True,
            )

    def arrow() -> None:
        for lo in range(0, len(raw_rows), BATCH_ROWS):
            client.insert_arrow("events", spec.to_arrow(raw_rows[lo : lo + BATCH_ROWS]))

    def rate(insert: Callable[[], None]) -> float:
        rates = []
        for _ in range(REPEATS):
            client.command("TRUNCATE TABLE events")
            started = time.perf_counter()
            insert()
            rates.append(len(stored) / (time.perf_counter() - started))
        return statistics.median(rates)

    try:
        return rate(columnar), rate(arrow), len(stored)
    finally:
        client.close()


def run(opts: BenchOptions) -> list[BenchRow]:
    events = simulated_events(max(opts.events, MIN_EVENTS), opts.seed)
    encoded = EncodedEvents.from_events(events)
    newest = max(e.raw["published_at"] for e in events)
    with tempfile.TemporaryDirectory(prefix="bench-sink-") as tmp, TansuBroker() as broker:
        settings = load_settings(kafka_bootstrap_servers=broker.bootstrap, data_dir=Path(tmp))
        ensure_topics(
            settings,
            broker.bootstrap,
            contracts.INPUT_TOPICS + contracts.OUTPUT_TOPICS,
            partitions=opts.partitions,
        )
        _produce(broker.bootstrap, encoded.messages)
        runs = [_sink_rate(settings, len(events), newest, run) for run in range(REPEATS)]
        sink_rate = statistics.median(rate for rate, _ in runs)
        skipped = runs[0][1]
        columnar, arrow, stored = _bare_rates(settings)
    notes = (
        f"{stored:,} event rows ({skipped} skipped as invalid), batches of {BATCH_ROWS:,}, chdb; "
        f"medians of {REPEATS} runs (sink runs: {', '.join(f'{rate:,.0f}' for rate, _ in runs)})"
    )
    return [
        BenchRow(
            "sink",
            "sink: consume+decode+validate+insert+commit",
            sink_rate,
            "rows/s",
            "bare clickhouse-connect insert(column_oriented)",
            columnar,
            notes=notes,
        ),
        BenchRow(
            "sink",
            "sink (same run) vs bare insert_arrow",
            sink_rate,
            "rows/s",
            "bare clickhouse-connect insert_arrow",
            arrow,
            notes="Arrow: the sink's own insert path",
        ),
    ]
