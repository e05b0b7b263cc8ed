"""The codec: both wire framings, interop with Confluent's own serializers, and a decoder that only
ever fails with a ``DecodeError`` naming the reason."""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro import schemaless_writer
from fastavro.schema import to_parsing_canonical_form
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from producers_fixtures import expected_raw, sample

from schemas import contracts
from schemas.codec import Codec, DecodeError, paisa_to_bytes, to_rich
from schemas.wire import RegistryFormat

TOPICS = contracts.INPUT_TOPICS


# -- an independent CRC-64-AVRO (Rabin) fingerprint, straight from the Avro specification --------
_EMPTY = 0xC15D213AA4D7A795


def _table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY & -(fp & 1))
        table.append(fp)
    return table


_TABLE = _table()


def crc64_avro(data: bytes) -> int:
    fp = _EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _TABLE[(fp ^ byte) & 0xFF]
    return fp


def test_independent_fingerprint_matches_the_avro_spec_vector() -> None:
    # apache/avro share/test/data/schema-tests.txt: "int" → 8247732601305521295 (0x7275d51a3f395c8f)
    assert crc64_avro(b'"int"') == 8247732601305521295


def test_every_version_fingerprint_is_the_little_endian_crc64_of_its_canonical_form() -> None:
    for versions in contracts.all_versions().values():
        for sv in versions:
            canonical = to_parsing_canonical_form(json.loads(sv.path.read_text()))
            assert sv.fingerprint == crc64_avro(canonical.encode()).to_bytes(8, "little")


def raw_sample(topic: str, **overrides: Any) -> dict[str, Any]:
    return expected_raw(topic, sample(topic, **overrides))


@pytest.mark.parametrize("topic", TOPICS)
def test_single_object_round_trip(topic: str) -> None:
    raw = raw_sample(topic)
    value = Codec().encode(topic, raw)
    assert value[:2] == b"\xc3\x01"
    assert value[2:10] == contracts.current(topic).fingerprint
    assert Codec().decode(topic, value) == raw


def test_money_is_twos_complement_big_endian_unscaled() -> None:
    assert paisa_to_bytes(0) == b"\x00"
    assert paisa_to_bytes(127) == b"\x7f"
    assert paisa_to_bytes(128) == b"\x00\x80"
    assert paisa_to_bytes(-1) == b"\xff"
    assert paisa_to_bytes(-129) == b"\xff\x7f"


def test_record_written_with_customs_v1_decodes_with_the_current_reader() -> None:
    v1 = contracts.all_versions()[contracts.CUSTOMS][0]
    assert v1.version == 1 and contracts.current(contracts.CUSTOMS).version >= 2
    raw = raw_sample(contracts.CUSTOMS)
    del raw["gd_number"]
    value = b"\xc3\x01" + v1.fingerprint + Codec.encode_body(contracts.CUSTOMS, raw, version=v1)
    assert Codec().decode(contracts.CUSTOMS, value) == {**raw, "gd_number": None}


# -- Confluent interop ------------------------------------------------------------------------


def _ctx(topic: str) -> SerializationContext:
    return SerializationContext(topic, MessageField.VALUE)


@pytest.mark.parametrize("topic", TOPICS)
def test_confluent_avro_serializer_output_decodes_through_our_consumer_path(topic: str) -> None:
    client = SchemaRegistryClient.new_client({"url": "mock://interop"})
    serializer = AvroSerializer(client, json.dumps(contracts.current(topic).schema))
    raw = raw_sample(topic)
    value = serializer(to_rich(topic, raw), _ctx(topic))
    assert value[0] == 0  # Confluent framing, not ours
    assert Codec(registry_format=RegistryFormat(client)).decode(topic, value) == raw


def test_confluent_serializer_with_an_older_version_decodes_with_the_current_reader() -> None:
    client = SchemaRegistryClient.new_client({"url": "mock://interop-old"})
    v1 = contracts.all_versions()[contracts.CUSTOMS][0]
    serializer = AvroSerializer(client, json.dumps(v1.schema))
    raw = raw_sample(contracts.CUSTOMS)
    del raw["gd_number"]
    value = serializer(to_rich(contracts.CUSTOMS, raw), _ctx(contracts.CUSTOMS))  # no gd_number in v1
    decoded = Codec(registry_format=RegistryFormat(client)).decode(contracts.CUSTOMS, value)
    assert decoded == {**raw, "gd_number": None}


@pytest.mark.parametrize("topic", TOPICS)
def test_our_registry_framing_decodes_with_confluent_avro_deserializer(topic: str) -> None:
    client = SchemaRegistryClient.new_client({"url": "mock://interop-back"})
    raw = raw_sample(topic)
    value = Codec(wire=RegistryFormat(client)).encode(topic, raw)
    decoded = AvroDeserializer(client)(value, _ctx(topic))
    expected = to_rich(topic, raw)
    assert {k: (str(v) if k == "event_id" else v) for k, v in decoded.items()} == expected


def test_confluent_framed_bytes_without_a_registry_or_with_an_unknown_id_are_unknown_schema() -> None:
    client = SchemaRegistryClient.new_client({"url": "mock://unknown"})
    value = Codec(wire=RegistryFormat(client)).encode(contracts.PORTS, raw_sample(contracts.PORTS))
    with pytest.raises(DecodeError) as info:
        Codec().decode(contracts.PORTS, value)
    assert info.value.reason == "unknown_schema"
    other = SchemaRegistryClient.new_client({"url": "mock://other"})
    with pytest.raises(DecodeError) as info:
        Codec(registry_format=RegistryFormat(other)).decode(
            contracts.PORTS, b"\x00\x00\x00\x03\xe7" + value[5:]
        )
    assert info.value.reason == "unknown_schema"


def test_a_registry_id_of_a_non_avro_schema_is_unknown_schema() -> None:
    from confluent_kafka.schema_registry import Schema

    client = SchemaRegistryClient.new_client({"url": "mock://json-schema"})
    schema_id = client.register_schema("other-value", Schema('{"type": "object"}', "JSON"))
    value = b"\x00" + schema_id.to_bytes(4, "big") + b"\x02"
    with pytest.raises(DecodeError) as info:
        Codec(registry_format=RegistryFormat(client)).decode(contracts.PORTS, value)
    assert info.value.reason == "unknown_schema" and "not Avro" in info.value.detail


# -- decode errors ----------------------------------------------------------------------------


def _reason(topic: str, value: bytes | None, codec: Codec | None = None) -> str:
    with pytest.raises(DecodeError) as info:
        (codec or Codec()).decode(topic, value)
    return info.value.reason


def test_each_kind_of_bad_message_has_its_reason() -> None:
    good = Codec().encode(contracts.CUSTOMS, raw_sample(contracts.CUSTOMS))
    assert _reason(contracts.CUSTOMS, None) == "empty"
    assert _reason(contracts.CUSTOMS, b"") == "empty"
    assert _reason(contracts.CUSTOMS, b"{json}") == "bad_framing"
    assert _reason(contracts.CUSTOMS, b"\xc3\x01" + b"\x00" * 8 + good[10:]) == "unknown_schema"
    assert _reason(contracts.PERMITS, good) == "wrong_topic"
    assert _reason(contracts.CUSTOMS, good[:-3]) == "undecodable"
    assert _reason(contracts.CUSTOMS, good + b"\x00") == "undecodable"
    assert _reason(contracts.CUSTOMS, good, Codec(max_message_bytes=len(good) - 1)) == "too_large"


def test_non_utf8_string_is_reported_as_bad_utf8() -> None:
    raw = raw_sample(contracts.CUSTOMS, case_id="ABCD")
    good = Codec().encode(contracts.CUSTOMS, raw)
    assert good.count(b"ABCD") == 1
    assert _reason(contracts.CUSTOMS, good.replace(b"ABCD", b"\xff\xfe\xfd\xfc")) == "bad_utf8"


def _decode_only_raises_decode_error(topic: str, value: bytes, codec: Codec | None = None) -> None:
    try:
        decoded = (codec or Codec()).decode(topic, value)
    except DecodeError as exc:
        assert exc.reason in {
            "empty",
            "too_large",
            "bad_framing",
            "unknown_schema",
            "wrong_topic",
            "undecodable",
            "bad_utf8",
        }
        return
    assert isinstance(decoded, dict)


_GOOD = {t: Codec().encode(t, expected_raw(t, sample(t))) for t in TOPICS}
_FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(topic=st.sampled_from(TOPICS), value=st.binary(max_size=300))
def test_random_bytes_only_ever_raise_decode_error(topic: str, value: bytes) -> None:
    _decode_only_raises_decode_error(topic, value)


@_FUZZ
@given(topic=st.sampled_from(TOPICS), body=st.binary(max_size=300))
def test_valid_header_with_random_body_only_raises_decode_error(topic: str, body: bytes) -> None:
    _decode_only_raises_decode_error(topic, _GOOD[topic][:10] + body)
    _decode_only_raises_decode_error(topic, b"\x00\x00\x00\x00\x01" + body)


@_FUZZ
@given(topic=st.sampled_from(TOPICS), data=st.data())
def test_truncated_or_corrupted_messages_only_raise_decode_error(topic: str, data: st.DataObject) -> None:
    good = _GOOD[topic]
    cut = data.draw(st.integers(min_value=0, max_value=len(good) - 1))
    with pytest.raises(DecodeError):
        Codec().decode(topic, good[:cut])
    position = data.draw(st.integers(min_value=10, max_value=len(good) - 1))
    flipped = bytes([data.draw(st.integers(0, 255))])
    _decode_only_raises_decode_error(topic, good[:position] + flipped + good[position + 1 :])


@_FUZZ
@given(
    topic=st.sampled_from(TOPICS),
    other=st.sampled_from(TOPICS),
    fingerprint=st.binary(min_size=8, max_size=8),
)
def test_wrong_fingerprint_or_family_is_unknown_schema_or_wrong_topic(
    topic: str, other: str, fingerprint: bytes
) -> None:
    body = _GOOD[topic][10:]
    known = contracts.by_fingerprint()
    reason = _reason(topic, b"\xc3\x01" + fingerprint + body) if fingerprint not in known else None
    assert reason in (None, "unknown_schema")
    if other != topic:
        assert _reason(other, _GOOD[topic]) == "wrong_topic"


def test_huge_declared_lengths_and_huge_messages_fail_cleanly() -> None:
    # a string length prefix of ~2^62 bytes, and a 2 MB message
    huge_len = (
        b"\xc3\x01"
        + contracts.current(contracts.CUSTOMS).fingerprint
        + b"\xfe\xff\xff\xff\xff\xff\xff\xff\x7f"
    )
    _decode_only_raises_decode_error(contracts.CUSTOMS, huge_len)
    assert _reason(contracts.CUSTOMS, _GOOD[contracts.CUSTOMS] + b"\x00" * 2_000_000) == "too_large"
    big_array = io.BytesIO()
    raw = expected_raw(contracts.CUSTOMS, sample(contracts.CUSTOMS))
    raw = {
        **raw,
        "declared_value_pkr": paisa_to_bytes(raw["declared_value_pkr"]),
        "container_ids": [str(uuid.uuid4()) for _ in range(20_000)],
    }
    schemaless_writer(big_array, contracts.current(contracts.CUSTOMS).parsed_raw, raw)
    value = b"\xc3\x01" + contracts.current(contracts.CUSTOMS).fingerprint + big_array.getvalue()
    assert len(Codec().decode(contracts.CUSTOMS, value)["container_ids"]) == 20_000
