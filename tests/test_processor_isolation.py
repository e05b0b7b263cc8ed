"""A batch the engine raises on: the runtime isolates the message and loses none of its neighbours.

The worker runs a failed batch again one message at a time and dead-letters the message that
raises (``processing_error``). The engines update the case state they read in place, so the
failed call has already folded its events into the stored states when it raises; unless the
store undoes that (:meth:`PartitionedTableStore.discard`), the one-by-one retry sees those
events as duplicates and their stage records, facts and alerts are never produced.

Real engine, real store and runtime; only the Faust table (a dict) and the producer (records
what it is asked to send) are stand-ins. The reference is the same engine on the batch
without the poison message.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

from engine_fixtures import HOUR, T0, DictTable, Feeder, export_case, missions

from backbone.config import Settings
from backbone.metrics import Metrics
from stream_processors import state as state_module
from stream_processors.api import InputMessage, Outputs
from stream_processors.clock import FixedClock
from stream_processors.journeys import JourneyEngine
from stream_processors.state import PartitionedTableStore
from stream_processors.worker import PROCESSING_ERROR, ProcessorRuntime
from stream_processors.worker_metrics import WorkerMetrics

POISON = "CASE-POISON"
PARTITIONS = 3


class Producer:
    def __init__(self) -> None:
        self.sent = Outputs()

    def send(self, outputs: Outputs) -> int:
        self.sent.extend(outputs)
        return len(outputs)

    def send_changelog(self, records: list[Any]) -> int:
        return len(records)

    def flush(self) -> Counter[str]:
        return Counter()


class RaisesOnPoison(JourneyEngine):
    """The real engine, with a bug: it raises on the poison case *after* processing the batch."""

    def process(self, batch: Any, states: Any, now_ms: int) -> Outputs:
        out = super().process(batch, states, now_ms)
        if any(m.key == POISON.encode() for m in batch):
            raise RuntimeError("engine bug on the poison case")
        return out


def runtime(
    engine: JourneyEngine, producer: Any = None
) -> tuple[ProcessorRuntime, PartitionedTableStore, Any]:
    """A runtime around ``engine`` with a dict table and a stand-in producer (default: :class:`Producer`)."""
    store = PartitionedTableStore(DictTable(), PARTITIONS)  # type: ignore[arg-type]
    store.owned = frozenset(range(PARTITIONS))
    producer = producer or Producer()
    rt = ProcessorRuntime(
        Settings(grace_ms=HOUR),
        engine,
        None,
        store,
        None,  # type: ignore[arg-type]
        producer,  # type: ignore[arg-type]
        WorkerMetrics(Metrics()),
        FixedClock(T0 + 100 * HOUR),
    )
    return rt, store, producer


class Event:
    """What ``to_input_messages`` reads of a Faust event."""

    def __init__(self, m: InputMessage) -> None:
        self.message = type(
            "M",
            (),
            {
                "topic": m.topic,
                "partition": m.partition,
                "offset": m.offset,
                "key": m.key,
                "value": m.value,
                "timestamp": None,
            },
        )()


def records(out: Outputs) -> dict[str, tuple[Any, ...]]:
    return {
        r["record_id"]: (r["state"], r["started_at"], r["ended_at"], r["duration_ms"], r["sla_met"])
        for r in out.stage_records
    }


def fact_entries(out: Outputs) -> Counter[tuple[str, str]]:
    """Stage facts as (KPI group, entry); feed facts as their event counts per feed and topic.

    Facts are packed per call (one message per KPI group, a feed's events folded into one entry
    with their count), so a batch run one message at a time packs the same content differently.
    """
    entries: Counter[tuple[str, str]] = Counter()
    for key, value in out.facts:
        for entry in json.loads(value)["f"]:
            if key.startswith("feed|"):
                entries[(key, entry[1])] += entry[4]
            else:
                entries[(key, json.dumps(entry))] += 1
    return entries


def test_a_batch_the_engine_raises_on_dead_letters_the_poison_and_keeps_every_neighbour() -> None:
    events = [e for i in range(4) for e in export_case(f"CASE-{i}", T0 + i * HOUR)]
    poison_events = export_case(POISON, T0)[:2]
    feeder = Feeder(PARTITIONS)
    # First batch: the cases start; second batch: they finish, and the poison case arrives.
    first = feeder.messages([e for e in events if e[1]["status"] in ("FILED", "CLEARED")])
    second = feeder.messages(
        [e for e in events if e[1]["status"] not in ("FILED", "CLEARED")] + poison_events
    )
    poison_msgs = [m for m in second if m.key == POISON.encode()]

    rt, store, producer = runtime(
        RaisesOnPoison(missions(), Settings(grace_ms=HOUR), wall_clock=FixedClock(T0))
    )
    for batch in (first, second):
        asyncio.run(rt.on_journey_events([Event(m) for m in batch]))

    clean_rt, _, clean = runtime(
        JourneyEngine(missions(), Settings(grace_ms=HOUR), wall_clock=FixedClock(T0))
    )
    for batch in (first, [m for m in second if m.key != POISON.encode()]):
        asyncio.run(clean_rt.on_journey_events([Event(m) for m in batch]))

    dead = producer.sent.dead_letters
    assert [(d["key"], d["reason"]) for d in dead] == [(m.key, PROCESSING_ERROR) for m in poison_msgs]
    assert "engine bug on the poison case" in dead[0]["detail"]
    got, want = records(producer.sent), records(clean.sent)
    assert len(want) == 4 * 4  # customs, hand-off, port and end-to-end stages of four cases...
    assert got == want  # ...and the isolated retry produced every one of them, closed
    # Facts are packed per call (one per KPI group), so compare what they carry.
    assert fact_entries(producer.sent) == fact_entries(clean.sent)
    assert POISON not in store.local  # the poison case's state was never committed
    assert {k for k in store.local} == {f"CASE-{i}" for i in range(4)}


def test_the_undo_restores_what_the_table_held_whoever_wrote_it(monkeypatch: Any) -> None:
    """A read's pre-image is the JSON the store's last write produced (not encoded again), but
    only while the table still holds that write: a value Faust's recovery put there since is
    what an undo restores."""
    store = PartitionedTableStore(DictTable(), PARTITIONS)  # type: ignore[arg-type]
    store.owned = frozenset(range(PARTITIONS))
    store.route({"CASE-A": 1, "CASE-B": 2})
    store["CASE-A"], store["CASE-B"] = {"n": 1}, {"n": 1}
    store.changelog()
    store.apply()

    encoded: list[Any] = []
    real = state_module._json
    monkeypatch.setattr(state_module, "_json", lambda v: encoded.append(json.loads(real(v))) or real(v))
    store.local["CASE-B"] = [2, {"n": 7}]  # recovered from the changelog: another worker's write
    for key in ("CASE-A", "CASE-B"):
        store.get(key)["n"] = 99  # the engines change what they read in place...
    store.discard()  # ...and the call raised
    assert store.local == {"CASE-A": [1, {"n": 1}], "CASE-B": [2, {"n": 7}]}
    assert encoded == [[2, {"n": 7}]]  # only the value the store did not write was encoded
