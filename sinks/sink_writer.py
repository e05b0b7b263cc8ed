"""The sink's insert side: a background thread that writes one batch of every table at a time.

Why a thread: consuming and decoding the next batch (Python, the main thread) overlaps the
insert of the previous one (Arrow serialisation and ClickHouse, mostly outside the GIL), so the
sink's rate approaches the slower of the two instead of their sum.

Contract: :meth:`InsertWorker.submit` takes an :class:`InsertJob` (every table's rows and the
offsets to commit once they are stored); at most one job is in flight. A job inserts every
table (dead letters last), bisecting around rows ClickHouse refuses and parking them in
``dead_letters``, and retrying transient failures forever with bounded back-off until the sink
stops (then for ``shutdown_timeout_s`` more). It never touches the Kafka consumer: the main
thread commits a job's offsets after :attr:`InsertJob.done` is set and :attr:`InsertJob.error`
is None, in submission order.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError
from confluent_kafka import Message
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential_jitter

from backbone.metrics import Metrics
from sinks import rows
from sinks.sink_batch import TableBatch

log = logging.getLogger(__name__)

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


def dead_letter_id(topic: str, partition: int, offset: int) -> str:
    return hashlib.sha1(f"{topic}|{partition}|{offset}".encode()).hexdigest()


def park(
    into: TableBatch, msg: Message, reason: str, detail: str, metrics: Metrics, received_at_ms: int
) -> None:
    """Add a dead letter (source ``sink``) for ``msg`` to ``into``; it is inserted with that batch."""
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
        "received_at": received_at_ms,
    }
    metrics.dead_letters.labels(source=SOURCE, topic=name, reason=reason).inc()
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
    columns = [[v] for v in rows.dead_letter_row(raw)]
    try:
        dead_letter = into.spec.columns_to_arrow(columns)
    except ARROW_DATA_ERRORS as exc:
        raise SinkFatal(
            f"the dead letter built for {name}[{partition}]@{offset} does not fit: {exc}"
        ) from exc
    into.extend(dead_letter, [None])


@dataclass
class InsertJob:
    """Every table's rows of one flush round and the offsets to commit once all are stored."""

    batches: list[TableBatch]
    dead_letters: TableBatch
    positions: dict[tuple[str, int], int]
    rows: int
    inserted: int = 0  # rows stored so far, dead letters included
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


@dataclass(frozen=True)
class WriterConfig:
    """The bounds an insert works within (copied from the sink's config)."""

    chunk_rows: int
    retry_initial_s: float
    retry_max_s: float
    shutdown_timeout_s: float


class InsertWorker:
    """Runs :class:`InsertJob` s one at a time on a daemon thread."""

    def __init__(
        self,
        inserter: ArrowInserter,
        metrics: Metrics,
        config: WriterConfig,
        stopping: Callable[[], bool],
        clock_ms: Callable[[], int],
    ) -> None:
        """``stopping`` says whether the sink was asked to stop (retries then end after
        ``shutdown_timeout_s``)."""
        self.inserter = inserter
        self.metrics = metrics
        self.config = config
        self._stopping = stopping
        self._clock_ms = clock_ms
        self._stop_seen_at: float | None = None
        self._jobs: queue.SimpleQueue[InsertJob | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="sink-insert", daemon=True)
        self._thread.start()

    def submit(self, job: InsertJob) -> None:
        self._jobs.put(job)

    def close(self, timeout_s: float = 5.0) -> None:
        """End the thread once the queued jobs are done (it is a daemon: a stuck insert cannot hang exit)."""
        self._jobs.put(None)
        self._thread.join(timeout_s)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                self.write(job)
            except BaseException as exc:  # handed to the main thread, which re-raises it
                job.error = exc
            finally:
                job.done.set()

    # -- one job ---------------------------------------------------------------------------------
    def write(self, job: InsertJob) -> None:
        """Insert every table's rows, then the dead letters (including rows parked on the way)."""
        started = time.monotonic()
        for batch in job.batches:
            self._insert_batch(batch, job)
        dead = job.dead_letters
        while len(dead):  # rows refused above were parked here; refused dead letters re-park once
            self._insert_batch(dead.take(), job)
        self.metrics.processing_seconds.labels(component=SOURCE).observe(time.monotonic() - started)

    def _insert_batch(self, batch: TableBatch, job: InsertJob) -> None:
        """Insert in chunks of ``chunk_rows``, bisecting around refused rows."""
        table = batch.table()
        step = self.config.chunk_rows
        for lo in range(0, len(batch), step):
            self._insert_slice(batch, table, lo, min(lo + step, len(batch)), job)

    def _insert_slice(self, batch: TableBatch, table: pa.Table, start: int, end: int, job: InsertJob) -> None:
        name = batch.spec.table
        slices: deque[tuple[int, int]] = deque([(start, end)])
        while slices:
            lo, hi = slices.popleft()
            try:
                self._insert_with_retry(name, table.slice(lo, hi - lo))
            except DataRejected as exc:
                if hi - lo > 1:
                    mid = (lo + hi) // 2
                    slices.appendleft((mid, hi))
                    slices.appendleft((lo, mid))
                else:
                    self._refused(batch, table, lo, exc, job.dead_letters)
                continue
            self.metrics.sink_rows.labels(table=name).inc(hi - lo)
            self.metrics.sink_batches.labels(table=name).inc()
            self.metrics.batch_size.labels(component=SOURCE).observe(hi - lo)
            job.inserted += hi - lo

    def _refused(self, batch: TableBatch, table: pa.Table, i: int, exc: Exception, dead: TableBatch) -> None:
        name = batch.spec.table
        detail = f"{name}: ClickHouse refused the row: {str(exc).splitlines()[0][:500]}"
        source = batch.sources[i]
        if source is None:
            row = table.slice(i, 1).to_pylist()
            raise SinkFatal(f"{detail}; the row was built by the sink itself: {row!r:.300}") from exc
        self.metrics.sink_errors.labels(table=name, error="rejected").inc()
        park(dead, source, "rejected_by_clickhouse", detail, self.metrics, self._clock_ms())

    # -- retries ---------------------------------------------------------------------------------
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
            before_sleep=lambda state: self._on_retry(table, state),
            reraise=True,
        )
        retrying(attempt)

    def _give_up(self, state: RetryCallState) -> bool:
        """Retry forever while running; after a stop request, for ``shutdown_timeout_s`` more."""
        if self._stop_seen_at is None and self._stopping():
            self._stop_seen_at = time.monotonic()
        if self._stop_seen_at is None:
            return False
        if time.monotonic() - self._stop_seen_at > self.config.shutdown_timeout_s:
            raise SinkShutdownTimeout(
                f"ClickHouse still down {self.config.shutdown_timeout_s:.0f} s after the stop request; "
                "exiting without committing the buffered rows (they will be re-read)"
            )
        return False

    def _on_retry(self, table: str, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        self.metrics.sink_errors.labels(table=table, error="unavailable").inc()
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
