"""The straightforward Faust version of the KPI job: what a first Faust implementation looks like.

One agent over the five agency topics, stock Faust classes, raw bytes and one Avro decode per
event, and the *same* journey and KPI rules as our job, by calling the pure engines
(:class:`~stream_processors.journeys.JourneyEngine`, :class:`~stream_processors.kpis.KpiEngine`)
on **one event at a time** with two Faust tables as their state: every event writes the case
it belongs to (and the KPI groups it moves) to a changelogged table, and every output record is
sent with ``await topic.send(...)``. A 1-second timer closes and emits windows (``tick``) and
raises CASE_SLA alerts (``sweep``), as in our job.

Outputs go to the peer's own topics (``bench.naive.*``, Avro as the contract), so the
benchmark can compare its KPI windows with our job's. Run::

    python -m backbone.bench_peers.naive_faust --app-id bench-naive --metrics-port 0
"""

from __future__ import annotations

import argparse
from typing import Any, cast

import faust

from backbone.bench_peers import peer_topic
from backbone.config import load_settings
from backbone.kafka import ensure_topics
from backbone.metrics import Metrics, serve
from schemas import contracts
from schemas.codec import Codec
from stream_processors.api import FACTS_TOPIC, InputMessage, Outputs, StateStore
from stream_processors.app import create_app
from stream_processors.clock import EventClock, make_clock
from stream_processors.journeys import JourneyEngine
from stream_processors.kpis import KpiEngine
from stream_processors.missions import load_missions

PEER = "naive"


def output_topics() -> dict[str, str]:
    """Contract output topic → this peer's topic."""
    return {t: peer_topic(PEER, t) for t in contracts.OUTPUT_TOPICS}


def build(app_id: str, metrics: Metrics) -> faust.App:
    settings = load_settings()
    missions = load_missions(settings.missions_file)
    codec = Codec()
    app = create_app(settings, app_id=app_id, stock=True, data_dir=settings.data_dir / "faust-naive")
    partitions = settings.topic_partitions
    # use_partitioner: the timer writes too, and Faust refuses table writes outside a stream
    # iteration otherwise ("Cannot modify table key from outside of stream iteration").
    # Faust tables are the engines' state stores here as they are (a mapping per key)
    cases = cast(
        StateStore, app.Table("naive_cases", default=None, partitions=partitions, use_partitioner=True)
    )
    kpi_state = cast(
        StateStore, app.Table("naive_kpis", default=None, partitions=partitions, use_partitioner=True)
    )
    journeys = JourneyEngine(missions, settings, codec=codec)
    kpis = KpiEngine(missions, settings)
    clock = make_clock(settings.clock)
    inputs = app.topic(*contracts.INPUT_TOPICS, key_serializer="raw", value_serializer="raw")
    outs = {
        t: app.topic(name, key_serializer="raw", value_serializer="raw")
        for t, name in output_topics().items()
    }

    def delivered(topic: str) -> Any:
        counter = metrics.records_out.labels(topic)
        return lambda _fut: counter.inc()

    on_sent = {t: delivered(t) for t in contracts.OUTPUT_TOPICS}

    async def send(outputs: Outputs) -> None:
        for topic, records in outputs.by_topic().items():
            for record in records:
                await outs[topic].send(value=codec.encode(topic, record), callback=on_sent[topic])

    def observe(outputs: Outputs) -> None:
        if isinstance(clock, EventClock):
            clock.observe(outputs.max_occurred_at)

    @app.agent(inputs, name="naive_journeys")
    async def process(stream: faust.StreamT[Any]) -> None:
        fact_offset = 0
        async for event in stream.events():
            m = event.message
            ts = m.timestamp
            msg = InputMessage(
                m.topic, m.partition, m.offset, m.key, m.value, int(ts * 1000) if ts is not None else None
            )
            now = clock.now_ms()
            hop1 = journeys.process([msg], cases, now)
            facts = []
            for key, value in hop1.facts:
                facts.append(InputMessage(FACTS_TOPIC, 0, fact_offset, key.encode(), value, None))
                fact_offset += 1
            hop2 = kpis.apply(facts, kpi_state, now)
            observe(hop1)
            await send(hop1)
            await send(hop2)
            metrics.events_in.labels(m.topic).inc()

    @app.timer(1.0, name="naive_sweep_and_tick")  # type: ignore[untyped-decorator]  # faust's is untyped
    async def sweep_and_tick() -> None:
        now = clock.now_ms()
        await send(journeys.sweep(cases, now))
        await send(kpis.tick(kpi_state, now))

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app-id", default="bench-naive")
    parser.add_argument("--metrics-port", type=int, default=0)
    args = parser.parse_args()
    settings = load_settings()
    ensure_topics(settings, settings.kafka_bootstrap_servers, tuple(output_topics().values()))
    metrics = Metrics()
    port = serve(metrics, args.metrics_port)
    app = build(args.app_id, metrics)
    print(f"naive faust peer: metrics on 127.0.0.1:{port}", flush=True)
    faust.Worker(
        app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False
    ).execute_from_commandline()


if __name__ == "__main__":
    main()
