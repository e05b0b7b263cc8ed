"""A table's buffered rows, held as Arrow tables, and the helpers that build them from columns.

Columns, not rows: the sink turns a whole consume batch of one topic into one Python list per
column (:func:`sinks.rows.event_columns`) and at once into an Arrow table, so no per-row tuple
or dict outlives the decode (fewer objects for the garbage collector, compact memory), the
columns a family lacks cost nothing (:class:`sinks.rows.Repeated`), and the insert thread only
concatenates and slices (outside the GIL) before handing the rows to ClickHouse.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from confluent_kafka import Message

from sinks.rows import Repeated, TableSpec


@dataclass
class TableBatch:
    """Rows waiting for one table, with the message each came from (to park it if refused).

    ``sources[i]`` is None for a row the sink built itself (a dead letter).
    """

    spec: TableSpec
    parts: list[pa.Table] = field(default_factory=list)
    sources: list[Message | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sources)

    def extend(self, rows: pa.Table, sources: Sequence[Message | None]) -> None:
        """Append the rows of ``rows`` (one per source)."""
        if rows.num_rows != len(sources):
            raise ValueError(f"{rows.num_rows} rows but {len(sources)} sources")
        self.parts.append(rows)
        self.sources.extend(sources)

    def take(self) -> TableBatch:
        """Hand the buffered rows over (to an insert) and start empty."""
        taken = TableBatch(self.spec, self.parts, self.sources)
        self.parts, self.sources = [], []
        return taken

    def table(self) -> pa.Table:
        """Every row as one contiguous Arrow table (slices of it are zero-copy)."""
        if not self.parts:
            return self.spec.arrow_schema.empty_table()
        return pa.concat_tables(self.parts).combine_chunks()


def keep_rows(columns: Sequence[Sequence[Any]], drop: set[int]) -> list[Sequence[Any]]:
    """``columns`` without the rows whose index is in ``drop`` (the rare path: rows refused early)."""
    kept: list[Sequence[Any]] = []
    for c in columns:
        if isinstance(c, Repeated):
            kept.append(Repeated(c.value, len(c) - len(drop)))
        else:
            kept.append([v for i, v in enumerate(c) if i not in drop])
    return kept


def slice_columns(columns: Sequence[Sequence[Any]], lo: int, hi: int) -> list[Sequence[Any]]:
    return [c[lo:hi] for c in columns]
