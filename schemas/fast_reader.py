"""Schema-specialised Avro body readers, generated from the ``.avsc`` files at import.

Why: the processors decode every agency event on their hot path, and ``fastavro``'s generic
reader walks the parsed schema for every record (about 15 µs per event here, most of the
processors' per-event budget). A reader generated for one known writer schema is straight-line
Python: one varint or slice per field, no schema walk, no ``BytesIO``; about three times faster.

Contract: a generated reader either returns exactly what ``fastavro.schemaless_reader`` returns
for the same body and schema (in the *raw* shape: logical types stripped, and the top-level
money fields already turned into integer paisa as :class:`schemas.codec.Codec` does), or raises
:class:`Malformed`. It raises for anything it is unsure about (truncated data, negative lengths,
varints beyond 64 bits, enum or union indexes out of range, booleans other than 0/1, invalid
UTF-8), and the caller then runs the reference decoder, which decides the error reason. So the
fast path never changes what is accepted or how a rejection is reported; the property tests
(``tests/test_fast_reader.py``) check it against fastavro on random records and random
corruptions.

Only the types this repo's schemas can use are generated (null, boolean, int, long, float,
double, bytes, string, enum, fixed, array, map, union, nested record); anything else raises
:class:`Unsupported` at generation time and that schema simply has no fast reader.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Collection
from typing import Any

from schemas.codegen import SourceEmitter

Reader = Callable[[bytes, int], tuple[dict[str, Any], int]]
"""``reader(value, pos) -> (record, end)``: decode one record body starting at ``pos``."""

_MAX_VARINT_SHIFT = 63
"""A 64-bit varint has at most 10 bytes: shifts 0, 7, ..., 63."""


class Malformed(ValueError):
    """The body is not one the fast reader can decode with certainty; use the reference decoder."""


class Unsupported(ValueError):
    """The schema uses a construct the generator does not handle."""


def _read_long(b: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint at ``pos``: (value, position after it). Unrolled: a loop costs 1.5x more."""
    c = b[pos]
    if c < 0x80:
        return (c >> 1) ^ -(c & 1), pos + 1
    n = c & 0x7F
    c = b[pos + 1]
    n |= (c & 0x7F) << 7
    if c < 0x80:
        return (n >> 1) ^ -(n & 1), pos + 2
    c = b[pos + 2]
    n |= (c & 0x7F) << 14
    if c < 0x80:
        return (n >> 1) ^ -(n & 1), pos + 3
    c = b[pos + 3]
    n |= (c & 0x7F) << 21
    if c < 0x80:
        return (n >> 1) ^ -(n & 1), pos + 4
    c = b[pos + 4]
    n |= (c & 0x7F) << 28
    if c < 0x80:
        return (n >> 1) ^ -(n & 1), pos + 5
    c = b[pos + 5]
    n |= (c & 0x7F) << 35
    if c < 0x80:  # epoch-ms timestamps end here
        return (n >> 1) ^ -(n & 1), pos + 6
    pos += 6
    shift = 42
    while c & 0x80:
        if shift > _MAX_VARINT_SHIFT:
            raise Malformed("varint longer than 10 bytes")
        c = b[pos]
        pos += 1
        n |= (c & 0x7F) << shift
        shift += 7
    if n >> 64:
        raise Malformed("varint beyond 64 bits")
    return (n >> 1) ^ -(n & 1), pos


def _read_length(b: bytes, pos: int) -> tuple[int, int]:
    """A byte/string length that is not a single-byte varint (see :data:`_SHORT_LENGTH`)."""
    n, pos = _read_long(b, pos)
    if n < 0:
        raise Malformed("negative length")
    return n, pos


_SHORT_LENGTH = tuple(c >> 1 if c < 0x80 and not c & 1 else -1 for c in range(256))
"""Length for a one-byte varint (0..63), or -1: longer varint or negative (odd zigzag)."""
_SHORT_INDEX = _SHORT_LENGTH
"""Same table for union branch and enum indexes (non-negative, usually one byte)."""


def _malformed(what: str) -> Malformed:
    return Malformed(what)


_FLOAT = struct.Struct("<f").unpack_from
_DOUBLE = struct.Struct("<d").unpack_from


class _Emitter(SourceEmitter):
    """Builds the source of one reader function, line by line, with fresh local names."""

    # -- primitives -----------------------------------------------------------------------
    # Bounds: a read past the end raises IndexError, a slice past the end comes back short and
    # leaves ``pos`` beyond the end; the caller accepts a record only if it ends exactly at the
    # end of the value, so per-field bounds checks are not needed.
    def long(self, ind: int, target: str) -> None:
        self.emit(ind, f"{target}, pos = _read_long(b, pos)")

    def index(self, ind: int, target: str) -> None:
        """A union branch or enum index: non-negative, almost always one byte."""
        self.emit(ind, f"{target} = _SHORT_INDEX[b[pos]]")
        self.emit(ind, f"if {target} < 0:")
        self.emit(ind + 1, f"{target}, pos = _read_length(b, pos)")
        self.emit(ind, "else:")
        self.emit(ind + 1, "pos += 1")

    def length(self, ind: int, target: str) -> None:
        """A non-negative byte length: almost always one byte."""
        self.index(ind, target)

    def value(self, ind: int, schema: Any, target: str, money: bool = False) -> None:
        """Emit code that reads one value of ``schema`` into the local ``target``."""
        if isinstance(schema, list):
            self.union(ind, schema, target, money)
            return
        if isinstance(schema, str):
            if schema in self.names:
                self.value(ind, self.names[schema], target, money)
                return
            schema = {"type": schema}
        t = schema["type"]
        if isinstance(t, (list, dict)):
            self.value(ind, t, target, money)
            return
        if t == "null":
            self.emit(ind, f"{target} = None")
        elif t == "boolean":
            c = self.var("c")
            self.emit(ind, f"{c} = b[pos]")
            self.emit(ind, "pos += 1")
            self.emit(ind, f"if {c} > 1:")
            self.emit(ind + 1, "raise _malformed('boolean byte not 0 or 1')")
            self.emit(ind, f"{target} = {c} == 1")
        elif t in ("int", "long"):
            self.long(ind, target)
        elif t in ("float", "double"):
            size, unpack = (4, "_FLOAT") if t == "float" else (8, "_DOUBLE")
            self.emit(ind, f"{target} = {unpack}(b, pos)[0]")
            self.emit(ind, f"pos += {size}")
        elif t in ("bytes", "string"):
            n = self.var("n")
            self.length(ind, n)
            if t == "string":
                self.emit(ind, f"{target} = b[pos:pos + {n}].decode()")
            elif money:
                self.emit(ind, f"{target} = int.from_bytes(b[pos:pos + {n}], 'big', signed=True)")
            else:
                self.emit(ind, f"{target} = b[pos:pos + {n}]")
            self.emit(ind, f"pos += {n}")
        elif t == "fixed":
            self._name(schema)
            size = int(schema["size"])
            self.emit(ind, f"{target} = b[pos:pos + {size}]")
            self.emit(ind, f"pos += {size}")
        elif t == "enum":
            self._name(schema)
            symbols = self.const(tuple(schema["symbols"]))
            i = self.var("i")
            self.index(ind, i)
            self.emit(ind, f"if {i} >= {len(schema['symbols'])}:")
            self.emit(ind + 1, "raise _malformed('enum index out of range')")
            self.emit(ind, f"{target} = {symbols}[{i}]")
        elif t == "array":
            if not self._takes_bytes(schema["items"]):
                raise Unsupported("array items that may take no bytes")
            self.blocks(ind, target, "[]", lambda ind2, item: self.value(ind2, schema["items"], item), None)
        elif t == "map":
            self.blocks(
                ind, target, "{}", lambda ind2, item: self.value(ind2, schema["values"], item), "string"
            )
        elif t == "record":
            self._name(schema)
            self.record(ind, schema, target, ())
        else:
            raise Unsupported(f"Avro type {t!r}")

    def _takes_bytes(self, schema: Any) -> bool:
        """Whether every value of ``schema`` takes at least one byte (bounds array item counts)."""
        if isinstance(schema, list):
            return True  # the branch index
        if isinstance(schema, str):
            if schema in self.names:
                return self._takes_bytes(self.names[schema])
            return schema != "null"
        t = schema["type"]
        if isinstance(t, (list, dict)):
            return self._takes_bytes(t)
        if t == "record":
            return any(self._takes_bytes(f["type"]) for f in schema["fields"])
        if t == "fixed":
            return int(schema["size"]) > 0
        return bool(t != "null")

    def _name(self, schema: dict[str, Any]) -> None:
        name = schema.get("name")
        if name:
            ns = schema.get("namespace")
            self.names[name] = schema
            if ns and "." not in name:
                self.names[f"{ns}.{name}"] = schema

    def union(self, ind: int, branches: list[Any], target: str, money: bool) -> None:
        i = self.var("u")
        self.index(ind, i)
        for k, branch in enumerate(branches):
            self.emit(ind, f"{'if' if k == 0 else 'elif'} {i} == {k}:")
            self.value(ind + 1, branch, target, money)
        self.emit(ind, "else:")
        self.emit(ind + 1, "raise _malformed('union index out of range')")

    def blocks(
        self,
        ind: int,
        target: str,
        empty: str,
        item: Callable[[int, str], None],
        key_type: str | None,
    ) -> None:
        """Avro arrays and maps: blocks of ``count`` items (negative: a byte size follows), then 0."""
        count, skip, it, key = self.var("n"), self.var("s"), self.var("v"), self.var("k")
        self.emit(ind, f"{target} = {empty}")
        self.emit(ind, "while True:")
        self.long(ind + 1, count)
        self.emit(ind + 1, f"if {count} == 0:")
        self.emit(ind + 2, "break")
        self.emit(ind + 1, f"if {count} < 0:")
        self.emit(ind + 2, f"{count} = -{count}")
        self.long(ind + 2, skip)
        self.emit(ind + 1, f"if {count} > len(b) - pos:")  # every item takes at least one byte
        self.emit(ind + 2, "raise _malformed('more items than bytes left')")
        self.emit(ind + 1, f"for _ in range({count}):")
        if key_type is not None:
            self.value(ind + 2, key_type, key)
        item(ind + 2, it)
        if key_type is not None:
            self.emit(ind + 2, f"{target}[{key}] = {it}")
        else:
            self.emit(ind + 2, f"{target}.append({it})")

    def record(self, ind: int, schema: dict[str, Any], target: str, money_fields: Collection[str]) -> None:
        fields = schema["fields"]
        local = [self.var("f") for _ in fields]
        for f, name in zip(fields, local, strict=True):
            self.value(ind, f["type"], name, money=f["name"] in money_fields)
        items = ", ".join(f"{f['name']!r}: {name}" for f, name in zip(fields, local, strict=True))
        self.emit(ind, f"{target} = {{{items}}}")


def compile_reader(schema: dict[str, Any], money_fields: Collection[str] = ()) -> Reader:
    """A reader for record bodies written with ``schema`` (logical types already stripped).

    ``money_fields``: top-level decimal fields returned as integer paisa instead of bytes.
    Raises :class:`Unsupported` if the schema uses a construct the generator does not handle.
    """
    if not isinstance(schema, dict) or schema.get("type") != "record":
        raise Unsupported("only record schemas get a fast reader")
    em = _Emitter({})
    em._name(schema)
    em.record(1, schema, "rec", money_fields)
    source = "\n".join(["def read(b, pos):", *em.lines, "    return rec, pos"])
    namespace: dict[str, Any] = {
        "_read_long": _read_long,
        "_read_length": _read_length,
        "_SHORT_INDEX": _SHORT_INDEX,
        "_malformed": _malformed,
        "_FLOAT": _FLOAT,
        "_DOUBLE": _DOUBLE,
        **em.consts,
    }
    exec(compile(source, f"<avro reader {schema.get('name')}>", "exec"), namespace)  # noqa: S102
    reader: Reader = namespace["read"]
    reader.__doc__ = source  # the generated code, for whoever debugs it
    return reader
