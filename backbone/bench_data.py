"""Benchmark inputs: the same seeded simulated events for every measurement of a run."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from confluent_kafka import Producer

from producers.simulator import NO_CUTOFF, SimEvent, SimulationConfig, generate, mean_events_per_case
from schemas.codec import Codec

BENCH_START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: fixed so runs are comparable


def simulated_events(n: int, seed: int, case_interval_ms: int = 60_000) -> list[SimEvent]:
    """About ``n`` valid simulated events (in delivery order), cut at exactly ``n``.

    A journey starts every ``case_interval_ms`` of event time on average, so ``n`` sets how
    much history the events cover: at the default minute, 20k events are two days, shorter
    than a journey (an export takes days, a drawback claim weeks).
    """
    probe = SimulationConfig(start_ms=BENCH_START_MS, seed=seed, cases=1000)
    per_case = mean_events_per_case(probe)
    cases = int(n / per_case * 1.1) + 10
    config = SimulationConfig(
        start_ms=BENCH_START_MS,
        seed=seed,
        cases=cases,
        span_ms=max(1, cases) * case_interval_ms,
        until_ms=NO_CUTOFF,
    )
    return list(itertools.islice(generate(config), n))


def warm_up(send: Callable[[], object], unacknowledged: Callable[[float], int], topic: str) -> None:
    """Send one message and wait for its acknowledgement before a throughput clock starts.

    An idempotent producer's first send waits for its producer id, and on the embedded broker
    that request often finds no connection up yet and retries on a timer: 0.5-1 s once per
    producer, which a 20k-event run would report as throughput.
    """
    send()
    if unacknowledged(30):
        raise RuntimeError(f"warm-up message to {topic} not acknowledged within 30 s")


def produce_messages(
    bootstrap: str, messages: Sequence[tuple[str, bytes, bytes]], linger_ms: int = 5
) -> float:
    """Produce pre-encoded (topic, key, value) messages (idempotent, acks=all); returns the seconds taken.

    Raises if anything is undelivered. The loop is as bare as confluent-kafka allows: it is both
    how benchmarks fill their input topics and the ceiling the Publisher is compared with. The
    clock starts after the first message is acknowledged (see :func:`warm_up`).
    """
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": linger_ms,
            "log_level": 0,
        }
    )
    if messages:
        topic, key, value = messages[0]
        warm_up(lambda: producer.produce(topic, value, key), producer.flush, topic)
        messages = messages[1:]
    started = time.perf_counter()
    for topic, key, value in messages:
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    remaining = producer.flush(120)
    elapsed = time.perf_counter() - started
    if remaining:
        raise RuntimeError(f"bench inputs: {remaining} of {len(messages)} messages undelivered")
    return elapsed


@dataclass(frozen=True)
class EncodedEvents:
    """Events as the broker sees them: (topic, key, value) triples, encoded once."""

    messages: list[tuple[str, bytes, bytes]]

    @classmethod
    def from_events(cls, events: list[SimEvent], codec: Codec | None = None) -> EncodedEvents:
        c = codec or Codec()
        return cls([(e.topic, e.raw["case_id"].encode(), c.encode(e.topic, e.raw)) for e in events])
