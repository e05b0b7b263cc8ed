"""Sink fault tests: kill -9 mid-batch and restart; ClickHouse unavailable for a while; SIGINT flushes.

Each ends with exactly the expected rows. ClickHouse "unavailable" is simulated with a wrapper
around the real chdb client in the insert path (chdb runs inside the sink's process and cannot
be stopped on its own): while it is "down", every insert raises clickhouse-connect's
``OperationalError``, as a refused HTTP connection to a ClickHouse server does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import OperationalError
from sink_fixtures import (  # noqa: F401
    ALL_TOPICS,
    SinkThread,
    agency_events,
    committed_total,
    private_broker,
    produce,
    sink_settings,
    stage_record,
    wait_for,
)

from backbone.config import Settings
from backbone.embedded.broker import free_port
from schemas import contracts
from sinks.client import open_client
from sinks.migrate import migrate

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent


class FlakyClickHouse:
    """The real client, except that inserts fail with a connection error while ``down`` is set."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.down = threading.Event()
        self.refused = 0

    def insert_arrow(self, table: str, arrow_table: pa.Table) -> Any:
        if self.down.is_set():
            self.refused += 1
            raise OperationalError("injected: connection refused by ClickHouse (HTTP 8123)")
        return self.client.insert_arrow(table, arrow_table)


def _distinct_events(client: Client) -> set[str]:
    return {r[0] for r in client.query("SELECT toString(event_id) FROM events_distinct").result_rows}


def test_clickhouse_unavailable_then_back_ends_with_exactly_the_expected_rows(
    sink_settings: Settings,  # noqa: F811
) -> None:
    client = open_client(sink_settings)
    migrate(client)
    flaky = FlakyClickHouse(client)
    flaky.down.set()
    events = agency_events(150, seed=11)  # ~570 events
    group = f"sink-{uuid.uuid4().hex[:8]}"
    try:
        with SinkThread(sink_settings, flaky, group, max_pending_rows=50, consume_batch=20) as sink:
            produce(sink_settings, events)
            wait_for(lambda: flaky.refused >= 4, 30, "inserts to be refused while ClickHouse is down")
            time.sleep(1.0)
            # nothing committed while ClickHouse is down, and the consumer stopped reading (paused):
            assert committed_total(sink_settings, group, ALL_TOPICS) == 0
            assert sink.sink._pending <= 50 + 20, "the sink kept buffering while ClickHouse was down"
            assert sink.metric("backbone_sink_errors_total", table="events", error="unavailable") >= 4
            flaky.down.clear()
            sink.wait_committed(len(events))
        assert _distinct_events(client) == {e["event_id"] for _, e in events}
        client.command("OPTIMIZE TABLE events FINAL")
        assert client.query("SELECT count() FROM events").result_rows == [(len(events),)]
    finally:
        client.close()


def _metric(port: int, name: str) -> float | None:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def _start_sink(tmp_path: Path, group: str, port: int, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BACKBONE_SINK_METRICS_PORT": str(port)}
    log = open(tmp_path / f"sink-{group}-{port}.log", "ab")  # noqa: SIM115 - the child's for its life
    return subprocess.Popen(
        [sys.executable, "-m", "backbone", "sink", "run", "--group", group, *extra],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        start_new_session=True,
    )


def _produce_slowly(
    settings: Settings, records: list[tuple[str, dict[str, Any]]], chunks: int, pause_s: float
) -> None:
    size = -(-len(records) // chunks)
    for i in range(0, len(records), size):
        produce(settings, records[i : i + size])
        time.sleep(pause_s)


def test_kill_9_mid_batch_and_restart_ends_with_exactly_the_expected_rows(
    sink_settings: Settings,  # noqa: F811
    tmp_path: Path,
) -> None:
    events = agency_events(400, seed=21)  # ~1,500 events
    stages = [
        (contracts.STAGE_RECORDS, stage_record(f"K{i}", v, s))
        for i in range(200)
        for v, s in ((1, "OPEN"), (2, "CLOSED"))
    ]
    records = events + stages
    group = f"sink-{uuid.uuid4().hex[:8]}"
    port = free_port()
    sink = _start_sink(tmp_path, group, port, "--max-batch-age", "0.7")
    producer = threading.Thread(target=_produce_slowly, args=(sink_settings, records, 30, 0.2))
    try:
        producer.start()
        # kill -9 once the sink has committed some batches, while more are read and buffered
        wait_for(lambda: committed_total(sink_settings, group, ALL_TOPICS) > 0, 60, "a first commit")
        wait_for(
            lambda: (_metric(port, "backbone_sink_pending_rows") or 0) > 0, 30, "rows buffered, not inserted"
        )
        sink.send_signal(signal.SIGKILL)
        assert sink.wait(10) == -signal.SIGKILL
        killed_at = committed_total(sink_settings, group, ALL_TOPICS)
        producer.join(60)
        assert killed_at < len(records), "the kill came after everything was committed: not mid-stream"

        port = free_port()
        sink = _start_sink(tmp_path, group, port, "--max-batch-age", "0.5")
        wait_for(
            lambda: committed_total(sink_settings, group, ALL_TOPICS) >= len(records),
            90,
            "all offsets committed",
        )
        sink.send_signal(signal.SIGINT)
        assert sink.wait(30) == 0
    finally:
        if sink.poll() is None:
            sink.kill()
        producer.join(60)

    client = open_client(sink_settings)  # the sink is down: this process may open the chdb path
    try:
        assert _distinct_events(client) == {e["event_id"] for _, e in events}
        latest = client.query("SELECT case_id, state, version FROM stage_records_latest").result_rows
        assert sorted(latest) == sorted((f"K{i}", "CLOSED", 2) for i in range(200))
        for table, expected in (("events", len(events)), ("stage_records", 200)):
            client.command(f"OPTIMIZE TABLE {table} FINAL")
            assert client.query(f"SELECT count() FROM {table}").result_rows == [(expected,)], table
    finally:
        client.close()


def test_sigint_flushes_buffered_rows_and_commits_before_exit(
    sink_settings: Settings,  # noqa: F811
    tmp_path: Path,
) -> None:
    events = agency_events(50, seed=31)
    group = f"sink-{uuid.uuid4().hex[:8]}"
    port = free_port()
    produce(sink_settings, events)
    # batches far larger than the data and an age bound of 10 minutes: only the stop flushes
    sink = _start_sink(tmp_path, group, port, "--max-batch-age", "600", "--batch-rows", "1000000")
    try:
        wait_for(
            lambda: _metric(port, "backbone_sink_pending_rows") == len(events), 60, "every event buffered"
        )
        assert committed_total(sink_settings, group, ALL_TOPICS) == 0
        sink.send_signal(signal.SIGINT)
        assert sink.wait(30) == 0
    finally:
        if sink.poll() is None:
            sink.kill()
    assert committed_total(sink_settings, group, ALL_TOPICS) == len(events)
    client = open_client(sink_settings)
    try:
        assert _distinct_events(client) == {e["event_id"] for _, e in events}
    finally:
        client.close()
