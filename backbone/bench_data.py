"""Benchmark inputs: the same seeded simulated events for every measurement of a run."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from producers.simulator import NO_CUTOFF, SimEvent, SimulationConfig, generate, mean_events_per_case
from schemas.codec import Codec

BENCH_START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: fixed so runs are comparable


def simulated_events(n: int, seed: int) -> list[SimEvent]:
    """About ``n`` valid simulated events (in delivery order), cut at exactly ``n``."""
    probe = SimulationConfig(start_ms=BENCH_START_MS, seed=seed, cases=1000)
    per_case = mean_events_per_case(probe)
    cases = int(n / per_case * 1.1) + 10
    config = SimulationConfig(
        start_ms=BENCH_START_MS, seed=seed, cases=cases, span_ms=max(1, cases) * 60_000, until_ms=NO_CUTOFF
    )
    return list(itertools.islice(generate(config), n))


@dataclass(frozen=True)
class EncodedEvents:
    """Events as the broker sees them: (topic, key, value) triples, encoded once."""

    messages: list[tuple[str, bytes, bytes]]

    @classmethod
    def from_events(cls, events: list[SimEvent], codec: Codec | None = None) -> EncodedEvents:
        c = codec or Codec()
        return cls([(e.topic, e.raw["case_id"].encode(), c.encode(e.topic, e.raw)) for e in events])
