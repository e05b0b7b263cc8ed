"""The worker's latency histogram (input events by topic, and the facts hop's own wait) and its SLA
gauges."""

from __future__ import annotations

import time

from prometheus_client import generate_latest

from backbone.bench_peers.jobs import parse_metrics
from backbone.metrics import Metrics
from stream_processors.api import FACTS_TOPIC, InputMessage, Outputs
from stream_processors.worker_metrics import WorkerMetrics

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
