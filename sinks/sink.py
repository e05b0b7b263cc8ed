"""The ClickHouse sink: Kafka topics → columnar batches → ClickHouse, exactly once in effect.

Contract:
* Reads the five agency topics (→ ``events``) and the six ``backbone.*`` output topics (→ one
  table each) in consumer group ``backbone-sink`` with auto-commit off.
* Decodes and validates a whole consume batch per topic at once and buffers it as an Arrow
  table per table (:mod:`sinks.sink_batch`, :mod:`sinks.sink_validate`). A batch of 256 or
  more messages of one topic is first read as columns in one call (:mod:`schemas.columnar_reader`);
  one that is not entirely canonical, current-schema, valid (agency events) and within the
  columns' ranges is decoded record by record instead. A flush round is due
  when a table's batch is full, when the buffered rows reach ``max_pending_rows`` (or
  ``min_batch_rows`` with no insert running, or whatever is left once a catch-up has read
  everything), or when the oldest buffered row is ``max_batch_age_s`` old; it hands every
  table's batch to the insert thread (:mod:`sinks.sink_writer`) and goes on consuming while it
  is inserted. One round is in flight at a time: rows read meanwhile wait for the next round,
  so batches grow by themselves while catching up. The offsets read before a round are
  committed only after ClickHouse accepted every row of it, in order. A crash re-reads at most
  the uncommitted rows; the tables are ReplacingMergeTrees keyed on each record's id, so a
  re-insert replaces instead of adding (the ``*_latest`` views hide copies until merges run).
* ClickHouse slow or unavailable: the insert is retried forever while running, with bounded
  exponential back-off (tenacity); once ``max_pending_rows`` are held the consumer is paused but
  still polled (group membership kept, nothing more buffered, memory bounded) and
  ``backbone_sink_errors_total`` counts the failures. The backlog drains when ClickHouse returns.
* Rows ClickHouse rejects (or that cannot be converted to the column types) are found by
  bisecting the batch and parked in ``dead_letters`` (source ``sink``) with the reason and the
  original message bytes; the rest of the batch is stored.
* Agency events that do not decode or break the contract (``schemas/validation.py``, or a key
  that is not the case id) are *not* stored and *not* dead-lettered here: the processors
  dead-letter exactly those (SEMANTICS.md: such an event "counts nowhere else"), so storing or
  parking them here would count them twice. The sink applies the processors' rules (future skew
  against ``max(now, message timestamp)``) and counts what it skips in
  ``backbone_sink_skipped_events_total``. Undecodable records on the *output* topics are the
  sink's own to park (nobody else reads them), so they become dead letters with source ``sink``.
* SIGINT/SIGTERM: stop consuming, flush what is buffered, commit, exit. If ClickHouse stays down
  past ``shutdown_timeout_s`` the sink exits without committing: nothing is lost, the next run
  re-reads those records.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from backbone.config import Settings
from backbone.kafka import FAST_GROUP_SETTINGS, client_config
from backbone.metrics import Metrics
from schemas import contracts
from schemas.codec import Codec, DecodeError, codec_for
from schemas.columnar_reader import read_columns
from schemas.validation import InvalidRecord, validate_event
from sinks import rows
from sinks.rows import TableSpec
from sinks.sink_batch import TableBatch, keep_rows, slice_columns
from sinks.sink_validate import batch_valid, table_valid
from sinks.sink_writer import (
    ARROW_DATA_ERRORS,
    DATA_ERROR_CODES,
    SOURCE,
    ArrowInserter,
    DataRejected,
    InsertJob,
    InsertWorker,
    SinkFatal,
    SinkShutdownTimeout,
    TransientInsertError,
    WriterConfig,
    classify,
    dead_letter_id,
    park,
)

__all__ = [
    "ARROW_DATA_ERRORS",
    "DATA_ERROR_CODES",
    "ArrowInserter",
    "DataRejected",
    "Sink",
    "SinkConfig",
    "SinkFatal",
    "SinkShutdownTimeout",
    "TransientInsertError",
    "classify",
    "dead_letter_id",
]

log = logging.getLogger(__name__)

DEFAULT_GROUP = "backbone-sink"
FETCH_WAIT_MAX_MS = 100
FETCH_QUEUE_BACKOFF_MS = 20
# The columnar read costs about a millisecond per call whatever the size; record by record costs
# about 3 us an event plus conversions: below a few hundred events per topic and batch (steady
# live traffic) the per-record path is as fast.
COLUMNAR_MIN_MESSAGES = 256
# Every buffered row keeps its Kafka message (to park it if ClickHouse refuses the row), and
# confluent-kafka messages are GC-tracked: with CPython's default thresholds (700, 10, 10) the
# collector walks the ~10^5 held messages again and again while a catch-up buffers them. Fewer
# young collections cost nothing here (rows hold no cycles) and save ~8% of the decode CPU.
GC_THRESHOLDS = (50_000, 20, 20)
IDLE_POLL_S = 0.2  # consume() wait with nothing buffered
INFLIGHT_POLL_S = 0.02  # consume() wait while an insert runs: its commit follows promptly


@dataclass(frozen=True)
class SinkConfig:
    """Batching and retry bounds; the defaults suit both a demo and a national feed."""

    group_id: str = DEFAULT_GROUP
    batch_rows: int = 50_000  # a table's batch is flushed at this many rows (and inserted in such chunks)
    # with no insert running, this many buffered rows go at once instead of waiting for their age:
    # a catch-up starts inserting after one consume batch, and inserts stay large enough for MergeTree
    min_batch_rows: int = 10_000
    max_pending_rows: int = 200_000  # buffered + being inserted, all tables together; bounds memory
    max_batch_age_s: float = 0.5  # freshness bound: the board lags the topics by about this much
    consume_batch: int = 10_000
    retry_initial_s: float = 0.2
    retry_max_s: float = 10.0
    shutdown_timeout_s: float = 30.0
    lag_interval_s: float = 15.0


class Sink:
    """Consume, batch, insert, commit. One instance per process; :meth:`run` blocks until ``stop``."""

    def __init__(
        self,
        settings: Settings,
        inserter: ArrowInserter,
        metrics: Metrics | None = None,
        config: SinkConfig | None = None,
        topic_names: dict[str, str] | None = None,
        codec: Codec | None = None,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        """``topic_names`` maps each logical topic (``schemas.contracts``) to the topic to read
        (identity by default)."""
        self.settings = settings
        self.inserter = inserter
        self.metrics = metrics or Metrics()
        self.config = config or SinkConfig()
        self.codec = codec or codec_for(settings)  # the framing the producers write (registry or not)
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        logical = contracts.INPUT_TOPICS + contracts.OUTPUT_TOPICS
        names = {t: (topic_names or {}).get(t, t) for t in logical}
        self._logical_by_name = {v: k for k, v in names.items()}
        self._tables: dict[str, TableBatch] = {rows.EVENTS_TABLE: TableBatch(rows.events_spec())}
        for topic in contracts.OUTPUT_TOPICS:
            spec = rows.output_spec(topic)
            self._tables[spec.table] = TableBatch(spec)
        self._positions: dict[tuple[str, int], int] = {}  # next offset to read, per partition read
        self._committed: dict[tuple[str, int], int] = {}
        self._assigned: set[tuple[str, int]] = set()
        self._buffered = 0  # rows in self._tables
        self._pending = 0  # buffered + in the insert in flight (until its offsets are committed)
        self._oldest: float | None = None
        self._inflight: InsertJob | None = None
        self._worker: InsertWorker | None = None
        self._held: list[Message] = []
        self._draining = False  # the last round was cut by size: a catch-up is under way
        self._caught_up = False  # the last consume returned less than it asked for
        self._paused = False
        self._consumer: Consumer | None = None
        self._stop = threading.Event()
        self._closing = False
        self._last_lag = 0.0
        self.rows_inserted = 0  # counted when the round's offsets are committed
        self.commits = 0
        self.first_read_at: float | None = None  # monotonic; for throughput figures (bench)
        self.last_commit_at: float | None = None

    # -- public ----------------------------------------------------------------------------------
    @property
    def topics(self) -> list[str]:
        return sorted(self._logical_by_name)

    def request_stop(self) -> None:
        """Ask :meth:`run` to flush, commit and return (safe from a signal handler or thread)."""
        self._stop.set()

    def run(self, stop: threading.Event | None = None, ready: threading.Event | None = None) -> None:
        """Consume until ``stop`` (or :meth:`request_stop`); flush and commit before returning."""
        if stop is not None:
            self._stop = stop
        conf = {
            **client_config(self.settings),
            **FAST_GROUP_SETTINGS,
            "group.id": self.config.group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "queued.max.messages.kbytes": 16384,  # librdkafka's prefetch: bounded too
            # once that prefetch is full librdkafka stops fetching for fetch.queue.backoff.ms (1 s
            # by default): a catch-up then stalled 0.3-0.5 s per round. Resume as soon as it drains.
            "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
            # Tansu holds a fetch for its whole wait when a partition has nothing new (librdkafka's
            # default 500 ms): a shorter wait keeps the freshness within the batch age.
            "fetch.wait.max.ms": FETCH_WAIT_MAX_MS,
        }
        consumer = Consumer(conf)
        self._consumer = consumer
        self._worker = InsertWorker(
            self.inserter,
            self.metrics,
            WriterConfig(
                chunk_rows=self.config.batch_rows,
                retry_initial_s=self.config.retry_initial_s,
                retry_max_s=self.config.retry_max_s,
                shutdown_timeout_s=self.config.shutdown_timeout_s,
            ),
            stopping=lambda: self._stop.is_set() or self._closing,
            clock_ms=self._clock_ms,
        )
        consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
        for buffer in self._tables.values():
            # the first tz-aware Arrow timestamp imports pandas (~0.5 s): pay it while the group forms
            buffer.spec.columns_to_arrow([[] for _ in buffer.spec.columns])
        self.metrics.worker_up.labels(component=SOURCE).set(1)
        if ready is not None:
            ready.set()
        thresholds = gc.get_threshold()
        gc.set_threshold(*GC_THRESHOLDS)
        try:
            while not self._stop.is_set():
                self._step(consumer)
            self.flush_and_commit()
        finally:
            gc.set_threshold(*thresholds)
            self._closing = True
            self.metrics.worker_up.labels(component=SOURCE).set(0)
            self._consumer = None
            self._worker.close()
            self._worker = None
            consumer.close()

    def flush_and_commit(self) -> None:
        """Insert every buffered row (waiting for the insert in flight first), then commit."""
        self._wait_inflight()
        if self._buffered:
            self._submit()
            self._wait_inflight()
        self.metrics.sink_pending_rows.set(self._pending)

    # -- the loop --------------------------------------------------------------------------------
    def _step(self, consumer: Consumer) -> None:
        """One turn: commit a finished insert, start the next when due, read one consume batch."""
        self._collect()
        if self._flush_due() and self._inflight is None:
            self._submit()
        if self._pending >= self.config.max_pending_rows:
            # the insert is behind (ClickHouse slow or down): hold still, keep the group membership
            if not self._paused:
                self._pause()
            job = self._inflight
            if job is not None:
                job.done.wait(INFLIGHT_POLL_S)
            self._held.extend(consumer.consume(num_messages=self.config.consume_batch, timeout=0))
            return
        if self._paused:
            self._resume()
        if self._held:
            batch, self._held = self._held, []
        else:
            batch = consumer.consume(num_messages=self.config.consume_batch, timeout=self._poll_timeout())
            self._caught_up = len(batch) < self.config.consume_batch
        if batch:
            if self.first_read_at is None:
                self.first_read_at = time.monotonic()
            self._ingest(batch)
            self.metrics.sink_pending_rows.set(self._pending)
        self._maybe_report_lag()

    def _poll_timeout(self) -> float:
        if self._inflight is not None:
            return INFLIGHT_POLL_S
        if self._oldest is not None:
            due_in = self._oldest + self.config.max_batch_age_s - time.monotonic()
            return min(IDLE_POLL_S, max(0.0, due_in))
        return IDLE_POLL_S

    # -- decoding and buffering -------------------------------------------------------------------
    def _ingest(self, batch: list[Message]) -> None:
        """Route a consume batch: group by topic (order within a partition is kept), then decode
        and buffer each group in one go."""
        by_topic: dict[str, list[Message]] = defaultdict(list)
        for msg in batch:
            err = msg.error()
            if err is None:
                by_topic[msg.topic()].append(msg)
                continue
            if err.fatal():
                raise KafkaException(err)
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error", extra={"error": str(err)})
        now_ms = self._clock_ms()
        for name, msgs in by_topic.items():
            topic = self._logical_by_name[name]
            if topic in contracts.INPUT_TOPICS:
                self._ingest_events(topic, name, msgs, now_ms)
            else:
                self._ingest_outputs(topic, name, msgs)

    def _ingest_events(self, topic: str, name: str, msgs: list[Message], now_ms: int) -> None:
        """Decode and validate agency events; what fails is skipped and counted (the processors
        dead-letter it), the rest is buffered for ``events``."""
        partitions = [m.partition() for m in msgs]
        offsets = [m.offset() for m in msgs]
        last = dict(zip(partitions, offsets, strict=True))  # a partition's messages come in order
        self._positions.update({(name, p): o + 1 for p, o in last.items()})
        # the common case: the whole batch decodes as columns and is valid (the per-record path
        # below decides everything else, and every skip reason)
        skew = self.settings.max_future_skew_ms
        decoded = (
            read_columns(self.codec, topic, [m.value() for m in msgs])
            if len(msgs) >= COLUMNAR_MIN_MESSAGES
            else None
        )
        if decoded is not None and table_valid(topic, decoded, [m.key() for m in msgs], now_ms, skew):
            self._buffer(rows.EVENTS_TABLE, rows.event_table(topic, decoded, partitions, offsets), msgs)
            return
        skipped: Counter[str] = Counter()
        records: list[dict[str, Any]] = []
        kept: list[Message] = []
        decode = self.codec.decode
        for msg in msgs:
            try:
                records.append(decode(topic, msg.value()))
            except DecodeError as exc:
                skipped[exc.reason] += 1
                continue
            kept.append(msg)
        if len(kept) != len(msgs):
            partitions = [m.partition() for m in kept]
            offsets = [m.offset() for m in kept]
        if records:
            columns = rows.event_columns(topic, records, partitions, offsets)
            invalid = self._invalid_events(topic, columns, records, kept, now_ms)
            if invalid:
                skipped["invalid_record"] += len(invalid)
                columns = keep_rows(columns, invalid)
                kept = [m for i, m in enumerate(kept) if i not in invalid]
            self._buffer_checked(rows.EVENTS_TABLE, columns, kept)
        for reason, n in skipped.items():
            self.metrics.sink_skipped.labels(topic=topic, reason=reason).inc(n)

    def _invalid_events(
        self,
        topic: str,
        columns: list[Sequence[Any]],
        records: list[dict[str, Any]],
        msgs: list[Message],
        now_ms: int,
    ) -> set[int]:
        """Indexes of the events the processors dead-letter: a batch-wide check first
        (:mod:`sinks.sink_validate`), ``validate_event`` per record only if it is not conclusive."""
        skew = self.settings.max_future_skew_ms
        by_name = dict(zip(rows.events_spec().names, columns, strict=True))
        if batch_valid(topic, by_name, [m.key() for m in msgs], now_ms, skew):
            return set()
        invalid: set[int] = set()
        for i, (raw, msg) in enumerate(zip(records, msgs, strict=True)):
            key = msg.key()
            ts_type, ts = msg.timestamp()
            try:
                if key != str(raw.get("case_id")).encode():  # no key either: as the processors
                    raise InvalidRecord("case_id", "differs from the message key")
                at_ms = max(now_ms, ts if ts_type and ts > 0 else 0)
                validate_event(topic, raw, at_ms, max_future_skew_ms=skew)
            except InvalidRecord:
                invalid.add(i)
        return invalid

    def _ingest_outputs(self, topic: str, name: str, msgs: list[Message]) -> None:
        """Decode records of an output topic; undecodable ones are the sink's to park."""
        last = {m.partition(): m.offset() for m in msgs}  # a partition's messages come in order
        self._positions.update({(name, p): o + 1 for p, o in last.items()})
        if len(msgs) >= COLUMNAR_MIN_MESSAGES:  # the common case: every record decodes and fits
            decoded = read_columns(self.codec, topic, [m.value() for m in msgs])
            table = rows.output_table(topic, decoded) if decoded is not None else None
            if table is not None:
                self._buffer(rows.OUTPUT_TABLES[topic], table, msgs)
                return
        records: list[dict[str, Any]] = []
        kept: list[Message] = []
        for msg in msgs:
            try:
                records.append(self.codec.decode(topic, msg.value()))
            except DecodeError as exc:
                self._park(msg, exc.reason, exc.detail)
                continue
            kept.append(msg)
        if records:
            self._buffer_checked(rows.OUTPUT_TABLES[topic], rows.output_columns(topic, records), kept)

    def _buffer_checked(self, table: str, columns: list[Sequence[Any]], sources: list[Message]) -> None:
        """Buffer rows as Arrow, parking those whose values ClickHouse would clamp (``out_of_range``)
        or that do not fit their column type (``rejected_by_clickhouse``, as ClickHouse would)."""
        spec = self._tables[table].spec
        rejected = rows.out_of_range(spec, columns)
        if rejected:
            for i, exc in sorted(rejected.items()):
                self._park(sources[i], "out_of_range", f"{table}.{exc}")
            columns = keep_rows(columns, set(rejected))
            sources = [m for i, m in enumerate(sources) if i not in rejected]
        if sources:
            self._convert(spec, columns, sources)

    def _convert(self, spec: TableSpec, columns: Sequence[Sequence[Any]], sources: list[Message]) -> None:
        """Columns → Arrow → buffer; on a conversion error, bisect to park exactly the rows at fault."""
        try:
            arrow = spec.columns_to_arrow(columns)
        except ARROW_DATA_ERRORS as exc:
            if len(sources) == 1:
                self.metrics.sink_errors.labels(table=spec.table, error="rejected").inc()
                detail = f"{spec.table}: ClickHouse refused the row: {str(exc).splitlines()[0][:500]}"
                self._park(sources[0], "rejected_by_clickhouse", detail)
                return
            mid = len(sources) // 2
            self._convert(spec, slice_columns(columns, 0, mid), sources[:mid])
            self._convert(spec, slice_columns(columns, mid, len(sources)), sources[mid:])
            return
        self._buffer(spec.table, arrow, sources)

    def _buffer(self, table: str, arrow: pa.Table, sources: list[Message | None]) -> None:
        self._tables[table].extend(arrow, sources)
        self._buffered += len(sources)
        self._pending += len(sources)
        if self._oldest is None:
            self._oldest = time.monotonic()

    def _park(self, msg: Message, reason: str, detail: str) -> None:
        """Queue a dead letter (source ``sink``) for ``msg``; it is inserted in the same round."""
        dead = self._tables[rows.DEAD_LETTERS_TABLE]
        before = len(dead)
        park(dead, msg, reason, detail, self.metrics, self._clock_ms())
        self._buffered += len(dead) - before
        self._pending += len(dead) - before
        if self._oldest is None:
            self._oldest = time.monotonic()

    # -- flushing ----------------------------------------------------------------------------------
    def _flush_due(self) -> bool:
        if self._buffered == 0:
            return False
        if self._pending >= self.config.max_pending_rows:
            return True
        if self._inflight is None and self._buffered >= self.config.min_batch_rows:
            return True
        if self._inflight is None and self._draining and self._caught_up:
            return True  # the tail of a catch-up: nothing more is coming soon, do not wait for the age
        if any(len(b) >= self.config.batch_rows for b in self._tables.values()):
            return True
        return self._oldest is not None and time.monotonic() - self._oldest >= self.config.max_batch_age_s

    def _submit(self) -> None:
        """Hand every buffered row to the insert thread with the offsets read so far."""
        assert self._worker is not None and self._inflight is None
        # The processors' outputs first, the raw events (the biggest insert, with its materialized
        # views) last: what the boards read is stored without waiting for the events insert.
        batches = [
            b.take()
            for name, b in sorted(self._tables.items(), key=lambda item: item[0] == rows.EVENTS_TABLE)
            if name != rows.DEAD_LETTERS_TABLE and len(b)
        ]
        job = InsertJob(
            batches=batches,
            dead_letters=self._tables[rows.DEAD_LETTERS_TABLE].take(),
            positions=dict(self._positions),
            rows=self._buffered,
        )
        self._draining = self._buffered >= self.config.min_batch_rows
        self._buffered = 0
        self._oldest = None
        self._inflight = job
        self._worker.submit(job)

    def _collect(self) -> None:
        """If the insert in flight is done: re-raise its failure, or commit its offsets."""
        job = self._inflight
        if job is None or not job.done.is_set():
            return
        self._inflight = None
        if job.error is not None:
            raise job.error
        self._commit(job.positions)
        self.rows_inserted += job.inserted
        self._pending -= job.rows
        self.metrics.sink_pending_rows.set(self._pending)

    def _wait_inflight(self) -> None:
        job = self._inflight
        if job is None:
            return
        while not job.done.wait(0.5):
            if self._consumer is not None:  # served callbacks keep the group membership
                self._held.extend(self._consumer.consume(num_messages=self.config.consume_batch, timeout=0))
        self._collect()

    def _pause(self) -> None:
        if self._consumer is not None:
            self._consumer.pause(self._consumer.assignment())
        self._paused = True

    def _resume(self) -> None:
        if self._consumer is not None:
            self._consumer.resume(self._consumer.assignment())
        self._paused = False

    # -- offsets -----------------------------------------------------------------------------------
    def _commit(self, positions: dict[tuple[str, int], int]) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        offsets = [
            TopicPartition(t, p, o)
            for (t, p), o in positions.items()
            if (t, p) in self._assigned and self._committed.get((t, p)) != o
        ]
        if not offsets:
            return
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # The rows are in ClickHouse; an uncommitted offset only means a harmless re-insert later.
            self.metrics.sink_errors.labels(table="-", error="commit").inc()
            log.warning("offset commit failed; will retry next round", extra={"error": str(exc)})
            return
        for tp in offsets:
            self._committed[(tp.topic, tp.partition)] = tp.offset
        self.commits += 1
        self.last_commit_at = time.monotonic()
        self.metrics.sink_last_commit.set(time.time())

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned.update((tp.topic, tp.partition) for tp in partitions)
        if self._paused:
            consumer.pause(partitions)
        log.info("partitions assigned", extra={"count": len(partitions)})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Revoked partitions are no longer ours to commit; rows already buffered from them are still
        inserted (the new owner re-reads them from the last commit: a harmless re-insert)."""
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self._assigned.discard(key)
            self._positions.pop(key, None)
            self._committed.pop(key, None)
        log.info("partitions revoked", extra={"count": len(partitions)})

    def _maybe_report_lag(self) -> None:
        """Consumer lag per partition from the high watermarks the fetcher last saw (cached: no broker
        round trip on the hot path). Meaningful on Apache Kafka; Tansu reports wrong high
        watermarks (shared/EMBEDDED-BROKER.md)."""
        now = time.monotonic()
        consumer = self._consumer
        if consumer is None or now - self._last_lag < self.config.lag_interval_s:
            return
        self._last_lag = now
        for (topic, partition), position in list(self._positions.items()):
            try:
                _low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            except KafkaException:
                continue
            if high < 0:
                continue  # not known yet
            self.metrics.consumer_lag.labels(component=SOURCE, topic=topic, partition=str(partition)).set(
                max(0, high - position)
            )
