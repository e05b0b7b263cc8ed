"""The generated Avro writers write exactly fastavro's bytes, and the codec's encode equals its reference
path: on random valid records of every published schema version (input and output topics) and of a
schema using every Avro type, on round trips through Codec.decode, and on invalid or unusual records
(wrong types, out-of-range numbers, missing and extra fields), which must give the same bytes or the
same error type and message as fastavro."""

from __future__ import annotations

import io
from decimal import Decimal
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fast_reader import EVERY_TYPE, strategy  # the same random-record generator as the reader's

from schemas import contracts
from schemas.codec import Codec, fast_writers, paisa_to_bytes
from schemas.fast_writer import FALLBACK_ERRORS, Unfit, Unsupported, compile_writer

EVERY_VERSION = [sv for versions in contracts.all_versions().values() for sv in versions]
VERSION_IDS = [f"{sv.topic}-v{sv.version}" for sv in EVERY_VERSION]


def _raw_schema(sv: contracts.SchemaVersion) -> dict[str, Any]:
    return contracts.strip_logical_types(sv.schema)  # type: ignore[no-any-return]


EVERY_TYPE_PARSED = parse_schema(EVERY_TYPE, named_schemas={})
EVERY_TYPE_WRITER = compile_writer(EVERY_TYPE, ("money",))


def _fastavro(parsed: Any, record: Any, money: tuple[str, ...] = ()) -> bytes:
    """The oracle: fastavro's generic writer on a parsed schema, options as Codec's reference path."""
    if money:
        record = dict(record)
        for name in money:
            if record.get(name) is not None:
                record[name] = paisa_to_bytes(record[name])
    buf = io.BytesIO()
    schemaless_writer(buf, parsed, record, strict_allow_default=True)
    return buf.getvalue()


def _outcome(write: Any, *args: Any) -> tuple[Any, ...]:
    try:
        return ("ok", write(*args))
    except Exception as exc:  # noqa: BLE001 - comparing whatever the reference raises
        return ("error", type(exc), str(exc))


def _raw_record(sv: contracts.SchemaVersion, data: st.DataObject) -> dict[str, Any]:
    """A random valid record in the raw shape: money as integer paisa (None where the field allows)."""
    schema = _raw_schema(sv)
    record: dict[str, Any] = data.draw(strategy(schema, {}))
    for name in sv.money_fields:
        if record[name] is not None:
            record[name] = data.draw(st.integers(-(10**18), 10**18) | st.integers(-300, 300))
    return record


@pytest.mark.parametrize("sv", EVERY_VERSION, ids=VERSION_IDS)
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_generated_writer_writes_fastavros_bytes(sv: contracts.SchemaVersion, data: st.DataObject) -> None:
    record = _raw_record(sv, data)
    writer = fast_writers()[sv.fingerprint]
    assert writer(record) == _fastavro(sv.parsed_raw, record, sv.money_fields)
    assert Codec.encode_body(sv.topic, record, sv) == Codec.encode_body_reference(sv.topic, record, sv)


@pytest.mark.parametrize(
    "sv", [contracts.current(t) for t in contracts.all_versions()], ids=lambda sv: sv.topic
)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_codec_encode_round_trips_through_decode(sv: contracts.SchemaVersion, data: st.DataObject) -> None:
    record = _raw_record(sv, data)
    codec = Codec()
    value = codec.encode(sv.topic, record)
    assert value == codec.wire.frame(sv.topic, Codec.encode_body_reference(sv.topic, record))
    assert codec.decode(sv.topic, value) == codec.decode_reference(sv.topic, value)
    decoded = codec.decode(sv.topic, value)
    assert decoded.keys() == record.keys()
    for name, expected in record.items():
        got = decoded[name]
        if isinstance(expected, float) and expected != expected:  # NaN
            assert got != got
        else:
            assert got == expected, name


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_avro_type_writes_fastavros_bytes(data: st.DataObject) -> None:
    record = data.draw(strategy(EVERY_TYPE, {}))
    if record["money"] is not None:  # the paisa field: an int in the raw shape
        record["money"] = data.draw(st.integers(-(2**70), 2**70))
    assert _outcome(EVERY_TYPE_WRITER, record) == ("ok", _fastavro(EVERY_TYPE_PARSED, record, ("money",)))


# -- unusual and invalid records -------------------------------------------------------------------
ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**31) - 2, 2**31 + 1),
    st.integers(-(2**64), 2**64),
    st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**31, -(2**31) - 1, 2**42, 2**56 - 1, 2**56]),
    st.floats(),
    st.floats(width=32),
    st.sampled_from([3.5e38, -1e300, float("inf")]),  # beyond float32
    st.text(max_size=5),
    st.sampled_from(["\ud800", "x\udfff"]),  # lone surrogates: not UTF-8
    st.binary(max_size=5),
    st.builds(bytearray, st.binary(max_size=3)),
    st.just(Decimal("1.50")),
    st.lists(st.text(max_size=3), max_size=3),
    st.tuples(st.just("string"), st.text(max_size=3)),  # fastavro's union tuple notation
    st.dictionaries(st.text(max_size=3), st.integers(0, 3), max_size=2),
)


def _mutate(record: dict[str, Any], data: st.DataObject, names: list[str]) -> dict[str, Any]:
    """Replace, drop or add a few fields: odd types, out-of-range numbers, missing and extra keys."""
    record = dict(record)
    for _ in range(data.draw(st.integers(1, 3))):
        how = data.draw(st.sampled_from(["replace", "replace", "drop", "add"]))
        name = data.draw(st.sampled_from(names))
        if how == "replace":
            record[name] = data.draw(ODD_VALUES)
        elif how == "drop":
            record.pop(name, None)
        else:
            record[data.draw(st.sampled_from(["extra", name]))] = data.draw(ODD_VALUES)
    return record


@pytest.mark.parametrize("sv", EVERY_VERSION, ids=VERSION_IDS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_odd_records_give_the_reference_bytes_or_error(
    sv: contracts.SchemaVersion, data: st.DataObject
) -> None:
    record = _mutate(_raw_record(sv, data), data, sv.field_names)
    assert _outcome(Codec.encode_body, sv.topic, record, sv) == _outcome(
        Codec.encode_body_reference, sv.topic, record, sv
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_avro_type_writer_is_exact_or_falls_back(data: st.DataObject) -> None:
    """On odd records the bare writer either writes fastavro's bytes or raises a fallback error."""
    record = data.draw(strategy(EVERY_TYPE, {}))
    inner = dict(record["inner"])
    if data.draw(st.booleans()):
        record["inner"] = _mutate(inner, data, list(inner))
    record = _mutate(record, data, [f["name"] for f in EVERY_TYPE["fields"]])
    if isinstance(record.get("money"), bytes):  # the writer takes paisa ints for it
        record["money"] = int.from_bytes(record["money"] or b"\x00", "big", signed=True)
    try:
        got = EVERY_TYPE_WRITER(record)
    except FALLBACK_ERRORS:
        return
    assert got == _fastavro(EVERY_TYPE_PARSED, record, ("money",))


def test_fallback_cases_are_caught_and_keep_fastavros_errors() -> None:
    sv = contracts.current(contracts.STAGE_RECORDS)
    writer = fast_writers()[sv.fingerprint]
    good = {
        "record_id": "r1",
        "case_id": "EXP-1",
        "mission": "m",
        "journey": "j",
        "stage": "s",
        "owner_agency": "FBR",
        "province": "PK-SD",
        "port": "KPT",
        "state": "CLOSED",
        "started_at": 1_767_225_642_750,
        "ended_at": 1_767_240_946_349,
        "duration_ms": 15_303_599,
        "sla_ms": 86_400_000,
        "sla_met": True,
        "amount_pkr": 12_345,
        "version": 3,
    }
    assert writer(good) == _fastavro(sv.parsed_raw, good, sv.money_fields)
    for change, error in (
        ({"state": "LOST"}, ValueError),  # unknown enum symbol
        ({"sla_ms": "1"}, TypeError),
        ({"version": 2**63}, OverflowError),
        ({"ended_at": 1.5}, ValueError),  # a float matches no branch of ["null", "long"]
        ({"extra": 1}, ValueError),  # fastavro's strict_allow_default refuses extra fields
        ({"case_id": "\ud800"}, UnicodeEncodeError),
    ):
        bad = {**good, **change}
        with pytest.raises(FALLBACK_ERRORS):
            writer(bad)
        with pytest.raises(error) as fast_error:
            Codec.encode_body(sv.topic, bad)
        with pytest.raises(error) as reference_error:
            Codec.encode_body_reference(sv.topic, bad)
        assert str(fast_error.value) == str(reference_error.value)
    # A missing field that has a default: the reference fills it in; the fast writer defers.
    partial = {k: v for k, v in good.items() if k != "amount_pkr"}
    with pytest.raises(Unfit):
        writer(partial)
    assert Codec.encode_body(sv.topic, partial) == _fastavro(sv.parsed_raw, {**partial, "amount_pkr": None})


def test_ambiguous_unions_are_refused_at_generation() -> None:
    for union in (["null", "double", "long"], ["string", {"type": "enum", "name": "E", "symbols": ["A"]}]):
        with pytest.raises(Unsupported):
            compile_writer({"type": "record", "name": "U", "fields": [{"name": "u", "type": union}]})
    with pytest.raises(Unsupported):
        compile_writer({"type": "enum", "name": "E", "symbols": ["A"]})  # type: ignore[arg-type]


def test_every_published_version_has_a_fast_writer() -> None:
    writers = fast_writers()
    assert set(writers) == {sv.fingerprint for sv in EVERY_VERSION}


def test_codec_for_follows_the_registry_setting() -> None:
    from backbone.config import Settings
    from schemas.codec import codec_for
    from schemas.wire import RegistryFormat, SingleObjectFormat

    assert isinstance(codec_for(Settings(schema_registry_url="")).wire, SingleObjectFormat)
    codec = codec_for(Settings(schema_registry_url="mock://fast-writer-test"))
    assert isinstance(codec.wire, RegistryFormat)
    record = {"agency": "FBR", "topic": "t", "last_occurred_at": 1, "last_published_at": 2}
    record |= {"last_seen_at": 3, "events_total": 4, "version": 5}
    value = codec.encode(contracts.FEED_FRESHNESS, record)
    assert value[0] == 0 and codec.decode(contracts.FEED_FRESHNESS, value) == record
