"""What the processor worker reports to Prometheus, computed from batches and engine outputs.

All metric objects come from the one catalog, :class:`backbone.metrics.Metrics`. This module
only decides what to observe and when, keeping the per-event path free of metric calls: one
observation per batch (sizes, time, latency of the batch's oldest message) plus the counters
the engines already aggregated. Live KPI gauges are labelled (mission, stage, agency,
province); the engines' groups also have a journey and a port, so groups that share a label
set are summed here.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from backbone.metrics import Metrics
from stream_processors.api import InputMessage, Outputs
from stream_processors.missions import Window

SLA_GAUGE_WINDOW = "1h"
"""The KPI window whose newest row feeds the SLA-compliance gauge, in the shipped missions file."""
SLA_GAUGE_WINDOW_MS = 3_600_000
"""The window length the Prometheus rule ``SlaComplianceBelowTarget`` is written for (it pages on a
window that ended within the last 2 h)."""


def sla_gauge_window(windows: Sequence[Window]) -> str | None:
    """The missions file's window that feeds the SLA gauge: the hour-long one, chosen by size so a
    renamed window still feeds it (QA: renaming ``1h`` silenced the rule); without one, the
    shortest longer window, else the longest. None only for a file without windows."""
    if not windows:
        return None
    hour = [w for w in windows if w.size_ms == SLA_GAUGE_WINDOW_MS]
    if hour:  # several: the named one, else the finest hop
        return min(hour, key=lambda w: (w.name != SLA_GAUGE_WINDOW, w.step_ms)).name
    longer = [w for w in windows if w.size_ms > SLA_GAUGE_WINDOW_MS]
    if longer:
        return min(longer, key=lambda w: (w.size_ms, w.step_ms)).name
    return max(windows, key=lambda w: (w.size_ms, -w.step_ms)).name


def _labels(row: dict[str, Any]) -> tuple[str, str, str, str]:
    return (row["mission"], row["stage"], row["owner_agency"], row["province"])


class WorkerMetrics:
    """Per-batch observations and live KPI gauges of one worker."""

    def __init__(self, metrics: Metrics, sla_window: str | None = SLA_GAUGE_WINDOW) -> None:
        self.m = metrics
        self.sla_window = sla_window
        """The KPI window feeding the SLA gauge (:func:`sla_gauge_window` of the missions file)."""
        self._backlog: dict[str, dict[str, Any]] = {}
        self._backlog_labels: set[tuple[str, str, str, str]] = set()
        self._sla: dict[tuple[str, str, str, str], tuple[int, int, dict[str, tuple[int, int]]]] = {}

    def batch_in(self, component: str, batch: Sequence[InputMessage], seconds: float) -> None:
        m = self.m
        m.batch_size.labels(component).observe(len(batch))
        m.processing_seconds.labels(component).observe(seconds)
        if component != "journeys":  # hop 2: how long the facts waited for it (the hop's own lag)
            stamps = [msg.timestamp_ms for msg in batch if msg.timestamp_ms is not None]
            if stamps:
                lag_s = max(0.0, time.time() - min(stamps) / 1000)
                m.end_to_end_seconds.labels(batch[0].topic).observe(lag_s)
            return
        per_topic: dict[str, int] = defaultdict(int)
        oldest: dict[str, int] = {}
        for msg in batch:
            per_topic[msg.topic] += 1
            ts = msg.timestamp_ms
            if ts is not None and (msg.topic not in oldest or ts < oldest[msg.topic]):
                oldest[msg.topic] = ts
        now_ms = time.time() * 1000
        for topic, n in per_topic.items():
            m.events_in.labels(topic).inc(n)
        for topic, ts in oldest.items():
            m.end_to_end_seconds.labels(topic).observe(max(0.0, (now_ms - ts) / 1000))

    def flushed(self, component: str, seconds: float) -> None:
        self.m.flush_seconds.labels(component).observe(seconds)

    def outputs(self, outputs: Outputs, delivered: dict[str, int], now_ms: int) -> None:
        m = self.m
        for topic, n in delivered.items():
            m.records_out.labels(topic).inc(n)
        for (topic, agency), n in outputs.valid_events.items():
            m.events_valid.labels(topic, agency).inc(n)
        for topic, n in outputs.duplicates.items():
            m.duplicates.labels(topic).inc(n)
        for (mission, stage), n in outputs.late_events.items():
            m.late_events.labels(mission, stage).inc(n)
        for dl in outputs.dead_letters:
            m.dead_letters.labels(dl["source"], dl["topic"], dl["reason"]).inc()
        for alert in outputs.alerts:
            m.alerts_emitted.labels(alert["kind"], alert["state"]).inc()
        for row in outputs.feed_freshness:
            m.feed_last_event.labels(row["agency"]).set(row["last_occurred_at"] / 1000)
        if outputs.backlog:
            for row in outputs.backlog:
                self._backlog[row["backlog_id"]] = row
            self._refresh_backlog(now_ms)
        window = self.sla_window
        folded = {self._fold_sla(row) for row in outputs.kpi_windows if row["window"] == window}
        for labels in folded:  # once per label set, not per row: a replay's last tick has ~40k rows
            if labels is not None:
                self._set_sla(labels)

    def refresh_backlog_age(self, now_ms: int) -> None:
        """Oldest-wait gauges age with the clock even when no backlog row changes."""
        if self._backlog:
            self._refresh_backlog(now_ms)

    def _refresh_backlog(self, now_ms: int) -> None:
        open_cases: dict[tuple[str, str, str, str], int] = defaultdict(int)
        oldest: dict[tuple[str, str, str, str], int] = {}
        money: dict[tuple[str, str, str, str], int] = defaultdict(int)
        for row in self._backlog.values():
            labels = _labels(row)
            open_cases[labels] += row["open_cases"]
            started = row.get("oldest_started_at")
            if (
                started is not None
                and row["open_cases"]
                and (labels not in oldest or started < oldest[labels])
            ):
                oldest[labels] = started
            if row.get("amount_pkr_open") is not None:
                money[labels] += row["amount_pkr_open"]
        m = self.m
        for labels in set(open_cases) | self._backlog_labels:
            m.backlog_open.labels(*labels).set(open_cases.get(labels, 0))
            started = oldest.get(labels)
            m.backlog_oldest_wait.labels(*labels).set(max(0.0, (now_ms - started) / 1000) if started else 0.0)
            if labels in money:
                m.money_locked.labels(*labels).set(money[labels] / 100)
        self._backlog_labels |= set(open_cases)

    def _fold_sla(self, row: dict[str, Any]) -> tuple[str, str, str, str] | None:
        """Keep ``row`` if it is of its label set's newest window; returns the labels it changed."""
        labels = _labels(row)
        start = row["window_start"]
        current = self._sla.get(labels)
        if current is None or start > current[0]:
            current = (start, row["window_end"], {})
            self._sla[labels] = current
        elif start < current[0]:
            return None
        current[2][row["kpi_id"]] = (row["sla_met"], row["completions"])
        return labels

    def _set_sla(self, labels: tuple[str, str, str, str]) -> None:
        _, end, rows = self._sla[labels]
        met = sum(v[0] for v in rows.values())
        completions = sum(v[1] for v in rows.values())
        if completions:
            self.m.sla_compliance.labels(*labels).set(met / completions)
            self.m.sla_window_completions.labels(*labels).set(completions)
            self.m.sla_window_end.labels(*labels).set(end / 1000)
