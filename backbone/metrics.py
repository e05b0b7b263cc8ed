"""The one catalog of Prometheus metrics. Every metric the project exports is declared here.

Labels are bounded sets (topic, agency, stage, province, mission, reason, table): never a
case id or event id. Components build a :class:`Metrics` on their own ``CollectorRegistry``
(tests inject a fresh one) and serve it with :func:`serve`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

if TYPE_CHECKING:
    from stream_processors.missions import Missions

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)
_BATCH_BUCKETS = (1, 10, 50, 100, 500, 1000, 2000, 5000, 10000, 50000)
GROUP_LABELS = ("mission", "stage", "agency", "province")


class Metrics:
    """All metrics, registered on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # -- processors ----------------------------------------------------------------
        self.events_in = Counter(
            "backbone_events_in_total", "Events read from agency topics.", ["topic"], registry=r
        )
        self.events_valid = Counter(
            "backbone_events_valid_total",
            "Valid, distinct events processed.",
            ["topic", "agency"],
            registry=r,
        )
        self.duplicates = Counter(
            "backbone_duplicate_events_total",
            "Events ignored as duplicates (same event_id).",
            ["topic"],
            registry=r,
        )
        self.late_events = Counter(
            "backbone_late_events_total",
            "Completions that arrived after their window closed.",
            ["mission", "stage"],
            registry=r,
        )
        self.dead_letters = Counter(
            "backbone_dead_letters_total",
            "Records parked in the dead-letter topic/table.",
            ["source", "topic", "reason"],
            registry=r,
        )
        self.records_out = Counter(
            "backbone_records_out_total", "Records produced to output topics.", ["topic"], registry=r
        )
        self.processing_seconds = Histogram(
            "backbone_batch_processing_seconds",
            "Time to process one batch.",
            ["component"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.flush_seconds = Histogram(
            "backbone_output_flush_seconds",
            "Wait for the broker to acknowledge one batch's outputs and state changelog.",
            ["component"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end_seconds = Histogram(
            "backbone_end_to_end_latency_seconds",
            "Message timestamp to processed: agency events per topic; on the facts topic, the KPI hop's lag.",
            ["topic"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "backbone_batch_size",
            "Events or rows per batch.",
            ["component"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "backbone_consumer_lag",
            "Messages behind the high watermark (needs real Kafka watermarks).",
            ["component", "topic", "partition"],
            registry=r,
        )
        self.alerts_emitted = Counter(
            "backbone_alerts_emitted_total", "Alert transitions emitted.", ["kind", "state"], registry=r
        )
        # -- live KPI gauges -----------------------------------------------------------
        self.sla_compliance = Gauge(
            "backbone_kpi_sla_compliance_ratio",
            "SLA compliance over the last closed 1h window.",
            GROUP_LABELS,
            registry=r,
        )
        self.sla_window_completions = Gauge(
            "backbone_kpi_sla_window_completions",
            "Completions in the window behind backbone_kpi_sla_compliance_ratio (a page needs enough).",
            GROUP_LABELS,
            registry=r,
        )
        self.sla_window_end = Gauge(
            "backbone_kpi_sla_window_end_timestamp_seconds",
            "End (event time) of the window behind backbone_kpi_sla_compliance_ratio (pages need it recent).",
            GROUP_LABELS,
            registry=r,
        )
        self.backlog_open = Gauge(
            "backbone_backlog_open_cases", "Cases open at a stage now.", GROUP_LABELS, registry=r
        )
        self.backlog_oldest_wait = Gauge(
            "backbone_backlog_oldest_wait_seconds",
            "How long the oldest open case has waited.",
            GROUP_LABELS,
            registry=r,
        )
        self.money_locked = Gauge(
            "backbone_money_locked_pkr", "PKR locked in open cases (rebates).", GROUP_LABELS, registry=r
        )
        self.feed_last_event = Gauge(
            "backbone_feed_last_event_timestamp_seconds",
            "occurred_at of the newest event per agency.",
            ["agency"],
            registry=r,
        )
        self.timer_batches = Gauge(
            "backbone_processor_timer_batches",
            "Batches the worker had processed when its last sweep+tick ran (a replay's outputs "
            "are all out once this equals the batch count).",
            registry=r,
        )
        self.assignments = Counter(
            "backbone_processor_assignments_total",
            "Partition assignments the worker completed: 1 for a worker no rebalance disturbed "
            "(more while it alone runs flat out would mean starved heartbeats).",
            registry=r,
        )
        self.worker_up = Gauge("backbone_worker_up", "1 while the component runs.", ["component"], registry=r)
        # -- sink ----------------------------------------------------------------------
        self.sink_rows = Counter(
            "backbone_sink_rows_total", "Rows inserted into ClickHouse.", ["table"], registry=r
        )
        self.sink_batches = Counter(
            "backbone_sink_batches_total", "Batches inserted into ClickHouse.", ["table"], registry=r
        )
        self.sink_errors = Counter(
            "backbone_sink_errors_total",
            "Insert attempts that failed (retried).",
            ["table", "error"],
            registry=r,
        )
        self.sink_last_commit = Gauge(
            "backbone_sink_last_commit_timestamp_seconds", "When the sink last committed offsets.", registry=r
        )
        self.sink_pending_rows = Gauge(
            "backbone_sink_pending_rows", "Rows buffered, not yet in ClickHouse.", registry=r
        )
        self.sink_skipped = Counter(
            "backbone_sink_skipped_events_total",
            "Agency events the sink skips: the processors dead-letter them (undecodable, invalid).",
            ["topic", "reason"],
            registry=r,
        )
        # -- alert delivery ------------------------------------------------------------
        self.alerts_delivered = Counter(
            "backbone_alerts_delivered_total", "Alerts posted to Alertmanager.", ["kind", "state"], registry=r
        )
        self.alert_delivery_errors = Counter(
            "backbone_alert_delivery_errors_total", "Failed posts to Alertmanager (retried).", registry=r
        )
        self.alerts_firing = Gauge(
            "backbone_alerts_firing",
            "Alerts the forwarder holds firing (re-posted before their lease ends).",
            registry=r,
        )
        self.alert_records_rejected = Counter(
            "backbone_alert_records_rejected_total",
            "Alert records parked as dead letters, not delivered.",
            ["reason"],
            registry=r,
        )
        # -- mission targets (static, from the missions file; joined by the Prometheus rules) --
        self.sla_target = Gauge(
            "backbone_kpi_sla_target_ratio",
            "Minimum SLA compliance a mission target sets for a stage.",
            ["mission", "stage"],
            registry=r,
        )
        self.min_completions = Gauge(
            "backbone_kpi_min_completions",
            "Fewest completions a mission target needs in a window to judge a stage.",
            ["mission", "stage"],
            registry=r,
        )
        self.stage_sla = Gauge(
            "backbone_stage_sla_seconds",
            "SLA of a stage from the missions file.",
            ["mission", "stage"],
            registry=r,
        )

    def publish_missions(self, missions: Missions) -> None:
        """Export each stage's SLA and target from the missions file so that Prometheus rules
        compare live gauges with the file's numbers instead of copies of them."""
        for ref in missions.stages:
            self.stage_sla.labels(ref.mission.id, ref.stage.id).set(ref.stage.sla_ms / 1000)
        for mission, target, _ref in missions.targets:
            self.sla_target.labels(mission.id, target.stage).set(target.min_sla_compliance)
            self.min_completions.labels(mission.id, target.stage).set(target.min_completions)


class MetricsPortUnavailable(RuntimeError):
    """The metrics endpoint cannot bind its port; the message names the port and the setting."""


def serve(metrics: Metrics, port: int, addr: str = "127.0.0.1", setting: str = "the metrics port") -> int:
    """Serve ``/metrics`` on ``addr:port`` (port 0: a free one); returns the bound port.

    ``addr`` is ``settings.metrics_address``: loopback by default, ``0.0.0.0`` in containers.
    ``setting`` names what chose the port, for the error when it is taken (another component or
    a second ``backbone up`` on the same machine).
    """
    try:
        server, _thread = start_http_server(port, addr=addr, registry=metrics.registry)
    except OSError as exc:
        raise MetricsPortUnavailable(
            f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}; choose another port with "
            f"{setting} (0: any free port)"
        ) from exc
    return int(server.server_address[1])
