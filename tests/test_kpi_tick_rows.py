"""The tick's fast paths give exactly what the plain definitions give.

``KpiEngine.tick`` emits about one KPI window row per input event, so its row loop takes
shortcuts: a one-bucket sketch is not sorted, a tumbling window yields its pane's own sketch,
rows are copies of a per-group template. Each is checked here against a straightforward
computation written independently of the engine: quantiles by a walk over numerically sorted
buckets, windows by summing their panes, rows field by field from the state before the tick.
"""

from __future__ import annotations

import copy
import math
import random
from typing import Any

from engine_fixtures import DAY, HOUR, MIN, T0, C, Pipeline, event
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import contracts
from stream_processors import ids, sketch
from stream_processors.kpis import S_COMPLETIONS, S_VERSION, SUMMARY_SEP, window_aggregates
from stream_processors.windows import WindowSpec


def reference_quantiles(counts: dict[str, int], qs: list[float]) -> list[int | None]:
    """Lower quantiles by walking the buckets in numeric order (zero first), one value at a time."""
    total = sum(counts.values())
    if total <= 0:
        return [None] * len(qs)
    ordered = sorted(counts, key=lambda k: -1 if k == sketch.ZERO_KEY else int(k))
    out: list[int | None] = []
    for q in qs:
        rank = math.floor(q * (total - 1))
        seen, found = 0, None
        for key in ordered:
            seen += counts[key]
            if seen > rank:
                found = sketch.bucket_value(key)
                break
        out.append(found)
    return out


bucket_keys = st.one_of(st.just(sketch.ZERO_KEY), st.integers(1, 3000).map(lambda i: f"{i:06d}"))


@settings(max_examples=300, deadline=None)
@given(bucket_keys, st.integers(-3, 50), st.lists(st.floats(0, 1), min_size=1, max_size=4))
def test_a_one_bucket_sketch_has_the_quantiles_of_the_walk(key: str, n: int, qs: list[float]) -> None:
    counts = {key: n} if n else {}
    qs = sorted(qs)
    assert sketch.quantiles(counts, qs) == reference_quantiles(counts, qs)


pane_entries = st.tuples(
    st.integers(-1, 6),
    st.integers(0, 6),
    st.integers(0, 10**7),
    st.dictionaries(bucket_keys, st.integers(1, 5), max_size=6),
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([(1, 1), (12, 1), (4, 2), (24, 6)]),
    st.dictionaries(st.integers(0, 40), pane_entries, max_size=25),
    st.lists(st.integers(-30, 45), max_size=30, unique=True),
)
def test_window_aggregates_equal_the_sum_of_each_windows_panes(
    shape: tuple[int, int], pane_map: dict[int, Any], window_steps: list[int]
) -> None:
    size_panes, step = shape
    spec = WindowSpec("w", size_panes * step * MIN, step * MIN)
    panes = {str(p * step * MIN): [n, met, total, counts] for p, (n, met, total, counts) in pane_map.items()}
    before = copy.deepcopy(panes)
    starts = sorted(s * step * MIN for s in window_steps)
    got = [
        (start, (n, met, total, dict(counts)))
        for start, (n, met, total, counts) in window_aggregates(spec, panes, starts)
    ]
    want = []
    for start in starts:
        inside = [panes[k] for k in map(str, spec.panes_of_window(start)) if k in panes]
        merged = {k: v for k, v in sketch.merged(e[3] for e in inside).items() if v}
        want.append((start, tuple(sum(e[i] for e in inside) for i in range(3)) + (merged,)))
    assert got == want
    assert panes == before  # the panes' own sketches are read, never modified


def tick_traffic(seed: int) -> list[tuple[int, dict[str, Any], Any, dict[str, Any]]]:
    """A day and a half of customs completions (some corrected) pushed in batches, with ticks.

    Returns, for every tick, (now, the KPI state just before it, its outputs, the state after).
    """
    rng = random.Random(seed)
    p = Pipeline()
    ticks = []
    now = T0
    for batch in range(36):
        events = []
        for i in range(rng.randint(0, 25)):
            case = f"EXP-{seed}-{batch}-{i}"
            filed = now - rng.randint(0, 3 * HOUR)
            cleared = filed + rng.choice([0, rng.randint(1, 90 * MIN), rng.randint(1, 30 * HOUR)])
            events += [(C, event(C, case, "FILED", filed)), (C, event(C, case, "CLEARED", cleared))]
            if rng.random() < 0.1:  # a correction moves the completion to another pane
                events.append((C, event(C, case, "CLEARED", cleared - rng.randint(0, HOUR))))
        now += HOUR
        p.push(events, now)
        if batch % 3 == 2 or batch == 35:
            before = copy.deepcopy(p.kpi_states)
            if batch == 35:
                p.kpis.watermark_ms = now + DAY + 2 * HOUR  # the end of a replay: every window closes
            ticks.append((now, before, p.tick(now), copy.deepcopy(p.kpi_states)))
    return ticks


def test_tick_rows_equal_rows_rebuilt_from_the_panes_before_the_tick() -> None:
    field_names = contracts.current(contracts.KPI_WINDOWS).field_names
    kpis = Pipeline().kpis
    specs = {spec.name: spec for spec in kpis.specs}
    rows_seen = closed_seen = 0
    for seed in (1, 2):
        for now, before, out, after in tick_traffic(seed):
            for row in out.kpi_windows:
                assert list(row) == field_names
                spec, start = specs[row["window"]], row["window_start"]
                group = "|".join(
                    row[f] for f in ("mission", "journey", "stage", "owner_agency", "province", "port")
                )
                st = before[group]
                panes = kpis.open_panes(group, before).get(spec.name, {})
                inside = [panes[k] for k in map(str, spec.panes_of_window(start)) if k in panes]
                n, met, total = (sum(e[i] for e in inside) for i in range(3))
                counts = sketch.merged(e[3] for e in inside)
                p50, p90 = reference_quantiles(counts, [0.5, 0.9]) if n else (None, None)
                version = ids.next_version(st["w"].get(spec.name, {}).get(str(start)), now)
                assert row == {
                    "kpi_id": ids.kpi_id(spec.name, start, group),
                    "window": spec.name,
                    "window_start": start,
                    "window_end": start + spec.size_ms,
                    "mission": group.split("|")[0],
                    "journey": group.split("|")[1],
                    "stage": group.split("|")[2],
                    "owner_agency": group.split("|")[3],
                    "province": group.split("|")[4],
                    "port": group.split("|")[5],
                    "completions": n,
                    "sla_met": met,
                    "sla_compliance": met / n if n else None,
                    "p50_ms": p50,
                    "p90_ms": p90,
                    "mean_ms": total / n if n else None,
                    "throughput_per_h": n / (spec.size_ms / HOUR),
                    "late_events": 0,
                    "version": version,
                }
                rows_seen += 1
                summary = after.get(f"{group}{SUMMARY_SEP}{spec.name}", {"s": {}})["s"].get(str(start))
                if summary is not None and summary[S_VERSION] == version:
                    closed_seen += 1
                    assert summary == [version, n, met, p50, p90, row["mean_ms"], 0]
                    assert summary[S_COMPLETIONS] == n
    assert rows_seen > 1000 and closed_seen > 300


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([(1, 1), (12, 1), (4, 2), (24, 6)]),
    st.lists(st.integers(-50, 50), max_size=20),
    st.booleans(),
)
def test_windows_of_panes_equal_the_union_of_each_panes_windows(
    shape: tuple[int, int], pane_steps: list[int], off_grid: bool
) -> None:
    size_panes, step = shape
    spec = WindowSpec("w", size_panes * step * MIN, step * MIN)
    panes = [p * step * MIN + (7 if off_grid and i == 0 else 0) for i, p in enumerate(pane_steps)]
    want = sorted({s for p in panes for s in range(p - spec.size_ms + spec.step_ms, p + 1, spec.step_ms)})
    assert spec.windows_of_panes(iter(panes)) == want
