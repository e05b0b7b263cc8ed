"""A table's buffered rows, held column by column, and the batch of every table handed to an insert.

Columns, not rows: the sink extends one Python list per column with a whole consume batch at a
time (:func:`sinks.rows.event_columns`), and an insert turns the lists into Arrow arrays
directly. No per-row tuple or dict outlives the decode, so the garbage collector has few
tracked objects to walk while a large batch is buffered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Message

from sinks.rows import TableSpec


@dataclass
class TableBatch:
    """Rows waiting for one table, with the message each came from (to park it if refused).

    ``sources[i]`` is None for a row the sink built itself (a dead letter).
    """

    spec: TableSpec
    columns: list[list[Any]] = field(default_factory=list)
    sources: list[Message | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.columns:
            self.columns = [[] for _ in self.spec.columns]

    def __len__(self) -> int:
        return len(self.sources)

    def extend(self, columns: Sequence[Sequence[Any]], sources: Sequence[Message | None]) -> None:
        """Append rows given as one sequence per column (all as long as ``sources``)."""
        for mine, values in zip(self.columns, columns, strict=True):
            mine.extend(values)
        self.sources.extend(sources)

    def take(self) -> TableBatch:
        """Hand the buffered rows over (to an insert) and start empty."""
        taken = TableBatch(self.spec, self.columns, self.sources)
        self.columns = [[] for _ in self.spec.columns]
        self.sources = []
        return taken

    def slice_columns(self, lo: int, hi: int) -> list[list[Any]]:
        """Rows ``lo:hi`` as columns; the lists themselves (no copy) when that is every row."""
        if lo == 0 and hi == len(self):
            return self.columns
        return [c[lo:hi] for c in self.columns]

    def row(self, i: int) -> tuple[Any, ...]:
        return tuple(c[i] for c in self.columns)


def keep_rows(columns: list[list[Any]], drop: set[int]) -> list[list[Any]]:
    """``columns`` without the rows whose index is in ``drop`` (the rare path: rows refused early)."""
    return [[v for i, v in enumerate(c) if i not in drop] for c in columns]
