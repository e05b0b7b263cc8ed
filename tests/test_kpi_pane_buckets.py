"""Open KPI panes live in day buckets beside their group, so state writes stay small.

Windows stay open while the input's low watermark is behind them: a whole replay on the event
clock, a backfill read topic by topic. Before, a KPI group held every open pane and was written
whole to the changelog at each batch that touched it (a 100k-event replay wrote 112 MB of KPI
state for 4.8 MB kept; a 30-day backfill grew one group past Kafka's 1 MB record limit and
stopped the worker). Here: the largest state written stays a day's worth however long the
replay, the results equal a run with ticks all along, and a group state written by an older
worker (panes inside) is moved to buckets on recovery with nothing lost.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
from engine_fixtures import DAY, HOUR, T0, Pipeline
from kpi_fixtures import faulty_traffic

from stream_processors.api import FEED_KEY_PREFIX
from stream_processors.kpis import PANE_BUCKET_MS, is_pane_bucket, pane_bucket_key, split_pane_bucket_key


class WriteLog(dict[str, Any]):
    """A dict state store that remembers the size of the largest value written per key kind."""

    def __init__(self) -> None:
        super().__init__()
        self.largest: dict[str, int] = {}

    def __setitem__(self, key: str, value: Any) -> None:
        if is_pane_bucket(key) or "@" not in key:  # closed-window summaries are pruned in the
            kind = "bucket" if is_pane_bucket(key) else "group"  # same call: not measured here
            self.largest[kind] = max(self.largest.get(kind, 0), len(orjson.dumps(value)))
        super().__setitem__(key, value)


def replay(days: int, tick_every: int | None) -> Pipeline:
    """The same seeded traffic over ``days`` days, in batches of 500 events; ticks every
    ``tick_every`` batches (None: only at the end, as the event clock does)."""
    p = Pipeline()
    p.kpi_states = WriteLog()
    events = [(e.topic, e.raw) for e in faulty_traffic(T0, 5, 40 * days, days * DAY)]
    now = T0
    for n, i in enumerate(range(0, len(events), 500)):
        batch = events[i : i + 500]
        now = max(now, max(raw["published_at"] for _, raw in batch))
        p.push(batch, now)
        if tick_every is not None and n % tick_every == tick_every - 1:
            p.tick(now)
    p.open_pane_bytes = max(  # type: ignore[attr-defined]
        sum(len(orjson.dumps(b)) for k, b in p.kpi_states.items() if k.startswith(f"{group}@#p"))
        for group in {k.split("@")[0] for k in p.kpi_states if not k.startswith(FEED_KEY_PREFIX)}
    )
    p.kpis.watermark_ms = now + 2 * DAY  # the end of a replay: every window closes
    p.tick(now)
    return p


def test_the_largest_state_written_does_not_grow_with_the_replay() -> None:
    short, long = replay(4, None), replay(16, None)
    # Four times the history, all of it in open windows until the end: a day bucket stays a
    # day's worth, and a group holds only the list of its buckets besides its backlog.
    assert 0 < long.kpi_states.largest["bucket"] < 2 * short.kpi_states.largest["bucket"]
    assert long.kpi_states.largest["group"] < 4_000
    panes_of_busiest_group = max(
        sum(len(orjson.dumps(b)) for k, b in long.kpi_states.items() if k.startswith(f"{group}@#p"))
        for group in {k.split("@")[0] for k in long.kpi_states if not k.startswith(FEED_KEY_PREFIX)}
    )
    assert panes_of_busiest_group == 0  # all closed at the end (below); while open they were:
    assert long.open_pane_bytes > 10 * long.kpi_states.largest["group"]


def test_buckets_give_the_windows_ticks_all_along_give_and_are_gone_once_closed() -> None:
    at_end, all_along = replay(6, None), replay(6, 2)
    ends, alongs = at_end.windows(), all_along.windows()
    assert ends.keys() == alongs.keys()
    for kpi_id, row in ends.items():
        other = alongs[kpi_id]
        assert {k: v for k, v in row.items() if k != "version"} == {
            k: v for k, v in other.items() if k != "version"
        }
    for p in (at_end, all_along):
        assert not [k for k in p.kpi_states if is_pane_bucket(k)]  # every window closed
        assert all(
            not st["pb"] and not st["pm"]
            for k, st in p.kpi_states.items()
            if "@" not in k and not k.startswith(FEED_KEY_PREFIX)
        )


def test_a_group_state_with_its_panes_inside_is_moved_to_buckets_on_recovery() -> None:
    """A changelog written before pane buckets: the group holds ``p`` and ``d``."""
    p = Pipeline()
    events = [(e.topic, e.raw) for e in faulty_traffic(T0, 9, 120, 3 * DAY)]
    now = T0 + 3 * DAY + HOUR
    p.push(events, now)
    expected = copy.deepcopy(p)
    old: dict[str, Any] = {}
    for key, st in p.kpi_states.items():
        if is_pane_bucket(key):
            continue
        st = copy.deepcopy(st)
        if "pb" in st:
            panes: dict[str, dict[str, Any]] = {}
            marks: dict[str, dict[str, int]] = {}
            for start in st.pop("pb"):
                b = p.kpi_states[pane_bucket_key(key, int(start))]
                for name, ps in b["p"].items():
                    panes.setdefault(name, {}).update(ps)
                for name, ms in b["d"].items():
                    marks.setdefault(name, {}).update(ms)
            del st["pm"], st["db"]
            st["p"], st["d"] = panes, marks
        old[key] = st
    assert any(st.get("p") for st in old.values())

    recovered = Pipeline()
    recovered.kpi_states = old
    recovered.kpis.rebuild_index(old)
    expected.kpis.rebuild_index(expected.kpi_states)
    assert not [st for st in old.values() if "p" in st and not is_pane_bucket_state(st)]
    for key in [k for k in old if is_pane_bucket(k)]:
        group, start = split_pane_bucket_key(key)
        assert int(start) % PANE_BUCKET_MS == 0 and start in old[group]["pb"]
    assert old == expected.kpi_states

    later = now + 2 * DAY
    recovered.kpis.watermark_ms = expected.kpis.watermark_ms = later
    assert recovered.tick(later).kpi_windows == expected.tick(later).kpi_windows


def is_pane_bucket_state(st: dict[str, Any]) -> bool:
    return set(st) == {"p", "d"}
