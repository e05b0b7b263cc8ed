"""How the processors' Faust apps build their Kafka consumer (no broker needed: nothing starts)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from backbone.config import load_settings
from stream_processors.app import create_app
from stream_processors.faust_fast import FETCH_MAX_WAIT_MS, ShortFetchWaitConsumerThread


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
