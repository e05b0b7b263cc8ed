"""Deterministic ids of output records, exactly as ``SEMANTICS.md`` defines them.

Replays produce the same ids, so the sink and Alertmanager de-duplicate instead of double
counting. Every id is the sha1 hex of ``|``-joined parts.
"""

from __future__ import annotations

from hashlib import sha1


def _sha1(text: str) -> str:
    return sha1(text.encode()).hexdigest()


def record_id(case_id: str, mission: str, journey: str, stage: str) -> str:
    return _sha1(f"{case_id}|{mission}|{journey}|{stage}")


def kpi_id(window: str, window_start_ms: int, group_key: str) -> str:
    """``group_key`` = ``mission|journey|stage|owner_agency|province|port``."""
    return _sha1(f"{window}|{window_start_ms}|{group_key}")


def backlog_id(group_key: str) -> str:
    return _sha1(group_key)


def case_sla_alert_id(record_id_hex: str) -> str:
    return _sha1(f"CASE_SLA|{record_id_hex}")


def feed_silent_alert_id(agency: str, last_occurred_at_ms: int) -> str:
    return _sha1(f"FEED_SILENT|{agency}|{last_occurred_at_ms}")


def kpi_target_alert_id(target: str, group_key: str, window_start_ms: int) -> str:
    return _sha1(f"KPI_TARGET|{target}|{group_key}|{window_start_ms}")


def dead_letter_id(topic: str, partition: int, offset: int) -> str:
    return _sha1(f"{topic}|{partition}|{offset}")


def next_version(previous: int | None, now_ms: int) -> int:
    """A version higher than ``previous``: ``now_ms`` when the clock moved on, else previous + 1."""
    if previous is None:
        return now_ms
    return now_ms if now_ms > previous else previous + 1
