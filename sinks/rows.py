"""Raw Avro records → ClickHouse rows → Arrow columns, driven by the Avro schemas themselves.

Every table's columns are derived from ``schemas/avro``: an output table has one column per
field of its ``backbone.*`` schema (same name), and ``events`` has the envelope, ``topic``, the
union of the five families' fields and the Kafka provenance. Nothing here lists fields by hand,
so a new schema field shows up as a missing column (tests/test_sink.py checks the tables against
these specs) instead of being silently dropped.

The sink builds columns, not rows: :func:`event_columns` / :func:`output_columns` turn a batch of
decoded records into one Python list per column (a C-level ``itemgetter`` pass per field, no
per-row tuple), and a batch becomes one Arrow table per insert (``insert_arrow`` is ~4x faster
than row-wise Python serialisation). Values ClickHouse would store silently but wrongly (a
timestamp outside DateTime64's range, money beyond Decimal(18, 2)) are found by
:func:`out_of_range` (a min/max per column; a per-row scan only when a bound is broken) and
refused with :class:`RowRejected`, so they are parked, not stored. The row-shaped helpers
(:func:`event_row`, :func:`output_row`) remain for tests and one-off inserts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from operator import itemgetter
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from schemas import contracts
from schemas.columnar_reader import unscaled

Kind = Literal[
    "string", "timestamp", "money", "int32", "int64", "uint64", "float64", "bool", "binary", "string_list"
]

# DateTime64(3) holds 1900-01-01 .. 2299-12-31; ClickHouse clamps values outside without error.
MIN_TIMESTAMP_MS = -2_208_988_800_000
MAX_TIMESTAMP_MS = 10_413_791_999_999
MAX_ABS_PAISA = 10**18 - 1  # Decimal(18, 2): at most 18 digits

_ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "timestamp": pa.timestamp("ms", tz="UTC"),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "uint64": pa.uint64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "binary": pa.binary(),
    "string_list": pa.list_(pa.string()),
}
MONEY_SCALE = 2  # Decimal(18, 2): the unscaled integers are the raw shape's paisa
_MONEY = pa.decimal128(18, MONEY_SCALE)


class RowRejected(ValueError):
    """A record that cannot be stored as it is; ``field`` names the column, ``reason`` says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class Column:
    """One column: its name (= the Avro field name), its kind, and the value used when absent."""

    name: str
    kind: Kind
    nullable: bool

    @property
    def absent(self) -> Any:
        """The value stored for an event whose family has no such field."""
        if self.nullable:
            return None
        return [] if self.kind == "string_list" else ""


def _kind(field_name: str, avro_type: Any) -> tuple[Kind, bool]:
    """Map an Avro field type to (kind, nullable)."""
    nullable = False
    t = avro_type
    if isinstance(t, list):
        members = [m for m in t if m != "null"]
        nullable = len(members) < len(t)
        if len(members) != 1:
            raise ValueError(f"{field_name}: unions of several non-null types are not stored")
        t = members[0]
    if isinstance(t, dict):
        logical = t.get("logicalType")
        base = t.get("type")
        if logical == "timestamp-millis":
            return "timestamp", nullable
        if logical == "decimal":
            return "money", nullable
        if logical == "uuid" or base == "enum":
            return "string", nullable
        if base == "array" and t.get("items") == "string":
            return "string_list", nullable
        t = base
    simple: dict[str, Kind] = {
        "string": "string",
        "long": "int64",
        "int": "int32",
        "double": "float64",
        "boolean": "bool",
        "bytes": "binary",
    }
    if t not in simple:
        raise ValueError(f"{field_name}: Avro type {t!r} has no column mapping")
    kind = simple[t]
    if field_name == "version":
        kind = "uint64"  # ReplacingMergeTree(version) needs an unsigned version
    return kind, nullable


@dataclass(frozen=True)
class TableSpec:
    """A table's columns and how a raw record of one of its topics becomes a row."""

    table: str
    columns: tuple[Column, ...]

    @cached_property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @cached_property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema(
            [pa.field(c.name, _MONEY if c.kind == "money" else _ARROW_TYPES[c.kind]) for c in self.columns]
        )

    @cached_property
    def checked(self) -> tuple[tuple[int, str, Kind], ...]:
        """(position, name, kind) of the columns whose values need a range check."""
        return tuple(
            (i, c.name, c.kind) for i, c in enumerate(self.columns) if c.kind in ("timestamp", "money")
        )

    def to_arrow(self, rows: Sequence[Sequence[Any]]) -> pa.Table:
        """Columnar Arrow table of ``rows`` (tuples in column order); see :meth:`columns_to_arrow`."""
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in self.columns]
        return self.columns_to_arrow(columns)

    def columns_to_arrow(self, columns: Sequence[Sequence[Any]]) -> pa.Table:
        """Arrow table of one Python sequence (or :class:`Repeated`) per column; raises
        ``pa.ArrowException``/``OverflowError``/``TypeError`` when a value does not fit its column
        type (the caller bisects to find the row)."""
        arrays = []
        for col, values in zip(self.columns, columns, strict=True):
            arrow_type = _MONEY if col.kind == "money" else _ARROW_TYPES[col.kind]
            if isinstance(values, Repeated):
                arrays.append(pa.repeat(pa.scalar(values.value, type=arrow_type), len(values)))
            elif col.kind == "money":
                arrays.append(_money_array(values))
            else:
                arrays.append(pa.array(values, type=arrow_type))
        return pa.Table.from_arrays(arrays, schema=self.arrow_schema)


@dataclass(frozen=True)
class Repeated(Sequence[Any]):
    """``n`` copies of one value: a column a family of events does not have, without a per-row list."""

    value: Any
    n: int

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return Repeated(self.value, len(range(*index.indices(self.n))))
        if not -self.n <= index < self.n:
            raise IndexError(index)
        return self.value


def _money_array(paisa: Sequence[int | None]) -> pa.Array:
    """Integer paisa → Decimal(18, 2) without going through Python ``Decimal`` objects.

    The unscaled integers are the paisa, so the int64 values are cast to a scale-0 decimal and
    the same 128-bit buffers are re-labelled as scale 2 (exact; 12345 paisa → 123.45).
    """
    unscaled = pa.array(paisa, type=pa.int64()).cast(pa.decimal128(38, 0))
    return pa.Array.from_buffers(_MONEY, len(unscaled), unscaled.buffers(), null_count=unscaled.null_count)


_BOUNDS: dict[str, tuple[int, int]] = {
    "timestamp": (MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS),
    "money": (-MAX_ABS_PAISA, MAX_ABS_PAISA),
}


def _range_problem(name: str, kind: str, v: Any) -> RowRejected | None:
    """The rejection for value ``v`` of a checked column, or None when it fits (or is NULL)."""
    if v is None:
        return None
    lo, hi = _BOUNDS[kind]
    if lo <= v <= hi:
        return None
    if kind == "timestamp":
        return RowRejected(name, f"timestamp {v} ms is outside DateTime64(3)'s range 1900-01-01..2299-12-31")
    return RowRejected(name, f"amount {v} paisa does not fit Decimal(18, 2)")


def check_ranges(spec: TableSpec, row: Sequence[Any]) -> None:
    """Raise :class:`RowRejected` for values ClickHouse would clamp instead of refusing."""
    for i, name, kind in spec.checked:
        problem = _range_problem(name, kind, row[i])
        if problem is not None:
            raise problem


def out_of_range(spec: TableSpec, columns: Sequence[Sequence[Any]]) -> dict[int, RowRejected]:
    """Row index → the first value (in column order, as :func:`check_ranges`) ClickHouse would clamp.

    One C-level min/max per checked column; rows are scanned one by one only when a bound is
    broken, which valid traffic never does.
    """
    rejected: dict[int, RowRejected] = {}
    for i, name, kind in spec.checked:
        values = columns[i]
        if isinstance(values, Repeated):  # the same value on every row
            if _range_problem(name, kind, values.value) is None:
                continue
            values = [values.value] * len(values)
        present = [v for v in values if v is not None] if None in values else values
        lo, hi = _BOUNDS[kind]
        if not present or (lo <= min(present) and max(present) <= hi):
            continue
        for row, v in enumerate(values):
            if row not in rejected and (problem := _range_problem(name, kind, v)) is not None:
                rejected[row] = problem
    return rejected


# -- the tables -------------------------------------------------------------------------------
OUTPUT_TABLES: dict[str, str] = {
    contracts.STAGE_RECORDS: "stage_records",
    contracts.KPI_WINDOWS: "kpi_windows",
    contracts.ALERTS: "alerts",
    contracts.DEAD_LETTERS: "dead_letters",
    contracts.BACKLOG: "backlog",
    contracts.FEED_FRESHNESS: "feed_freshness",
}
EVENTS_TABLE = "events"
DEAD_LETTERS_TABLE = "dead_letters"
PROVENANCE_COLUMNS = (Column("kafka_partition", "int32", False), Column("kafka_offset", "int64", False))


@cache
def output_spec(topic: str) -> TableSpec:
    """The table of an output topic: one column per field of its current schema."""
    fields = contracts.current(topic).schema["fields"]
    return TableSpec(
        OUTPUT_TABLES[topic], tuple(Column(f["name"], *_kind(f["name"], f["type"])) for f in fields)
    )


@cache
def events_spec() -> TableSpec:
    """The ``events`` table: envelope, topic, every family field (nullable or defaulted), provenance."""
    columns: dict[str, Column] = {}
    for name in contracts.ENVELOPE_FIELDS:
        f = next(f for f in contracts.current(contracts.CUSTOMS).schema["fields"] if f["name"] == name)
        kind, _ = _kind(name, f["type"])
        columns[name] = Column(name, kind, False)
        if name == "case_id":
            columns["topic"] = Column("topic", "string", False)
    for topic in contracts.INPUT_TOPICS:
        for f in contracts.current(topic).schema["fields"]:
            name = f["name"]
            if name in columns:
                if name not in contracts.ENVELOPE_FIELDS:
                    kind, nullable = _kind(name, f["type"])
                    prev = columns[name]
                    if prev.kind != kind:
                        raise ValueError(f"field {name} has kind {kind} on {topic} but {prev.kind} elsewhere")
                    columns[name] = Column(name, kind, prev.nullable or nullable)
                continue
            kind, nullable = _kind(name, f["type"])
            # money absent from a family is NULL (not 0: it would add up); other absent text is ''
            columns[name] = Column(name, kind, nullable or kind == "money")
    for c in PROVENANCE_COLUMNS:
        columns[c.name] = c
    return TableSpec(EVENTS_TABLE, tuple(columns.values()))


@cache
def _event_row_plan(topic: str) -> tuple[tuple[str | None, Any], ...]:
    """For each events column: (raw field to read, or None for a fixed value, fixed value)."""
    spec = events_spec()
    fields = set(contracts.current(topic).field_names)
    plan: list[tuple[str | None, Any]] = []
    for c in spec.columns:
        if c.name == "topic":
            plan.append((None, topic))
        elif c.name in fields:
            plan.append((c.name, None))
        elif c in PROVENANCE_COLUMNS:
            plan.append((None, None))  # filled per message
        else:
            plan.append((None, c.absent))
    return tuple(plan)


def event_row(topic: str, raw: Mapping[str, Any], partition: int, offset: int) -> tuple[Any, ...]:
    """A row of ``events`` from a decoded agency event (raw shape)."""
    row = [raw[name] if name is not None else fixed for name, fixed in _event_row_plan(topic)]
    row[-2] = partition
    row[-1] = offset
    out = tuple(row)
    check_ranges(events_spec(), out)
    return out


def event_columns(
    topic: str, records: Sequence[Mapping[str, Any]], partitions: list[int], offsets: list[int]
) -> list[Sequence[Any]]:
    """The ``events`` columns of decoded agency events of one topic (raw shape), with their provenance;
    the columns the family lacks (and ``topic``) are :class:`Repeated`.

    Not range-checked: see :func:`out_of_range`.
    """
    n = len(records)
    columns: list[Sequence[Any]] = [
        list(map(itemgetter(name), records)) if name is not None else Repeated(fixed, n)
        for name, fixed in _event_row_plan(topic)
    ]
    columns[-2] = partitions
    columns[-1] = offsets
    return columns


def _decoded_column(decoded: pa.Table, name: str, arrow_type: pa.DataType) -> pa.ChunkedArray:
    """A column of a columnar read as its table's Arrow type (an enum's dictionary decoded first)."""
    values = decoded.column(name)
    if pa.types.is_dictionary(values.type):
        values = pa.chunked_array([c.dictionary_decode() for c in values.chunks])
    return values.cast(arrow_type)


def event_table(topic: str, decoded: pa.Table, partitions: list[int], offsets: list[int]) -> pa.Table:
    """The ``events`` rows of agency events of one topic decoded into Arrow columns
    (:func:`schemas.columnar_reader.read_columns`): the table :func:`event_columns` and
    :meth:`TableSpec.columns_to_arrow` build from the same records. Not range-checked: the
    caller validated the batch (timestamps from 2000 on, money within Decimal(18, 2))."""
    spec = events_spec()
    n = decoded.num_rows
    arrays: list[pa.Array | pa.ChunkedArray] = []
    for column, (name, fixed) in zip(spec.columns, _event_row_plan(topic), strict=True):
        arrow_type = spec.arrow_schema.field(column.name).type
        if name is not None:
            arrays.append(_decoded_column(decoded, name, arrow_type))
        elif column in PROVENANCE_COLUMNS:
            arrays.append(
                pa.array(partitions if column.name == "kafka_partition" else offsets, type=arrow_type)
            )
        else:
            arrays.append(pa.repeat(pa.scalar(fixed, type=arrow_type), n))
    return pa.Table.from_arrays(arrays, schema=spec.arrow_schema)


def output_columns(topic: str, records: Sequence[Mapping[str, Any]]) -> list[Sequence[Any]]:
    """The columns of an output table from decoded ``backbone.*`` records (raw shape); not range-checked."""
    return [[r.get(name) for r in records] for name in output_spec(topic).names]


def output_table(topic: str, decoded: pa.Table) -> pa.Table | None:
    """The rows of an output table from records decoded into Arrow columns
    (:func:`schemas.columnar_reader.read_columns`): the table :func:`output_columns` and
    :meth:`TableSpec.columns_to_arrow` build from the same records; or None when a value needs
    the record-by-record path (it does not fit its column, or ClickHouse would clamp it)."""
    spec = output_spec(topic)
    arrays: list[pa.ChunkedArray] = []
    try:
        for column in spec.columns:
            arrays.append(_decoded_column(decoded, column.name, spec.arrow_schema.field(column.name).type))
        for i, _name, kind in spec.checked:  # as out_of_range: epoch ms and paisa within bounds
            values = unscaled(arrays[i], MONEY_SCALE) if kind == "money" else arrays[i].cast(pa.int64())
            bounds = pc.min_max(values).as_py()
            lo, hi = _BOUNDS[kind]
            if bounds["min"] is not None and not (lo <= bounds["min"] and bounds["max"] <= hi):
                return None
    except (pa.ArrowException, OverflowError, KeyError):
        return None
    return pa.Table.from_arrays(arrays, schema=spec.arrow_schema)


def output_row(topic: str, raw: Mapping[str, Any]) -> tuple[Any, ...]:
    """A row of an output table from a decoded ``backbone.*`` record (raw shape)."""
    spec = output_spec(topic)
    out = tuple(raw.get(name) for name in spec.names)
    check_ranges(spec, out)
    return out


def dead_letter_row(raw: Mapping[str, Any]) -> tuple[Any, ...]:
    """A row of ``dead_letters`` from a raw DeadLetter record (built by the sink itself)."""
    return output_row(contracts.DEAD_LETTERS, raw)
