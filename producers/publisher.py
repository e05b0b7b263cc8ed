"""The publisher library agencies embed: validated, idempotent, acknowledged publishing.

Contract:

* Every record is normalised and validated (:func:`producers.records.prepare`) before it is
  encoded; an invalid record, or one whose encoded message is over the message size limit,
  raises :class:`~schemas.validation.InvalidRecord` (``publish``) or is returned as a
  :class:`Rejected` (``publish_many``) and is never sent. One bad record never stops a batch.
* The producer is idempotent with ``acks=all``; retries are bounded by ``message.timeout.ms``
  (librdkafka's ``delivery.timeout.ms`` is an alias of it): a record is either acknowledged by
  the broker within that time or reported failed with the broker's reason.
* Every record handed to the producer gets exactly one :class:`DeliveryResult`. ``flush``
  returns the results gathered since the previous ``flush``; records still undelivered when
  its timeout runs out are purged and reported failed, so nothing is ever claimed as sent
  without an acknowledgement.
* Messages are keyed by ``case_id`` so one case stays in order on one partition. The wire
  framing is Avro single-object encoding, or Confluent framing when a Schema Registry URL is
  configured.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from backbone.config import Settings
from backbone.kafka import client_config
from producers.records import prepare
from schemas.codec import Codec, codec_for
from schemas.registry import Registry
from schemas.validation import InvalidRecord

DEFAULT_MESSAGE_TIMEOUT_MS = 30_000
LINGER_MS = 50
"""How long the producer gathers records into one batch per partition before sending it.

Every batch is a request the broker handles and, on the embedded Tansu broker, an object it
keeps forever: a fetch that finds new data lists every batch the partition holds, so the
broker's cost grows with the number of batches, not records (measured: 10,000 ev/s into 6
partitions cost the broker 25 µs per record at 5 ms and 9 µs at 50 ms; in the freshness bench
at 6,000 ev/s the broker's CPU per event halved and the stage-record p99 fell from 3.5 s to
1.1 s). On Apache Kafka bigger batches likewise mean fewer requests. The price is at most
50 ms more between ``publish`` and the broker, well inside the 2 s freshness target.
"""
# librdkafka's own log lines (connection refused, retries) go here instead of raw stderr.
KAFKA_LOG = logging.getLogger("producers.kafka")


# What fastavro raises for a value its schema cannot hold (prepare() should have caught it first).
_ENCODE_ERRORS = (ValueError, TypeError, OverflowError)
LIBRDKAFKA_MESSAGE_MAX_BYTES = 1_000_000
"""librdkafka's default ``message.max.bytes``: the largest message (value, key and record overhead)."""


class PublisherError(RuntimeError):
    """The publisher cannot do its job at all (no broker address, broker unreachable, topic missing)."""


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """The broker's answer for one record. ``ref`` is whatever the caller tagged the record with."""

    ok: bool
    topic: str
    partition: int | None
    offset: int | None
    error: str | None
    key: bytes | None = None
    ref: Any = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record refused before sending: ``field`` and ``reason`` say what is wrong."""

    ref: Any
    field: str
    reason: str


class Delivery:
    """Handle for one published record; ``result`` is set once the broker has answered."""

    __slots__ = ("_publisher", "result")

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher
        self.result: DeliveryResult | None = None

    def done(self) -> bool:
        return self.result is not None

    def wait(self, timeout_s: float | None = None) -> DeliveryResult:
        """Serve delivery reports until this record's result is known; ``TimeoutError`` if not in time."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.result is None:
            remaining = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            if remaining <= 0:
                raise TimeoutError("no delivery report yet")
            self._publisher.poll(remaining)
        return self.result


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Publisher:
    """Publishes agency records to their topics. Not thread-safe: use one per thread."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str | None = None,
        codec: Codec | None = None,
        *,
        message_timeout_ms: int = DEFAULT_MESSAGE_TIMEOUT_MS,
        registry: Registry | None = None,
        clock: Any = now_ms,
        producer_config: Mapping[str, Any] | None = None,
    ) -> None:
        servers = bootstrap or settings.kafka_bootstrap_servers
        if not servers:
            raise PublisherError(
                "no Kafka bootstrap servers: pass a bootstrap address or set BACKBONE_KAFKA_BOOTSTRAP_SERVERS"
            )
        self.bootstrap = servers
        self.codec = codec or codec_for(settings)
        self.registry = registry
        self.max_future_skew_ms = settings.max_future_skew_ms
        self.message_timeout_ms = message_timeout_ms
        self._clock = clock
        conf = client_config(settings, servers)
        conf.update(
            {
                "enable.idempotence": True,
                "acks": "all",
                "message.timeout.ms": message_timeout_ms,
                "request.timeout.ms": min(message_timeout_ms, 30_000),
                "retry.backoff.ms": 100,
                "retry.backoff.max.ms": 1000,
                "socket.connection.setup.timeout.ms": min(message_timeout_ms, 10_000),
                "linger.ms": LINGER_MS,
                "error_cb": self._on_client_error,
                "logger": KAFKA_LOG,
            }
        )
        conf.update(producer_config or {})
        # The largest encoded value sent: the producer refuses more, and our consumers dead-letter more.
        self.max_message_bytes: int = min(
            self.codec.max_message_bytes, int(conf.get("message.max.bytes", LIBRDKAFKA_MESSAGE_MAX_BYTES))
        )
        self._producer = Producer(conf)
        self._results: list[DeliveryResult] = []
        self._in_flight = 0
        self.client_errors: list[str] = []

    # -- sending -------------------------------------------------------------------------
    def prepare(self, topic: str, record: Mapping[str, Any]) -> dict[str, Any]:
        """Normalise and validate ``record`` for ``topic``; raises :class:`InvalidRecord`."""
        return prepare(topic, record, self._clock(), self.registry, self.max_future_skew_ms)

    def publish(self, topic: str, record: Mapping[str, Any], ref: Any = None) -> Delivery:
        """Validate, encode and queue one record. Raises :class:`InvalidRecord` without sending."""
        raw = self.prepare(topic, record)
        value = self._encode(topic, raw)
        delivery = Delivery(self)
        self._produce(topic, value, raw["case_id"].encode(), partial(self._on_delivery_handle, delivery, ref))
        return delivery

    def publish_many(
        self, topic: str, records: Iterable[Mapping[str, Any]], refs: Iterable[Any] | None = None
    ) -> list[Rejected]:
        """Validate, encode and queue many records; returns the rejected ones (never sent).

        Delivery results of the queued ones come from :meth:`poll_results` / :meth:`flush`, each
        tagged with its ``ref`` (default: the record's index in ``records``).
        """
        now = self._clock()
        registry, skew = self.registry, self.max_future_skew_ms
        encode = self._encode
        produce = self._produce
        on_delivery = self._on_delivery
        rejected: list[Rejected] = []
        for ref, record in zip(range(1 << 62) if refs is None else refs, records, strict=False):
            try:
                raw = prepare(topic, record, now, registry, skew)
                value = encode(topic, raw)
                produce(topic, value, raw["case_id"].encode(), partial(on_delivery, ref))
            except InvalidRecord as exc:
                rejected.append(Rejected(ref, exc.field, exc.reason))
            except RecursionError:  # a value nested deeper than the checks or the encoder can walk
                rejected.append(Rejected(ref, "record", "cannot be encoded: nested too deeply"))
        return rejected

    def _encode(self, topic: str, raw: dict[str, Any]) -> bytes:
        """Encode a prepared record; :class:`InvalidRecord` if it cannot be, or is too large to send."""
        try:
            value = self.codec.encode(topic, raw)
        except _ENCODE_ERRORS as exc:
            raise InvalidRecord("record", f"cannot be encoded: {type(exc).__name__}: {exc}") from exc
        limit = self.max_message_bytes
        if len(value) > limit:
            raise InvalidRecord(
                "record", f"encoded record is {len(value):,} bytes, over the {limit:,}-byte message limit"
            )
        return value

    def _produce(self, topic: str, value: bytes, key: bytes, callback: Any) -> None:
        while True:
            try:
                self._producer.produce(topic, value, key, on_delivery=callback)
                self._in_flight += 1
                return
            except BufferError:
                # The local queue is full: back-pressure, serve delivery reports until there is room.
                self._producer.poll(0.05)
            except KafkaException as exc:
                if exc.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE:  # key and record overhead count too
                    raise InvalidRecord(
                        "record",
                        f"encoded record is {len(value):,} bytes with a {len(key):,}-byte key, over the "
                        "producer's message.max.bytes (which counts key and record overhead too)",
                    ) from exc
                raise PublisherError(f"cannot queue a record for {topic}: {exc.args[0].str()}") from exc

    # -- delivery reports ----------------------------------------------------------------
    def _on_delivery(self, ref: Any, err: KafkaError | None, msg: Message) -> None:
        self._in_flight -= 1
        self._results.append(_result(err, msg, ref))

    def _on_delivery_handle(self, delivery: Delivery, ref: Any, err: KafkaError | None, msg: Message) -> None:
        self._in_flight -= 1
        delivery.result = _result(err, msg, ref)
        self._results.append(delivery.result)

    def _on_client_error(self, err: KafkaError) -> None:
        # Transport-level errors (e.g. all brokers down); per-record failures arrive as delivery reports.
        self.client_errors.append(err.str())

    def poll(self, timeout_s: float = 0.0) -> int:
        """Serve delivery reports; returns how many were served."""
        return int(self._producer.poll(timeout_s))

    def poll_results(self, timeout_s: float = 0.0) -> list[DeliveryResult]:
        """Serve delivery reports and return (and forget) the results gathered so far."""
        self._producer.poll(timeout_s)
        return self._take_results()

    @property
    def in_flight(self) -> int:
        """Records handed to the producer that have no delivery result yet."""
        return self._in_flight

    def flush(self, timeout_s: float | None = None) -> list[DeliveryResult]:
        """Wait for every queued record's result and return (and forget) the results since the last call.

        Records without an acknowledgement when ``timeout_s`` (default: the message timeout plus
        a margin) runs out are purged from the producer and reported failed.
        """
        budget = self.message_timeout_ms / 1000 + 5 if timeout_s is None else timeout_s
        self._producer.flush(budget)
        if self._in_flight:
            self._producer.purge(in_queue=True, in_flight=True)
            self._producer.flush(1.0)  # serve the purge reports (_PURGE_QUEUE / _PURGE_INFLIGHT)
        return self._take_results()

    def _take_results(self) -> list[DeliveryResult]:
        results, self._results = self._results, []
        return results

    # -- broker checks -------------------------------------------------------------------
    def check_topic(self, topic: str, timeout_s: float = 10.0) -> None:
        """Raise :class:`PublisherError` if the broker cannot be reached or ``topic`` does not exist."""
        try:
            metadata = self._producer.list_topics(timeout=timeout_s)
        except KafkaException as exc:
            detail = "; ".join(dict.fromkeys(self.client_errors)) or exc.args[0].str()
            raise PublisherError(
                f"cannot reach Kafka at {self.bootstrap} within {timeout_s:g} s: {detail}"
            ) from exc
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            raise PublisherError(
                f"topic {topic!r} does not exist on {self.bootstrap} "
                "(create it with `backbone up` or your Kafka admin)"
            )

    def close(self, timeout_s: float | None = None) -> list[DeliveryResult]:
        """Flush and return the remaining results."""
        return self.flush(timeout_s)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()


def _result(err: KafkaError | None, msg: Message, ref: Any) -> DeliveryResult:
    if err is None:
        return DeliveryResult(True, msg.topic(), msg.partition(), msg.offset(), None, msg.key(), ref)
    return DeliveryResult(False, msg.topic(), None, None, f"{err.name()}: {err.str()}", msg.key(), ref)
