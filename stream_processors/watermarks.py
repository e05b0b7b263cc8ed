"""When may a processor call something "overdue"? The low watermark over its input partitions.

A CASE_SLA or FEED_SILENT check asks whether an event has *not* arrived by some time. That
question is only fair once the events up to that time have been read. Live, they have (give or
take delivery latency), so "now" is the right reference. While a backlog is drained (after an
outage, on a rebalance, during the simulator's warm-up backfill) they have not: partitions and
topics are read at different speeds, and a stage whose end event is still waiting in another
topic would fire although it ended well within its SLA.

So overdue checks are judged at :meth:`CatchUpClock.judge_time`::

    min(now, newest occurred_at read so far on each *active* input topic-partition)

A topic-partition is active while it delivered a (valid) event less than ``idle_ms`` of wall
time ago. An idle one is left out: it is either caught up or silent, and a silent topic must not
hold alerts back forever. A topic-partition the processor expects (its partition index holds
cases, see :meth:`CatchUpClock.expect`) but has not read from yet counts as "nothing read yet"
(it holds the judge time back) until it has been expected for ``idle_ms``.

Idle time is measured on a wall clock of its own (injectable, :class:`~stream_processors.clock.Clock`),
not on the processors' "now": on the event clock "now" leaps ahead with the newest event read,
which would make a lagging partition look idle exactly when it matters.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from stream_processors.clock import Clock

DEFAULT_PARTITION_IDLE_MS = 60_000
"""``Settings.partition_idle_ms``'s default."""

NEVER = -(2**63)
"""Judge time while a topic-partition is expected but nothing was read from it: nothing is overdue."""


class CatchUpClock:
    """Per input topic-partition: newest occurred_at read and the wall time of the last read."""

    def __init__(self, topics: Collection[str], idle_ms: int, wall: Clock) -> None:
        self.topics = tuple(sorted(topics))
        """Topics whose partition ``p`` is expected once partition index ``p`` is (co-partitioning)."""
        self.idle_ms = idle_ms
        self.wall = wall
        self._tps: dict[tuple[str, int], list[int | None]] = {}  # tp -> [newest or None, last read (wall)]
        self._by_partition: dict[int, list[list[int | None]]] = {}

    def wall_ms(self) -> int:
        return self.wall.now_ms()

    def _entry(self, topic: str, partition: int, wall_ms: int) -> list[int | None]:
        entry = self._tps.get((topic, partition))
        if entry is None:
            entry = self._tps[(topic, partition)] = [None, wall_ms]
            self._by_partition.setdefault(partition, []).append(entry)
            for other in self.topics:  # co-partitioned topics: expect the same index of each
                if (other, partition) not in self._tps:
                    self._entry(other, partition, wall_ms)
        return entry

    def expect(self, partitions: Iterable[int], wall_ms: int | None = None) -> None:
        """Partition indexes that hold state (after a recovery): hold checks until they are read."""
        wall_ms = self.wall_ms() if wall_ms is None else wall_ms
        for p in partitions:
            for topic in self.topics:
                self._entry(topic, p, wall_ms)

    def expect_topic_partitions(self, tps: Iterable[tuple[str, int]], wall_ms: int | None = None) -> None:
        wall_ms = self.wall_ms() if wall_ms is None else wall_ms
        for topic, p in tps:
            self._entry(topic, p, wall_ms)

    def observe(self, topic: str, partition: int, newest_occurred_at: int, wall_ms: int) -> None:
        """A batch read events from ``(topic, partition)``; ``newest_occurred_at`` is their newest."""
        entry = self._entry(topic, partition, wall_ms)
        newest = entry[0]
        if newest is None or newest_occurred_at > newest:
            entry[0] = newest_occurred_at
        entry[1] = wall_ms

    def judge_time(self, now_ms: int, partition: int | None = None, wall_ms: int | None = None) -> int:
        """``min(now, newest occurred_at over the active topic-partitions)`` (of ``partition``, or all)."""
        wall_ms = self.wall_ms() if wall_ms is None else wall_ms
        entries: Iterable[list[int | None]]
        if partition is None:
            entries = self._tps.values()
        else:
            entries = self._by_partition.get(partition, ())
        judge = now_ms
        idle_before = wall_ms - self.idle_ms
        for newest, last_read in entries:
            if last_read is not None and last_read < idle_before:
                continue  # idle: caught up or silent
            if newest is None:
                return NEVER
            if newest < judge:
                judge = newest
        return judge

    def partitions(self) -> list[int]:
        return sorted(self._by_partition)

    def forget(self) -> None:
        """Drop everything (a rebalance: the assignment changed)."""
        self._tps.clear()
        self._by_partition.clear()
