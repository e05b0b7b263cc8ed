"""A state over the record size limit is written to the changelog in pieces and recovered whole.

Kafka refuses records over ``message.max.bytes`` (1 MB by default); a KPI group whose windows
stay open for weeks of event time (a backfill read topic by topic, a replay on the event clock)
grew past it and the worker stopped with MSG_SIZE_TOO_LARGE. The store writes such a state as
pieces plus a head record; Faust's recovery puts every record in the local table as it is, and
:meth:`PartitionedTableStore.reassemble` joins them. Recovery is replayed here exactly as Faust
does it for a ``json`` table: records in order, JSON key and value, ``None`` deletes.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from engine_fixtures import DictTable

from stream_processors.state import ChangelogRecord, PartitionedTableStore

LIMIT = 2_000


def new_store() -> PartitionedTableStore:
    store = PartitionedTableStore(DictTable("test-kpi_state-changelog"), 3, max_record_bytes=LIMIT)  # type: ignore[arg-type]
    store.owned = frozenset({0, 1, 2})
    return store


def write(store: PartitionedTableStore, log: list[ChangelogRecord], **values: Any) -> list[ChangelogRecord]:
    """One engine call: pending writes (``None`` deletes), their changelog, then apply."""
    store.route({key: 1 for key in values})
    for key, value in values.items():
        if value is None:
            del store[key]
        else:
            store[key] = value
    records = store.changelog()
    log.extend(records)
    store.apply()
    return records


def recovered(log: list[ChangelogRecord]) -> PartitionedTableStore:
    """A fresh store whose table Faust's recovery filled from ``log``, reassembled."""
    store = new_store()
    data = store.local
    for record in log:
        key = orjson.loads(record.key)
        if record.value is None:
            data.pop(key, None)
        else:
            data[key] = orjson.loads(record.value)
    store.reassemble()
    return store


def big_state(panes: int) -> dict[str, Any]:
    """A KPI-group-like state: one pane per minute, text with quotes and non-ASCII characters."""
    return {
        "p": {"1m": {str(60_000 * i): [i, i // 2, 1000 * i, {"000123": 1}] for i in range(panes)}},
        "note": 'quoted "text", backslash \\ and non-ASCII: 100 € in Lahore — لاہور 🚢' * 3,
    }


def test_a_state_over_the_limit_is_written_in_pieces_under_it_and_recovered_whole() -> None:
    store, log = new_store(), []
    state = big_state(400)
    records = write(store, log, group=state, small={"n": 1})
    assert len(orjson.dumps([1, state])) > 7 * LIMIT
    pieces = [r for r in records if b"#piece#" in r.key]
    assert len(pieces) >= 14  # pieces of LIMIT / 4 characters
    assert all(len(r.key) + len(r.value or b"") <= LIMIT + 100 for r in records)
    assert {r.partition for r in records} == {1}  # pieces travel with their key
    head = [r for r in records if orjson.loads(r.key) == "group"]
    assert len(head) == 1 and records.index(head[0]) > max(records.index(p) for p in pieces)
    assert store.get("group") == state  # the live store holds the state itself

    again = recovered(log)
    assert again.get("group") == state
    assert again.get("small") == {"n": 1}
    assert sorted(again.keys()) == ["group", "small"]  # no piece or head left over


def test_pieces_a_state_no_longer_needs_are_deleted_when_it_shrinks_or_goes() -> None:
    store, log = new_store(), []
    write(store, log, group=big_state(300))
    many = sum(1 for r in log if b"#piece#" in r.key)
    records = write(store, log, group=big_state(100))
    fewer = sum(1 for r in records if b"#piece#" in r.key and r.value is not None)
    deleted = [r for r in records if b"#piece#" in r.key and r.value is None]
    assert 0 < fewer < many and len(deleted) == many - fewer
    assert recovered(log).get("group") == big_state(100)

    records = write(store, log, group={"p": {}})
    assert sum(1 for r in records if b"#piece#" in r.key and r.value is None) == fewer
    assert recovered(log).get("group") == {"p": {}}
    assert not [k for k in recovered(log).local if "#piece#" in k]

    write(store, log, group=big_state(150))
    records = write(store, log, group=None)
    assert any(orjson.loads(r.key) == "group" and r.value is None for r in records)
    assert recovered(log).get("group") is None
    assert not recovered(log).local


def test_a_recovered_store_keeps_track_of_its_pieces() -> None:
    """After a restart the store must still delete the pieces written before it."""
    store, log = new_store(), []
    write(store, log, group=big_state(300))
    restarted = recovered(log)
    write(restarted, log, group={"p": {}})
    assert not [k for k in recovered(log).local if "#piece#" in k]


def test_a_missing_piece_is_an_error_naming_the_state() -> None:
    store, log = new_store(), []
    write(store, log, group=big_state(200))
    broken = [r for r in log if not r.key.endswith(b'#piece#1"')]
    with pytest.raises(RuntimeError, match=r"state 'group'.*pieces \[1\]"):
        recovered(broken)
