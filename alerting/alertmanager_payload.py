"""Pure mapping of ``backbone.alerts.v1`` records to Alertmanager v2 ``POST /api/v2/alerts`` items.

No I/O here: the forwarder decides when to post, this module decides what an on-call officer
reads. Alertmanager identifies an alert by its label set, so the labels are exactly the bounded
routing dimensions plus ``alert_id`` (which makes each case's alert distinct); everything an
officer reads but does not route on goes into annotations.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

from schemas.alert_wording import human_duration, overdue_shown_ms

ALERTNAME_BY_KIND: dict[str, str] = {
    "CASE_SLA": "CaseSlaBreach",
    "FEED_SILENT": "FeedSilent",
    "KPI_TARGET": "KpiBelowTarget",
}
SEVERITIES = ("warning", "critical")
# Labels copied from the record; empty values are left out (Alertmanager drops them anyway).
_RECORD_LABELS = ("mission", "stage", "agency", "province", "port", "severity", "alert_id")


class AlertRecordError(ValueError):
    """An alert record that cannot become an Alertmanager alert; names the alert and the reason."""

    def __init__(self, alert_id: str, reason: str) -> None:
        super().__init__(f"alert {alert_id or '<no id>'}: {reason}")
        self.alert_id = alert_id
        self.reason = reason


def rfc3339(ms: int) -> str:
    """Epoch millis → the RFC 3339 UTC timestamp Alertmanager expects."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


CASE_ID_PLACEHOLDER = "{case_id}"


def tracker_url(board_url: str, case_id: str) -> str:
    """The case tracker page for one case: ``<board>/#case/<percent-encoded id>``, the form the
    built-in board links itself (``dashboards/board/static/app.js``), or ``board_url`` with
    ``{case_id}`` replaced when it is a template (Grafana's tracker in the compose stack:
    ``.../d/bb-case-tracker?var-case_id={case_id}``).

    Every character of the id is percent-encoded (UTF-8), so any id gives a valid URI;
    Alertmanager refuses an alert whose ``generatorURL`` is not one.
    """
    encoded = quote(case_id, safe="")
    if CASE_ID_PLACEHOLDER in board_url:
        return board_url.replace(CASE_ID_PLACEHOLDER, encoded)
    return f"{board_url.rstrip('/')}/#case/{encoded}"


def board_home(board_url: str) -> str:
    """The board's front page (an alert without a case links there): the template's site root."""
    if CASE_ID_PLACEHOLDER in board_url:
        parts = urlsplit(board_url)
        return f"{parts.scheme}://{parts.netloc}/"
    return f"{board_url.rstrip('/')}/"


def judged_wait_ms(record: dict[str, Any]) -> float | None:
    """How long the case (or feed) had waited when the processors judged it, from the record.

    CASE_SLA: ``value`` (overdue) + ``threshold`` (SLA) = judge time - stage start; FEED_SILENT:
    ``value`` (the silence); RESOLVED: ``ends_at - waiting_since``. These are the numbers the
    record's summary states. None when the record does not carry them (KPI_TARGET).
    """
    waiting_since, value = record.get("waiting_since"), record.get("value")
    if record.get("state") == "RESOLVED" and record.get("ends_at") and waiting_since is not None:
        return float(record["ends_at"] - waiting_since)
    if record.get("kind") == "FEED_SILENT" and value is not None:
        return float(value)
    if record.get("kind") == "CASE_SLA" and value is not None and record.get("threshold") is not None:
        return float(value + record["threshold"])
    return None


def alert_labels(record: dict[str, Any]) -> dict[str, str]:
    """The label set Alertmanager routes, groups and inhibits on (bounded values plus alert_id)."""
    alert_id = str(record.get("alert_id") or "")
    if not alert_id:
        raise AlertRecordError(alert_id, "alert_id is empty")
    kind = record.get("kind")
    if kind not in ALERTNAME_BY_KIND:
        raise AlertRecordError(
            alert_id, f"unknown kind {kind!r}; expected one of {', '.join(ALERTNAME_BY_KIND)}"
        )
    if record.get("severity") not in SEVERITIES:
        raise AlertRecordError(
            alert_id, f"severity {record.get('severity')!r} is not one of {', '.join(SEVERITIES)}"
        )
    labels = {"alertname": ALERTNAME_BY_KIND[kind]}
    for name in _RECORD_LABELS:
        value = record.get(name)
        if value:
            labels[name] = str(value)
    return labels


def _annotations(record: dict[str, Any], board_url: str) -> dict[str, str]:
    """What the officer reads. Every duration is the one judged by the processors (the same
    numbers as the summary), not recomputed at post time: a re-post changes nothing."""
    kind = record["kind"]
    out = {"summary": str(record.get("summary") or ALERTNAME_BY_KIND[kind]), "kind": kind}
    if record.get("journey"):
        out["journey"] = str(record["journey"])
    case_id = record.get("case_id")
    if case_id:
        out["case_id"] = str(case_id)
        out["tracker_url"] = tracker_url(board_url, str(case_id))
    waiting_since = record.get("waiting_since")
    waited = judged_wait_ms(record)
    if waited is not None:
        out["waiting_time"] = human_duration(waited)
    if waiting_since is not None:
        out["waiting_since"] = rfc3339(waiting_since)
        if waited is not None and record.get("state") == "FIRING":
            out["judged_at"] = rfc3339(int(waiting_since + waited))
    if record.get("state") == "RESOLVED" and record.get("ends_at"):
        out["resolved_at"] = rfc3339(record["ends_at"])
    value, threshold = record.get("value"), record.get("threshold")
    if kind == "KPI_TARGET":
        if value is not None:
            out["sla_compliance"] = f"{value:.1%}"
        if threshold is not None:
            out["target"] = f"{threshold:.1%}"
    else:
        if kind == "FEED_SILENT" and value is not None:
            out["silent_for"] = human_duration(value)
        elif value is not None:
            shown = value if waited is None or threshold is None else overdue_shown_ms(waited, threshold)
            out["overdue_by"] = human_duration(shown)
        if threshold is not None:
            out["threshold"] = human_duration(threshold)
    return out


def to_alertmanager(
    record: dict[str, Any],
    board_url: str,
    now_ms: int,
    firing_lease_ms: int,
) -> dict[str, Any]:
    """One ``backbone.alerts.v1`` raw record → one Alertmanager v2 postable alert.

    FIRING gets ``endsAt = now + firing_lease_ms``: Alertmanager resolves an alert by itself
    when its endsAt passes, so the forwarder re-posts firing alerts well before the lease ends
    and a crashed forwarder cannot leave alerts firing forever. RESOLVED gets
    ``endsAt = ends_at`` (never before startsAt, which Alertmanager would reject).
    """
    labels = alert_labels(record)
    alert_id = labels["alert_id"]
    starts_at = record.get("starts_at")
    if not isinstance(starts_at, int):
        raise AlertRecordError(alert_id, f"starts_at {starts_at!r} is not epoch milliseconds")
    state = record.get("state")
    if state == "FIRING":
        ends_at = max(now_ms, starts_at) + firing_lease_ms
    elif state == "RESOLVED":
        resolved_at = record.get("ends_at")
        if not isinstance(resolved_at, int):
            raise AlertRecordError(alert_id, "RESOLVED record has no ends_at")
        # Never before the start (rejected) nor after now (Alertmanager would hold it firing
        # until then); the true resolve time is kept in the ``resolved_at`` annotation.
        ends_at = max(starts_at, min(resolved_at, now_ms))
    else:
        raise AlertRecordError(alert_id, f"unknown state {state!r}; expected FIRING or RESOLVED")
    case_id = record.get("case_id")
    generator = tracker_url(board_url, str(case_id)) if case_id else board_home(board_url)
    return {
        "labels": labels,
        "annotations": _annotations(record, board_url),
        "startsAt": rfc3339(starts_at),
        "endsAt": rfc3339(ends_at),
        "generatorURL": generator,
    }
