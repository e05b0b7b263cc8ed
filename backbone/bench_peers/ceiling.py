"""The ceiling of any Python consumer here: bare confluent-kafka consume + one Avro decode per event.

No framework, no state, no outputs: ``assign`` every partition of the input topics from offset 0,
``consume(num_messages=10000)`` until the expected number of messages has been read, and decode
each value, either through the project's :class:`schemas.codec.Codec` (single-object framing
check, fingerprint lookup, schemaless read with the logical-type-free reader) or with a plain
``fastavro.schemaless_reader`` over the bytes after the 10-byte single-object header. Whatever
a KPI job does on top of this costs time, so its events/s divided by this is its efficiency.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import fastavro
from confluent_kafka import Consumer, KafkaError, TopicPartition

from schemas import contracts
from schemas.codec import Codec

SINGLE_OBJECT_HEADER = 10  # 2 marker bytes + 8-byte fingerprint


def plain_fastavro_decoder() -> Callable[[str, bytes], Any]:
    """``(topic, value) -> record`` with nothing but ``fastavro.schemaless_reader`` per event."""
    readers = {t: contracts.current(t).parsed_raw for t in contracts.INPUT_TOPICS}
    read = fastavro.schemaless_reader

    def decode(topic: str, value: bytes) -> Any:
        buf = io.BytesIO(value)
        buf.seek(SINGLE_OBJECT_HEADER)
        schema = readers[topic]
        return read(buf, schema, None)

    return decode


def codec_decoder() -> Callable[[str, bytes], Any]:
    return Codec().decode


def consume_and_decode(
    bootstrap: str,
    topics: Sequence[str],
    expected: int,
    decode: Callable[[str, bytes], Any],
    timeout_s: float = 120.0,
) -> float:
    """Read ``expected`` messages from offset 0 of every partition, decoding each; returns events/s.

    The clock starts at the first message received (connection and metadata are left out, as
    for the jobs) and stops after the last decode.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-ceiling-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "fetch.max.bytes": 52_428_800,
            "log_level": 0,
        }
    )
    try:
        md = consumer.list_topics(timeout=30)
        consumer.assign([TopicPartition(t, p, 0) for t in topics for p in md.topics[t].partitions])
        read = 0
        started: float | None = None
        deadline = time.monotonic() + timeout_s
        while read < expected:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"ceiling: read {read:,} of {expected:,} messages within {timeout_s:.0f} s"
                )
            batch = consumer.consume(num_messages=10_000, timeout=0.5)
            if not batch:
                continue
            if started is None:
                started = time.perf_counter()
            for msg in batch:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise RuntimeError(f"ceiling: consume failed: {err}")
                decode(msg.topic(), msg.value())
                read += 1
        assert started is not None
        return read / (time.perf_counter() - started)
    finally:
        consumer.close()
