"""The bench's helpers: CPU accounting per process (descendants included) and per event; fresh run folders."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from backbone.bench import fresh_dir
from backbone.bench_freshness import Attempt, CpuMeter, CpuUse, cores_needed, cpu_row
from backbone.bench_peers.jobs import cpu_seconds

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
