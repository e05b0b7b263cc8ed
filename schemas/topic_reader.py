"""Read Avro topics back as JSON lines: what ``kcat`` would show, decoded with the contracts.

Why here: Debian's ``kcat`` (librdkafka 2.0.2) cannot talk to the embedded Tansu broker (its
ApiVersion answer does not parse there), and even against Apache Kafka it prints Avro bytes. An
agency checking what it sent, or an officer looking at ``backbone.alerts.v1``, wants the records.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from backbone.config import Settings
from backbone.kafka import client_config
from schemas.codec import DecodeError, codec_for, rich_json_value, to_rich


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):  # a dead letter's key and value
        return value.hex()
    return rich_json_value(value)


def read_topic(
    settings: Settings, bootstrap: str, topic: str, limit: int, from_beginning: bool, idle_s: float
) -> Iterator[str]:
    """One JSON line per message of ``topic`` (partition, offset, key, record or the decode error),
    until ``limit`` lines or ``idle_s`` seconds without a message. Partitions are assigned, not
    subscribed, and no offset is committed: it disturbs no component's consumer group."""
    from confluent_kafka import (
        OFFSET_BEGINNING,
        OFFSET_END,
        Consumer,
        KafkaError,
        KafkaException,
        TopicPartition,
    )

    codec = codec_for(settings)
    consumer = Consumer(
        {
            **client_config(settings, bootstrap),
            "group.id": f"backbone-read-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    try:
        # every partition assigned directly: no group to join (a join takes seconds on some brokers)
        try:
            metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        except KafkaException as exc:
            raise RuntimeError(f"cannot reach the broker at {bootstrap}: {exc.args[0].str()}") from exc
        if metadata is None or metadata.error is not None or not metadata.partitions:
            raise RuntimeError(f"topic {topic} does not exist on {bootstrap}")
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign([TopicPartition(topic, p, start) for p in sorted(metadata.partitions)])
        shown, quiet_since = 0, time.monotonic()
        while shown < limit and time.monotonic() - quiet_since < idle_s:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error() is not None:
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(f"{topic}: {msg.error().str()}")
                continue
            quiet_since = time.monotonic()
            key = msg.key()
            line: dict[str, Any] = {
                "partition": msg.partition(),
                "offset": msg.offset(),
                "key": key.decode("utf-8", "replace") if key is not None else None,
            }
            try:
                line["record"] = to_rich(topic, codec.decode(topic, msg.value()))
            except DecodeError as exc:
                line["error"] = f"{exc.reason}: {exc.detail}"
            yield json.dumps(line, ensure_ascii=False, default=_json_value)
            shown += 1
    finally:
        consumer.close()
