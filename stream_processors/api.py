"""The contract between the processing engines (pure Python) and the runtime that feeds them.

Two hops, each a plain object with no Kafka or Faust inside, so the same code runs under the
Faust worker, in unit tests with ``dict`` state stores, and in benchmarks:

* **Hop 1** – :class:`stream_processors.journeys.JourneyEngine`, state keyed by ``case_id``.
  Input: raw messages of the five agency topics (partitioned by case_id).
  ``process(batch, states, now_ms) -> Outputs`` decodes, validates, de-duplicates, updates the
  per-case journey state and emits stage records, CASE_SLA alerts, dead letters and *facts*
  for hop 2. ``sweep(states, now_ms)`` fires CASE_SLA for open stages past their deadline
  (cheap: an in-memory deadline heap); ``rebuild_index(states)`` rebuilds that heap after a
  rebalance or recovery.
* **Hop 2** – :class:`stream_processors.kpis.KpiEngine`, state keyed by KPI group key (see
  :func:`group_key`) plus ``feed|<agency>`` keys. Input: messages of :data:`FACTS_TOPIC`,
  key = group key, value = :func:`encode_facts` bytes. ``apply(batch, states, now_ms)``
  folds facts into panes, backlog and feed state and emits backlog and feed rows;
  ``tick(states, now_ms)`` emits the KPI windows changed since the last tick, closes windows
  behind the watermark (final emission), evaluates KPI_TARGET and raises/resolves FEED_SILENT.
  ``rebuild_index(states)`` restores the in-memory watermark and dirty sets after recovery.

Both engines write every changed state key once per call, at the end. State values are plain
JSON data (dicts, lists, ints, strs, None) so a Faust table with a ``json`` serializer, or a
plain ``dict`` in tests, can hold them. Keys are ``str``.

Idempotency without broker transactions: each fact carries its cause, the ``(topic,
partition, offset)`` of the agency event that produced it. Hop 2 keeps, inside each group's
state value, the highest source offset applied per source topic-partition and skips facts at
or below it. Facts for one group from one source partition are encoded in offset order, and
the runtime must produce them in that order (one producer per hop-1 worker, key = group key).
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, KeysView, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, TypeVar, runtime_checkable

import orjson

from schemas import contracts

FACTS_TOPIC = "backbone.internal.kpi_facts.v1"
"""Internal topic between hop 1 and hop 2; key = group key or ``feed|<agency>``, value = facts."""

FEED_KEY_PREFIX = "feed|"
PROCESSOR_SOURCE = "processor"
"""``source`` of dead letters written by the processors."""


@dataclass(frozen=True, slots=True)
class InputMessage:
    """One consumed Kafka message, as raw bytes; the engines decode it themselves."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None


@runtime_checkable
class StateStore(Protocol):
    """A keyed state store: a Faust table or a plain ``dict`` satisfy it. Values are JSON data."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def __setitem__(self, key: str, value: Any) -> None: ...

    def __delitem__(self, key: str) -> None: ...

    def __contains__(self, key: object) -> bool: ...

    def items(self) -> ItemsView[str, Any] | Iterator[tuple[str, Any]]: ...

    def keys(self) -> KeysView[str] | Iterator[str]: ...


K = TypeVar("K")


def _add_counts(counts: dict[K, int], more: dict[K, int]) -> None:
    for key, n in more.items():
        counts[key] = counts.get(key, 0) + n


@dataclass
class Outputs:
    """What one engine call produced: raw records per output topic, facts, and counters.

    Records are in the *raw* shape of ``schemas/avro/backbone.*/v1.avsc`` (timestamps epoch
    ms, money integer paisa) so ``Codec().encode(topic, record)`` works on each of them.
    Counters are for the metrics catalog (``backbone/metrics.py``); labels are bounded sets.
    """

    stage_records: list[dict[str, Any]] = field(default_factory=list)
    kpi_windows: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    backlog: list[dict[str, Any]] = field(default_factory=list)
    feed_freshness: list[dict[str, Any]] = field(default_factory=list)
    facts: list[tuple[str, bytes]] = field(default_factory=list)
    """(key, value) messages for :data:`FACTS_TOPIC`."""
    valid_events: dict[tuple[str, str], int] = field(default_factory=dict)
    """(topic, agency) → valid, distinct events processed."""
    duplicates: dict[str, int] = field(default_factory=dict)
    """topic → events ignored as duplicates (same event_id, or a late event of an evicted case)."""
    late_events: dict[tuple[str, str], int] = field(default_factory=dict)
    """(mission, stage) → completions (or retractions) that arrived after their window closed."""
    max_occurred_at: int | None = None
    """Newest ``occurred_at`` among the valid events of the batch (feeds an event clock)."""

    def by_topic(self) -> dict[str, list[dict[str, Any]]]:
        """Output topic → raw records, for the topics that have records."""
        pairs = (
            (contracts.STAGE_RECORDS, self.stage_records),
            (contracts.KPI_WINDOWS, self.kpi_windows),
            (contracts.ALERTS, self.alerts),
            (contracts.DEAD_LETTERS, self.dead_letters),
            (contracts.BACKLOG, self.backlog),
            (contracts.FEED_FRESHNESS, self.feed_freshness),
        )
        return {topic: records for topic, records in pairs if records}

    def extend(self, other: Outputs) -> None:
        """Append ``other``'s records, facts and counters to this one."""
        self.stage_records.extend(other.stage_records)
        self.kpi_windows.extend(other.kpi_windows)
        self.alerts.extend(other.alerts)
        self.dead_letters.extend(other.dead_letters)
        self.backlog.extend(other.backlog)
        self.feed_freshness.extend(other.feed_freshness)
        self.facts.extend(other.facts)
        _add_counts(self.valid_events, other.valid_events)
        _add_counts(self.duplicates, other.duplicates)
        _add_counts(self.late_events, other.late_events)
        if other.max_occurred_at is not None and (
            self.max_occurred_at is None or other.max_occurred_at > self.max_occurred_at
        ):
            self.max_occurred_at = other.max_occurred_at

    def __len__(self) -> int:
        return (
            len(self.stage_records)
            + len(self.kpi_windows)
            + len(self.alerts)
            + len(self.dead_letters)
            + len(self.backlog)
            + len(self.feed_freshness)
            + len(self.facts)
        )


# -- KPI group keys -----------------------------------------------------------------------
class GroupKey(NamedTuple):
    """A KPI group: where completions and backlog are aggregated."""

    mission: str
    journey: str
    stage: str
    owner_agency: str
    province: str
    port: str


def group_key(group: GroupKey | Sequence[str]) -> str:
    """The facts-topic key and hop-2 state key of a KPI group: its six parts joined by ``|``."""
    return "|".join(group)


def parse_group_key(key: str) -> GroupKey:
    parts = key.split("|")
    if len(parts) != 6:
        raise ValueError(f"{key!r} is not a KPI group key (mission|journey|stage|owner|province|port)")
    return GroupKey(*parts)


def feed_key(agency: str) -> str:
    return FEED_KEY_PREFIX + agency


# -- batches -----------------------------------------------------------------------------
DEFAULT_BATCH_MAX = 5000
"""Most events per batch. Live traffic never fills it (``batch_within_s`` closes a batch first:
about 1,000 events at 10k ev/s); a catch-up does, and larger batches cost less per event (fewer
broker round trips, a case's or group's state written once per batch). 100k-event replays,
interleaved pairs on one host: 5,000 against 2,000 gave 0.95–1.35× the events/s (faster in 7 of
8 pairs, mean 1.16×); 10,000 was no faster than 5,000 (3 triples). A batch of 5,000 holds the
event loop about 0.4 s; facts messages stay small
(:data:`stream_processors.journeys.MAX_FACTS_PER_MESSAGE`)."""


# -- facts (hop 1 → hop 2) ----------------------------------------------------------------
# One fact is a flat list; the first five items are the kind and the cause:
#   ["b", topic, partition, offset, sign, started_at, amount_paisa|None]        backlog ±1
#   ["c", topic, partition, offset, sign, ended_at, duration_ms, sla_met(0|1)]  completion ±1
#   ["f", topic, partition, offset, count, max_occurred_at, max_published_at,
#    [distinct occurred_at, ascending]]                                          feed (max offset)
# ``sign`` is +1 (add) or -1 (retract: a correction moved or removed an earlier contribution).
BACKLOG_FACT = "b"
COMPLETION_FACT = "c"
FEED_FACT = "f"


class FactBatch(NamedTuple):
    """The facts of one group (or feed) from one hop-1 batch."""

    watermark_ms: int | None
    """Hop 1's newest occurred_at when it produced the batch: drives window closing in hop 2."""
    facts: list[list[Any]]


def encode_facts(watermark_ms: int | None, facts: Sequence[Sequence[Any]]) -> bytes:
    """Facts message value: compact JSON ``{"wm": watermark, "f": [fact, ...]}``."""
    return orjson.dumps({"wm": watermark_ms, "f": facts})


def decode_facts(value: bytes) -> FactBatch:
    """Inverse of :func:`encode_facts`; raises ``ValueError`` naming the problem."""
    try:
        data = orjson.loads(value)
        return FactBatch(data["wm"], data["f"])
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"not a facts message ({type(exc).__name__}: {exc})") from exc


# -- the engines' contracts (implemented in journeys.py and kpis.py) ------------------------
class JourneyProcessor(Protocol):
    """Hop 1: ``JourneyEngine(missions, settings, codec=None, registry=None)``."""

    def process(self, batch: Sequence[InputMessage], states: StateStore, now_ms: int) -> Outputs:
        """Decode, validate, de-duplicate and fold a batch of agency messages into case states.

        Writes each changed case once, at the end. An event is "from the future" (invalid) when
        its times exceed ``max(now_ms, message timestamp) + settings.max_future_skew_ms``, so a
        replay on an event clock does not reject the batch's newest events.
        """
        ...

    def sweep(self, states: StateStore, now_ms: int) -> Outputs:
        """CASE_SLA FIRING for open stages whose deadline ``started_at + sla`` is before ``now_ms``."""
        ...

    def rebuild_index(self, states: StateStore) -> None:
        """Rebuild the in-memory deadline index from ``states`` (after a rebalance or recovery)."""
        ...


class KpiProcessor(Protocol):
    """Hop 2: ``KpiEngine(missions, settings)``."""

    def apply(self, batch: Sequence[InputMessage], states: StateStore, now_ms: int) -> Outputs:
        """Fold facts messages into group and feed state; emits backlog and feed freshness rows.

        KPI window rows are *not* emitted here: changed windows are marked dirty (in state) and
        emitted by the next :meth:`tick`, so a catch-up emits each window at most once per tick
        rather than once per batch.
        """
        ...

    def tick(self, states: StateStore, now_ms: int) -> Outputs:
        """Emit dirty windows, close windows behind the watermark, evaluate KPI_TARGET and FEED_SILENT."""
        ...

    def rebuild_index(self, states: StateStore) -> None:
        """Restore the in-memory watermark and dirty-key index from ``states``."""
        ...
