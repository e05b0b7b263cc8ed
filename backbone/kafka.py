"""Kafka client settings and topic administration, for confluent-kafka and Faust alike.

Production points at Apache Kafka by configuration only; the embedded Tansu broker speaks
the same protocol. Topics are created with explicit ``retention.*`` configs because Tansu's
DescribeConfigs returns only settings given at creation (Quix Streams needs them).
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from backbone.config import Settings
from schemas import contracts

log = logging.getLogger(__name__)

# Tansu forms groups in 3–5 s with these instead of ~23 s with client defaults.
FAST_GROUP_SETTINGS: dict[str, Any] = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}


def client_config(settings: Settings, bootstrap: str | None = None) -> dict[str, Any]:
    """librdkafka settings shared by producers, consumers and the admin client."""
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap or settings.kafka_bootstrap_servers}
    if settings.kafka_security_protocol != "PLAINTEXT":
        conf["security.protocol"] = settings.kafka_security_protocol
    if settings.kafka_security_protocol.startswith("SASL"):
        conf["sasl.mechanism"] = settings.kafka_sasl_mechanism
        conf["sasl.username"] = settings.kafka_sasl_username
        conf["sasl.password"] = settings.kafka_sasl_password.get_secret_value()
    if settings.kafka_ssl_ca_location:
        conf["ssl.ca.location"] = settings.kafka_ssl_ca_location
    return conf


class BrokerUnreachable(RuntimeError):
    """No broker answered at the bootstrap address; the message names the address and librdkafka's reason."""


def topic_configs() -> dict[str, str]:
    return {"retention.ms": str(7 * 24 * 3600 * 1000), "retention.bytes": "-1", "cleanup.policy": "delete"}


def ensure_topics(
    settings: Settings,
    bootstrap: str,
    topics: tuple[str, ...] | list[str] = contracts.INPUT_TOPICS + contracts.OUTPUT_TOPICS,
    partitions: int | None = None,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create missing topics; returns the names created. Existing topics are left as they are.

    Raises :class:`BrokerUnreachable` when no broker answers within ``timeout_s``.
    """
    admin = AdminClient(client_config(settings, bootstrap))
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        raise BrokerUnreachable(
            f"cannot reach Kafka at {bootstrap} within {timeout_s:g} s: {exc.args[0].str()}"
        ) from exc
    wanted = [t for t in topics if t not in existing]
    if not wanted:
        return []
    futures = admin.create_topics(
        [
            NewTopic(
                t,
                num_partitions=partitions or settings.topic_partitions,
                replication_factor=settings.topic_replication_factor,
                config=topic_configs(),
            )
            for t in wanted
        ],
        operation_timeout=timeout_s,
    )
    created = []
    for topic, fut in futures.items():
        try:
            fut.result(timeout=timeout_s)
            created.append(topic)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    log.info("topics created", extra={"topics": created})
    return created
