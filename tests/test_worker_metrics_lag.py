"""The worker's latency histogram (input events by topic, and the facts hop's own wait) and its SLA
gauges."""

from __future__ import annotations

import time

from prometheus_client import generate_latest

from backbone.bench_peers.jobs import parse_metrics
from backbone.metrics import Metrics
from stream_processors.api import FACTS_TOPIC, InputMessage, Outputs
from stream_processors.missions import Window
from stream_processors.worker_metrics import WorkerMetrics, sla_gauge_window

LAG = "backbone_end_to_end_latency_seconds"


def message(topic: str, age_s: float) -> InputMessage:
    return InputMessage(topic, 0, 0, b"k", b"v", int((time.time() - age_s) * 1000))


def test_fact_batches_observe_their_oldest_fact_but_count_no_input_events() -> None:
    metrics = Metrics()
    WorkerMetrics(metrics).batch_in(
        "kpis", [message(FACTS_TOPIC, 0.3), message(FACTS_TOPIC, 2.0), message(FACTS_TOPIC, 0.1)], 0.01
    )
    counters = parse_metrics(generate_latest(metrics.registry).decode())
    assert counters.total(f"{LAG}_count", topic=FACTS_TOPIC) == 1
    assert 2.0 <= counters.total(f"{LAG}_sum", topic=FACTS_TOPIC) < 3.0  # the oldest, once per batch
    assert counters.total("backbone_events_in_total") == 0  # facts are not agency events


def test_fact_batches_without_timestamps_observe_nothing() -> None:
    metrics = Metrics()
    fact = InputMessage(FACTS_TOPIC, 0, 0, b"k", b"v", None)
    WorkerMetrics(metrics).batch_in("kpis", [fact], 0.01)
    counters = parse_metrics(generate_latest(metrics.registry).decode())
    assert counters.total(f"{LAG}_count", topic=FACTS_TOPIC) == 0


def test_the_sla_gauge_comes_with_its_windows_completions_and_end_for_the_paging_rule() -> None:
    """SlaComplianceBelowTarget pages only on a recent window with enough completions: the worker
    exports both beside the ratio, summed over the group's rows of the newest 1 h window."""
    metrics = Metrics()
    worker = WorkerMetrics(metrics)
    hour = 3_600_000
    row = {
        "window": "1h",
        "mission": "export_competitiveness",
        "stage": "permit_handoff",
        "owner_agency": "SD-TRANSPORT",
        "province": "PK-SD",
    }
    rows = [
        {**row, "kpi_id": "a", "window_start": 0, "window_end": hour, "sla_met": 9, "completions": 10},
        {**row, "kpi_id": "b", "window_start": hour, "window_end": 2 * hour, "sla_met": 1, "completions": 4},
        {**row, "kpi_id": "c", "window_start": hour, "window_end": 2 * hour, "sla_met": 2, "completions": 2},
    ]
    worker.outputs(Outputs(kpi_windows=rows), {}, 2 * hour)
    counters = parse_metrics(generate_latest(metrics.registry).decode())
    assert counters.total("backbone_kpi_sla_compliance_ratio", province="PK-SD") == 0.5  # 3 of 6
    assert counters.total("backbone_kpi_sla_window_completions", province="PK-SD") == 6
    assert counters.total("backbone_kpi_sla_window_end_timestamp_seconds", province="PK-SD") == 7200


def _window(name: str, size: str, hop: str | None = None) -> Window:
    return Window.model_validate({"name": name, "size": size, **({"hop": hop} if hop else {})})


def test_the_sla_gauge_follows_the_hour_long_window_whatever_its_name() -> None:
    """QA pass 5: a missions file that renamed ``1h`` passed ``missions check`` and left the gauge
    (and so SlaComplianceBelowTarget) without a single series."""
    assert (
        sla_gauge_window([_window("1m", "1m"), _window("1h", "1h", "5m"), _window("24h", "24h", "1h")])
        == "1h"
    )
    assert sla_gauge_window([_window("1m", "1m"), _window("hour", "1h", "5m")]) == "hour"
    assert sla_gauge_window([_window("a", "1h"), _window("b", "1h", "5m")]) == "b"  # finer hop
    assert sla_gauge_window([_window("1m", "1m"), _window("6h", "6h", "30m"), _window("1d", "1d")]) == "6h"
    assert sla_gauge_window([_window("1m", "1m"), _window("15m", "15m")]) == "15m"
    assert sla_gauge_window([]) is None

    metrics = Metrics()
    row = {
        "window": "hour",
        "mission": "export_competitiveness",
        "stage": "permit_handoff",
        "owner_agency": "SD-TRANSPORT",
        "province": "PK-SD",
        "kpi_id": "a",
        "window_start": 0,
        "window_end": 3_600_000,
        "sla_met": 3,
        "completions": 4,
    }
    WorkerMetrics(metrics, "hour").outputs(Outputs(kpi_windows=[row]), {}, 3_600_000)
    counters = parse_metrics(generate_latest(metrics.registry).decode())
    assert counters.total("backbone_kpi_sla_compliance_ratio", stage="permit_handoff") == 0.75
