"""Where "now" comes from: the system clock, the newest event time seen, or a fixed test value.

The engines never read a clock themselves; they take ``now_ms`` as an argument. The runtime
picks one of these (``BACKBONE_CLOCK``) and passes its reading, so tests are deterministic and
replays of old data judge lateness and SLA breaches in the data's own time.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """A source of "now" in epoch milliseconds."""

    def now_ms(self) -> int: ...


class WallClock:
    """The system clock: live operation."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class EventClock:
    """The newest ``occurred_at`` observed so far: replays and deterministic tests.

    Before any event is observed it reads ``start_ms`` (0 by default), so nothing looks overdue.
    """

    def __init__(self, start_ms: int = 0) -> None:
        self._now_ms = start_ms

    def observe(self, occurred_at_ms: int | None) -> None:
        if occurred_at_ms is not None and occurred_at_ms > self._now_ms:
            self._now_ms = occurred_at_ms

    def now_ms(self) -> int:
        return self._now_ms


class FixedClock:
    """A clock a test sets by hand."""

    def __init__(self, now_ms: int = 0) -> None:
        self._now_ms = now_ms

    def set(self, now_ms: int) -> None:
        self._now_ms = now_ms

    def advance(self, delta_ms: int) -> None:
        self._now_ms += delta_ms

    def now_ms(self) -> int:
        return self._now_ms


def make_clock(kind: str) -> Clock:
    """The clock named by ``Settings.clock`` (``wall`` or ``event``)."""
    if kind == "wall":
        return WallClock()
    if kind == "event":
        return EventClock()
    raise ValueError(f"unknown clock {kind!r}; expected 'wall' or 'event'")
