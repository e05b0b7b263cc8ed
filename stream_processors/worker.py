"""The processor worker: two Faust agents, their tables, the timers and the batch loop.

Hop 1, agent ``journeys``: the five agency topics (raw bytes) → :class:`JourneyEngine` →
stage records, CASE_SLA alerts, dead letters and facts. Hop 2, agent ``kpis``: the facts
topic → :class:`KpiEngine` → backlog and feed rows; its timer emits KPI windows, KPI_TARGET
and FEED_SILENT alerts. Each hop's state lives in a changelogged table keyed like its input.

Every batch, sweep and tick goes through :meth:`ProcessorRuntime._run`, the one place where
the at-least-once order is kept:

1. the engine computes outputs; its state writes stay pending (:mod:`stream_processors.state`);
2. the delivery before it, if still in flight, is awaited (:meth:`ProcessorRuntime.settle`);
3. the outputs are produced and flushed, then the state changelog is sent (retried until the
   broker acknowledges all of them; outputs first, see :meth:`ProcessorRuntime._deliver`), and
   the state writes are applied to the table.

On the fast path an input batch's flush is left in flight (pipelined) while Faust hands over
the next batch, which is computed meanwhile, and a changelog's acknowledgement is taken by the
next flush; every offset commit, including a rebalance's, first awaits
:meth:`ProcessorRuntime.commit_barrier` (the delivery in flight, then the changelog sent last),
so no offset is committed before its outputs and changelog are acknowledged. Timer outputs are
delivered before the timer returns.

A crash anywhere replays the batch; the outputs carry deterministic ids and hop 2 skips facts
it has already applied (offsets in its state), so nothing downstream double counts.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, cast

import faust
from faust.types import TP, EventT, TableT

from backbone.config import Settings, processor_metrics_port
from backbone.kafka import client_config, ensure_topics
from backbone.metrics import Metrics, serve
from schemas import contracts
from stream_processors.api import (
    DEFAULT_BATCH_MAX,
    FACTS_TOPIC,
    PROCESSOR_SOURCE,
    InputMessage,
    Outputs,
    StateStore,
)
from stream_processors.app import DEFAULT_APP_ID, create_app
from stream_processors.clock import Clock, EventClock, make_clock
from stream_processors.ids import dead_letter_id
from stream_processors.missions import load_missions
from stream_processors.outputs import OutputDeliveryError, OutputProducer
from stream_processors.state import ChangelogRecord, PartitionedTableStore
from stream_processors.worker_metrics import WorkerMetrics, sla_gauge_window

log = logging.getLogger("backbone.processor")

EVENT_CLOCK_QUIET_S = 1.0
"""On the event clock, how long without a batch counts as "the input is quiet".

Sweeps and ticks wait for this and for every partition read to its high watermark. The high
watermark is the one the last fetch reported (right on Tansu too; only its ListOffsets answer is
wrong, see :func:`stream_processors.faust_fast.probe_end_offsets`), so "read to the end" is
exact for what was published when that fetch ran. What it cannot see is what comes next: a
producer still publishing (the tests publish live, in chunks) and hop 1's facts still in flight
to hop 2. The quiet period guards against those: 0.5 s was measured too short on a loaded
machine (a premature tick in the oracle test). It is pure waiting at the end of a replay, so
the timer checks every :data:`EVENT_CLOCK_TIMER_S` instead of once a second.
"""
EVENT_CLOCK_TIMER_S = 0.25

PROCESSING_ERROR = "processing_error"
"""Dead-letter reason for a message the engine raised on (an engine bug, isolated per message)."""


class BatchEngine(Protocol):
    """What both engines offer the runtime for a batch (``process`` / ``apply``)."""

    def __call__(self, batch: Sequence[InputMessage], states: StateStore, now_ms: int) -> Outputs: ...


@dataclass(frozen=True)
class WorkerOptions:
    """How one worker runs (the CLI's flags)."""

    worker_id: int = 1
    stock: bool = False
    """Stock Faust Stream/consumer/monitor classes (the benchmark baseline)."""
    batch_max: int = DEFAULT_BATCH_MAX
    batch_within_s: float = 0.1
    timer_interval_s: float = 0.5
    compression: str = "none"
    """Of the outputs and the state changelogs (``stream_processors.outputs.COMPRESSIONS``)."""
    app_id: str = DEFAULT_APP_ID
    metrics_port: int | None = None
    """None: :func:`backbone.config.processor_metrics_port` (0 stays 0: a free port)."""

    def resolved_metrics_port(self, settings: Settings) -> int:
        if self.metrics_port is not None:
            return self.metrics_port
        return processor_metrics_port(settings, self.worker_id)


def to_input_messages(events: Sequence[EventT[Any]]) -> list[InputMessage]:
    """Faust events (raw serializers) → the engines' :class:`InputMessage` list."""
    out = []
    for event in events:
        m = event.message
        ts = m.timestamp
        out.append(
            InputMessage(
                m.topic, m.partition, m.offset, m.key, m.value, int(ts * 1000) if ts is not None else None
            )
        )
    return out


def processing_error_dead_letter(msg: InputMessage, exc: BaseException, now_ms: int) -> dict[str, Any]:
    """A dead letter for a message the engine raised on, with the original bytes and the error."""
    detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return {
        "dead_letter_id": dead_letter_id(msg.topic, msg.partition, msg.offset),
        "source": PROCESSOR_SOURCE,
        "topic": msg.topic,
        "partition": msg.partition,
        "offset": msg.offset,
        "key": msg.key,
        "value": msg.value,
        "reason": PROCESSING_ERROR,
        "detail": detail[:2000],
        "received_at": now_ms,
    }


class DeliveryFailed(RuntimeError):
    """A pipelined batch delivery raised: not an engine error, so not retried message by message."""


class ProcessorRuntime:
    """Owns the engines, stores, output producer, clock and metrics of one worker."""

    def __init__(
        self,
        settings: Settings,
        journey_engine: Any,
        kpi_engine: Any,
        journey_store: PartitionedTableStore,
        kpi_store: PartitionedTableStore,
        producer: OutputProducer,
        metrics: WorkerMetrics,
        clock: Clock,
    ) -> None:
        self.settings = settings
        self.journeys = journey_engine
        self.kpis = kpi_engine
        self.journey_store = journey_store
        self.kpi_store = kpi_store
        self.producer = producer
        self.metrics = metrics
        self.clock = clock
        self.journey_lock = asyncio.Lock()
        self.kpi_lock = asyncio.Lock()
        self.delivery_lock = asyncio.Lock()
        self.pipelining = False
        """Leave a batch's delivery in flight while the next is computed (needs the commit barrier)."""
        self._in_flight: asyncio.Future[None] | None = None
        self._changelog_unacked: list[ChangelogRecord] = []
        """The last delivery's changelog, sent but not yet acknowledged (pipelined path only)."""
        self.ready = False
        """True between a completed rebalance (state recovered) and the next revocation."""
        self.batches = 0
        self.processed_next: dict[tuple[str, int], int] = {}
        self.assigned: frozenset[tuple[str, int]] = frozenset()
        self.assigned_at = time.monotonic()
        self.idle_partition_s = 60.0
        self.last_batch_at = 0.0
        self.quiet_s = EVENT_CLOCK_QUIET_S
        """On the event clock: how long without a batch counts as "the input is quiet"."""
        self.start_offsets: dict[tuple[str, int], int] = {}
        """Committed offsets of the assigned partitions at the assignment (where reading resumed)."""
        self.committed: Callable[[frozenset[tuple[str, int]]], dict[tuple[str, int], int]] = lambda tps: {}
        """Reads the group's committed offsets (set by the app wiring)."""
        """Per input topic-partition: the offset after the last message processed."""
        self.highwater: Callable[[str, int], int | None] = lambda topic, partition: None
        """The consumer's last-fetched high watermark of a topic-partition (set by the app wiring)."""
        self.events = 0

    # -- the one ordered path: compute, deliver, then commit state -----------------------------
    async def _deliver(
        self, component: str, outputs: Outputs, changelog: list[ChangelogRecord]
    ) -> dict[str, int]:
        """Produce and flush ``outputs``, then state ``changelog``, retrying until all are acknowledged.

        One delivery at a time (both hops share the producer, and a flush's failures must be
        those of its own records). The outputs are acknowledged before the changelog is sent:
        a worker killed in the middle of one flush of both could leave the new state stored
        but outputs lost (the broker takes each partition's batch on its own), and the restarted
        worker, restoring that state, would take the replayed events for duplicates and never
        emit those outputs again (CI once saw stage records stuck OPEN that way). Stored outputs
        without their state are harmless: the replay computes them again from the older state,
        with the same ids, and hop 2 skips facts by source offset.

        With the commit barrier (:attr:`pipelining`) the changelog's own acknowledgement is not
        awaited here: the next delivery's flush takes it along with that delivery's outputs, and
        :meth:`commit_barrier` flushes it before any offset commit or revocation. That saves a
        broker round trip per batch (live time at 10k ev/s, two interleaved A/B pairs: stage p99
        0.95/0.91 s against 1.45/1.22 s with the changelog flushed on its own). Until it is
        acknowledged the changelog is kept and sent again with any retry, before anything newer,
        so a key's last changelog record is always its newest state.
        """
        delay = 0.2
        flush = self.producer.flush
        loop = asyncio.get_running_loop()
        async with self.delivery_lock:
            earlier = self._changelog_unacked
            while True:
                self.producer.send(outputs)
                started = time.perf_counter()
                try:
                    acked = await loop.run_in_executor(None, flush)  # also lands ``earlier``
                    self._changelog_unacked = []
                    if changelog:
                        self.producer.send_changelog(changelog)
                        if self.pipelining:
                            self._changelog_unacked = changelog
                        else:
                            acked.update(await loop.run_in_executor(None, flush))
                    self.metrics.flushed(component, time.perf_counter() - started)
                    return dict(acked)
                except OutputDeliveryError as exc:
                    log.error("output delivery failed; retrying the same records", extra={"error": str(exc)})
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    if earlier:
                        self.producer.send_changelog(earlier)  # not known to have landed: again, first

    def _observe_clock(self, outputs: Outputs) -> None:
        if isinstance(self.clock, EventClock):
            self.clock.observe(outputs.max_occurred_at)

    def judging_now_ms(self) -> int:
        """The "now" against which sweeps and ticks judge open cases and silent feeds.

        On the wall clock, the time. On the event clock, the newest ``occurred_at`` seen minus
        ``grace_ms``: events may arrive out of order by up to the grace (across topics and
        partitions a case's end event can be read after later events of other cases), so an
        event-time "now" is only safe that far behind the newest event (a bounded-out-of-order
        watermark). Without it a sweep fires CASE_SLA for a case whose end, before its deadline,
        is still in flight.
        """
        now = self.clock.now_ms()
        if isinstance(self.clock, EventClock):
            return max(0, now - self.settings.grace_ms)
        return now

    async def settle(self) -> None:
        """Wait until the batch delivery in flight, if any, is acknowledged by the broker.

        The commit barrier of the pipelined path (the Faust consumer awaits it before every
        offset commit) and the first step of every delivery, so at most one delivery is in
        flight and outputs leave in the order they were computed. Raises
        :class:`DeliveryFailed` if that delivery raised (its retry loop only gives up on errors
        it cannot retry): the worker must stop, its offsets uncommitted.
        """
        task = self._in_flight
        if task is None:
            return
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                raise  # this waiter was cancelled; the delivery goes on
            raise DeliveryFailed("the pipelined output delivery was cancelled") from None
        except Exception as exc:  # noqa: BLE001 - re-raised as the one error the batch path lets through
            raise DeliveryFailed(f"the pipelined output delivery failed: {exc!r}") from exc
        finally:
            if self._in_flight is task and task.done():
                self._in_flight = None

    async def commit_barrier(self) -> None:
        """What every offset commit and revocation awaits on the pipelined path: the delivery in
        flight (:meth:`settle`), then the acknowledgement of the changelog it sent last.

        So no offset is committed, and no partition handed to another worker (which restores
        its state from the changelog), before the outputs and the state of the batches it
        covers are stored.
        """
        await self.settle()
        if self._changelog_unacked:
            await self._deliver("changelog", Outputs(), [])

    async def _deliver_counted(
        self, component: str, outputs: Outputs, changelog: list[ChangelogRecord]
    ) -> None:
        delivered = await self._deliver(component, outputs, changelog)
        self.metrics.outputs(outputs, delivered, self.clock.now_ms())

    async def _run(
        self,
        component: str,
        store: PartitionedTableStore,
        call: Callable[[int], Outputs],
        now_ms: int | None = None,
        pipelined: bool = False,
    ) -> Outputs:
        """Compute, deliver, apply state (module docstring).

        ``pipelined`` (input batches, when :attr:`pipelining` is on): the delivery is left in
        flight and the state applied at once, so the next batch is computed while the broker
        acknowledges this one's outputs. Offsets stay safe because every commit first waits for
        :meth:`settle`; a crash loses only uncommitted work, replayed from the changelog and
        the committed offsets as before.
        """
        now_ms = self.clock.now_ms() if now_ms is None else now_ms
        outputs = call(now_ms)
        changelog = store.changelog()
        await self.settle()
        if len(outputs) or changelog:
            delivery = self._deliver_counted(component, outputs, changelog)
            if pipelined and self.pipelining:
                self._in_flight = asyncio.ensure_future(delivery)
            else:
                await delivery
        else:
            self.metrics.outputs(outputs, {}, self.clock.now_ms())
        store.apply()
        self._observe_clock(outputs)
        return outputs

    async def _batch(
        self,
        component: str,
        engine_call: BatchEngine,
        engine: Any,
        store: PartitionedTableStore,
        lock: asyncio.Lock,
        events: Sequence[EventT[Any]],
    ) -> None:
        batch = to_input_messages(events)
        if not batch:
            return
        started = time.perf_counter()
        routes = {m.key.decode("utf-8", "replace"): m.partition for m in batch if m.key is not None}
        async with lock:
            store.route(routes)
            try:
                await self._run(component, store, lambda now: engine_call(batch, store, now), pipelined=True)
            except DeliveryFailed:
                raise
            except Exception:  # noqa: BLE001 - an engine bug must not lose the batch or kill the worker
                log.exception(
                    "engine raised on a batch; isolating the message(s) it raised on",
                    extra={"component": component, "size": len(batch)},
                )
                store.discard()
                engine.rebuild_index(store)
                await self._isolate(component, engine_call, engine, store, batch)
        self.batches += 1
        self.events += len(batch)
        self.last_batch_at = time.monotonic()
        processed = self.processed_next
        for msg in batch:
            tp = (msg.topic, msg.partition)
            if msg.offset >= processed.get(tp, 0):
                processed[tp] = msg.offset + 1
        self.metrics.batch_in(component, batch, time.perf_counter() - started)

    async def _isolate(
        self,
        component: str,
        engine_call: BatchEngine,
        engine: Any,
        store: PartitionedTableStore,
        batch: list[InputMessage],
    ) -> None:
        """Process a failed batch one message at a time; dead-letter each message that raises."""
        for msg in batch:
            if msg.key is not None:
                store.route({msg.key.decode("utf-8", "replace"): msg.partition})
            try:
                await self._run(component, store, partial(engine_call, [msg], store))
            except DeliveryFailed:
                raise
            except Exception as exc:  # noqa: BLE001
                log.exception(
                    "engine raised on one message; dead-lettered",
                    extra={"topic": msg.topic, "partition": msg.partition, "offset": msg.offset},
                )
                store.discard()
                engine.rebuild_index(store)
                dead = Outputs(dead_letters=[processing_error_dead_letter(msg, exc, self.clock.now_ms())])

                def dead_letter_only(_now: int, dead: Outputs = dead) -> Outputs:
                    return dead

                await self._run(component, store, dead_letter_only)

    async def on_journey_events(self, events: Sequence[EventT[Any]]) -> None:
        await self._batch(
            "journeys", self.journeys.process, self.journeys, self.journey_store, self.journey_lock, events
        )

    async def on_fact_events(self, events: Sequence[EventT[Any]]) -> None:
        await self._batch("kpis", self.kpis.apply, self.kpis, self.kpi_store, self.kpi_lock, events)

    def caught_up(self, topics: Sequence[str]) -> bool:
        """True when every assigned partition of ``topics`` is processed up to its high watermark.

        A partition not processed since the assignment counts from its committed offset (where
        consumption restarted). A partition whose high watermark is still unknown (no fetch
        answered yet) blocks, except after :attr:`idle_partition_s` (a broker that never answers
        for it must not stop the sweeps forever).
        """
        waited = time.monotonic() - self.assigned_at >= self.idle_partition_s
        for topic, partition in self.assigned:
            if topic not in topics:
                continue
            highwater = self.highwater(topic, partition)
            if highwater is None:
                if not waited:
                    return False
                continue
            next_offset = self.processed_next.get(
                (topic, partition), self.start_offsets.get((topic, partition), 0)
            )
            if highwater > next_offset:
                return False
        return True

    def _clock_trustworthy(self, topics: Sequence[str]) -> bool:
        """Whether "now" may be used to judge open cases and windows.

        On the event clock, "now" is the newest ``occurred_at`` seen over all partitions. While a
        backlog is drained (start, restart, catch-up) partitions are read at different speeds,
        and a partition read early pushes "now" past events still waiting in the others; a sweep
        then would fire CASE_SLA for cases whose end event simply has not been read yet, and a
        tick would close windows before their completions arrive. So on the event clock sweeps
        and ticks wait until the input has been quiet for a timer interval and every assigned
        partition is processed to its high watermark; on the wall clock they always run. (The
        event clock is for replays and tests; live operation uses the wall clock.)
        """
        if not isinstance(self.clock, EventClock):
            return True
        quiet = time.monotonic() - self.last_batch_at >= self.quiet_s
        return quiet and self.caught_up(topics)

    async def sweep(self) -> None:
        if not self.ready or not self._clock_trustworthy(contracts.INPUT_TOPICS):
            return
        async with self.journey_lock:
            await self._run(
                "journeys",
                self.journey_store,
                lambda now: self.journeys.sweep(self.journey_store, now),
                self.judging_now_ms(),
            )

    async def tick(self) -> bool:
        """Emit changed and closing KPI windows; False when the event clock is not yet trustworthy."""
        if not self.ready or not self._clock_trustworthy((*contracts.INPUT_TOPICS, FACTS_TOPIC)):
            return False
        async with self.kpi_lock:
            await self._run(
                "kpis", self.kpi_store, lambda now: self.kpis.tick(self.kpi_store, now), self.judging_now_ms()
            )
        self.metrics.refresh_backlog_age(self.clock.now_ms())
        return True

    async def sweep_and_tick(self) -> None:
        """The timer: sweep, tick, then publish how many batches the tick's outputs cover.

        On the event clock a tick waits until the input is quiet and read to its end, so a
        replay's last windows appear only some seconds after its last batch; an observer (the
        benchmark) knows every output is out when ``backbone_processor_timer_batches`` equals
        the batch count, instead of guessing from a quiet period.
        """
        seen = self.batches
        await self.sweep()
        if await self.tick():
            self.metrics.m.timer_batches.set(seen)

    # -- rebalances --------------------------------------------------------------------------
    async def on_assigned(self, assignment: set[tuple[str, int]]) -> None:
        """State for the new assignment is recovered: restrict the stores and rebuild indexes."""
        async with self.journey_lock, self.kpi_lock:
            self.assigned = frozenset(assignment)
            self.assigned_at = time.monotonic()
            self.start_offsets = await asyncio.get_running_loop().run_in_executor(
                None, self.committed, self.assigned
            )
            self.processed_next = {tp: n for tp, n in self.processed_next.items() if tp in self.assigned}
            self.journey_store.owned = frozenset(p for t, p in assignment if t in contracts.INPUT_TOPICS)
            self.kpi_store.owned = frozenset(p for t, p in assignment if t == FACTS_TOPIC)
            for store in (self.journey_store, self.kpi_store):
                store.reassemble()  # states recovered in pieces (over the record size limit)
            self.journeys.rebuild_index(self.journey_store)
            self.kpis.rebuild_index(self.kpi_store)
            self.ready = True
        self.metrics.m.assignments.inc()
        log.info(
            "partitions ready",
            extra={
                "journey_partitions": sorted(self.journey_store.owned),
                "kpi_partitions": sorted(self.kpi_store.owned),
                "journey_keys": len(self.journey_store),
                "kpi_keys": len(self.kpi_store),
            },
        )

    async def on_revoked(self) -> None:
        """Stop the timers' work and let the delivery in flight land before the state moves on."""
        self.ready = False
        await self.commit_barrier()


def committed_offsets(
    settings: Settings, group: str, tps: Iterable[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    """The consumer group's committed offsets (partitions without one are left out)."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    wanted = [TopicPartition(t, p) for t, p in tps]
    if not wanted:
        return {}
    consumer = Consumer({**client_config(settings), "group.id": group, "enable.auto.commit": False})
    try:
        return {
            (tp.topic, tp.partition): tp.offset
            for tp in consumer.committed(wanted, timeout=10)
            if tp.offset >= 0
        }
    except KafkaException as exc:
        log.warning("committed offsets unavailable", extra={"error": str(exc)})
        return {}
    finally:
        consumer.close()


def check_partitions(settings: Settings, bootstrap: str) -> None:
    """Fail at start when the topics a table is keyed by do not share one partition count."""
    from confluent_kafka.admin import AdminClient

    md = AdminClient(client_config(settings, bootstrap)).list_topics(timeout=30)
    counts = {
        t: len(md.topics[t].partitions) for t in (*contracts.INPUT_TOPICS, FACTS_TOPIC) if t in md.topics
    }
    wrong = {t: n for t, n in counts.items() if n != settings.topic_partitions}
    if wrong:
        raise RuntimeError(
            f"topics must have BACKBONE_TOPIC_PARTITIONS={settings.topic_partitions} partitions "
            f"(case state is partitioned like its input): {wrong}"
        )


EngineFactory = Callable[[Any, Settings, Any], Any]
"""``(missions, settings, codec) -> engine``; tests and benchmarks may pass their own."""


def default_journey_engine(missions: Any, settings: Settings, codec: Any) -> Any:
    from stream_processors.journeys import JourneyEngine

    return JourneyEngine(missions, settings, codec=codec)


def default_kpi_engine(missions: Any, settings: Settings, codec: Any) -> Any:
    from stream_processors.kpis import KpiEngine

    # On the event clock a tick waits until the input is read to its end (``_clock_trustworthy``).
    return KpiEngine(missions, settings, close_behind_low_watermark=settings.clock == "wall")


def kpi_base_key(key: str) -> str:
    """Hop 2 keeps closed-window summaries under ``<group key>@<window>``: same partition as the group."""
    from stream_processors.kpis import SUMMARY_SEP

    return key.split(SUMMARY_SEP, 1)[0]


def build_worker(
    settings: Settings,
    options: WorkerOptions,
    metrics: Metrics | None = None,
    journey_engine: EngineFactory = default_journey_engine,
    kpi_engine: EngineFactory = default_kpi_engine,
) -> tuple[faust.App, ProcessorRuntime]:
    """The Faust app with agents, tables, timers and signals wired to a :class:`ProcessorRuntime`."""
    missions = load_missions(settings.missions_file)
    app = create_app(
        settings,
        app_id=options.app_id,
        stock=options.stock,
        data_dir=settings.data_dir / f"faust-{options.worker_id}",
    )
    partitions = settings.topic_partitions

    def table(name: str, help_text: str) -> TableT[Any, Any]:
        # Untyped: json keys and values, the format PartitionedTableStore writes its changelog in.
        return app.Table(name, default=None, partitions=partitions, help=help_text)

    journey_table = table("journey_state", "Per-case journey state, keyed by case_id.")
    kpi_table = table("kpi_state", "Per-KPI-group windows, backlog and feed state.")
    producer = OutputProducer(
        settings, client_id=f"backbone-processor-{options.worker_id}", compression=options.compression
    )
    runtime = ProcessorRuntime(
        settings,
        journey_engine(missions, settings, producer.codec),
        kpi_engine(missions, settings, producer.codec),
        PartitionedTableStore(journey_table, partitions, max_record_bytes=settings.state_record_max_bytes),
        PartitionedTableStore(
            kpi_table, partitions, base_key=kpi_base_key, max_record_bytes=settings.state_record_max_bytes
        ),
        producer,
        WorkerMetrics(metrics or Metrics(), sla_gauge_window(missions.windows)),
        make_clock(settings.clock),
    )
    if options.stock:
        raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
    else:
        from stream_processors.faust_fast import RawSchema

        raw = {"schema": RawSchema()}
        # Pipelined delivery is safe only with the fast consumer's commit barrier.
        app.transport.commit_barrier = runtime.commit_barrier  # type: ignore[attr-defined]
        runtime.pipelining = True

    def highwater(topic: str, partition: int) -> int | None:
        try:
            return app.consumer.highwater(TP(topic, partition))
        except (KeyError, AssertionError, RuntimeError):  # not fetched yet / consumer not started
            return None

    runtime.highwater = highwater
    runtime.committed = lambda tps: committed_offsets(settings, options.app_id, tps)
    input_topic = app.topic(*contracts.INPUT_TOPICS, **raw)
    facts_topic = app.topic(FACTS_TOPIC, **raw)

    async def consume(
        stream: faust.StreamT[Any], handle: Callable[[Sequence[EventT[Any]]], Awaitable[None]]
    ) -> None:
        batches = cast(faust.Stream[Any], stream).take_events(
            options.batch_max, within=options.batch_within_s
        )
        async for events in batches:
            await handle(events)

    @app.agent(input_topic, name="journeys")
    async def journeys_agent(stream: faust.StreamT[Any]) -> None:
        await consume(stream, runtime.on_journey_events)

    @app.agent(facts_topic, name="kpis")
    async def kpis_agent(stream: faust.StreamT[Any]) -> None:
        await consume(stream, runtime.on_fact_events)

    # On the event clock the timer only acts once the input is quiet: check often, so a replay's
    # last windows do not wait a whole interval after the quiet period.
    interval = options.timer_interval_s
    if isinstance(runtime.clock, EventClock):
        interval = min(interval, EVENT_CLOCK_TIMER_S)
        runtime.quiet_s = max(EVENT_CLOCK_QUIET_S, 4 * options.batch_within_s)

    @app.timer(interval, name="sweep_and_tick")  # type: ignore[untyped-decorator]  # faust's is untyped
    async def sweep_and_tick() -> None:
        await runtime.sweep_and_tick()

    # mode's SignalHandlerT (mypy_extensions VarArg/NamedArg) matches no plain function signature
    @app.on_rebalance_complete.connect  # type: ignore[arg-type]
    async def on_rebalance_complete(sender: faust.App, **_: Any) -> None:
        await runtime.on_assigned({(tp.topic, tp.partition) for tp in app.consumer.assignment()})

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_partitions_revoked(sender: faust.App, revoked: set[Any], **_: Any) -> None:
        await runtime.on_revoked()

    return app, runtime


def run_worker(
    settings: Settings,
    options: WorkerOptions,
    journey_engine: EngineFactory = default_journey_engine,
    kpi_engine: EngineFactory = default_kpi_engine,
) -> None:
    """Run one worker in the foreground until SIGINT/SIGTERM (Faust's worker handles both)."""
    from backbone.logs import setup_logging

    setup_logging(settings.log_level, component=f"processor-{options.worker_id}")
    if not options.stock:
        from stream_processors.gc_policy import tune_gc

        tune_gc()  # the engines' state is many small containers: full collections cost ~1/3 of CPU
    bootstrap = settings.kafka_bootstrap_servers
    ensure_topics(
        settings, bootstrap, topics=(*contracts.INPUT_TOPICS, *contracts.OUTPUT_TOPICS, FACTS_TOPIC)
    )
    check_partitions(settings, bootstrap)
    metrics = Metrics()
    port = serve(
        metrics,
        options.resolved_metrics_port(settings),
        settings.metrics_address,
        "--metrics-port or BACKBONE_PROCESSOR_METRICS_PORT",
    )
    metrics.worker_up.labels("processor").set(1)
    app, _runtime = build_worker(settings, options, metrics, journey_engine, kpi_engine)
    log.info(
        "processor starting",
        extra={
            "worker_id": options.worker_id,
            "stock": options.stock,
            "metrics_port": port,
            "bootstrap": bootstrap,
        },
    )
    print(f"processor worker {options.worker_id}: metrics on 127.0.0.1:{port}", flush=True)
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
