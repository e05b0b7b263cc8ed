"""Window arithmetic: panes, the windows that contain them, and when a window is closed."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stream_processors.windows import WindowSpec

MIN = 60_000
HOPPING = WindowSpec("1h", 60 * MIN, 5 * MIN)
TUMBLING = WindowSpec("1m", MIN, MIN)


@given(st.integers(min_value=0, max_value=2**41))
def test_a_time_is_in_exactly_the_windows_whose_range_holds_it(t: int) -> None:
    for spec in (HOPPING, TUMBLING, WindowSpec("24h", 24 * 60 * MIN, 60 * MIN)):
        pane = spec.pane_start(t)
        starts = list(spec.windows_of_pane(pane))
        brute = [
            s
            for s in range((t // spec.step_ms - spec.panes_per_window) * spec.step_ms, t + 1, spec.step_ms)
            if s <= t < s + spec.size_ms
        ]
        assert starts == brute
        for s in starts:
            assert pane in spec.panes_of_window(s)


def test_windows_of_several_panes_are_distinct_and_sorted() -> None:
    assert HOPPING.windows_of_panes([10 * MIN, 15 * MIN]) == list(range(-45 * MIN, 15 * MIN + 1, 5 * MIN))


def test_a_window_closes_when_the_watermark_reaches_its_end_plus_grace() -> None:
    grace = 10 * MIN
    assert not TUMBLING.is_closed(0, MIN + grace - 1, grace)
    assert TUMBLING.is_closed(0, MIN + grace, grace)
    assert not TUMBLING.is_closed(0, None, grace)
    assert TUMBLING.last_closed_start(MIN + grace, grace) == 0
    assert TUMBLING.last_closed_start(MIN + grace - 1, grace) == -MIN
    assert HOPPING.last_closed_start(60 * MIN + grace + 7 * MIN, grace) == 5 * MIN
    assert HOPPING.last_closed_start(60 * MIN + grace + 5 * MIN - 1, grace) == 0
