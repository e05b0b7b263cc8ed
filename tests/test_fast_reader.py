"""The generated Avro readers equal fastavro's generic reader, and the codec's fast path equals its
reference path, on random records of every schema (and a schema using every type) and on random
corruptions of them: same record, or the same DecodeError reason and detail."""

from __future__ import annotations

import io
import struct
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import contracts
from schemas.codec import Codec, DecodeError, bytes_to_paisa, fast_readers
from schemas.fast_reader import Malformed, Unsupported, compile_reader
from schemas.wire import SINGLE_OBJECT_MAGIC

EVERY_TYPE = {
    "type": "record",
    "name": "Everything",
    "namespace": "test.fast",
    "fields": [
        {"name": "n", "type": "null"},
        {"name": "flag", "type": "boolean"},
        {"name": "i", "type": "int"},
        {"name": "l", "type": "long"},
        {"name": "f", "type": "float"},
        {"name": "d", "type": "double"},
        {"name": "raw", "type": "bytes"},
        {"name": "s", "type": "string"},
        {"name": "colour", "type": {"type": "enum", "name": "Colour", "symbols": ["RED", "GREEN", "BLUE"]}},
        {"name": "md5", "type": {"type": "fixed", "name": "Md5", "size": 4}},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "scores", "type": {"type": "map", "values": "long"}},
        {"name": "maybe", "type": ["null", "string", "long", "double", "boolean", "bytes"]},
        {
            "name": "inner",
            "type": {
                "type": "record",
                "name": "Inner",
                "fields": [
                    {"name": "when", "type": "long"},
                    {"name": "again", "type": ["null", "Colour"]},
                    {"name": "nested", "type": {"type": "array", "items": {"type": "map", "values": "Md5"}}},
                ],
            },
        },
        {"name": "inners", "type": {"type": "array", "items": "Inner"}},
        {"name": "money", "type": ["null", "bytes"]},
    ],
}


def strategy(schema: Any, names: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Random values of an Avro schema (fastavro's writer then picks union branches itself)."""
    if isinstance(schema, list):
        return st.one_of(*(strategy(s, names) for s in schema))
    if isinstance(schema, str):
        if schema in names:
            return strategy(names[schema], names)
        schema = {"type": schema}
    t = schema["type"]
    if isinstance(t, (list, dict)):
        return strategy(t, names)
    if "name" in schema:
        names[schema["name"]] = schema
    simple: dict[str, st.SearchStrategy[Any]] = {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": st.integers(-(2**31), 2**31 - 1),
        "long": st.integers(-(2**63), 2**63 - 1) | st.integers(1_700_000_000_000, 1_900_000_000_000),
        "float": st.floats(width=32, allow_nan=False),
        "double": st.floats(allow_nan=False),
        "bytes": st.binary(max_size=40),
        "string": st.text(max_size=80),
    }
    if t in simple:
        return simple[t]
    if t == "enum":
        return st.sampled_from(schema["symbols"])
    if t == "fixed":
        return st.binary(min_size=schema["size"], max_size=schema["size"])
    if t == "array":
        return st.lists(strategy(schema["items"], names), max_size=4)
    if t == "map":
        return st.dictionaries(st.text(max_size=6), strategy(schema["values"], names), max_size=3)
    if t == "record":
        return st.fixed_dictionaries({f["name"]: strategy(f["type"], names) for f in schema["fields"]})
    raise AssertionError(f"no strategy for {t}")


def _raw_schema(sv: contracts.SchemaVersion) -> dict[str, Any]:
    return contracts.strip_logical_types(sv.schema)  # type: ignore[no-any-return]


def _write(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(schema, named_schemas={}), record)
    return buf.getvalue()


def _fastavro(schema: dict[str, Any], body: bytes, money: tuple[str, ...] = ()) -> dict[str, Any]:
    buf = io.BytesIO(body)
    rec = schemaless_reader(buf, parse_schema(schema, named_schemas={}), None)
    assert buf.tell() == len(body)
    for name in money:
        if rec.get(name) is not None:
            rec[name] = bytes_to_paisa(rec[name])
    return rec  # type: ignore[no-any-return]


CURRENT = [contracts.current(t) for t in contracts.all_versions()]


@pytest.mark.parametrize("sv", CURRENT, ids=lambda sv: sv.topic)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_generated_reader_equals_fastavro_on_random_records(sv: contracts.SchemaVersion, data: Any) -> None:
    schema = _raw_schema(sv)
    record = data.draw(strategy(schema, {}))
    body = _write(schema, record)
    reader = compile_reader(schema, sv.money_fields)
    got, end = reader(b"xyz" + body, 3)
    assert end == len(body) + 3
    assert got == _fastavro(schema, body, sv.money_fields)
    assert list(got) == [f["name"] for f in schema["fields"]]  # same field order as fastavro


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_avro_type_round_trips(data: Any) -> None:
    record = data.draw(strategy(EVERY_TYPE, {}))
    body = _write(EVERY_TYPE, record)
    got, end = compile_reader(EVERY_TYPE, ("money",))(body, 0)
    assert end == len(body)
    assert got == _fastavro(EVERY_TYPE, body, ("money",))


def corrupt(data: Any, value: bytes, times: st.SearchStrategy[int]) -> bytes:
    """``value`` after a few truncations, byte flips, insertions and appended bytes (past the
    10-byte single-object header)."""
    body = bytearray(value)
    for _ in range(data.draw(times)):
        how = data.draw(st.sampled_from(["truncate", "flip", "insert", "append"]))
        at = data.draw(st.integers(10, max(10, len(body) - 1)))
        if how == "truncate":
            del body[at:]
        elif how == "flip" and at < len(body):
            body[at] = data.draw(st.integers(0, 255))
        elif how == "insert":
            body[at:at] = bytes([data.draw(st.integers(0, 255))])
        else:
            body += bytes([data.draw(st.integers(0, 255))])
    return bytes(body)


def _outcome(decode: Any, topic: str, value: bytes) -> Any:
    try:
        return ("ok", decode(topic, value))
    except DecodeError as exc:
        return ("error", exc.reason, exc.detail)


@pytest.mark.parametrize(
    "sv", [sv for sv in CURRENT if sv.topic in contracts.INPUT_TOPICS], ids=lambda sv: sv.topic
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_codec_fast_path_equals_reference_on_corrupted_messages(
    sv: contracts.SchemaVersion, data: Any
) -> None:
    """Truncations, byte flips, insertions and appended bytes: same record or same error."""
    schema = _raw_schema(sv)
    value = SINGLE_OBJECT_MAGIC + sv.fingerprint + _write(schema, data.draw(strategy(schema, {})))
    body = corrupt(data, value, times=st.integers(0, 3))
    codec = Codec()
    topic = data.draw(st.sampled_from([sv.topic, sv.topic, contracts.PERMITS]))
    assert _outcome(codec.decode, topic, bytes(body)) == _outcome(codec.decode_reference, topic, bytes(body))


def test_malformed_bodies_raise_what_the_codec_falls_back_on() -> None:
    reader = compile_reader(EVERY_TYPE)
    for bad in (b"", b"\x00", b"\x00\x02", b"\x00\x01\x01"):  # truncated early
        with pytest.raises((Malformed, IndexError, struct.error)):
            reader(bad, 0)
    enum_schema = {
        "type": "record",
        "name": "E",
        "fields": [{"name": "e", "type": {"type": "enum", "name": "X", "symbols": ["A"]}}],
    }
    with pytest.raises(Malformed, match="enum index"):
        compile_reader(enum_schema)(b"\x02", 0)  # index 1 of a one-symbol enum
    string_schema = {"type": "record", "name": "S", "fields": [{"name": "s", "type": "string"}]}
    with pytest.raises(Malformed, match="negative length"):
        compile_reader(string_schema)(b"\x81\x01", 0)  # zigzag -65
    with pytest.raises(Malformed, match="10 bytes"):
        compile_reader({"type": "record", "name": "L", "fields": [{"name": "l", "type": "long"}]})(
            b"\xff" * 11 + b"\x00", 0
        )


def test_unsupported_schemas_are_refused_at_generation() -> None:
    with pytest.raises(Unsupported):
        compile_reader(
            {
                "type": "record",
                "name": "A",
                "fields": [{"name": "a", "type": {"type": "array", "items": "null"}}],
            }
        )
    with pytest.raises(Unsupported):
        compile_reader({"type": "enum", "name": "E", "symbols": ["A"]})  # type: ignore[arg-type]


def test_every_current_schema_has_a_fast_reader_and_older_versions_use_the_reference() -> None:
    readers = fast_readers()
    for topic in contracts.all_versions():
        assert readers[contracts.current(topic).fingerprint][0] == topic
    old = contracts.all_versions()[contracts.CUSTOMS][0]
    assert old is not contracts.current(contracts.CUSTOMS)
    assert old.fingerprint not in readers  # v1 bodies need schema resolution: fastavro does it
