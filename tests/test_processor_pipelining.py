"""Pipelined delivery: the next batch is computed while the broker acknowledges the last one.

What must hold (stream_processors/worker.py): a batch's outputs are sent only after the delivery
before them is acknowledged (outputs leave in computed order, at most one delivery in flight);
a batch's changelog is sent only after its outputs are acknowledged, and its acknowledgement
rides on the next flush (sent again first if that flush fails); the state is the same as without
pipelining; every offset commit first awaits the delivery in flight and the last changelog (the
consumer's commit barrier), so no offset is committed ahead of its outputs and state.

Real engine, store and runtime; the Faust table is a dict and the producer a stand-in whose
flush blocks until the test releases it, so "in flight" is a state the test controls. The
reference is the same engine and runtime without pipelining.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any

from engine_fixtures import HOUR, T0, Feeder, export_case, missions
from test_processor_isolation import PARTITIONS, Event, records
from test_processor_isolation import runtime as isolation_runtime

from backbone.config import Settings
from stream_processors.api import InputMessage, Outputs
from stream_processors.app import create_app
from stream_processors.clock import FixedClock
from stream_processors.journeys import JourneyEngine
from stream_processors.outputs import OutputDeliveryError
from stream_processors.state import PartitionedTableStore
from stream_processors.worker import ProcessorRuntime


class GatedProducer:
    """Records sends and flushes; each flush waits for :meth:`release` (it runs in a thread)."""

    def __init__(self, gated: bool) -> None:
        self.sent = Outputs()
        self.log: list[str] = []
        self.gated = gated
        self._gate = threading.Semaphore(0)

    def send(self, outputs: Outputs) -> int:
        self.log.append(f"send {len(outputs.stage_records)}")
        self.sent.extend(outputs)
        return len(outputs)

    def send_changelog(self, records: list[Any]) -> int:
        self.log.append(f"changelog {len(records)}")
        return len(records)

    def flush(self) -> Counter[str]:
        if self.gated:
            self._gate.acquire(timeout=30)
        self.log.append("flushed")
        return Counter()

    def release(self) -> None:
        self._gate.release()


def runtime(pipelining: bool) -> tuple[ProcessorRuntime, PartitionedTableStore, GatedProducer]:
    engine = JourneyEngine(missions(), Settings(grace_ms=HOUR), wall_clock=FixedClock(T0))
    rt, store, producer = isolation_runtime(engine, GatedProducer(gated=pipelining))
    rt.pipelining = pipelining
    return rt, store, producer


def batches() -> list[list[InputMessage]]:
    events = [e for i in range(4) for e in export_case(f"CASE-{i}", T0 + i * HOUR)]
    feeder = Feeder(PARTITIONS)
    starts = feeder.messages([e for e in events if e[1]["status"] in ("FILED", "CLEARED")])
    ends = feeder.messages([e for e in events if e[1]["status"] not in ("FILED", "CLEARED")])
    return [starts, ends]


def test_the_next_batch_is_computed_while_the_last_is_in_flight_and_sent_after_it() -> None:
    first, second = batches()

    async def scenario() -> tuple[list[str], list[str], ProcessorRuntime]:
        rt, store, producer = runtime(pipelining=True)
        await rt.on_journey_events([Event(m) for m in first])
        await asyncio.sleep(0.05)
        # The first batch's flush is in flight: the handler returned, its state is applied.
        assert producer.log == [f"send {len(producer.sent.stage_records)}"]
        assert producer.sent.stage_records  # the starts opened stage instances
        assert rt._in_flight is not None and not rt._in_flight.done()
        assert set(store.local) == {f"CASE-{i}" for i in range(4)}
        second_done = asyncio.ensure_future(rt.on_journey_events([Event(m) for m in second]))
        await asyncio.sleep(0.2)
        # The second batch was computed (it waits in settle) but not sent before the first landed.
        assert not second_done.done()
        before_release = list(producer.log)
        producer.release()
        await asyncio.sleep(0.05)
        # The first batch's outputs are acknowledged and its changelog sent: the second batch
        # goes out at once, and its flush also lands that changelog (no round trip of its own).
        await asyncio.wait_for(second_done, 1)
        assert [entry.split()[0] for entry in producer.log] == ["send", "flushed", "changelog", "send"]
        barrier = asyncio.ensure_future(rt.commit_barrier())
        await asyncio.sleep(0.05)
        assert not barrier.done()  # a commit waits for the delivery in flight...
        producer.release()
        await asyncio.sleep(0.05)
        assert not barrier.done()  # ...then for the changelog that delivery sent last
        producer.release()
        await barrier
        return before_release, producer.log, rt

    before_release, log, rt = asyncio.run(scenario())
    assert len(before_release) == 1
    # Each delivery: its outputs acknowledged before its state changelog is even sent (a worker
    # killed in between must not leave state stored whose outputs are lost); the barrier's own
    # flush (nothing new to send) lands the last changelog.
    assert [entry.split()[0] for entry in log] == [
        *["send", "flushed", "changelog"] * 2,
        "send",
        "flushed",
    ]
    assert rt._in_flight is None and not rt._changelog_unacked


class FailingOnceProducer(GatedProducer):
    """The second flush fails (a record not delivered), as librdkafka reports a lost record."""

    def __init__(self) -> None:
        super().__init__(gated=False)
        self.flushes = 0

    def flush(self) -> Counter[str]:
        self.flushes += 1
        if self.flushes == 2:
            self.log.append("failed")
            raise OutputDeliveryError("1 output records not delivered: test")
        return super().flush()


def test_a_failed_flush_sends_the_unacknowledged_changelog_again_before_anything_newer() -> None:
    first, second = batches()

    async def scenario() -> list[str]:
        engine = JourneyEngine(missions(), Settings(grace_ms=HOUR), wall_clock=FixedClock(T0))
        rt, _, producer = isolation_runtime(engine, FailingOnceProducer())
        rt.pipelining = True
        await rt.on_journey_events([Event(m) for m in first])
        await rt.on_journey_events([Event(m) for m in second])
        await rt.commit_barrier()
        return producer.log

    log = asyncio.run(scenario())
    changelogs = [entry for entry in log if entry.startswith("changelog")]
    first_changelog, second_changelog = changelogs[0], changelogs[-1]
    # The second flush failed: it may have lost the first batch's changelog as well as the second
    # batch's outputs, so the retry sends that changelog again first, then the outputs; only
    # after they are acknowledged does the second batch's changelog go out.
    second_send = log[3]
    assert [log[0].split()[0], *log[1:3]] == ["send", "flushed", first_changelog]
    assert log[3:] == [
        second_send,
        "failed",
        first_changelog,
        second_send,
        "flushed",
        second_changelog,
        "send 0",
        "flushed",
    ]


def test_pipelined_outputs_and_state_equal_the_unpipelined_ones() -> None:
    same = batches()

    async def run(pipelining: bool) -> tuple[Outputs, dict[str, Any]]:
        rt, store, producer = runtime(pipelining)
        for batch in same:
            producer.release()  # its outputs' flush
            producer.release()  # its changelog's flush (unpipelined) or the barrier's
            await rt.on_journey_events([Event(m) for m in batch])
        await rt.commit_barrier()
        return producer.sent, dict(store.local)

    piped, piped_state = asyncio.run(run(True))
    plain, plain_state = asyncio.run(run(False))
    assert len(records(plain)) == 4 * 4
    assert records(piped) == records(plain)
    assert piped.facts == plain.facts
    assert piped_state == plain_state


def test_every_commit_of_the_fast_consumer_first_awaits_the_barrier() -> None:
    async def scenario() -> list[str]:
        app = create_app(Settings(kafka_bootstrap_servers="127.0.0.1:1"), app_id="barrier-test")
        order: list[str] = []
        released = asyncio.Event()

        async def barrier() -> None:
            order.append("barrier entered")
            await released.wait()
            order.append("barrier passed")

        app.transport.commit_barrier = barrier  # type: ignore[attr-defined]
        commit = asyncio.ensure_future(app.consumer._handle_attached({}))
        await asyncio.sleep(0.05)
        assert not commit.done()  # the commit waits for the delivery in flight
        released.set()
        await commit
        order.append("commit went on")
        return order

    assert asyncio.run(scenario()) == ["barrier entered", "barrier passed", "commit went on"]


def test_the_worker_pipelines_only_with_the_fast_consumer(tmp_path: Any) -> None:
    from stream_processors.worker import WorkerOptions, build_worker

    settings = Settings(kafka_bootstrap_servers="127.0.0.1:1", data_dir=tmp_path)
    app, rt = build_worker(settings, WorkerOptions(app_id="pipe-test"))
    assert rt.pipelining and app.transport.commit_barrier == rt.commit_barrier  # type: ignore[attr-defined]
    stock_app, stock_rt = build_worker(settings, WorkerOptions(app_id="pipe-test-stock", stock=True))
    assert not stock_rt.pipelining
    assert getattr(stock_app.transport, "commit_barrier", None) is None
