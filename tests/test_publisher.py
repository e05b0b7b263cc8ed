# ruff: noqa: F811 - pytest fixtures imported from producers_fixtures are parameters here
"""The publisher library: nothing invalid is sent, every record gets one delivery result, and what
the broker acknowledged is exactly what a plain consumer reads back."""

from __future__ import annotations

import pytest
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from producers_fixtures import (  # noqa: F401 - fixtures
    broker_settings,
    consume_all,
    expected_raw,
    fresh_broker,
    sample,
    unreachable_bootstrap,
)

from backbone.config import Settings, load_settings
from backbone.embedded.broker import TansuBroker
from producers.publisher import Publisher, PublisherError
from schemas import contracts
from schemas.codec import Codec, to_rich
from schemas.validation import InvalidRecord
from schemas.wire import RegistryFormat


@pytest.fixture
def offline_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.delenv("BACKBONE_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("BACKBONE_SCHEMA_REGISTRY_URL", raising=False)
    return load_settings()


def test_no_bootstrap_is_a_clear_error(offline_settings: Settings) -> None:
    with pytest.raises(PublisherError, match="BACKBONE_KAFKA_BOOTSTRAP_SERVERS"):
        Publisher(offline_settings)


def test_invalid_records_are_refused_and_never_queued(offline_settings: Settings) -> None:
    publisher = Publisher(offline_settings, unreachable_bootstrap(), message_timeout_ms=1000)
    with pytest.raises(InvalidRecord) as info:
        publisher.publish(contracts.CUSTOMS, sample(contracts.CUSTOMS, status="LOST"))
    assert info.value.field == "status"
    rejected = publisher.publish_many(
        contracts.REBATES,
        [
            sample(contracts.REBATES, amount_pkr="-1.00"),
            {"not": "a rebate"},
            sample(contracts.REBATES, agency="KPT"),
        ],
        refs=["a", "b", "c"],
    )
    assert [(r.ref, r.field) for r in rejected] == [("a", "amount_pkr"), ("b", "not"), ("c", "agency")]
    assert publisher.in_flight == 0
    assert publisher.flush(2) == []


@pytest.mark.integration
def test_unreachable_broker_reports_every_record_failed_and_none_sent(offline_settings: Settings) -> None:
    publisher = Publisher(offline_settings, unreachable_bootstrap(), message_timeout_ms=2000)
    with pytest.raises(PublisherError, match="cannot reach Kafka at 127.0.0.1:"):
        publisher.check_topic(contracts.CUSTOMS, timeout_s=2)
    records = [sample(contracts.CUSTOMS, case_id=f"EXP-{i}") for i in range(5)]
    assert publisher.publish_many(contracts.CUSTOMS, records) == []
    handle = publisher.publish(contracts.PORTS, sample(contracts.PORTS))
    results = publisher.flush()
    assert len(results) == 6 and publisher.in_flight == 0
    assert not any(r.ok for r in results)
    assert all(r.offset is None and r.error for r in results)
    assert sorted(r.ref for r in results if r.topic == contracts.CUSTOMS) == [0, 1, 2, 3, 4]
    assert handle.done() and handle.result is not None and not handle.result.ok


@pytest.mark.integration
def test_flush_timeout_purges_and_reports_undelivered_records_as_failed(offline_settings: Settings) -> None:
    publisher = Publisher(offline_settings, unreachable_bootstrap(), message_timeout_ms=60_000)
    publisher.publish_many(contracts.PORTS, [sample(contracts.PORTS) for _ in range(3)])
    results = publisher.flush(timeout_s=1.0)
    assert len(results) == 3 and not any(r.ok for r in results)
    assert all("PURGE" in (r.error or "") for r in results)


@pytest.mark.integration
def test_published_records_read_back_exactly(broker_settings: Settings, fresh_broker: TansuBroker) -> None:
    publisher = Publisher(broker_settings)
    publisher.check_topic(contracts.CUSTOMS)
    # 600 cases x 3 events each, plus 7 invalid records mixed in
    records = []
    for i in range(1800):
        records.append(sample(contracts.CUSTOMS, case_id=f"EXP-{i % 600:04d}", hs_code=f"{i:06d}"))
        if i % 250 == 0:
            records.append(sample(contracts.CUSTOMS, event_id=f"bad-{i}"))
    rejected = publisher.publish_many(contracts.CUSTOMS, records)
    assert len(rejected) == 8 and {r.field for r in rejected} == {"event_id"}
    single = sample(contracts.PERMITS)
    delivery = publisher.publish(contracts.PERMITS, single)
    result = delivery.wait(30)
    assert result.ok and result.offset is not None and result.key == b"EXP-2025-0001"
    results = publisher.flush()
    assert len(results) == 1800 + 1 and all(r.ok for r in results), [r for r in results if not r.ok][:3]

    messages = consume_all(fresh_broker.bootstrap, contracts.CUSTOMS, 1800)
    assert len(messages) == 1800
    codec = Codec()
    valid = [r for r in records if not r["event_id"].startswith("bad-")]
    by_event = {codec.decode(contracts.CUSTOMS, m.value())["event_id"]: m for m in messages}
    assert set(by_event) == {r["event_id"] for r in valid}
    for record in valid:
        message = by_event[record["event_id"]]
        assert message.key() == record["case_id"].encode()
        assert codec.decode(contracts.CUSTOMS, message.value()) == expected_raw(contracts.CUSTOMS, record)
    # one case stays on one partition, in publication order
    for case in ("EXP-0000", "EXP-0123", "EXP-0599"):
        case_events = [r["event_id"] for r in valid if r["case_id"] == case]
        placed = [(by_event[e].partition(), by_event[e].offset()) for e in case_events]
        assert len({p for p, _ in placed}) == 1 and [o for _, o in placed] == sorted(o for _, o in placed)
    permits = consume_all(fresh_broker.bootstrap, contracts.PERMITS, 1)
    assert [codec.decode(contracts.PERMITS, m.value()) for m in permits] == [
        expected_raw(contracts.PERMITS, single)
    ]


@pytest.mark.integration
def test_schema_registry_mode_uses_confluent_framing_end_to_end(
    broker_settings: Settings, fresh_broker: TansuBroker
) -> None:
    settings = load_settings(schema_registry_url="mock://publisher-test")
    publisher = Publisher(settings)
    assert isinstance(publisher.codec.wire, RegistryFormat)
    records = [sample(contracts.REBATES, case_id=f"CLAIM-{i}", amount_pkr=f"{i}.05") for i in range(50)]
    assert publisher.publish_many(contracts.REBATES, records) == []
    assert all(r.ok for r in publisher.flush())
    messages = consume_all(fresh_broker.bootstrap, contracts.REBATES, 50)
    assert len(messages) == 50
    deserializer = AvroDeserializer(publisher.codec.wire.client)
    expected = {r["event_id"]: expected_raw(contracts.REBATES, r) for r in records}
    for m in messages:
        assert m.value()[0] == 0
        raw = publisher.codec.decode(contracts.REBATES, m.value())
        assert raw == expected[raw["event_id"]]
        theirs = deserializer(m.value(), SerializationContext(contracts.REBATES, MessageField.VALUE))
        assert {**theirs, "event_id": str(theirs["event_id"])} == to_rich(contracts.REBATES, raw)


def test_a_record_over_the_message_size_limit_is_refused_and_the_batch_goes_on(
    offline_settings: Settings,
) -> None:
    publisher = Publisher(offline_settings, unreachable_bootstrap(), message_timeout_ms=1000)
    huge = sample(contracts.CUSTOMS, container_ids=[f"MSCU{i:07d}" for i in range(200_000)])
    size = len(publisher.codec.encode(contracts.CUSTOMS, publisher.prepare(contracts.CUSTOMS, huge)))
    assert size > 1_000_000
    records = [sample(contracts.CUSTOMS), huge, sample(contracts.CUSTOMS)]
    rejected = publisher.publish_many(contracts.CUSTOMS, records, refs=["a", "b", "c"])
    reason = f"encoded record is {size:,} bytes, over the 1,000,000-byte message limit"
    assert [(r.ref, r.field, r.reason) for r in rejected] == [("b", "record", reason)]
    assert publisher.in_flight == 2
    with pytest.raises(InvalidRecord, match="over the 1,000,000-byte message limit"):
        publisher.publish(contracts.CUSTOMS, huge)
    assert sorted(r.ref for r in publisher.flush()) == ["a", "c"]


def test_a_value_that_fits_but_not_with_its_key_and_overhead_is_refused_not_raised(
    offline_settings: Settings,
) -> None:
    """librdkafka's message.max.bytes counts key and record overhead: its refusal is a rejection too."""
    record = sample(contracts.CUSTOMS, container_ids=[f"MSCU{i:07d}" for i in range(100)])
    probe = Publisher(offline_settings, unreachable_bootstrap())
    size = len(probe.codec.encode(contracts.CUSTOMS, probe.prepare(contracts.CUSTOMS, record)))
    assert size >= 1000  # librdkafka's smallest allowed message.max.bytes
    publisher = Publisher(
        offline_settings, unreachable_bootstrap(), producer_config={"message.max.bytes": size}
    )
    rejected = publisher.publish_many(contracts.CUSTOMS, [record])
    assert [r.field for r in rejected] == ["record"]
    assert f"encoded record is {size:,} bytes with a 13-byte key" in rejected[0].reason
    assert publisher.in_flight == 0 and publisher.flush(1) == []


def test_a_lone_surrogate_is_named_as_such_in_optional_fields_too(offline_settings: Settings) -> None:
    publisher = Publisher(offline_settings, unreachable_bootstrap())
    for field in ("exporter_id", "hs_code"):  # optional (a union with null) and required
        with pytest.raises(InvalidRecord) as info:
            publisher.publish(contracts.CUSTOMS, sample(contracts.CUSTOMS, **{field: "NTN-\ud800"}))
        assert (info.value.field, info.value.reason) == (
            field,
            "string is not valid Unicode (lone surrogate)",
        )
    with pytest.raises(InvalidRecord) as info:
        publisher.publish(contracts.CUSTOMS, sample(contracts.CUSTOMS, exporter_id=42))
    assert info.value.reason == "expected null or string, got int 42"
