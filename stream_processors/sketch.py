"""A mergeable quantile sketch for stage durations (DDSketch-style logarithmic buckets).

Why this one: KPI windows are built from panes and hopping windows merge many panes, a
correction must be able to *retract* a duration, and state must be plain JSON. Log buckets do
all three: a bucket count is just an integer that can go up and down, and two sketches merge
by adding counts.

Accuracy contract (``SEMANTICS.md``): for the lower quantile ``exact = sorted(x)[floor(q*(n-1))]``
the reported whole-millisecond value ``v`` satisfies ``|v - exact| <= 0.01 * exact``. Bucket
``i`` holds the values in ``(GAMMA**(i-1), GAMMA**i]`` and reports ``2*GAMMA**i/(GAMMA+1)``,
which is within :data:`RELATIVE_ACCURACY` of every value in the bucket. Reported values are
rounded to whole milliseconds; with a bucket accuracy of 0.5% the rounding (at most 0.5 ms)
still keeps the total within 1% for every integer duration (below 100 ms the error is < 0.5 ms,
so rounding returns the exact value). Durations of 0 (or less) are counted exactly.

Representation: a plain ``dict[str, int]`` from bucket key to count, so it can live in a JSON
state store without conversion. Keys are the bucket index as six zero-padded digits (string
order = numeric order, so sorting needs no conversion) or ``"z"`` for zero.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from itertools import accumulate

RELATIVE_ACCURACY = 0.005
GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
_INV_LOG_GAMMA = 1.0 / math.log(GAMMA)
ZERO_KEY = "z"

Counts = dict[str, int]


def bucket_key(value: int | float) -> str:
    """The bucket a (non-negative) duration falls in."""
    if value <= 0:
        return ZERO_KEY
    return f"{math.ceil(math.log(value) * _INV_LOG_GAMMA):06d}"


def bucket_value(key: str) -> int:
    """The whole-millisecond value a bucket reports."""
    value = _BUCKET_VALUES.get(key)
    if value is None:
        value = _BUCKET_VALUES[key] = 0 if key == ZERO_KEY else round(2.0 * GAMMA ** int(key) / (GAMMA + 1.0))
    return value


_BUCKET_VALUES: dict[str, int] = {}
"""Memo of :func:`bucket_value` (a few thousand buckets cover every duration up to years)."""


def add(counts: Counts, key: str, n: int = 1) -> None:
    """Add ``n`` (negative: retract) values of bucket ``key``; empty buckets are removed."""
    c = counts.get(key, 0) + n
    if c:
        counts[key] = c
    else:
        del counts[key]


def merge_into(target: Counts, other: Mapping[str, int], sign: int = 1) -> None:
    """``target += sign * other``, bucket by bucket."""
    get = target.get
    for key, n in other.items():
        c = get(key, 0) + sign * n
        if c:
            target[key] = c
        else:
            target.pop(key, None)


def merged(parts: Iterable[Mapping[str, int]]) -> Counts:
    """The sum of several sketches (e.g. the panes of a hopping window)."""
    out: Counts = {}
    get = out.get
    for part in parts:
        for key, n in part.items():
            out[key] = get(key, 0) + n
    return out


def quantiles(counts: Mapping[str, int], qs: Sequence[float]) -> list[int | None]:
    """Lower quantiles ``qs`` (ascending) of the sketch; ``None`` for an empty sketch.

    The cumulative counts are built and searched in C (``accumulate``, ``bisect``): windows are
    re-emitted often and a Python loop over every bucket was most of the cost of a KPI row.
    A sketch of one bucket (most one-minute windows) needs no sort: every rank below its count
    is that bucket.
    """
    if len(counts) == 1:
        ((key, c),) = counts.items()
        if c <= 0:
            return [None] * len(qs)
        value = bucket_value(key)
        return [value if math.floor(q * (c - 1)) < c else None for q in qs]
    keys = sorted(counts)
    if not keys:
        return [None] * len(qs)
    if keys[-1] == ZERO_KEY:  # "z" sorts after the digits; zero is the smallest value
        keys.insert(0, keys.pop())
    cumulative = list(accumulate(map(counts.__getitem__, keys)))
    total = cumulative[-1]
    if total <= 0:
        return [None] * len(qs)
    if min(counts.values()) < 0:  # inconsistent retractions: cumulative counts are not monotonic
        return _quantiles_walk(keys, counts, total, qs)
    out: list[int | None] = []
    for q in qs:
        i = bisect_right(cumulative, math.floor(q * (total - 1)))
        out.append(bucket_value(keys[i]) if i < len(keys) else None)
    return out


def _quantiles_walk(
    keys: list[str], counts: Mapping[str, int], total: int, qs: Sequence[float]
) -> list[int | None]:
    ranks = [math.floor(q * (total - 1)) for q in qs]
    out: list[int | None] = []
    cumulative = 0
    i = 0
    for key in keys:
        cumulative += counts[key]
        while i < len(ranks) and ranks[i] < cumulative:
            out.append(bucket_value(key))
            i += 1
        if i == len(ranks):
            break
    while len(out) < len(qs):
        out.append(None)
    return out


class DDSketch:
    """An object wrapper over the plain-dict representation, for code that prefers methods."""

    __slots__ = ("counts",)

    def __init__(self, counts: Counts | None = None) -> None:
        self.counts: Counts = counts if counts is not None else {}

    def add(self, value: int | float, n: int = 1) -> None:
        add(self.counts, bucket_key(value), n)

    def remove(self, value: int | float, n: int = 1) -> None:
        add(self.counts, bucket_key(value), -n)

    def merge(self, other: DDSketch) -> None:
        merge_into(self.counts, other.counts)

    def subtract(self, other: DDSketch) -> None:
        merge_into(self.counts, other.counts, -1)

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    def quantile(self, q: float) -> int | None:
        return quantiles(self.counts, [q])[0]

    def to_dict(self) -> Counts:
        return dict(self.counts)

    @classmethod
    def from_dict(cls, data: Mapping[str, int]) -> DDSketch:
        return cls(dict(data))
