"""Bad input is refused with the field and the reason: producer normalisation and the semantic contract."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from producers_fixtures import OCCURRED_MS, expected_raw, sample

from producers.records import prepare
from schemas import contracts
from schemas.codec import Codec, datetime_to_ms, decimal_to_paisa
from schemas.validation import MIN_EVENT_TIME_MS, InvalidRecord, validate_event

NOW_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z, fixed so that "future" is deterministic


def refused(topic: str, record: Any) -> InvalidRecord:
    with pytest.raises(InvalidRecord) as info:
        prepare(topic, record, NOW_MS)
    return info.value


@pytest.mark.parametrize("topic", contracts.INPUT_TOPICS)
def test_valid_samples_normalise_to_the_expected_raw_shape(topic: str) -> None:
    record = sample(topic)
    assert prepare(topic, record, NOW_MS) == expected_raw(topic, record)


def test_rich_python_values_are_accepted() -> None:
    occurred = datetime(2025, 3, 1, 9, 30, 0, 250_000, tzinfo=timezone(timedelta(hours=5)))
    record = sample(contracts.REBATES, occurred_at=occurred, amount_pkr=Decimal("84500.50"))
    raw = prepare(contracts.REBATES, record, NOW_MS)
    assert raw["occurred_at"] == OCCURRED_MS
    assert raw["amount_pkr"] == 8_450_050


def test_free_text_may_hold_a_tab_and_ids_may_hold_any_printable_character() -> None:
    """Only identifiers refuse control characters: an instrument's title is free text."""
    raw = prepare(contracts.ENERGY, sample(contracts.ENERGY, instrument="SRO 123\tTariff\nRevision"), NOW_MS)
    assert raw["instrument"] == "SRO 123\tTariff\nRevision"
    odd = "EXP-é-ß-中-\u00a0-🚢"  # non-ASCII and a no-break space (Zs, not Cc)
    assert prepare(contracts.CUSTOMS, sample(contracts.CUSTOMS, case_id=odd), NOW_MS)["case_id"] == odd


def test_raw_ints_pass_through_and_published_at_defaults_to_now() -> None:
    record = sample(contracts.REBATES, occurred_at=OCCURRED_MS, amount_pkr=8_450_050)
    del record["published_at"]
    raw = prepare(contracts.REBATES, record, NOW_MS)
    assert raw["published_at"] == NOW_MS
    assert raw["amount_pkr"] == 8_450_050
    assert raw["occurred_at"] == OCCURRED_MS


@pytest.mark.parametrize(
    ("topic", "change", "field", "reason_part"),
    [
        (contracts.CUSTOMS, {"status": "RELEASED"}, "status", "unknown status 'RELEASED'"),
        (contracts.CUSTOMS, {"agency": "FBR-MYSTERY"}, "agency", "unknown agency"),
        (contracts.CUSTOMS, {"agency": "PQA"}, "agency", "does not publish on customs.clearances.v1"),
        (contracts.CUSTOMS, {"event_id": "not-a-uuid"}, "event_id", "must be a UUID"),
        (contracts.CUSTOMS, {"event_id": 12345}, "event_id", "expected a string"),
        (contracts.CUSTOMS, {"province": "PK-XX"}, "province", "unknown province"),
        (contracts.CUSTOMS, {"port": "LHR"}, "port", "unknown port"),
        (contracts.CUSTOMS, {"declared_value_pkr": "-5.00"}, "declared_value_pkr", "must not be negative"),
        (contracts.CUSTOMS, {"declared_value_pkr": 1500.5}, "declared_value_pkr", "not float"),
        (
            contracts.CUSTOMS,
            {"declared_value_pkr": "12.345"},
            "declared_value_pkr",
            "more than 2 decimal places",
        ),
        (contracts.CUSTOMS, {"declared_value_pkr": "lots"}, "declared_value_pkr", "not a decimal amount"),
        (contracts.CUSTOMS, {"declared_value_pkr": "NaN"}, "declared_value_pkr", "not a finite amount"),
        (contracts.CUSTOMS, {"declared_value_pkr": "1e20"}, "declared_value_pkr", "precision"),
        (contracts.CUSTOMS, {"declared_value_pkr": "1e30"}, "declared_value_pkr", "too large an amount"),
        (contracts.CUSTOMS, {"declared_value_pkr": "9e999999"}, "declared_value_pkr", "too large an amount"),
        (contracts.CUSTOMS, {"occurred_at": "²"}, "occurred_at", "not an ISO-8601 timestamp"),
        (contracts.CUSTOMS, {"container_ids": "MSCU1234567"}, "container_ids", "expected a list"),
        (contracts.CUSTOMS, {"container_ids": [1, 2]}, "container_ids", "item 0: expected a string"),
        (contracts.CUSTOMS, {"container_ids": []}, "container_ids", "at least one container"),
        (contracts.CUSTOMS, {"hs_code": 5208}, "hs_code", "expected a string"),
        (contracts.CUSTOMS, {"hs_code": "   "}, "hs_code", "non-empty string"),
        (contracts.CUSTOMS, {"exporter_id": 7}, "exporter_id", "expected null or string"),
        (contracts.CUSTOMS, {"occurred_at": "yesterday"}, "occurred_at", "not an ISO-8601 timestamp"),
        (contracts.CUSTOMS, {"occurred_at": "2025-03-01T09:30:00"}, "occurred_at", "has no timezone"),
        (contracts.CUSTOMS, {"occurred_at": True}, "occurred_at", "boolean"),
        (contracts.CUSTOMS, {"occurred_at": "1999-12-31T23:59:59Z"}, "occurred_at", "before 2000-01-01"),
        (contracts.CUSTOMS, {"occurred_at": "2026-01-01T01:00:00Z"}, "occurred_at", "in the future"),
        (contracts.CUSTOMS, {"published_at": "2030-01-01T00:00:00Z"}, "published_at", "in the future"),
        (
            contracts.CUSTOMS,
            {"colour": "red"},
            "colour",
            "is not a field of pk.gov.backbone.CustomsClearance",
        ),
        (contracts.CUSTOMS, {"case_id": "x" * 129}, "case_id", "longer than 128"),
        (contracts.CUSTOMS, {"case_id": "EXP-\ud800"}, "case_id", "lone surrogate"),
        (contracts.CUSTOMS, {"case_id": "EXP-1\x00"}, "case_id", "control character U+0000 at position 5"),
        (contracts.CUSTOMS, {"case_id": "EXP-1\nEXP-2"}, "case_id", "control character U+000A at position 5"),
        (contracts.CUSTOMS, {"case_id": "EXP-1\x85"}, "case_id", "control character U+0085"),
        (contracts.CUSTOMS, {"hs_code": "5208\t11"}, "hs_code", "control character U+0009"),
        (contracts.PERMITS, {"vehicle_reg": "LEA\r1234"}, "vehicle_reg", "control character U+000D"),
        (contracts.PORTS, {"container_id": "MSCU\x7f1"}, "container_id", "control character U+007F"),
        (contracts.REBATES, {"exporter_id": "NTN\x1b[31m"}, "exporter_id", "control character U+001B"),
        (contracts.REBATES, {"amount_pkr": "-0.01"}, "amount_pkr", "must not be negative"),
        (contracts.REBATES, {"amount_pkr": True}, "amount_pkr", "not bool"),
        (contracts.ENERGY, {"regulator": "WAPDA"}, "regulator", "unknown regulator 'WAPDA'"),
        (contracts.PERMITS, {"to_province": "Sindh"}, "to_province", "unknown province"),
        (contracts.PORTS, {"status": "loaded"}, "status", "unknown status 'loaded'"),
    ],
)
def test_bad_field_is_refused_naming_field_and_reason(
    topic: str, change: dict[str, Any], field: str, reason_part: str
) -> None:
    error = refused(topic, sample(topic, **change))
    assert error.field == field
    assert reason_part in error.reason


@pytest.mark.parametrize("topic", contracts.INPUT_TOPICS)
def test_missing_required_field_is_named(topic: str) -> None:
    for name in ("event_id", "case_id", "agency", "status", "occurred_at"):
        record = sample(topic)
        del record[name]
        error = refused(topic, record)
        assert (error.field, error.reason) == (name, "missing required field")
    record = sample(topic, case_id=None)
    assert refused(topic, record).field == "case_id"


def test_not_an_object_and_unknown_topic_are_refused() -> None:
    assert refused(contracts.CUSTOMS, ["a", "list"]).field == "record"
    assert refused("customs.clearances.v9", sample(contracts.CUSTOMS)).field == "topic"
    error = refused(contracts.ALERTS, sample(contracts.CUSTOMS))  # an output topic is not an agency topic
    assert error.field == "topic" and "not an agency topic" in error.reason


def test_validate_event_catches_time_bounds_and_negative_money_on_raw_records() -> None:
    raw = prepare(contracts.REBATES, sample(contracts.REBATES), NOW_MS)
    validate_event(contracts.REBATES, raw, NOW_MS)
    for name in ("occurred_at", "published_at"):
        for value, reason in (
            (MIN_EVENT_TIME_MS - 1, "before 2000-01-01"),
            (NOW_MS + 3_600_000, "in the future"),
        ):
            with pytest.raises(InvalidRecord) as info:
                validate_event(contracts.REBATES, {**raw, name: value}, NOW_MS)
            assert info.value.field == name and reason in info.value.reason
    with pytest.raises(InvalidRecord) as info:
        validate_event(contracts.REBATES, {**raw, "amount_pkr": -1}, NOW_MS)
    assert info.value.field == "amount_pkr"
    # the allowed future skew is a parameter (settings.max_future_skew_ms)
    validate_event(
        contracts.REBATES, {**raw, "occurred_at": NOW_MS + 60_000}, NOW_MS, max_future_skew_ms=120_000
    )


def test_money_and_time_conversions_are_exact() -> None:
    assert decimal_to_paisa("0.10", "m") == 10
    assert decimal_to_paisa(Decimal("123456789012345.67"), "m") == 12_345_678_901_234_567
    assert decimal_to_paisa(5, "m") == 500
    with pytest.raises(ValueError, match="float"):
        decimal_to_paisa(0.1, "m")
    assert datetime_to_ms("2000-01-01T00:00:00Z", "t") == MIN_EVENT_TIME_MS
    assert datetime_to_ms("1740803400250", "t") == OCCURRED_MS


@settings(max_examples=300, deadline=None)
@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)))
def test_datetime_to_ms_truncates_exactly_like_integer_arithmetic(moment: datetime) -> None:
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    expected = (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    assert datetime_to_ms(moment, "t") == expected
    assert datetime_to_ms(moment.isoformat(), "t") == expected


_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40).filter(str.strip)
# identifiers refuse control characters (Unicode category Cc: U+0000-U+001F, U+007F-U+009F)
_id_chars = st.characters(blacklist_categories=("Cs", "Cc"))
_id_text = st.text(_id_chars, min_size=1, max_size=40).filter(str.strip)


@settings(max_examples=150, deadline=None)
@given(
    case_id=_id_text,
    hs_code=st.text(_id_chars, min_size=1, max_size=16).filter(str.strip),
    paisa=st.integers(min_value=0, max_value=10**18 - 1),
    containers=st.lists(_text, min_size=1, max_size=5),
    occurred=st.integers(min_value=MIN_EVENT_TIME_MS, max_value=NOW_MS),
    exporter=st.none() | _text,
)
def test_any_valid_customs_record_survives_prepare_encode_decode(
    case_id: str, hs_code: str, paisa: int, containers: list[str], occurred: int, exporter: str | None
) -> None:
    amount = Decimal(paisa).scaleb(-2)
    record = sample(
        contracts.CUSTOMS,
        case_id=case_id,
        hs_code=hs_code,
        declared_value_pkr=str(amount),
        container_ids=containers,
        occurred_at=occurred,
        published_at=occurred,
        exporter_id=exporter,
    )
    raw = prepare(contracts.CUSTOMS, record, NOW_MS)
    assert raw["declared_value_pkr"] == paisa
    codec = Codec()
    assert codec.decode(contracts.CUSTOMS, codec.encode(contracts.CUSTOMS, raw)) == raw


_any_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text()
    | st.binary()
    | st.decimals()
    | st.datetimes(timezones=st.none() | st.just(UTC)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=250, deadline=None)
@given(topic=st.sampled_from(contracts.INPUT_TOPICS), data=st.data())
def test_prepare_only_ever_raises_invalid_record(topic: str, data: st.DataObject) -> None:
    """Whatever an agency hands over, the answer is a raw record or an InvalidRecord naming a field."""
    record = sample(topic)
    names = data.draw(st.lists(st.sampled_from([*record, "extra"]), max_size=4))
    for name in names:
        if data.draw(st.booleans()):
            record.pop(name, None)
        else:
            record[name] = data.draw(_any_value)
    try:
        raw = prepare(topic, record, NOW_MS)
    except InvalidRecord as exc:
        assert exc.field and exc.reason
        return
    Codec().encode(topic, raw)  # whatever prepare accepts must encode
