"""The processors' output producer: Avro records to the ``backbone.*`` topics, facts to hop 2.

The worker owns one idempotent confluent-kafka producer (``acks=all``, a few ms of linger).
Per batch it :meth:`OutputProducer.send`\\ s everything the engine returned, then
:meth:`OutputProducer.flush`\\ es and only then lets the engine's state writes and the input
acks happen. A delivery that fails raises :class:`OutputDeliveryError`, so the batch is
neither committed nor acked and is processed again: at-least-once, and harmless downstream
because every output record carries a deterministic id (its Kafka key here).

The engines' state changelog records go through the same producer, sent only once the outputs
are acknowledged (:meth:`stream_processors.worker.ProcessorRuntime._deliver`), so stored state
never runs ahead of the outputs it implies.

Facts for one group are produced in the order the engine listed them, by one producer, to one
partition (key = group key): hop 2's offset-based idempotency relies on that order.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from backbone.config import Settings
from backbone.kafka import client_config
from schemas import contracts
from schemas.codec import Codec, codec_for
from stream_processors.api import FACTS_TOPIC, Outputs
from stream_processors.state import ChangelogRecord

log = logging.getLogger(__name__)

KEY_FIELD_BY_TOPIC: dict[str, str] = {
    contracts.STAGE_RECORDS: "case_id",
    contracts.KPI_WINDOWS: "kpi_id",
    contracts.ALERTS: "alert_id",
    contracts.DEAD_LETTERS: "dead_letter_id",
    contracts.BACKLOG: "backlog_id",
    contracts.FEED_FRESHNESS: "agency",
}
"""The Kafka key of each output record: its deterministic id (stage records: the case)."""


MAX_DEAD_LETTER_BYTES = 512 * 1024
"""Largest original key/value a dead letter carries. Kafka refuses messages over its limit (1 MB by
default), and a refused dead letter would block the batch forever; a larger original is cut to
this size, with its length and SHA-256 in ``detail``. The whole original stays in its source topic
at the partition and offset the dead letter names."""


def bounded_dead_letter(record: dict[str, Any]) -> dict[str, Any]:
    """Cut an oversized original key/value so the dead letter itself can always be delivered."""
    notes = []
    out = record
    for field in ("value", "key"):
        original = record.get(field)
        if original is not None and len(original) > MAX_DEAD_LETTER_BYTES:
            if out is record:
                out = dict(record)
            out[field] = original[:MAX_DEAD_LETTER_BYTES]
            notes.append(
                f"{field} cut to its first {MAX_DEAD_LETTER_BYTES} of {len(original)} bytes "
                f"(sha256 {hashlib.sha256(original).hexdigest()}); the full record stays at "
                f"{record.get('topic')}/{record.get('partition')}@{record.get('offset')}"
            )
    if notes:
        out["detail"] = f"{record.get('detail', '')}; {'; '.join(notes)}".lstrip("; ")
    return out


class OutputDeliveryError(RuntimeError):
    """Some output records were not acknowledged by the broker; the batch must be retried."""


class OutputEncodeError(ValueError):
    """An engine produced a record that does not fit its output schema (a bug: never skipped)."""


COMPRESSIONS = ("none", "gzip")
"""What the processors may compress their outputs and changelogs with. Only gzip of librdkafka's
codecs is read by every consumer here without extra packages: the processors' own Faust consumer
(aiokafka) needs ``cramjam`` for lz4, snappy and zstd, and reads the facts and changelog topics."""


class OutputProducer:
    """Encodes and produces engine outputs; :meth:`flush` is the per-batch delivery barrier."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str | None = None,
        codec: Codec | None = None,
        linger_ms: int = 5,
        client_id: str = "backbone-processor",
        compression: str = "none",
    ) -> None:
        self.codec = codec or codec_for(settings)
        self._producer = Producer(
            {
                **client_config(settings, bootstrap),
                "client.id": client_id,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": linger_ms,
                "queue.buffering.max.messages": 1_000_000,
                "compression.type": compression,  # see COMPRESSIONS
                # Successes need no callback (``flush`` counts what is still in flight): a
                # Python call per acknowledged record was ~1 µs of a KPI window's cost.
                "delivery.report.only.error": True,
            }
        )
        self._failures: list[str] = []
        self._sent: Counter[str] = Counter()
        self.delivered: Counter[str] = Counter()
        """Records acknowledged per topic since start (for the ``records_out`` metric)."""

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failures.append(f"{msg.topic()} key={msg.key()!r}: {err.name()} ({err.str()})")

    def _produce(self, topic: str, key: bytes | None, value: bytes | None, partition: int = -1) -> None:
        while True:
            try:
                self._producer.produce(topic, value, key, partition, on_delivery=self._on_delivery)
                break
            except BufferError:
                self._producer.poll(0.05)  # local queue full: let deliveries drain, then retry
        self._sent[topic] += 1

    def send_changelog(self, records: Iterable[ChangelogRecord]) -> int:
        """Produce state changelog records to their explicit partitions; returns how many."""
        n = 0
        for rec in records:
            self._produce(rec.topic, rec.key, rec.value, rec.partition)
            n += 1
        return n

    def send(self, outputs: Outputs) -> int:
        """Encode and produce every record and fact of ``outputs``; returns how many were queued."""
        n = 0
        encode = self.codec.encode
        for topic, records in outputs.by_topic().items():
            key_field = KEY_FIELD_BY_TOPIC[topic]
            for record in records:
                if topic == contracts.DEAD_LETTERS:
                    record = bounded_dead_letter(record)  # noqa: PLW2901 - the bounded copy is what is sent
                try:
                    value = encode(topic, record)
                except (ValueError, TypeError, KeyError, OverflowError) as exc:
                    raise OutputEncodeError(
                        f"{topic} record {key_field}={record.get(key_field)!r} does not fit its schema: {exc}"
                    ) from exc
                key = record.get(key_field)
                self._produce(topic, None if key is None else str(key).encode(), value)
                n += 1
        for fact_key, fact_value in outputs.facts:
            self._produce(FACTS_TOPIC, fact_key.encode(), fact_value)
            n += 1
        self._producer.poll(0)
        return n

    def flush(self, timeout_s: float = 60.0) -> Counter[str]:
        """Wait until every queued record is acknowledged; returns records delivered per topic.

        Raises :class:`OutputDeliveryError` naming the first failures when any record failed or
        is still in flight after ``timeout_s`` (the caller retries the batch).
        """
        remaining = self._producer.flush(timeout_s)
        sent, self._sent = self._sent, Counter()
        failures, self._failures = self._failures, []
        if remaining or failures:
            detail = "; ".join(failures[:5]) or f"{remaining} records still in flight after {timeout_s} s"
            raise OutputDeliveryError(f"{len(failures) or remaining} output records not delivered: {detail}")
        self.delivered.update(sent)
        return sent

    def close(self, timeout_s: float = 10.0) -> None:
        self._producer.flush(timeout_s)
