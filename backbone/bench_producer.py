"""Producer throughput: the Publisher (validate + encode + produce) vs a bare confluent-kafka loop.

Both send the same events to a fresh embedded broker with the same delivery settings
(idempotent, acks=all); the bare loop sends bytes encoded beforehand, so the ratio is the
cost of the library's per-record validation, encoding and delivery bookkeeping. Each clock starts
once the producer has its first message acknowledged (:func:`backbone.bench_data.warm_up`).
"""

from __future__ import annotations

import time

from backbone.bench import BenchOptions, BenchRow
from backbone.bench_data import EncodedEvents, produce_messages, simulated_events, warm_up
from backbone.config import load_settings
from backbone.embedded.broker import TansuBroker
from backbone.kafka import ensure_topics
from producers.publisher import Publisher
from schemas import contracts


def _bare(bootstrap: str, messages: list[tuple[str, bytes, bytes]]) -> float:
    return (len(messages) - 1) / produce_messages(bootstrap, messages)


def _publisher(bootstrap: str, events: list) -> float:  # type: ignore[type-arg]
    settings = load_settings(kafka_bootstrap_servers=bootstrap)
    # Bench events are dated 2026-01-01: freeze the publisher's clock after the newest one so the
    # "not in the future" check passes without changing what is measured.
    newest = max(e.raw["published_at"] for e in events)
    publisher = Publisher(settings, bootstrap, clock=lambda: newest)
    first, rest = events[0], events[1:]  # the first is the warm-up, as in the bare loop
    warm_up(
        lambda: publisher.publish(first.topic, first.raw),
        lambda timeout: sum(1 for r in publisher.flush(timeout) if not r.ok),
        first.topic,
    )
    by_topic: dict[str, list[dict]] = {}  # type: ignore[type-arg]
    for e in rest:
        by_topic.setdefault(e.topic, []).append(e.raw)
    started = time.perf_counter()
    rejected = 0
    for topic, records in by_topic.items():
        rejected += len(publisher.publish_many(topic, records))
        publisher.poll(0)
    results = publisher.flush(60)
    elapsed = time.perf_counter() - started
    failed = sum(1 for r in results if not r.ok)
    if rejected or failed:
        raise RuntimeError(f"publisher: {rejected} rejected, {failed} failed")
    return len(rest) / elapsed


def run(opts: BenchOptions) -> list[BenchRow]:
    events = simulated_events(opts.events, opts.seed)
    encoded = EncodedEvents.from_events(events)
    settings = load_settings()
    with TansuBroker() as broker:
        ensure_topics(settings, broker.bootstrap, contracts.INPUT_TOPICS, partitions=opts.partitions)
        bare = _bare(broker.bootstrap, encoded.messages)
    with TansuBroker() as broker:
        ensure_topics(settings, broker.bootstrap, contracts.INPUT_TOPICS, partitions=opts.partitions)
        lib = _publisher(broker.bootstrap, events)
    return [
        BenchRow(
            "producer",
            "Publisher.publish_many (validate+encode+send)",
            lib,
            "ev/s",
            "bare confluent-kafka produce of the same bytes",
            bare,
            notes=f"{len(events):,} events, idempotent acks=all, fresh Tansu broker each",
        ),
    ]
