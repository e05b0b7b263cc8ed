"""Column-wise building blocks of the sink: range checks over whole columns and Arrow tables built from
columns agree with an independent per-row reading of the same values (no broker, no ClickHouse)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from sink_fixtures import BASE_MS, agency_events

from schemas import contracts
from sinks import rows
from sinks.rows import Repeated
from sinks.sink_batch import keep_rows

# ClickHouse DateTime64(3): 1900-01-01 00:00:00.000 .. 2299-12-31 23:59:59.999 (docs); Decimal(18, 2).
FIRST_MS = int(datetime(1900, 1, 1, tzinfo=UTC).timestamp() * 1000)
LAST_MS = int(datetime(2300, 1, 1, tzinfo=UTC).timestamp() * 1000) - 1
LARGEST_PAISA = int(Decimal("9999999999999999.99") * 100)


def _fits(kind: str, v: int | None) -> bool:
    if v is None:
        return True
    if kind == "timestamp":
        return FIRST_MS <= v <= LAST_MS
    return -LARGEST_PAISA <= v <= LARGEST_PAISA


edge_ms = st.sampled_from([FIRST_MS - 1, FIRST_MS, LAST_MS, LAST_MS + 1, BASE_MS, None])
edge_paisa = st.sampled_from([LARGEST_PAISA, LARGEST_PAISA + 1, -LARGEST_PAISA - 1, 0, 12_345, None])


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_out_of_range_finds_exactly_the_rows_clickhouse_would_clamp(data: Any) -> None:
    spec = rows.output_spec(contracts.BACKLOG)  # timestamps (one nullable) and nullable money
    n = data.draw(st.integers(min_value=1, max_value=12))
    columns: list[Any] = []
    for col in spec.columns:
        if col.kind == "timestamp":
            values = data.draw(st.lists(edge_ms, min_size=n, max_size=n))
            columns.append(values if col.nullable else [BASE_MS if v is None else v for v in values])
        elif col.kind == "money":
            columns.append(data.draw(st.lists(edge_paisa, min_size=n, max_size=n)))
        else:
            columns.append(Repeated("x", n))
    checked = [(j, c.kind, c.name) for j, c in enumerate(spec.columns) if c.kind in ("timestamp", "money")]
    expected = {i for i in range(n) if not all(_fits(kind, columns[j][i]) for j, kind, _ in checked)}
    found = rows.out_of_range(spec, columns)
    assert set(found) == expected
    for i, problem in found.items():  # the first offending column, in column order, is named
        first = next(name for j, kind, name in checked if not _fits(kind, columns[j][i]))
        assert problem.field == first


def test_event_columns_make_the_same_arrow_table_as_the_rows() -> None:
    """Columns (with the absent fields Repeated) and the per-row tuples of the same events agree."""
    spec = rows.events_spec()
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for topic, raw in agency_events(20, seed=9):
        by_topic.setdefault(topic, []).append(raw)
    for topic, records in by_topic.items():
        n = len(records)
        columns = rows.event_columns(topic, records, [2] * n, list(range(n)))
        assert any(isinstance(c, Repeated) for c in columns)
        from_columns = spec.columns_to_arrow(columns).to_pylist()
        from_rows = spec.to_arrow([rows.event_row(topic, r, 2, i) for i, r in enumerate(records)]).to_pylist()
        assert from_columns == from_rows
        first = from_columns[0]
        assert first["topic"] == topic and first["kafka_partition"] == 2 and first["kafka_offset"] == 0
        assert first["event_id"] == records[0]["event_id"]
        assert first["occurred_at"] == datetime.fromtimestamp(records[0]["occurred_at"] / 1000, tz=UTC)


def test_keep_rows_drops_the_same_rows_from_lists_and_repeated_columns() -> None:
    columns: list[Any] = [[0, 1, 2, 3, 4], Repeated("", 5), ["a", "b", "c", "d", "e"]]
    kept = keep_rows(columns, {1, 3})
    assert kept[0] == [0, 2, 4] and kept[2] == ["a", "c", "e"]
    assert isinstance(kept[1], Repeated) and list(kept[1]) == ["", "", ""]
    assert list(Repeated(7, 5)[1:4]) == [7, 7, 7]
