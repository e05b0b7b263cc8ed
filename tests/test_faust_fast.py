"""The processors' Faust classes without a broker: how the consumer is built, how streams batch."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from backbone.config import Settings, load_settings
from stream_processors.app import create_app
from stream_processors.faust_fast import FETCH_MAX_WAIT_MS, FastStream, ShortFetchWaitConsumerThread


@pytest.mark.parametrize("stock", [False, True], ids=["fast", "stock"])
def test_worker_consumer_fetch_waits_at_most_the_short_wait(tmp_path: Path, stock: bool) -> None:
    """Faust passes a literal fetch_max_wait_ms=1500; on Tansu that held each hop's records for
    about that long on a quiet topic. Both transports' worker consumers must use the short wait."""

    async def build() -> int:
        settings = load_settings(kafka_bootstrap_servers="127.0.0.1:1", data_dir=tmp_path)
        app = create_app(settings, app_id="fetch-wait", stock=stock, data_dir=tmp_path / "faust")
        thread = app.consumer._new_consumer_thread()
        assert isinstance(thread, ShortFetchWaitConsumerThread)
        consumer = thread._create_worker_consumer(app.transport)
        try:
            return int(consumer._fetch_max_wait_ms)
        finally:
            await consumer.stop()  # never started: releases the client it created

    assert asyncio.run(build()) == FETCH_MAX_WAIT_MS == 100


def test_take_events_batches_by_size_or_age_and_acks_after_the_batch_is_done() -> None:
    """FastStream.take_events: full batches at once, a partial one ``within`` after its first
    event, and a batch's events acked only when the agent asks for the next batch."""

    async def scenario() -> list[tuple[list[int], float, bool, bool]]:
        app = create_app(Settings(kafka_bootstrap_servers="127.0.0.1:1"), app_id="take-test")
        app.flow_control.resume()
        channel = app.channel()
        stream = app.stream(channel)
        assert isinstance(stream, FastStream)
        for i in range(5):
            await channel.send(value=i)
        seen: list[tuple[list[int], float, bool, bool]] = []
        previous: list[Any] = []
        started = time.monotonic()
        async for batch in stream.take_events(3, within=0.3):
            previous_acked = all(e.message.acked for e in previous)
            seen.append(
                (
                    [e.value for e in batch],
                    time.monotonic() - started,
                    any(e.message.acked for e in batch),
                    previous_acked,
                )
            )
            previous = list(batch)
            if sum(len(values) for values, *_ in seen) >= 5:
                break
        return seen

    (first, at1, acked1, _), (second, at2, acked2, prev_acked) = asyncio.run(scenario())
    assert (first, second) == ([0, 1, 2], [3, 4])
    assert at1 < 0.25  # a full batch does not wait
    assert 0.25 <= at2 < 2.0  # a partial batch waits ``within`` after its first event, then goes
    assert not acked1 and not acked2  # not acked while the agent works on it...
    assert prev_acked  # ...and acked once it asks for the next batch


def test_take_events_survives_the_queue_being_emptied_while_it_yields(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rebalance clears the channel queues; if that happens while the stream yields to the loop
    between its emptiness check and its take, the stream waits for new events instead of crashing
    the agent (``QueueEmpty``), which lost the events it had already taken."""
    real_sleep = asyncio.sleep

    async def scenario() -> list[list[int]]:
        app = create_app(Settings(kafka_bootstrap_servers="127.0.0.1:1"), app_id="take-clear-test")
        app.flow_control.resume()
        channel = app.channel()
        stream = app.stream(channel)
        assert isinstance(stream, FastStream)
        stream.yield_every = 1  # yield before every take: the window the rebalance hits
        rebalanced: list[bool] = []
        later: list[asyncio.Task[None]] = []

        async def sleep_through_a_rebalance(delay: float, *args: Any, **kwargs: Any) -> Any:
            if not rebalanced and sys._getframe(1).f_code.co_name == "_fast_take_events":
                rebalanced.append(True)
                stream.channel.queue.clear()  # the queue the stream reads (a clone's)
                later.append(asyncio.get_running_loop().create_task(send_later()))
            return await real_sleep(delay, *args, **kwargs)

        async def send_later() -> None:  # new events after the rebalance
            await real_sleep(0.05)
            for i in (10, 11):
                await channel.send(value=i)

        monkeypatch.setattr(asyncio, "sleep", sleep_through_a_rebalance)
        for i in range(3):
            await channel.send(value=i)
        batches: list[list[int]] = []
        async for batch in stream.take_events(10, within=0.2):
            batches.append([e.value for e in batch])
            break
        assert rebalanced, "the stream never yielded inside its take loop"
        await asyncio.gather(*later)
        return batches

    assert asyncio.run(scenario()) == [[10, 11]]


def test_the_quiet_monitor_still_tells_faust_when_a_partition_last_took_an_event() -> None:
    """QA pass 5: with no inbound times, Faust's liveness check logged "Stream has not started
    processing TP(topic='customs.clearances.v1', partition=4)" at ERROR for a processed partition."""
    from faust.types import TP

    from stream_processors.faust_fast import QuietMonitor

    monitor = QuietMonitor()
    tp = TP("customs.clearances.v1", 4)
    before = time.monotonic()
    assert monitor.on_stream_event_in(tp, 7, None, None) is None  # type: ignore[arg-type]
    assert monitor.stream_inbound_time[tp] >= before
    assert monitor.events_total == 0  # the rest of the per-event bookkeeping stays off
