"""A whole batch of Avro bodies decoded at once into columns (polars' Rust reader), for the sink.

Why: the sink turns every agency event into a row of columns, and decoding record by record
(:mod:`schemas.fast_reader`, generated Python) costs it 3–8 µs an event: about half of its time.
Here a batch of bodies written with one schema is framed as a single Avro object-container
block (the bodies concatenated, one header) and read by ``polars.read_avro`` in one call:
about 0.4 µs an event, already as columns.

Contract, as for the per-record fast reader: :func:`read_columns` returns exactly the values the
reference decoder (:meth:`schemas.codec.Codec.decode_reference`) would return for each body, as
columns; or None, and the caller decodes record by record, which decides every rejection and
its reason. It returns None for anything it is not sure of: other framings or writer schemas,
tombstones, oversized messages, any error of the reader, and any record whose boundaries are
not proven.

Proving the boundaries. Concatenated bodies lose their lengths: a body with a trailing byte, or
an overlong varint, would shift every later record. So after the read, each record's canonical
size (the shortest Avro encoding of the values read: minimal varints, one array block, minimal
decimal bytes) is computed from its columns and must equal its body's length. Let ``c_i`` be
the bytes the reader consumed for record ``i`` and ``s_i`` its canonical size; always
``s_i <= c_i``. If every ``s_i == len_i`` then every ``c_i >= len_i``; the reader reads only
inside the block, whose size is the sum of the ``len_i``, so no ``c_i`` can be larger: each
record was read from exactly its own bytes. A body that is valid but not canonical (e.g. written
with several array blocks) fails the check and takes the per-record path: slower, still right.

Proving the values. Within its bytes the reader is stricter than the reference decoder (invalid
UTF-8, an enum index out of range: errors) except in two places: it takes any union index but the
null branch's for the value branch, and any boolean byte but 1 for False. So each union's tag
byte is checked at its offset (known from the sizes of the fields before it), and booleans are
not read here at all (such schemas go record by record).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from polars.exceptions import PanicException

from schemas import contracts
from schemas.contracts import SchemaVersion
from schemas.fast_writer import _long as _varint  # Avro's zigzag long: the header's counts

if TYPE_CHECKING:
    from schemas.codec import Codec

log = logging.getLogger(__name__)

_SYNC = b"backbone-columns"  # any 16 bytes: the block's sync marker, checked by the reader
_MAX_ENUM_SYMBOLS = 64  # an enum index below 64 is one varint byte


class Unsupported(ValueError):
    """The schema uses a type this reader does not size (that schema is read record by record)."""


# Zigzag varint sizes: a value of magnitude m (v if v >= 0, else -v - 1) takes 1 byte, plus one
# per threshold 2^6, 2^13, 2^20, ... it reaches; searchsorted counts them in one vectorised pass.
_VARINT_STEPS = np.array([1 << (7 * k - 1) for k in range(1, 10)], dtype=np.int64)
# two's-complement bytes of a non-negative unscaled decimal: 1, plus one per 2^7, 2^15, ...
_DECIMAL_STEPS = np.array([1 << (8 * k - 1) for k in range(1, 8)], dtype=np.int64)

Sizer = Callable[[pa.ChunkedArray], np.ndarray]
"""The canonical encoded size of each value of one field's column, as int64."""


def _varint_size(magnitude: np.ndarray) -> np.ndarray:
    return 1 + np.searchsorted(_VARINT_STEPS, magnitude, side="right").astype(np.int64)


def _numbers(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A column as an int64 numpy array (nulls, if any, read as 0: unions are sized apart)."""
    numbers: np.ndarray = column.cast(pa.int64()).fill_null(0).to_numpy().astype(np.int64, copy=False)
    return numbers


def _long_sizes(values: np.ndarray) -> np.ndarray:
    return _varint_size(np.where(values < 0, ~values, values))


def _byte_lengths(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Each string's UTF-8 length, read off the Arrow offsets (a null's length is 0)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = []
    for chunk in chunks:
        if chunk.type not in (pa.string(), pa.large_string()):
            return _numbers(pc.binary_length(column))
        width = np.int64 if chunk.type == pa.large_string() else np.int32
        offsets = np.frombuffer(chunk.buffers()[1], dtype=width)[chunk.offset : chunk.offset + len(chunk) + 1]
        parts.append(np.diff(offsets).astype(np.int64, copy=False))
    lengths: np.ndarray = (
        parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.zeros(0, np.int64)
    )
    return lengths


def _string_sizes(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    n = _byte_lengths(column)
    sizes: np.ndarray = n + _varint_size(n)
    return sizes


def _long_column_sizes(column: pa.ChunkedArray) -> np.ndarray:
    """Longs and timestamp-millis (epoch ms, a long on the wire)."""
    return _long_sizes(_numbers(column))


def _enum_sizes(column: pa.ChunkedArray) -> np.ndarray:
    return np.ones(len(column), dtype=np.int64)


def _string_list_sizes(column: pa.ChunkedArray) -> np.ndarray:
    """One block (count, items, 0) per non-empty array; an empty array is the single 0 byte."""
    lists = column.combine_chunks()
    counts = _numbers(pc.list_value_length(lists))
    items = _string_sizes(lists.flatten())
    ends = np.concatenate(([0], np.cumsum(items)))
    offsets = _numbers(pa.array(lists.offsets)) - lists.offsets[0].as_py()
    item_bytes = ends[offsets[1:]] - ends[offsets[:-1]]
    return np.where(counts == 0, 1, _varint_size(counts) + item_bytes + 1)


def unscaled(column: pa.ChunkedArray, scale: int) -> pa.ChunkedArray:
    """A decimal column's unscaled integers as int64 (12345 for 123.45 at scale 2): its 128-bit
    values relabelled as scale 0, then cast (an amount beyond int64 raises)."""
    chunks = column.cast(pa.decimal128(38, scale)).chunks
    return pa.chunked_array(
        [
            pa.Array.from_buffers(pa.decimal128(38, 0), len(c), c.buffers(), c.null_count, c.offset)
            for c in chunks
        ],
        type=pa.decimal128(38, 0),
    ).cast(pa.int64())


def _decimal_sizer(scale: int) -> Sizer:
    def sizes(column: pa.ChunkedArray) -> np.ndarray:
        values = _numbers(unscaled(column, scale))
        nbytes = 1 + np.searchsorted(_DECIMAL_STEPS, values, side="right").astype(np.int64)
        # a negative amount is never valid: size -1 sends the batch record by record instead of
        # sizing two's-complement negatives here
        return np.where(values < 0, -1, nbytes + 1)

    return sizes


def _sizer(name: str, avro_type: Any) -> Sizer:
    """How to size one field's (non-null) values; :class:`Unsupported` for a type not handled here.
    A ``[null, T]`` union is sized as T here, its tag byte by :func:`read_bodies`."""
    t = avro_type
    if isinstance(t, list):
        members = [m for m in t if m != "null"]
        if len(t) != 2 or len(members) != 1:
            raise Unsupported(f"{name}: only [null, T] unions are sized")
        return _sizer(name, members[0])
    if isinstance(t, dict):
        logical, base = t.get("logicalType"), t.get("type")
        if base == "long" and logical == "timestamp-millis":
            return _long_column_sizes
        if base == "bytes" and logical == "decimal":
            return _decimal_sizer(int(t.get("scale", 0)))
        if base == "enum":
            if len(t["symbols"]) > _MAX_ENUM_SYMBOLS:
                raise Unsupported(f"{name}: enum of more than {_MAX_ENUM_SYMBOLS} symbols")
            return _enum_sizes
        if base == "array" and t.get("items") == "string":
            return _string_list_sizes
        if base == "string":  # e.g. {"type": "string", "logicalType": "uuid"}
            return _string_sizes
        raise Unsupported(f"{name}: type {t!r} is not sized")
    if t == "string":
        return _string_sizes
    if t == "long":
        return _long_column_sizes
    if t == "double":
        return lambda column: np.full(len(column), 8, dtype=np.int64)
    # not sized, so read record by record: "boolean" (the reader takes a corrupt byte 2 for False,
    # the reference decoder for True), "int" (a varint beyond 32 bits), and the rest
    raise Unsupported(f"{name}: type {t!r} is not sized")


Plan = tuple[bytes, tuple[tuple[str, Sizer, int | None], ...]]
"""The container header, and per field: its name, the sizer of its values, and for a
``[null, T]`` union the index of its null branch (None for other types)."""


def _null_branch(avro_type: Any) -> int | None:
    return avro_type.index("null") if isinstance(avro_type, list) else None


def _plan(version: SchemaVersion) -> Plan | None:
    """(the container header, each field's sizer) for ``version``; None if unsupported."""
    return _plan_by_fingerprint(version.fingerprint)


@cache
def _plan_by_fingerprint(fingerprint: bytes) -> Plan | None:
    version = contracts.by_fingerprint()[fingerprint]
    try:
        sizers = tuple(
            (f["name"], _sizer(f["name"], f["type"]), _null_branch(f["type"]))
            for f in version.schema["fields"]
        )
    except Unsupported as exc:
        log.info("no columnar reader for %s: %s", version.record_name, exc)
        return None
    schema = json.dumps(version.schema).encode()
    meta = _varint(2) + b"".join(
        _varint(len(k)) + k + _varint(len(v)) + v
        for k, v in ((b"avro.schema", schema), (b"avro.codec", b"null"))
    )
    return b"Obj\x01" + meta + b"\x00" + _SYNC, sizers


def read_bodies(version: SchemaVersion, bodies: Sequence[bytes]) -> pa.Table | None:
    """Decode Avro bodies all written with ``version``: an Arrow table with one column per field
    (enums dictionary-encoded, decimals exact, timestamps UTC), or None when the reader fails or
    a record's boundaries are not proven (see the module docstring)."""
    plan = _plan(version)
    if plan is None or not bodies:
        return None
    header, sizers = plan
    block = b"".join(bodies)
    data = b"".join((header, _varint(len(bodies)), _varint(len(block)), block, _SYNC))
    try:
        table = pl.read_avro(io.BytesIO(data)).to_arrow(compat_level=pl.CompatLevel.oldest())
        if table.num_rows != len(bodies):
            return None
        lengths = np.fromiter(map(len, bodies), dtype=np.int64, count=len(bodies))
        sizes = np.zeros(len(bodies), dtype=np.int64)  # per record: the fields sized so far
        tags: list[tuple[np.ndarray, np.ndarray]] = []  # union tag positions in the block, tags expected
        for name, sizer, null_branch in sizers:
            column = table.column(name)
            if null_branch is None:
                sizes += sizer(column)
                continue
            # a union: its tag byte (branch 0 or 1: 0x00 or 0x02), then the value if not null
            valid = np.asarray(column.is_valid(), dtype=bool)
            tags.append((sizes.copy(), np.where(valid, 2 * (1 - null_branch), 2 * null_branch)))
            sizes += 1 + np.where(valid, sizer(column), 0)
        if not np.array_equal(sizes, lengths):
            return None
        # The reader takes any union index other than the null branch's for the value branch (a
        # corrupt 0x35 reads as a string): a union's tag byte, at its field's offset in the record,
        # must be exactly the branch read (zigzag 0 or 1: one byte, 0x00 or 0x02).
        if tags:
            starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
            raw = np.frombuffer(block, dtype=np.uint8)
            for offsets, expected in tags:
                if not np.array_equal(raw[starts + offsets], expected):
                    return None
    except (Exception, PanicException) as exc:  # a panic (a BaseException): the reader's bounds checks
        log.debug("columnar read of %d %s bodies refused: %s", len(bodies), version.record_name, exc)
        return None
    return table


def read_columns(codec: Codec, topic: str, values: Sequence[bytes | None]) -> pa.Table | None:
    """Decode the values of one consume batch of ``topic``: the same records
    :meth:`Codec.decode` would return, as columns, when every value is framed for the topic's
    current schema and within the size limit; otherwise None (decode record by record)."""
    if not values or None in values:
        return None
    first = values[0]
    assert first is not None
    if max(map(len, values)) > codec.max_message_bytes:  # type: ignore[arg-type]
        return None
    try:
        writer, start = codec.writer_schema(first)
    except Exception:  # unknown schema, bad framing, registry down: the per-record path says why
        return None
    if writer is not contracts.current(topic):
        return None
    header = first[:start]
    if any(v[:start] != header for v in values):  # type: ignore[index]
        return None
    return read_bodies(writer, [v[start:] for v in values])  # type: ignore[index]
