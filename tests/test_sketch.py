"""The duration sketch keeps the accuracy SEMANTICS.md promises, merges, and retracts exactly."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from stream_processors import sketch
from stream_processors.sketch import DDSketch

durations = st.integers(min_value=0, max_value=90 * 24 * 3_600_000)  # up to 90 days in ms
QS = (0.5, 0.9, 0.0, 1.0, 0.99)


def exact_lower(values: list[int], q: float) -> int:
    return sorted(values)[math.floor(q * (len(values) - 1))]


def assert_within(v: int | None, exact: int) -> None:
    assert v is not None
    assert abs(v - exact) <= 0.01 * exact, (v, exact)


@settings(max_examples=300, deadline=None)
@given(st.lists(durations, min_size=1, max_size=400))
def test_quantiles_within_one_percent_of_the_exact_lower_quantile(values: list[int]) -> None:
    s = DDSketch()
    for v in values:
        s.add(v)
    for q in QS:
        assert_within(s.quantile(q), exact_lower(values, q))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(durations, min_size=0, max_size=60), min_size=1, max_size=8))
def test_merged_panes_equal_one_sketch_of_all_values(panes: list[list[int]]) -> None:
    sketches = []
    for pane in panes:
        s = DDSketch()
        for v in pane:
            s.add(v)
        sketches.append(s.counts)
    allv = [v for pane in panes for v in pane]
    whole = DDSketch()
    for v in allv:
        whole.add(v)
    assert sketch.merged(sketches) == whole.counts
    if allv:
        for q in QS:
            assert_within(sketch.quantiles(sketch.merged(sketches), [q])[0], exact_lower(allv, q))


@settings(max_examples=200, deadline=None)
@given(st.lists(durations, min_size=1, max_size=200), st.data())
def test_retraction_restores_the_sketch_of_the_remaining_values(
    values: list[int], data: st.DataObject
) -> None:
    removed = data.draw(st.lists(st.sampled_from(values), max_size=len(values), unique_by=id))
    s = DDSketch()
    for v in values:
        s.add(v)
    remaining = list(values)
    for v in removed:
        s.remove(v)
        remaining.remove(v)
    expected = DDSketch()
    for v in remaining:
        expected.add(v)
    assert s.counts == expected.counts
    if remaining:
        assert_within(s.quantile(0.9), exact_lower(remaining, 0.9))
    else:
        assert s.quantile(0.5) is None


def test_every_integer_duration_up_to_a_million_ms_is_reported_within_one_percent() -> None:
    # Exhaustive over small values (where rounding to whole ms matters most), sampled above.
    for v in list(range(0, 1_000_000)) + list(range(1_000_000, 5_000_000_000, 9_973_331)):
        reported = sketch.bucket_value(sketch.bucket_key(v))
        assert abs(reported - v) <= 0.01 * v, (v, reported)


def test_zero_durations_are_exact_and_the_sketch_round_trips_as_plain_json() -> None:
    import json

    s = DDSketch()
    for v in (0, 0, 0, 5):
        s.add(v)
    assert s.quantile(0.5) == 0
    assert s.quantile(1.0) == 5
    back = DDSketch.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back.counts == s.counts
    assert DDSketch().quantile(0.5) is None


@given(
    st.dictionaries(st.integers(0, 3000), st.integers(0, 50), max_size=60),
    st.lists(st.floats(0, 1), min_size=1, max_size=4),
)
def test_quantiles_by_cumulative_search_equal_a_walk_over_sorted_buckets(
    raw: dict[int, int], qs: list[float]
) -> None:
    """The C-level search (accumulate + bisect) equals the plain definition on any counts."""
    counts = {("z" if k == 0 else f"{k:06d}"): n for k, n in raw.items()}
    qs = sorted(qs)
    total = sum(counts.values())
    expected: list[int | None] = []
    if total > 0:
        ordered = sorted(raw)  # numeric order, zero first
        for q in qs:
            rank = int(q * (total - 1))
            seen = 0
            for k in ordered:
                seen += raw[k]
                if seen > rank:
                    expected.append(sketch.bucket_value("z" if k == 0 else f"{k:06d}"))
                    break
    else:
        expected = [None] * len(qs)
    assert sketch.quantiles(counts, qs) == expected
