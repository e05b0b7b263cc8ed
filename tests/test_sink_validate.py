"""The sink's batch-wide validation never accepts a batch that ``validate_event`` (the processors'
rule, the oracle here) would reject one record of, and does accept ordinary valid traffic."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sink_fixtures import BASE_MS, HOUR_MS, agency_events

from schemas import contracts
from schemas.codec import Codec
from schemas.columnar_reader import read_columns
from schemas.validation import DEFAULT_MAX_FUTURE_SKEW_MS, InvalidRecord, validate_event
from sinks.sink_validate import batch_valid, fast_path_enabled, table_valid

NOW_MS = BASE_MS + 400 * 24 * HOUR_MS  # after every fixture event
SKEW = DEFAULT_MAX_FUTURE_SKEW_MS


def _batch(topic: str) -> list[dict[str, Any]]:
    return [raw for t, raw in agency_events(60, seed=5) if t == topic]


def _columns(topic: str, records: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {f: [r.get(f) for r in records] for f in contracts.current(topic).field_names}


def _keys(records: list[dict[str, Any]]) -> list[bytes | None]:
    return [str(r["case_id"]).encode() for r in records]


def _accepts_columns(topic: str, records: list[dict[str, Any]], keys: list[bytes | None]) -> bool:
    return batch_valid(topic, _columns(topic, records), keys, NOW_MS, SKEW)


def _accepts_arrow(topic: str, records: list[dict[str, Any]], keys: list[bytes | None]) -> bool:
    """The sink's columnar path: the records encoded, read as Arrow columns, checked by table_valid."""
    codec = Codec()
    try:
        values = [codec.encode(topic, r) for r in records]
    except (ValueError, TypeError, OverflowError):  # e.g. an enum symbol the schema lacks
        return False  # no decoder yields such a record: nothing to accept
    decoded = read_columns(codec, topic, values)
    return decoded is not None and table_valid(topic, decoded, keys, NOW_MS, SKEW)


CHECKS = pytest.mark.parametrize("accepts", [_accepts_columns, _accepts_arrow], ids=["columns", "arrow"])


def _avro_kind(topic: str, field: str) -> tuple[type, bool]:
    """(Python type of the decoded value in the raw shape, nullable) from the field's Avro type."""
    f = next(f for f in contracts.current(topic).schema["fields"] if f["name"] == field)
    t = f["type"]
    nullable = isinstance(t, list) and "null" in t
    if isinstance(t, list):
        t = next(m for m in t if m != "null")
    if isinstance(t, dict):
        if t.get("logicalType") in ("timestamp-millis", "decimal"):
            return int, nullable
        t = {"array": "array", "enum": "string"}.get(t["type"], t.get("type"))
    return {"string": str, "long": int, "int": int, "array": list, "double": float}[t], nullable


def _decodable(topic: str, field: str, value: Any) -> bool:
    """Whether Avro decoding can yield ``value`` for ``field`` (the sink validates decoded records)."""
    kind, nullable = _avro_kind(topic, field)
    if value is None:
        return nullable
    if kind is list:
        return isinstance(value, list) and all(type(v) is str for v in value)
    if kind is int:
        return type(value) is int and -(2**63) <= value < 2**63
    return type(value) is kind


def _all_valid(topic: str, records: list[dict[str, Any]], keys: list[bytes | None]) -> bool:
    """The oracle: the sink's per-record rule (key check + validate_event)."""
    try:
        for raw, key in zip(records, keys, strict=True):
            if key != str(raw.get("case_id")).encode():
                raise InvalidRecord("case_id", "differs from the message key")
            validate_event(topic, raw, NOW_MS, max_future_skew_ms=SKEW)
    except InvalidRecord:
        return False
    return True


def test_fast_path_mirrors_the_current_validation_rules() -> None:
    """Fails when schemas/validation.py changed: re-read the rules in sinks/sink_validate.py against it,
    then update VALIDATION_SHA256 (meanwhile the sink validates record by record)."""
    assert fast_path_enabled()


@CHECKS
@pytest.mark.parametrize("topic", contracts.INPUT_TOPICS)
def test_valid_traffic_is_accepted_in_one_pass(topic: str, accepts: Any) -> None:
    records = _batch(topic)
    assert records and _all_valid(topic, records, _keys(records))
    assert accepts(topic, records, _keys(records))


BAD_VALUES: list[Any] = [
    None,
    "",
    "   ",
    "x" * 2000,
    "NOT-IN-REGISTRY",
    -1,
    0,
    True,
    1.5,
    [],
    ["MSCU1"],
    BASE_MS,
    NOW_MS + SKEW + 1,
    NOW_MS + SKEW,
    "0f8fad5b-d9cb-469f-a165-70867728950e\n",
    "0f8fad5b-d9cb-469f-a165-70867728950",
    "CASE-1\x00",
    "CASE\n2",
    "\tCASE-3",
    "CASE-4\x7f",
    "CASE-5\x85",
    "PK-PB",
    "KPT",
    "FBR-CUSTOMS",
    "PQA",
    10**20,
]


@CHECKS
@pytest.mark.parametrize("topic", contracts.INPUT_TOPICS)
def test_one_bad_field_never_slips_through(topic: str, accepts: Any) -> None:
    """Every field of one record set to each awkward value: batch accepted ⇒ every record valid."""
    base = _batch(topic)
    rejected = 0
    assert _decodable(topic, "case_id", "x") and not _decodable(topic, "occurred_at", True)
    for field in contracts.current(topic).field_names:
        for value in BAD_VALUES:
            if not _decodable(topic, field, value):
                continue
            records = copy.deepcopy(base)
            records[len(records) // 2][field] = value
            keys = _keys(records)
            valid = _all_valid(topic, records, keys)
            accepted = accepts(topic, records, keys)
            assert not accepted or valid, (field, value)
            rejected += not valid
    assert rejected > 20  # the mutations do break records: the check above can fail


@CHECKS
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    topic=st.sampled_from(contracts.INPUT_TOPICS),
    data=st.data(),
    value=st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**63),
        st.text(max_size=40),
        st.lists(st.text(max_size=5), max_size=2),
        st.sampled_from(["PK-PB", "PK-SD", "KPT", "PQA", "FBR-CUSTOMS", "NEPRA", " PK-PB", "PK-PB "]),
    ),
    key=st.one_of(st.none(), st.binary(max_size=12), st.just(b"same")),
)
def test_random_corruption_never_slips_through(
    topic: str, data: Any, value: Any, key: Any, accepts: Any
) -> None:
    records = _batch(topic)[:12]
    field = data.draw(st.sampled_from(contracts.current(topic).field_names))
    assume(_decodable(topic, field, value))
    index = data.draw(st.integers(min_value=0, max_value=len(records) - 1))
    records[index] = {**records[index], field: value}
    keys = _keys(records)
    if key != b"same":
        keys[index] = key
    accepted = accepts(topic, records, keys)
    assert not accepted or _all_valid(topic, records, keys)
