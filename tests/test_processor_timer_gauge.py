"""The worker tells observers when its event-clock timer has covered every batch.

Regression for the processor benchmark that saw no KPI window rows: on the event clock the
worker ticks only once its input is quiet and read to the end, some seconds after the last
batch, and the benchmark used to stop after a quiet period of its own. Now the worker publishes
``backbone_processor_timer_batches`` (the batch count its last sweep+tick covered) and the
benchmark waits for it. Fakes stand in for engines and stores: this is the runtime's gating.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from prometheus_client import generate_latest

from backbone.bench_peers.jobs import parse_metrics
from backbone.bench_processor import our_job_drained
from backbone.config import load_settings
from backbone.metrics import Metrics
from schemas import contracts
from stream_processors.api import FACTS_TOPIC, Outputs
from stream_processors.clock import EventClock
from stream_processors.worker import ProcessorRuntime
from stream_processors.worker_metrics import WorkerMetrics


class Engine:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def sweep(self, _store: Any, _now: int) -> Outputs:
        self.calls.append("sweep")
        return Outputs()

    def tick(self, _store: Any, _now: int) -> Outputs:
        self.calls.append("tick")
        return Outputs()


class Store:
    def changelog(self) -> list[Any]:
        return []

    def apply(self) -> int:
        return 0


def runtime(highwater: int) -> tuple[ProcessorRuntime, Engine, Metrics]:
    metrics = Metrics()
    engine = Engine()
    rt = ProcessorRuntime(
        load_settings(),
        engine,
        engine,
        Store(),
        Store(),
        None,
        WorkerMetrics(metrics),
        EventClock(),  # type: ignore[arg-type]
    )
    tps = [(contracts.INPUT_TOPICS[0], 0), (FACTS_TOPIC, 0)]
    rt.assigned = frozenset(tps)
    rt.highwater = lambda topic, partition: highwater
    rt.processed_next = dict.fromkeys(tps, 10)
    rt.batches = 7
    rt.ready = True
    return rt, engine, metrics


def gauge(metrics: Metrics) -> float:
    return parse_metrics(generate_latest(metrics.registry).decode()).total("backbone_processor_timer_batches")


def test_timer_batches_set_only_by_a_tick_after_quiet_and_caught_up() -> None:
    rt, engine, metrics = runtime(highwater=10)
    rt.last_batch_at = time.monotonic()  # a batch just ran: not quiet
    asyncio.run(rt.sweep_and_tick())
    assert engine.calls == [] and gauge(metrics) == 0

    rt.last_batch_at = time.monotonic() - 2 * rt.quiet_s
    asyncio.run(rt.sweep_and_tick())
    assert engine.calls == ["sweep", "tick"]
    assert gauge(metrics) == 7


def test_no_tick_while_a_partition_is_behind_its_high_watermark() -> None:
    rt, engine, metrics = runtime(highwater=11)
    rt.last_batch_at = time.monotonic() - 2 * rt.quiet_s
    asyncio.run(rt.sweep_and_tick())
    assert "tick" not in engine.calls and gauge(metrics) == 0


def test_benchmark_waits_for_the_tick_that_covers_every_batch() -> None:
    def counters(timer_batches: float) -> Any:
        return parse_metrics(
            "\n".join(
                [
                    "# TYPE backbone_records_out_total counter",
                    f'backbone_records_out_total{{topic="{FACTS_TOPIC}"}} 5',
                    "# TYPE backbone_batch_size histogram",
                    'backbone_batch_size_count{component="journeys"} 2',
                    'backbone_batch_size_sum{component="journeys"} 100',
                    'backbone_batch_size_count{component="kpis"} 1',
                    'backbone_batch_size_sum{component="kpis"} 5',
                    "# TYPE backbone_processor_timer_batches gauge",
                    f"backbone_processor_timer_batches {timer_batches}",
                ]
            )
            + "\n"
        )

    assert not our_job_drained(counters(2))
    assert our_job_drained(counters(3))
