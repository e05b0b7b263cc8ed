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
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

import polars as pl
from polars.exceptions import PanicException

from schemas import contracts
from schemas.contracts import SchemaVersion

if TYPE_CHECKING:
    from schemas.codec import Codec

log = logging.getLogger(__name__)

_SYNC = b"backbone-columns"  # any 16 bytes: the block's sync marker, checked by the reader
_MAX_ENUM_SYMBOLS = 64  # an enum index below 64 is one varint byte
# A length inside a message (at most max_message_bytes, a few MB) has a varint of at most 5 bytes
# (below 2^34): fewer comparisons per string than a full 10-byte long.
_LENGTH_VARINT_BYTES = 5


class Unsupported(ValueError):
    """The schema uses a type this reader does not size (that schema is read record by record)."""


def _varint(n: int) -> bytes:
    """Avro's zigzag varint of ``n`` (only for the container header: counts and lengths)."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _varint_size(magnitude: pl.Expr, max_bytes: int = 10) -> pl.Expr:
    """Bytes of the zigzag varint of a value whose magnitude is ``magnitude`` (``v`` if ``v >= 0``,
    else ``-v - 1``): 1, plus one per 7 bits beyond the first 6, up to ``max_bytes``."""
    return pl.sum_horizontal(
        [pl.lit(1, pl.Int64)]
        + [(magnitude >= (1 << (7 * k - 1))).cast(pl.Int64) for k in range(1, max_bytes)]
    )


def _long_size(value: pl.Expr) -> pl.Expr:
    return _varint_size(pl.when(value < 0).then(-(value + 1)).otherwise(value))


def _string_size(value: pl.Expr) -> pl.Expr:
    n = value.str.len_bytes().cast(pl.Int64)
    return n + _varint_size(n, _LENGTH_VARINT_BYTES)


def _type_size(name: str, value: pl.Expr, avro_type: Any) -> pl.Expr:
    """The canonical encoded size of one field's values, as an Int64 expression."""
    t = avro_type
    if isinstance(t, list):
        members = [m for m in t if m != "null"]
        if len(t) != 2 or len(members) != 1:
            raise Unsupported(f"{name}: only [null, T] unions are sized")
        inner = _type_size(name, value, members[0])
        return pl.when(value.is_null()).then(pl.lit(1, pl.Int64)).otherwise(1 + inner)
    if isinstance(t, dict):
        logical, base = t.get("logicalType"), t.get("type")
        if base == "long" and logical == "timestamp-millis":
            return _long_size(value.dt.epoch("ms"))
        if base == "bytes" and logical == "decimal":
            unscaled = (value * (10 ** int(t.get("scale", 0)))).cast(pl.Int64, strict=True)
            nbytes = pl.sum_horizontal(
                [pl.lit(1, pl.Int64)] + [(unscaled >= (1 << (8 * k - 1))).cast(pl.Int64) for k in range(1, 8)]
            )
            # a negative amount never reaches the fast path's output (it is invalid): size -1 sends
            # the batch to the per-record path instead of sizing two's-complement negatives here
            return pl.when(unscaled < 0).then(pl.lit(-1, pl.Int64)).otherwise(nbytes + 1)
        if base == "enum":
            if len(t["symbols"]) > _MAX_ENUM_SYMBOLS:
                raise Unsupported(f"{name}: enum of more than {_MAX_ENUM_SYMBOLS} symbols")
            return pl.lit(1, pl.Int64)
        if base == "array" and t.get("items") == "string":
            count = value.list.len().cast(pl.Int64)
            items = value.list.eval(_string_size(pl.element())).list.sum().cast(pl.Int64)
            return (
                pl.when(count == 0)
                .then(pl.lit(1, pl.Int64))
                .otherwise(_varint_size(count, _LENGTH_VARINT_BYTES) + items + 1)
            )
        if base == "string":  # e.g. {"type": "string", "logicalType": "uuid"}
            return _string_size(value)
        raise Unsupported(f"{name}: type {t!r} is not sized")
    if t == "string":
        return _string_size(value)
    if t == "long":
        return _long_size(value)
    raise Unsupported(f"{name}: type {t!r} is not sized")


def _plan(version: SchemaVersion) -> tuple[bytes, pl.Expr] | None:
    """(the container header, the record-size expression) for ``version``; None if unsupported."""
    return _plan_by_fingerprint(version.fingerprint)


@cache
def _plan_by_fingerprint(fingerprint: bytes) -> tuple[bytes, pl.Expr] | None:
    version = contracts.by_fingerprint()[fingerprint]
    try:
        size = pl.sum_horizontal(
            [_type_size(f["name"], pl.col(f["name"]), f["type"]) for f in version.schema["fields"]]
        )
    except Unsupported as exc:
        log.info("no columnar reader for %s: %s", version.record_name, exc)
        return None
    schema = json.dumps(version.schema).encode()
    meta = _varint(2) + b"".join(
        _varint(len(k)) + k + _varint(len(v)) + v
        for k, v in ((b"avro.schema", schema), (b"avro.codec", b"null"))
    )
    return b"Obj\x01" + meta + b"\x00" + _SYNC, size


def read_bodies(version: SchemaVersion, bodies: Sequence[bytes]) -> pl.DataFrame | None:
    """Decode Avro bodies all written with ``version``: a DataFrame with one column per field
    (enums as categoricals, decimals as exact decimals, timestamps as UTC datetimes), or None
    when the reader fails or a record's boundaries are not proven (see the module docstring)."""
    plan = _plan(version)
    if plan is None or not bodies:
        return None
    header, size = plan
    block = b"".join(bodies)
    data = b"".join((header, _varint(len(bodies)), _varint(len(block)), block, _SYNC))
    try:
        frame = pl.read_avro(io.BytesIO(data))
        if frame.height != len(bodies):
            return None
        lengths = pl.Series("length", [len(b) for b in bodies], dtype=pl.Int64)
        exact = frame.select((size == lengths).all(ignore_nulls=False)).item()
    except (Exception, PanicException) as exc:  # a panic (a BaseException): the reader's bounds checks
        log.debug("columnar read of %d %s bodies refused: %s", len(bodies), version.record_name, exc)
        return None
    return frame if exact is True else None


def read_columns(codec: Codec, topic: str, values: Sequence[bytes | None]) -> pl.DataFrame | None:
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
