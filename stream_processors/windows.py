"""Window arithmetic: panes, the windows a pane belongs to, and when a window closes.

A window of ``size`` and ``step`` (= hop, or size when tumbling) starts at every multiple of
``step`` (epoch-aligned, UTC) and covers ``[start, start + size)``. We keep *panes*: tumbling
buckets of ``step`` ms. A completion lands in exactly one pane per window spec (one sketch
update), and a hopping window is the sum of its ``size / step`` panes, merged only when the
window is emitted. This keeps the per-completion cost independent of the overlap.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from stream_processors.missions import Window

MS_PER_HOUR = 3_600_000


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """One KPI window definition from the missions file, in milliseconds."""

    name: str
    size_ms: int
    step_ms: int

    @classmethod
    def from_window(cls, window: Window) -> WindowSpec:
        return cls(window.name, window.size_ms, window.step_ms)

    @property
    def panes_per_window(self) -> int:
        return self.size_ms // self.step_ms

    @property
    def size_hours(self) -> float:
        return self.size_ms / MS_PER_HOUR

    def pane_start(self, t_ms: int) -> int:
        """The pane (and, for tumbling windows, the window) that holds event time ``t_ms``."""
        return t_ms - t_ms % self.step_ms

    def windows_of_pane(self, pane_start: int) -> range:
        """Starts of every window that contains the pane, oldest first."""
        return range(pane_start - self.size_ms + self.step_ms, pane_start + 1, self.step_ms)

    def panes_of_window(self, window_start: int) -> range:
        return range(window_start, window_start + self.size_ms, self.step_ms)

    def windows_of_panes(self, pane_starts: Iterable[int]) -> list[int]:
        """Starts of the windows that contain any of the panes, ascending and distinct.

        Pane starts are multiples of the step, so the windows of neighbouring panes overlap on
        the same grid: walking the panes in order, each adds only the windows after the last
        one listed (a tick lists the windows of every open pane, 24 per pane for a daily window).
        """
        step = self.step_ms
        out: list[int] = []
        last: int | None = None
        panes = sorted(set(pane_starts))
        for p in panes:
            if p % step:  # off the grid: no overlap to share
                return sorted({s for q in panes for s in self.windows_of_pane(q)})
            first = p - self.size_ms + step if last is None else max(p - self.size_ms, last) + step
            out.extend(range(first, p + 1, step))
            last = p
        return out

    def last_closed_start(self, closed_wm: int | None, grace_ms: int) -> int | None:
        """The newest window start that is closed at watermark ``closed_wm``, or ``None``.

        A window is closed once the watermark reaches its end + grace: ``watermark >= window_end +
        grace`` (SEMANTICS.md, "Late").
        """
        if closed_wm is None:
            return None
        limit = closed_wm - grace_ms - self.size_ms  # closed iff start <= limit
        return limit - limit % self.step_ms

    def is_closed(self, window_start: int, closed_wm: int | None, grace_ms: int) -> bool:
        return closed_wm is not None and closed_wm >= window_start + self.size_ms + grace_ms


def window_specs(windows: Iterable[Window]) -> tuple[WindowSpec, ...]:
    return tuple(WindowSpec.from_window(w) for w in windows)
