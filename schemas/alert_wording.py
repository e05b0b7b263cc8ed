"""How alert records put durations into words, shared by the processors and the forwarder.

The processors write an alert's ``summary`` (``stream_processors/journeys.py``) and the forwarder
turns the record's numbers into Alertmanager annotations (``alerting/alertmanager_payload.py``);
an officer reads both side by side, so they must state the same numbers in the same words.
"""

from __future__ import annotations


def human_duration(ms: float) -> str:
    """A duration as an officer says it, in its two largest units, floored:
    ``2 d 3 h``, ``3 h 12 min``, ``2 min 52 s``, ``30 s``."""
    seconds = max(0, int(ms // 1000))
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if minutes:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    return f"{secs} s"


def overdue_shown_ms(waited_ms: float, sla_ms: float) -> int:
    """The overdue time as an officer reads it: waited minus SLA, each in whole seconds (floored).

    So "waited W: O past its S SLA" adds up in the words :func:`human_duration` gives, within a
    second of the exact overdue time (the record's ``value``).
    """
    return max(0, int(waited_ms // 1000) - int(sla_ms // 1000)) * 1000
