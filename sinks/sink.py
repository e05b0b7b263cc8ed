"""The ClickHouse sink: Kafka topics → columnar batches → ClickHouse, exactly once in effect.

Contract:
* Reads the five agency topics (→ ``events``) and the six ``backbone.*`` output topics (→ one
  table each) in consumer group ``backbone-sink`` with auto-commit off.
* Buffers rows per table; a flush round runs when a table's batch is full, when the buffered
  rows reach ``max_pending_rows``, or when the oldest buffered row is ``max_batch_age_s`` old.
  A round inserts every table's batch and only then commits the consumed offsets: an offset is
  committed only after ClickHouse accepted every row read before it. A crash re-reads at most
  the uncommitted rows; the tables are ReplacingMergeTrees keyed on each record's id, so a
  re-insert replaces instead of adding (the ``*_latest`` views hide copies until merges run).
* ClickHouse slow or unavailable: the insert is retried forever while running, with bounded
  exponential back-off (tenacity); meanwhile the consumer is paused but still polled (group
  membership kept, nothing more buffered, memory bounded) and ``backbone_sink_errors_total``
  counts the failures. The backlog drains when ClickHouse returns.
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

import hashlib
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential_jitter

from backbone.config import Settings
from backbone.kafka import FAST_GROUP_SETTINGS, client_config
from backbone.metrics import Metrics
from schemas import contracts
from schemas.codec import Codec, DecodeError
from schemas.validation import InvalidRecord, validate_event
from sinks import rows
from sinks.rows import RowRejected, TableSpec

log = logging.getLogger(__name__)

DEFAULT_GROUP = "backbone-sink"
FETCH_WAIT_MAX_MS = 100
SOURCE = "sink"

# ClickHouse error codes that mean "this data does not fit", as opposed to "try again later".
DATA_ERROR_CODES = frozenset(
    {
        6,  # CANNOT_PARSE_TEXT
        26,  # CANNOT_PARSE_QUOTED_STRING
        27,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
        38,  # CANNOT_PARSE_DATE
        41,  # CANNOT_PARSE_DATETIME
        53,  # TYPE_MISMATCH
        69,  # ARGUMENT_OUT_OF_BOUND
        70,  # CANNOT_CONVERT_TYPE
        72,  # CANNOT_PARSE_NUMBER
        117,  # INCORRECT_DATA
        131,  # TOO_LARGE_STRING_SIZE
        321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
        349,  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
        376,  # CANNOT_PARSE_UUID
        407,  # DECIMAL_OVERFLOW
        469,  # VIOLATED_CONSTRAINT
    }
)
# What building an Arrow column raises for a value that does not fit its type.
ARROW_DATA_ERRORS = (pa.ArrowException, OverflowError, TypeError, ValueError)
_CODE = re.compile(r"\bCode:\s*(\d+)")


class ArrowInserter(Protocol):
    """The insert seam: a clickhouse-connect client satisfies it; fault tests wrap one."""

    def insert_arrow(self, table: str, arrow_table: pa.Table) -> Any: ...


class TransientInsertError(RuntimeError):
    """ClickHouse did not take the batch for a reason that may pass (down, slow, overloaded)."""


class DataRejected(ValueError):
    """ClickHouse (or the Arrow conversion) refused the data itself; retrying will not help."""


class SinkShutdownTimeout(RuntimeError):
    """Stopping while ClickHouse stays unavailable: exit without committing (nothing is lost)."""


class SinkFatal(RuntimeError):
    """A row the sink itself produced (a dead letter) was refused: a bug or a schema mismatch."""


def error_code(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    m = _CODE.search(str(exc))
    return int(m.group(1)) if m else None


def classify(exc: Exception) -> Exception:
    """Turn an insert failure into :class:`DataRejected` or :class:`TransientInsertError`."""
    if isinstance(exc, OperationalError):
        return TransientInsertError(str(exc))
    if isinstance(exc, DatabaseError) and error_code(exc) in DATA_ERROR_CODES:
        return DataRejected(str(exc))
    if isinstance(exc, ARROW_DATA_ERRORS):
        return DataRejected(f"{type(exc).__name__}: {exc}")
    return TransientInsertError(f"{type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class SinkConfig:
    """Batching and retry bounds; the defaults suit both a demo and a national feed."""

    group_id: str = DEFAULT_GROUP
    batch_rows: int = 50_000  # a table's batch is flushed at this many rows
    max_pending_rows: int = 200_000  # all tables together; bounds memory
    max_batch_age_s: float = 0.5  # freshness bound: the board lags the topics by about this much
    consume_batch: int = 5_000
    retry_initial_s: float = 0.2
    retry_max_s: float = 10.0
    shutdown_timeout_s: float = 30.0
    lag_interval_s: float = 15.0


@dataclass
class TableBuffer:
    """Rows waiting for one table, with the message each came from (to park it if refused)."""

    spec: TableSpec
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    sources: list[Message | None] = field(default_factory=list)

    def add(self, row: tuple[Any, ...], source: Message | None) -> None:
        self.rows.append(row)
        self.sources.append(source)

    def take(self) -> tuple[list[tuple[Any, ...]], list[Message | None]]:
        taken = self.rows, self.sources
        self.rows, self.sources = [], []
        return taken


def dead_letter_id(topic: str, partition: int, offset: int) -> str:
    return hashlib.sha1(f"{topic}|{partition}|{offset}".encode()).hexdigest()


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
        self.codec = codec or Codec()
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        logical = contracts.INPUT_TOPICS + contracts.OUTPUT_TOPICS
        names = {t: (topic_names or {}).get(t, t) for t in logical}
        self._logical_by_name = {v: k for k, v in names.items()}
        self._tables: dict[str, TableBuffer] = {rows.EVENTS_TABLE: TableBuffer(rows.events_spec())}
        for topic in contracts.OUTPUT_TOPICS:
            spec = rows.output_spec(topic)
            self._tables[spec.table] = TableBuffer(spec)
        self._positions: dict[tuple[str, int], int] = {}  # next offset to read, per partition read
        self._committed: dict[tuple[str, int], int] = {}
        self._assigned: set[tuple[str, int]] = set()
        self._pending = 0
        self._oldest: float | None = None
        self._held: list[Message] = []
        self._paused = False
        self._consumer: Consumer | None = None
        self._stop = threading.Event()
        self._stop_requested_at: float | None = None
        self._last_lag = 0.0
        self.rows_inserted = 0
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
            # Tansu holds a fetch for its whole wait when a partition has nothing new (librdkafka's
            # default 500 ms): a shorter wait keeps the freshness within the batch age.
            "fetch.wait.max.ms": FETCH_WAIT_MAX_MS,
        }
        consumer = Consumer(conf)
        self._consumer = consumer
        consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
        self.metrics.worker_up.labels(component=SOURCE).set(1)
        if ready is not None:
            ready.set()
        try:
            while not self._stop.is_set():
                batch = self._held or consumer.consume(num_messages=self.config.consume_batch, timeout=0.2)
                self._held = []
                for msg in batch:
                    self._route(msg)
                if batch:
                    self.metrics.sink_pending_rows.set(self._pending)
                    if self.first_read_at is None:
                        self.first_read_at = time.monotonic()
                if self._flush_due():
                    self.flush_and_commit()
                self._maybe_report_lag()
            self._stop_requested_at = time.monotonic()
            self.flush_and_commit()
        finally:
            self.metrics.worker_up.labels(component=SOURCE).set(0)
            self._consumer = None
            consumer.close()

    # -- routing ---------------------------------------------------------------------------------
    def _route(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            if err.fatal():
                raise KafkaException(err)
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error", extra={"error": str(err)})
            return
        name, partition, offset = msg.topic(), msg.partition(), msg.offset()
        self._positions[(name, partition)] = offset + 1
        topic = self._logical_by_name[name]
        if topic in contracts.INPUT_TOPICS:
            self._route_event(topic, msg)
        else:
            self._route_output(topic, msg)

    def _route_event(self, topic: str, msg: Message) -> None:
        try:
            raw = self.codec.decode(topic, msg.value())
        except DecodeError as exc:
            self.metrics.sink_skipped.labels(topic=topic, reason=exc.reason).inc()
            return
        key = msg.key()
        ts_type, ts = msg.timestamp()
        now_ms = max(self._clock_ms(), ts if ts_type and ts > 0 else 0)
        try:
            if key is not None and key != str(raw.get("case_id")).encode():
                raise InvalidRecord("case_id", "differs from the message key")
            validate_event(topic, raw, now_ms, max_future_skew_ms=self.settings.max_future_skew_ms)
        except InvalidRecord:
            self.metrics.sink_skipped.labels(topic=topic, reason="invalid_record").inc()
            return
        try:
            row = rows.event_row(topic, raw, msg.partition(), msg.offset())
        except RowRejected as exc:
            self._park(msg, "out_of_range", f"events.{exc}")
            return
        self._buffer(rows.EVENTS_TABLE, row, msg)

    def _route_output(self, topic: str, msg: Message) -> None:
        table = rows.OUTPUT_TABLES[topic]
        try:
            raw = self.codec.decode(topic, msg.value())
        except DecodeError as exc:
            self._park(msg, exc.reason, exc.detail)
            return
        try:
            row = rows.output_row(topic, raw)
        except RowRejected as exc:
            self._park(msg, "out_of_range", f"{table}.{exc}")
            return
        self._buffer(table, row, msg)

    def _buffer(self, table: str, row: tuple[Any, ...], source: Message | None) -> None:
        self._tables[table].add(row, source)
        self._pending += 1
        if self._oldest is None:
            self._oldest = time.monotonic()

    def _park(self, msg: Message, reason: str, detail: str) -> None:
        """Queue a dead letter (source ``sink``) for ``msg``; it is inserted in the same round."""
        name, partition, offset = msg.topic(), msg.partition(), msg.offset()
        raw = {
            "dead_letter_id": dead_letter_id(name, partition, offset),
            "source": SOURCE,
            "topic": name,
            "partition": partition,
            "offset": offset,
            "key": msg.key(),
            "value": msg.value(),
            "reason": reason,
            "detail": detail[:2000],
            "received_at": self._clock_ms(),
        }
        self.metrics.dead_letters.labels(source=SOURCE, topic=name, reason=reason).inc()
        log.warning(
            "record parked in dead_letters",
            extra={
                "topic": name,
                "partition": partition,
                "offset": offset,
                "reason": reason,
                "detail": detail[:300],
            },
        )
        self._buffer(rows.DEAD_LETTERS_TABLE, rows.dead_letter_row(raw), None)

    # -- flushing ----------------------------------------------------------------------------------
    def _flush_due(self) -> bool:
        if self._pending == 0:
            return False
        if self._pending >= self.config.max_pending_rows:
            return True
        if any(len(b.rows) >= self.config.batch_rows for b in self._tables.values()):
            return True
        return self._oldest is not None and time.monotonic() - self._oldest >= self.config.max_batch_age_s

    def flush_and_commit(self) -> None:
        """Insert every buffered row (dead letters last), then commit the offsets read so far."""
        if self._pending:
            started = time.monotonic()
            for name, buffer in self._tables.items():
                if name != rows.DEAD_LETTERS_TABLE and buffer.rows:
                    self._insert_buffer(buffer)
            dead = self._tables[rows.DEAD_LETTERS_TABLE]
            while dead.rows:  # rows refused above were parked here; refused dead letters re-park once
                self._insert_buffer(dead)
            self._pending = 0
            self._oldest = None
            self.metrics.processing_seconds.labels(component=SOURCE).observe(time.monotonic() - started)
        self.metrics.sink_pending_rows.set(0)
        self._commit()

    def _insert_buffer(self, buffer: TableBuffer) -> None:
        """Insert a table's rows, bisecting around refused rows, retrying transient failures."""
        batch, sources = buffer.take()
        spec = buffer.spec
        slices: deque[tuple[int, int]] = deque([(0, len(batch))])
        while slices:
            lo, hi = slices[0]
            try:
                arrow = spec.to_arrow(batch[lo:hi])
                self._insert_with_retry(spec.table, arrow)
            except (DataRejected, *ARROW_DATA_ERRORS) as exc:
                slices.popleft()
                if hi - lo > 1:
                    mid = (lo + hi) // 2
                    slices.appendleft((mid, hi))
                    slices.appendleft((lo, mid))
                else:
                    self._refused(spec, batch[lo], sources[lo], exc)
                continue
            slices.popleft()
            self.metrics.sink_rows.labels(table=spec.table).inc(hi - lo)
            self.metrics.sink_batches.labels(table=spec.table).inc()
            self.metrics.batch_size.labels(component=SOURCE).observe(hi - lo)
            self.rows_inserted += hi - lo

    def _refused(self, spec: TableSpec, row: tuple[Any, ...], source: Message | None, exc: Exception) -> None:
        detail = f"{spec.table}: ClickHouse refused the row: {str(exc).splitlines()[0][:500]}"
        if source is None:
            raise SinkFatal(f"{detail}; the row was built by the sink itself: {row!r:.300}") from exc
        self.metrics.sink_errors.labels(table=spec.table, error="rejected").inc()
        self._park(source, "rejected_by_clickhouse", detail)

    def _insert_with_retry(self, table: str, arrow: pa.Table) -> None:
        def attempt() -> None:
            try:
                self.inserter.insert_arrow(table, arrow)
            except Exception as exc:  # classified: data problems bisect, everything else retries
                raise classify(exc) from exc

        retrying = Retrying(
            retry=retry_if_exception_type(TransientInsertError),
            wait=wait_exponential_jitter(multiplier=self.config.retry_initial_s, max=self.config.retry_max_s),
            stop=self._give_up,
            sleep=self._sleep_paused,
            before_sleep=lambda state: self._on_retry(table, state),
            reraise=True,
        )
        try:
            retrying(attempt)
        finally:
            if self._paused:
                self._resume()

    def _give_up(self, state: RetryCallState) -> bool:
        """Retry forever while running; after a stop request, for ``shutdown_timeout_s`` more."""
        if self._stop_requested_at is None and self._stop.is_set():
            self._stop_requested_at = time.monotonic()
        if self._stop_requested_at is None:
            return False
        if time.monotonic() - self._stop_requested_at > self.config.shutdown_timeout_s:
            raise SinkShutdownTimeout(
                f"ClickHouse still down {self.config.shutdown_timeout_s:.0f} s after the stop request; "
                f"exiting without committing {self._pending} buffered rows (they will be re-read)"
            )
        return False

    def _on_retry(self, table: str, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        self.metrics.sink_errors.labels(table=table, error="unavailable").inc()
        self.metrics.sink_pending_rows.set(self._pending)
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "ClickHouse insert failed; retrying",
            extra={
                "table": table,
                "attempt": state.attempt_number,
                "retry_in_s": round(wait, 2),
                "error": str(exc).splitlines()[0][:300] if exc else "",
            },
        )

    def _sleep_paused(self, seconds: float) -> None:
        """Back-off sleep that keeps the consumer polled (group membership) but paused (no reads)."""
        consumer = self._consumer
        if consumer is None:
            time.sleep(seconds)
            return
        if not self._paused:
            self._pause()
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self._held.extend(
                consumer.consume(num_messages=self.config.consume_batch, timeout=min(left, 0.5))
            )

    def _pause(self) -> None:
        if self._consumer is not None:
            self._consumer.pause(self._consumer.assignment())
        self._paused = True

    def _resume(self) -> None:
        if self._consumer is not None:
            self._consumer.resume(self._consumer.assignment())
        self._paused = False

    # -- offsets -----------------------------------------------------------------------------------
    def _commit(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        offsets = [
            TopicPartition(t, p, o)
            for (t, p), o in self._positions.items()
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
