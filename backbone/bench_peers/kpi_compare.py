"""Read a job's KPI window rows back from its output topic and check two jobs agree.

A job emits a window row each time the window changes (with a higher ``version``) and once
more when it closes; what counts is the latest row per window. Two jobs agree on a window when
``completions`` and ``sla_met`` are equal and ``p50_ms``/``p90_ms`` differ by at most
:data:`QUANTILE_TOLERANCE` (SEMANTICS.md: each is within 1% of the exact lower quantile). A
window with no completions left (all retracted) counts as absent.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from confluent_kafka import Consumer, KafkaError, TopicPartition

QUANTILE_TOLERANCE = 0.01


class WindowKey(NamedTuple):
    window: str
    window_start: int
    mission: str
    journey: str
    stage: str
    owner_agency: str
    province: str
    port: str


class WindowFigures(NamedTuple):
    completions: int
    sla_met: int
    p50_ms: int | None
    p90_ms: int | None


def window_key(row: Mapping[str, Any]) -> WindowKey:
    return WindowKey(
        row["window"],
        int(row["window_start"]),
        row["mission"],
        row["journey"],
        row["stage"],
        row["owner_agency"],
        row["province"],
        row["port"],
    )


def latest_windows(rows: Iterable[Mapping[str, Any]]) -> dict[WindowKey, WindowFigures]:
    """The newest row per window (highest ``version``; rows without one: the last read wins)."""
    best: dict[WindowKey, tuple[int, WindowFigures]] = {}
    for n, row in enumerate(rows):
        key = window_key(row)
        version = row.get("version")
        rank = int(version) if version is not None else n
        if key not in best or rank >= best[key][0]:
            best[key] = (
                rank,
                WindowFigures(int(row["completions"]), int(row["sla_met"]), row["p50_ms"], row["p90_ms"]),
            )
    return {k: v for k, (_, v) in best.items()}


def _close(a: int | None, b: int | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= QUANTILE_TOLERANCE * max(abs(a), abs(b))


@dataclass
class Agreement:
    """How far two jobs' windows of one window spec agree."""

    window: str
    compared: int = 0
    only_reference: int = 0
    only_other: int = 0
    mismatches: list[str] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return self.compared > 0 and not self.mismatches and not self.only_reference and not self.only_other

    def summary(self) -> str:
        if self.equal:
            return f"{self.window}: {self.compared:,} windows equal"
        return (
            f"{self.window}: {self.compared:,} compared, {len(self.mismatches)} differ, "
            f"{self.only_reference} only in reference, {self.only_other} only in other"
            + (f" (e.g. {self.mismatches[0]})" if self.mismatches else "")
        )


def agree(
    reference: Mapping[WindowKey, WindowFigures],
    other: Mapping[WindowKey, WindowFigures],
    window: str,
    only_keys_of_other: bool = False,
) -> Agreement:
    """Compare the windows named ``window``; ``only_keys_of_other``: check just the windows ``other`` has
    (a job that emits windows only once they close has not emitted the newest ones)."""
    result = Agreement(window)
    ref = {k: v for k, v in reference.items() if k.window == window}
    oth = {k: v for k, v in other.items() if k.window == window}
    keys = set(oth) if only_keys_of_other else set(ref) | set(oth)
    for key in sorted(keys):
        a, b = ref.get(key), oth.get(key)
        one_sided = b if a is None else a if b is None else None
        if one_sided is not None and one_sided.completions == 0:
            # a window whose completions were all retracted is the same as none: a job that
            # emits per event shows it, a job that emits per batch may never have seen it change
            continue
        if a is None:
            result.only_other += 1
            continue
        if b is None:
            result.only_reference += 1
            continue
        result.compared += 1
        if (
            a.completions != b.completions
            or a.sla_met != b.sla_met
            or not (_close(a.p50_ms, b.p50_ms) and _close(a.p90_ms, b.p90_ms))
        ):
            result.mismatches.append(f"{'|'.join(map(str, key))}: {tuple(a)} vs {tuple(b)}")
    return result


def read_rows(
    bootstrap: str,
    topic: str,
    count: int,
    decode: Callable[[bytes], Mapping[str, Any]],
    start: Mapping[int, int] | None = None,
    timeout_s: float = 120.0,
) -> tuple[list[Mapping[str, Any]], dict[int, int]]:
    """Read exactly ``count`` records of ``topic`` from offsets ``start`` (default 0).

    Returns the decoded rows and the next offset per partition (where the next job's rows
    begin when jobs share a topic). Counting, not watermarks: Tansu's are wrong.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "log_level": 0,
        }
    )
    rows: list[Mapping[str, Any]] = []
    next_offsets = dict(start or {})
    try:
        md = consumer.list_topics(topic, timeout=30)
        partitions = list(md.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, next_offsets.get(p, 0)) for p in partitions])
        deadline = time.monotonic() + timeout_s
        while len(rows) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"read {len(rows):,} of {count:,} records of {topic} within {timeout_s:.0f} s"
                )
            for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise RuntimeError(f"reading {topic}: {err}")
                rows.append(decode(msg.value()))
                next_offsets[msg.partition()] = msg.offset() + 1
    finally:
        consumer.close()
    return rows, next_offsets


def json_rows(value: bytes) -> Mapping[str, Any]:
    return json.loads(value)  # type: ignore[no-any-return]
