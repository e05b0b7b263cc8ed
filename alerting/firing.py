"""What the forwarder holds firing, and which alert transitions are worth posting.

Alertmanager resolves an alert by itself once its ``endsAt`` passes, so the forwarder keeps
each firing alert's record and re-posts it before its lease runs out. The map is bounded:
past ``max_firing`` the oldest entries are dropped (counted, logged) rather than growing
without limit. A small bounded memory of resolved ids turns replays (the processors re-emit
the same ids after a crash: FIRING then RESOLVED again) into no-ops instead of a second page.

**Escalation.** A CASE_SLA alert that escalates from ``warning`` to ``critical`` (same alert id,
only the severity label differs) keeps its warning firing, re-posted with the critical one:
Alertmanager's inhibit rule (critical over warning, equal ``alert_id``) silences it, and the
agency desk that was paged for the warning is not told "resolved" while the case still waits.
Both label sets resolve when the case moves on.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from alerting.alertmanager_payload import alert_labels

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeldAlert:
    """A firing alert's latest record and the partition it came from (dropped on revoke)."""

    record: dict[str, Any]
    partition: int
    escalated_from: dict[str, Any] | None = None
    """The warning this alert escalated from: kept firing (inhibited) until the alert resolves."""

    def label_sets(self) -> list[dict[str, Any]]:
        """The records Alertmanager holds firing for this alert: the warning first, if escalated."""
        return [self.record] if self.escalated_from is None else [self.escalated_from, self.record]


class FiringAlerts:
    """Bounded map ``alert_id → HeldAlert`` plus a bounded set of recently resolved ids."""

    def __init__(self, max_firing: int = 50_000, max_resolved: int = 200_000) -> None:
        self.max_firing = max_firing
        self.max_resolved = max_resolved
        self._firing: OrderedDict[str, HeldAlert] = OrderedDict()
        self._resolved: OrderedDict[str, None] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._firing)

    def __contains__(self, alert_id: object) -> bool:
        return alert_id in self._firing

    def records(self) -> list[dict[str, Any]]:
        """The records of all firing alerts, oldest first (what the periodic re-post sends), an
        escalated alert's warning included."""
        return [r for held in self._firing.values() for r in held.label_sets()]

    def was_resolved(self, alert_id: str) -> bool:
        return alert_id in self._resolved

    def transition(self, record: dict[str, Any], partition: int) -> list[dict[str, Any]]:
        """Apply one alert record; return the records to post to Alertmanager, in order.

        * FIRING of an id already resolved: a replay, nothing to post.
        * FIRING that escalates a held warning to critical: posted; the warning stays held and
          firing (Alertmanager inhibits it), see the module docstring.
        * FIRING whose labels changed otherwise (e.g. the owner of the stage): the old label set
          is posted resolved at the new record's ``emitted_at`` and the new one firing, so
          Alertmanager does not hold two alerts for one case.
        * RESOLVED: posted resolved; every held label set other than the record's (an escalated
          alert's warning, or labels that changed) is resolved too.
        """
        alert_id = record["alert_id"]
        held = self._firing.get(alert_id)
        out: list[dict[str, Any]] = []
        if record["state"] == "FIRING":
            if alert_id in self._resolved:
                return []
            escalated_from = None
            if held is not None:
                labels = alert_labels(record)
                escalated_from = held.escalated_from
                if alert_labels(held.record) != labels:
                    if escalated_from is None and _escalates(held.record, record):
                        escalated_from = held.record
                    else:
                        out += [
                            _resolved_copy(r, record["emitted_at"])
                            for r in held.label_sets()
                            if alert_labels(r) != labels
                        ]
                        escalated_from = None
            self._firing[alert_id] = HeldAlert(record, partition, escalated_from)
            self._firing.move_to_end(alert_id)
            self._evict()
            out.append(record)
            return out
        if held is not None:
            del self._firing[alert_id]
            labels = alert_labels(record)
            ends_at = record.get("ends_at") or record["emitted_at"]
            out += [_resolved_copy(r, ends_at) for r in held.label_sets() if alert_labels(r) != labels]
        self._resolved[alert_id] = None
        self._resolved.move_to_end(alert_id)
        while len(self._resolved) > self.max_resolved:
            self._resolved.popitem(last=False)
        out.append(record)
        return out

    def forget(self, alert_id: str) -> None:
        """Stop holding an alert (Alertmanager rejected it: re-posting would only fail again)."""
        self._firing.pop(alert_id, None)

    def drop_partitions(self, partitions: set[int]) -> int:
        """Forget alerts from partitions this forwarder no longer owns; returns how many."""
        gone = [aid for aid, held in self._firing.items() if held.partition in partitions]
        for aid in gone:
            del self._firing[aid]
        return len(gone)

    def _evict(self) -> None:
        while len(self._firing) > self.max_firing:
            alert_id, _ = self._firing.popitem(last=False)
            self.evicted += 1
            log.warning(
                "firing map full: oldest alert no longer re-posted (Alertmanager will expire it)",
                extra={"alert_id": alert_id, "max_firing": self.max_firing},
            )


def _escalates(warning: dict[str, Any], record: dict[str, Any]) -> bool:
    """``record`` is ``warning`` escalated: severity warning → critical, every other label the same."""
    return (
        warning.get("severity") == "warning"
        and record.get("severity") == "critical"
        and alert_labels({**warning, "severity": "critical"}) == alert_labels(record)
    )


def _resolved_copy(record: dict[str, Any], ends_at: int) -> dict[str, Any]:
    return {**record, "state": "RESOLVED", "ends_at": ends_at}
