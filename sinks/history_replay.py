"""Publish the events stored in ClickHouse back into the agency topics of a fresh broker.

Why: the processors keep their state (open cases, KPI panes, backlog, feeds) in Kafka changelog
topics, and the embedded broker keeps everything in memory. A restarted ``backbone up`` starts an
empty broker over a ClickHouse that still holds the history, so without this the processors
began from nothing: an end event sent after the restart never closed a case opened before it,
and the new run's backlog and KPI rows (same ids, newer versions) overwrote the board's history
with partial numbers. ClickHouse's ``events`` table is the durable record of every valid event,
so replaying it lets the processors rebuild the same state as a catch-up after an outage would
(sweeps and ticks judge it at the catch-up clock, ``stream_processors/watermarks.py``).

Events go out in the order the sink stored them (``ingested_at``, then the source partition and
offset), through :class:`producers.publisher.Publisher`, so they are validated and encoded exactly
as an agency's would be. An event the current contract refuses (e.g. a registry entry removed
since) is reported, and stays in ClickHouse; nothing is deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from schemas import contracts

log = logging.getLogger("backbone.history_replay")

CHUNK_ROWS = 50_000
"""Rows read from ClickHouse per query (the replay's memory stays flat however long the history)."""
_COLUMN_SQL = {
    "event_id": "toString(event_id) AS event_id_text",
    "occurred_at": "toUnixTimestamp64Milli(occurred_at) AS occurred_at_ms",
    "published_at": "toUnixTimestamp64Milli(published_at) AS published_at_ms",
}
"""Columns read in the records' raw shape (text UUID, epoch ms), under names of their own: an alias
equal to its column would shadow it in ClickHouse's WHERE and ORDER BY."""
_RESULT_NAME = {name: sql.rsplit(" AS ", 1)[1] for name, sql in _COLUMN_SQL.items()}
"""Field name → the alias its value is read under (from :data:`_COLUMN_SQL`, never a second list)."""


@dataclass
class ReplayResult:
    """What a replay published, per topic, and the records the current contract refused."""

    published: dict[str, int] = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)
    failed: int = 0

    @property
    def total(self) -> int:
        return sum(self.published.values())


def stored_events(client: Any, chunk_rows: int = CHUNK_ROWS) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(topic, record)`` for every distinct stored event, in the order the sink stored them.

    Keyset pagination over ``(ingested_at, topic, kafka_partition, kafka_offset, event_id)``:
    each page is one bounded query, and the order is total, so no event is read twice or skipped.
    """
    fields = {t: contracts.current(t).field_names for t in contracts.INPUT_TOPICS}
    names = list(dict.fromkeys(n for t in contracts.INPUT_TOPICS for n in fields[t]))
    select = ", ".join(
        ["topic", *(_COLUMN_SQL.get(n, n) for n in names), "ingested_at", "kafka_partition", "kafka_offset"]
    )
    key = "(ingested_at, topic, kafka_partition, kafka_offset, toString(event_id))"
    after: dict[str, Any] | None = None
    while True:
        where = ""
        if after is not None:
            where = (
                f"WHERE {key} > ({{at:DateTime64(3, 'UTC')}}, {{topic:String}}, {{p:Int32}}, {{o:Int64}}, "
                "{eid:String})"
            )
        rows = client.query(
            f"SELECT {select} FROM events_distinct {where} ORDER BY {key} LIMIT {int(chunk_rows)}",
            parameters=after or {},
        ).named_results()
        count = 0
        last: dict[str, Any] | None = None
        for row in rows:
            count += 1
            last = row
            topic_fields = fields.get(row["topic"])
            if topic_fields is None:  # a topic no longer in the contracts: nothing can publish it
                log.warning("stored event of an unknown topic skipped", extra={"topic": row["topic"]})
                continue
            yield row["topic"], {n: row[_RESULT_NAME.get(n, n)] for n in topic_fields}
        if last is None or count < chunk_rows:
            return
        after = {
            "at": last["ingested_at"],
            "topic": last["topic"],
            "p": last["kafka_partition"],
            "o": last["kafka_offset"],
            "eid": last["event_id_text"],
        }


def replay(client: Any, publisher: Any, on_progress: Callable[[int], None] | None = None) -> ReplayResult:
    """Publish every stored event through ``publisher`` (a :class:`~producers.publisher.Publisher`),
    in stored order, a run of same-topic events per ``publish_many`` call."""
    result = ReplayResult()
    run_topic: str | None = None
    run: list[dict[str, Any]] = []

    def send() -> None:
        if not run or run_topic is None:
            return
        refused = publisher.publish_many(run_topic, run)
        for r in refused:
            record = run[r.ref]
            where = f"{run_topic} case {record.get('case_id')!r} event {record.get('event_id')}"
            result.rejected.append(f"{where}: {r.field}: {r.reason}")
        result.published[run_topic] = result.published.get(run_topic, 0) + len(run) - len(refused)
        result.failed += sum(1 for d in publisher.poll_results() if not d.ok)
        run.clear()
        if on_progress is not None:
            on_progress(result.total)

    for topic, record in stored_events(client):
        if topic != run_topic or len(run) >= 5_000:
            send()
            run_topic = topic
        run.append(record)
    send()
    result.failed += sum(1 for d in publisher.flush() if not d.ok)
    return result
