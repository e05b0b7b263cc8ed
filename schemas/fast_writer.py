"""Schema-specialised Avro body writers, generated from the ``.avsc`` files at import.

Why: the processors encode every output record (stage records, KPI windows, alerts...) and the
Publisher every agency event, and ``fastavro``'s generic writer walks the parsed schema and
validates union branches for every record: about 20 µs per record here, a third of a
processor worker's CPU. A writer generated for one schema is straight-line Python: a type check,
a table lookup or an ``encode()`` per field and one ``b"".join`` at the end.

Contract: a generated writer either returns exactly the bytes ``fastavro.schemaless_writer``
(``strict_allow_default=True``) writes for the same *raw*-shaped record (top-level money fields as
integer paisa, as :class:`schemas.codec.Codec` takes them), or raises :class:`Unfit` (or
``KeyError``, ``UnicodeEncodeError``, ``OverflowError``: see :data:`FALLBACK_ERRORS`). It only
takes values whose encoding it is certain of: exact Python types (``int`` but not ``bool`` for
int/long, ``float`` for float/double, ``str``, ``bytes``, ``list``, ``dict``, ``None``), integers
in range, known enum symbols, every field present and no extra ones. Anything else (a missing
field that has a default, an ``int`` for a double, a ``bytearray``, a ``Decimal``, a tuple union
notation, a bad value) goes to the reference writer, which then encodes it the way fastavro
does or raises fastavro's own error. So the fast path never changes what is accepted or how a
rejection is reported; ``tests/test_fast_writer.py`` checks it against fastavro.

Unions are generated when each branch takes its own Python type (``["null", X]`` in this repo's
schemas); a union whose branches fastavro would choose between by value (a ``double`` before a
``long``, ``string`` and an enum, two records) raises :class:`Unsupported` at generation time, and that
schema simply has no fast writer.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Collection
from typing import Any

from schemas.codegen import SourceEmitter

Writer = Callable[[dict[str, Any]], bytes]
"""``writer(record) -> body``: the Avro binary encoding of one raw-shaped record."""


class Unfit(ValueError):
    """A value the fast writer cannot encode with certainty; use the reference writer."""


class Unsupported(ValueError):
    """The schema uses a construct the generator does not handle."""


FALLBACK_ERRORS: tuple[type[Exception], ...] = (Unfit, KeyError, UnicodeEncodeError, OverflowError)
"""What a generated writer raises for a record the reference writer must handle: :class:`Unfit`,
a field missing (``KeyError``), a string with lone surrogates, a float beyond float32 range."""

_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_TABLE_BITS = 14
_TABLE_SIZE = 1 << _TABLE_BITS


def _varint_loop(z: int) -> bytes:
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


_END = tuple(_varint_loop(z) for z in range(_TABLE_SIZE))
"""Varint of ``z`` < 2**14: the last one or two bytes of any varint."""
_MORE = tuple(bytes(((z & 0x7F) | 0x80, (z >> 7) | 0x80)) for z in range(_TABLE_SIZE))
"""Fourteen low bits of a longer varint: two bytes, both with the continuation bit."""


def _varint(z: int) -> bytes:
    """Varint of a non-negative (already zig-zagged) 64-bit value, 14 bits per table lookup.

    Epoch-ms timestamps (42 bits zig-zagged) take three lookups instead of six loop turns.
    """
    if z < _TABLE_SIZE:
        return _END[z]
    if z < 1 << 28:
        return _MORE[z & 0x3FFF] + _END[z >> 14]
    if z < 1 << 42:
        return _MORE[z & 0x3FFF] + _MORE[(z >> 14) & 0x3FFF] + _END[z >> 28]
    if z < 1 << 56:
        return _MORE[z & 0x3FFF] + _MORE[(z >> 14) & 0x3FFF] + _MORE[(z >> 28) & 0x3FFF] + _END[z >> 42]
    return _varint_loop(z)


def _varint_wide(z: int) -> bytes:
    """Varint of a zig-zagged value of 43 bits or more; :class:`Unfit` beyond 64 bits."""
    if z >> 64:
        raise Unfit("long out of range")
    return _varint(z)


def _long(n: int) -> bytes:
    """Zig-zag varint of a signed 64-bit ``n`` (the caller checked the range)."""
    return _varint((n << 1) ^ (n >> 63))


_LENGTH_MAX = _TABLE_SIZE >> 1
_LENGTH = _END[::2]
"""Varint of a byte length ``n`` < 2**13 (its zig-zag value is ``2 n``)."""


def _length(n: int) -> bytes:
    return _varint(n << 1)


def _unfit(what: str) -> Unfit:
    return Unfit(what)


_FLOAT = struct.Struct("<f").pack
_DOUBLE = struct.Struct("<d").pack

_PY_TYPE_OF = {
    "null": "NoneType",
    "boolean": "bool",
    "int": "int",
    "long": "int",
    "float": "float",
    "double": "float",
    "string": "str",
    "enum": "str",
    "bytes": "bytes",
    "fixed": "bytes",
    "array": "list",
    "map": "dict",
    "record": "dict",
}
"""The one Python type the fast writer takes for each Avro type."""


def _py_type(schema: dict[str, Any], money: bool) -> str:
    """The Python type taken for ``schema``: money travels as integer paisa in decimal bytes."""
    if money and schema["type"] == "bytes":
        return "int"
    return _PY_TYPE_OF.get(schema["type"], "object")


class _Emitter(SourceEmitter):
    """Builds the source of one writer function, line by line, with fresh local names.

    :meth:`value` emits the checks for one value and returns the expressions of its bytes,
    which the caller joins once, so a record costs one ``b"".join``.
    """

    def require(self, ind: int, condition: str, what: str) -> None:
        self.emit(ind, f"if not ({condition}):")
        self.emit(ind + 1, f"raise _unfit({what!r})")

    def resolve(self, schema: Any) -> dict[str, Any]:
        """The schema as a dict with a string ``type``, named references resolved."""
        if isinstance(schema, str):
            if schema in self.names:
                return self.resolve(self.names[schema])
            return {"type": schema}
        if isinstance(schema, list):
            return {"type": "union", "branches": schema}
        t = schema["type"]
        if isinstance(t, (list, dict)):
            return self.resolve(t)
        if t in ("enum", "fixed", "record"):
            self._name(schema)
        return schema  # type: ignore[no-any-return]

    # -- values -----------------------------------------------------------------------------
    def value(self, ind: int, schema: Any, v: str, money: bool = False) -> list[str]:
        """Emit code checking the local ``v``; return the expressions of its encoded bytes."""
        schema = self.resolve(schema)
        t = schema["type"]
        if t == "union":
            return [self.union(ind, schema["branches"], v, money)]
        self.require(ind, f"type({v}) is {_py_type(schema, money)}", f"{t} value of another type")
        return self.checked(ind, schema, v, money)

    def checked(self, ind: int, schema: dict[str, Any], v: str, money: bool) -> list[str]:
        """Like :meth:`value` once the Python type of ``v`` is known to be the expected one."""
        t = schema["type"]
        if t == "null":
            return []
        if t == "boolean":
            return [f"(b'\\x01' if {v} else b'\\x00')"]
        if t == "int":
            self.require(ind, f"{_INT_MIN} <= {v} <= {_INT_MAX}", "int out of range")
        if t in ("int", "long"):
            return [self.long(ind, v)]
        if t in ("float", "double"):
            return [f"{'_FLOAT' if t == 'float' else '_DOUBLE'}({v})"]
        if t == "string":
            e = self.var("e")
            self.emit(ind, f"{e} = {v}.encode()")
            return self.sized(ind, e)
        if t == "bytes":
            if not money:
                return self.sized(ind, v)
            # Integer paisa → two's-complement big-endian bytes, as codec.paisa_to_bytes.
            e = self.var("e")
            self.emit(ind, f"{e} = {v}.to_bytes(max(1, ({v}.bit_length() + 8) // 8), 'big', signed=True)")
            return self.sized(ind, e)
        if t == "fixed":
            self.require(ind, f"len({v}) == {int(schema['size'])}", "fixed of another size")
            return [v]
        if t == "enum":
            index = self.const({s: _long(i) for i, s in enumerate(schema["symbols"])})
            e = self.var("e")
            self.emit(ind, f"{e} = {index}.get({v})")
            self.require(ind, f"{e} is not None", "unknown enum symbol")
            return [e]
        if t == "array":
            return [self.blocks(ind, v, lambda ind2, item: self.value(ind2, schema["items"], item), False)]
        if t == "map":
            return [self.blocks(ind, v, lambda ind2, item: self.value(ind2, schema["values"], item), True)]
        if t == "record":
            return self.record(ind, schema, v, ())
        raise Unsupported(f"Avro type {t!r}")

    def long(self, ind: int, v: str) -> str:
        """Zig-zag varint of an ``int`` local, inlined: 14 bits per table lookup, no calls.

        Epoch-ms timestamps (42 bits zig-zagged) take three lookups; 64-bit range is checked
        only on the rare path of values beyond 2**55.
        """
        z, e = self.var("z"), self.var("e")
        self.emit(ind, f"{z} = {v} << 1 if {v} >= 0 else ~({v} << 1)")
        self.emit(ind, f"if {z} < {1 << 14}:")
        self.emit(ind + 1, f"{e} = _END[{z}]")
        self.emit(ind, f"elif {z} < {1 << 28}:")
        self.emit(ind + 1, f"{e} = _MORE[{z} & 16383] + _END[{z} >> 14]")
        self.emit(ind, f"elif {z} < {1 << 42}:")
        self.emit(ind + 1, f"{e} = _MORE[{z} & 16383] + _MORE[{z} >> 14 & 16383] + _END[{z} >> 28]")
        self.emit(ind, "else:")
        self.emit(ind + 1, f"{e} = _varint_wide({z})")
        return e

    def sized(self, ind: int, data: str) -> list[str]:
        """A length-prefixed byte string (bytes, string, decimal bytes)."""
        n = self.var("n")
        self.emit(ind, f"{n} = len({data})")
        return [f"(_LENGTH[{n}] if {n} < {_LENGTH_MAX} else _length({n}))", data]

    def union(self, ind: int, branches: list[Any], v: str, money: bool) -> str:
        """A union whose branches each take their own Python type: dispatch on ``type(v)``."""
        by_py_type: dict[str, tuple[int, dict[str, Any]]] = {}
        for k, branch in enumerate(branches):
            resolved = self.resolve(branch)
            py_type = _py_type(resolved, money)
            if py_type == "object" or py_type in by_py_type:
                raise Unsupported(f"union {branches!r}: fastavro chooses its branch by value")
            by_py_type[py_type] = (k, resolved)
        for later, earlier in (("int", "float"), ("bytes", "list")):
            if (
                later in by_py_type
                and earlier in by_py_type
                and by_py_type[earlier][0] < by_py_type[later][0]
            ):
                # fastavro would write an int as an earlier double, and bytes as an array of ints.
                raise Unsupported(f"union {branches!r}: fastavro chooses its branch by value")
        out, t = self.var("p"), self.var("t")
        self.emit(ind, f"{t} = type({v})")
        for i, (py_type, (k, resolved)) in enumerate(by_py_type.items()):
            self.emit(ind, f"{'if' if i == 0 else 'elif'} {t} is {py_type}:")
            parts = [repr(_END[2 * k]), *self.checked(ind + 1, resolved, v, money)]
            self.emit(ind + 1, f"{out} = {self.join(parts)}")
        self.emit(ind, "else:")
        self.emit(ind + 1, "raise _unfit('union value of no branch type')")
        return out

    def blocks(self, ind: int, v: str, item: Callable[[int, str], list[str]], is_map: bool) -> str:
        """Arrays and maps, as fastavro writes them: one block of all items, then 0."""
        out, parts, it, key = self.var("p"), self.var("q"), self.var("v"), self.var("k")
        self.emit(ind, f"if {v}:")
        self.emit(ind + 1, f"{parts} = [_long(len({v}))]")
        if is_map:
            self.emit(ind + 1, f"for {key}, {it} in {v}.items():")
            key_parts = self.value(ind + 2, "string", key)
        else:
            self.emit(ind + 1, f"for {it} in {v}:")
            key_parts = []
        item_parts = [*key_parts, *item(ind + 2, it)]
        self.emit(ind + 2, f"{parts} += ({', '.join(item_parts)},)")
        self.emit(ind + 1, f"{parts}.append(b'\\x00')")
        self.emit(ind + 1, f"{out} = b''.join({parts})")
        self.emit(ind, "else:")
        self.emit(ind + 1, f"{out} = b'\\x00'")
        return out

    def record(self, ind: int, schema: dict[str, Any], r: str, money_fields: Collection[str]) -> list[str]:
        fields = schema["fields"]
        # Every field present and nothing else (fastavro fills defaults and rejects extra keys).
        self.require(ind, f"len({r}) == {len(fields)}", "record with missing or extra fields")
        parts: list[str] = []
        for f in fields:
            v = self.var("f")
            self.emit(ind, f"{v} = {r}[{f['name']!r}]")
            parts += self.value(ind, f["type"], v, money=f["name"] in money_fields)
        return parts

    @staticmethod
    def join(parts: list[str]) -> str:
        """One expression for the concatenation of ``parts`` (a few ``+`` beat a join call)."""
        if not parts:
            return "b''"
        if len(parts) <= 3:
            return " + ".join(parts)
        return f"b''.join(({', '.join(parts)},))"

    def _name(self, schema: dict[str, Any]) -> None:
        name = schema.get("name")
        if name:
            ns = schema.get("namespace")
            self.names[name] = schema
            if ns and "." not in name:
                self.names[f"{ns}.{name}"] = schema


def compile_writer(schema: dict[str, Any], money_fields: Collection[str] = ()) -> Writer:
    """A writer of record bodies for ``schema`` (logical types already stripped).

    ``money_fields``: top-level decimal fields, taken as integer paisa instead of bytes.
    Raises :class:`Unsupported` if the schema uses a construct the generator does not handle.
    """
    if not isinstance(schema, dict) or schema.get("type") != "record":
        raise Unsupported("only record schemas get a fast writer")
    em = _Emitter({})
    em._name(schema)
    em.require(1, "type(r) is dict", "record that is not a dict")
    parts = em.record(1, schema, "r", money_fields)
    source = "\n".join(["def write(r):", *em.lines, f"    return {em.join(parts)}"])
    namespace: dict[str, Any] = {
        "_long": _long,
        "_varint_wide": _varint_wide,
        "_END": _END,
        "_MORE": _MORE,
        "_length": _length,
        "_LENGTH": _LENGTH,
        "_unfit": _unfit,
        "_FLOAT": _FLOAT,
        "_DOUBLE": _DOUBLE,
        "NoneType": type(None),
        **em.consts,
    }
    exec(compile(source, f"<avro writer {schema.get('name')}>", "exec"), namespace)  # noqa: S102
    writer: Writer = namespace["write"]
    writer.__doc__ = source  # the generated code, for whoever debugs it
    return writer
