"""The bench's helpers: CPU per process and per event, fresh run folders, the live-time stamping."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from backbone.bench import fresh_dir
from backbone.bench_freshness import (
    MEASURED_TABLES,
    Attempt,
    CpuMeter,
    CpuUse,
    LiveStamper,
    cores_needed,
    cpu_row,
    first_sends,
    keep_every_version,
    live_events,
)
from backbone.bench_peers.jobs import cpu_seconds
from backbone.config import load_settings
from schemas.codec import Codec
from sinks.client import open_client

BUSY = "import time\nend = time.process_time() + {s}\nwhile time.process_time() < end: pass\ntime.sleep(30)"


def test_cpu_seconds_counts_a_process_and_its_live_children() -> None:
    """A parent that only waits, with a child that burns 0.4 s of CPU: the child's time counts
    while it is alive (it is not reaped yet, so the parent's own counters do not hold it)."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            f"subprocess.Popen([sys.executable, '-c', {BUSY.format(s=0.4)!r}])\n"
            "time.sleep(30)",
        ]
    )
    try:
        deadline = time.monotonic() + 20
        while cpu_seconds(parent.pid) < 0.4 and time.monotonic() < deadline:
            time.sleep(0.05)
        measured = cpu_seconds(parent.pid)
        assert 0.4 <= measured < 0.4 + 2.0  # the busy loop, plus two interpreters starting
    finally:
        subprocess.run(["pkill", "-P", str(parent.pid)], check=False)
        parent.kill()
        parent.wait()
    assert cpu_seconds(parent.pid) == 0.0  # gone: nothing to read, no error


def test_meter_divides_each_component_by_the_events_it_handled() -> None:
    clock = {"cpu": 1.0, "events": 100.0}
    meter = CpuMeter({"processor": (lambda: clock["cpu"], lambda: clock["events"])})
    clock.update(cpu=1.5, events=10_100.0)
    use = meter.stop()["processor"]
    assert use == CpuUse(seconds=0.5, events=10_000.0)
    assert use.us_per_event == pytest.approx(50.0)
    assert CpuUse(0.1, 0).us_per_event != CpuUse(0.1, 0).us_per_event  # nan: no events handled


def test_cpu_row_reports_cores_used_and_needed() -> None:
    cpu = {
        "processor": CpuUse(seconds=10.0, events=100_000),  # 100 us/event
        "sink": CpuUse(seconds=5.0, events=100_000),  # 50
        "broker": CpuUse(seconds=5.0, events=100_000),  # 50
        "publisher": CpuUse(seconds=5.0, events=100_000),  # 50
    }
    assert cores_needed(cpu, 10_000) == pytest.approx(2.5)
    attempt = Attempt(8_000, 100_000, 12.5, 0, 0, [], [], 0.0, cpu)
    row = cpu_row(attempt, 10_000)
    assert row.value == pytest.approx(25.0 / 12.5)
    assert row.unit == "cores"
    assert "processor 100, sink 50, broker 50, publisher 50" in row.notes
    assert "10,000 ev/s needs 2.50 cores" in row.notes
    assert row.extra["processor_us_per_event"] == pytest.approx(100.0)


def test_fresh_dir_empties_what_an_earlier_run_left(tmp_path: Path) -> None:
    """A second ``backbone bench`` must not find the first one's chdb database or worker state."""
    old = tmp_path / "freshness" / "attempt1-10000" / "data" / "chdb"
    old.mkdir(parents=True)
    (old / "events.bin").write_bytes(b"rows of an earlier run")
    root = fresh_dir(tmp_path / "freshness")
    assert root.is_dir() and list(root.iterdir()) == []
    assert list(fresh_dir(tmp_path / "new" / "folder").iterdir()) == []


def test_live_time_stamps_occurred_and_published_at_with_the_send_time() -> None:
    """The freshness bench's live-time workload: each event happens when it is sent; the bytes
    are patched in place (the fast path) and decode to exactly the re-encoded record."""
    codec = Codec()
    events = first_sends(live_events(400, seed=3, now_ms=1_790_000_000_000))
    assert len({e.raw["event_id"] for e in events}) == len(events)
    live, replayed = LiveStamper(events, codec, live_time=True), LiveStamper(events, codec)
    patched = sum(1 for *_, offsets in live.encoded if offsets)
    assert patched >= 0.95 * len(events)
    send_ms = 1_790_000_123_456
    for i, e in enumerate(events):
        topic, key, value = live.stamped(i, send_ms)
        assert key == e.raw["case_id"].encode()
        assert codec.decode(topic, value) == codec.decode(
            topic, codec.encode(topic, {**e.raw, "published_at": send_ms, "occurred_at": send_ms})
        )
        kept = codec.decode(topic, replayed.stamped(i, send_ms)[2])
        assert kept["occurred_at"] == codec.decode(topic, codec.encode(topic, e.raw))["occurred_at"]
        assert kept["published_at"] == send_ms
    # a send time of another varint length takes the encode path, with the same result
    topic, _, value = live.stamped(0, 5)
    assert codec.decode(topic, value)["occurred_at"] == codec.decode(topic, value)["published_at"]


def test_the_freshness_database_keeps_every_version_of_the_measured_tables(tmp_path: Path) -> None:
    """Merges of the ReplacingMergeTree tables would drop the first row that showed a completion."""
    settings = load_settings(data_dir=tmp_path)
    keep_every_version(settings)
    keep_every_version(settings)  # a second run (the sink migrates again) changes nothing
    client = open_client(settings)
    try:
        for table in MEASURED_TABLES:
            engine = client.query(
                "SELECT engine_full FROM system.tables "
                "WHERE database = currentDatabase() AND name = {t:String}",
                parameters={"t": table},
            ).result_rows[0][0]
            assert "ReplacingMergeTree" in engine
            assert "max_bytes_to_merge_at_max_space_in_pool = 1" in engine, engine
            assert "max_bytes_to_merge_at_min_space_in_pool = 1" in engine, engine
    finally:
        client.close()
