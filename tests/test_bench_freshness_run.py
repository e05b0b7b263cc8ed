"""The freshness section end to end, shortened: real broker, processor and sink for both workloads.

The section takes a minute at its default rate; here it publishes 400 events/s for 4 s per
workload: enough to show that each workload's rows come from real samples, that the CPU of the
four processes is read, and that a folder left by an earlier run is gone (a reused database gave
too few samples on 2026-12-07). ``test_bench_helpers`` checks that the measured tables keep every
version.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backbone import bench_freshness
from backbone.bench import BenchOptions

pytestmark = pytest.mark.integration
RATE = 400


def test_freshness_section_measures_both_workloads_from_real_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench_freshness, "DURATION_S", 4.0)
    opts = BenchOptions(events=0, rate=RATE, partitions=3, out=tmp_path, seed=7)
    (tmp_path / "freshness" / "left-by-an-earlier-run").mkdir(parents=True)
    rows = {r.name: r for r in bench_freshness.run(opts)}
    assert not (tmp_path / "freshness" / "left-by-an-earlier-run").exists()
    for label in ("", "live: "):
        assert rows[f"{label}highest rate sustained (processor + sink)"].value == RATE
        stage = rows[f"{label}stage record: publish -> ClickHouse p50"]
        kpi = rows[f"{label}KPI 1m window: publish -> ClickHouse p50"]
        assert stage.extra["samples"] >= 100, stage
        assert kpi.extra["samples"] >= 50, kpi
        for row in (stage, kpi, rows[f"{label}KPI 1m window: publish -> ClickHouse p99"]):
            assert 0.0 < row.extra["seconds"] < 20.0, row
        cpu = rows[f"{label}CPU of the 4 processes at {RATE:,} ev/s"]
        assert 0.0 < cpu.value < 2.0 * (cpu.ceiling_value or 1)
        for part in ("processor", "sink", "broker", "publisher"):
            assert cpu.extra[f"{part}_us_per_event"] > 0, cpu
