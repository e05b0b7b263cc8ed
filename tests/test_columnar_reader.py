"""The whole-batch columnar reader returns exactly what the codec decodes record by record, or
nothing: on random records of every agency schema, on simulated traffic, on random corruptions,
and on the bodies whose boundaries concatenation would blur (trailing bytes, overlong varints,
split array blocks)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sink_fixtures import BASE_MS, agency_events, alert, backlog, freshness, kpi_window
from test_fast_reader import _raw_schema, _write, corrupt, strategy

from schemas import contracts
from schemas.codec import Codec, DecodeError, paisa_to_bytes
from schemas.columnar_reader import _plan, read_columns, unscaled
from schemas.wire import SINGLE_OBJECT_MAGIC
from sinks import rows

AGENCY = [contracts.current(t) for t in contracts.INPUT_TOPICS]


def _records(table: pa.Table, sv: contracts.SchemaVersion) -> list[dict[str, Any]]:
    """The table in the codec's raw shape (enum names, epoch ms, integer paisa)."""
    columns = {}
    for name in sv.field_names:
        column = table.column(name)
        if pa.types.is_timestamp(column.type):
            column = column.cast(pa.int64())
        elif pa.types.is_decimal(column.type):
            column = unscaled(column, 2)
        columns[name] = column.to_pylist()
    return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def _decoded(codec: Codec, topic: str, values: list[bytes]) -> list[dict[str, Any]] | None:
    """Every value decoded record by record, or None if any of them is refused."""
    try:
        return [codec.decode(topic, v) for v in values]
    except DecodeError:
        return None


def _amounts(sv: contracts.SchemaVersion, records: list[dict[str, Any]], data: Any) -> None:
    """The raw schema's decimals are any bytes: make each present one an amount of Decimal(18, 2)."""
    for record in records:
        for name in sv.money_fields:
            if record.get(name) is not None:
                record[name] = paisa_to_bytes(data.draw(st.integers(0, 10**18 - 1)))


def _framed(sv: contracts.SchemaVersion, body: bytes) -> bytes:
    return SINGLE_OBJECT_MAGIC + sv.fingerprint + body


@pytest.mark.parametrize("sv", AGENCY, ids=lambda sv: sv.topic)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_records_read_as_the_codec_reads_them(sv: contracts.SchemaVersion, data: Any) -> None:
    """Random field values (any string, any long, any amount up to Decimal(18, 2)), written by
    fastavro: read as columns, and every record equals the codec's."""
    schema = _raw_schema(sv)
    records = data.draw(st.lists(strategy(schema, {}), min_size=1, max_size=6))
    _amounts(sv, records, data)
    values = [_framed(sv, _write(schema, r)) for r in records]
    codec = Codec()
    decoded = read_columns(codec, sv.topic, values)
    assert decoded is not None
    assert _records(decoded, sv) == _decoded(codec, sv.topic, values)


@pytest.mark.parametrize("sv", AGENCY, ids=lambda sv: sv.topic)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_decimal_bytes_read_as_the_codec_reads_them_or_not_at_all(
    sv: contracts.SchemaVersion, data: Any
) -> None:
    """Arbitrary decimal bytes (negative, non-minimal, longer than 16 bytes) are never misread."""
    schema = _raw_schema(sv)
    records = data.draw(st.lists(strategy(schema, {}), min_size=1, max_size=4))
    values = [_framed(sv, _write(schema, r)) for r in records]
    codec = Codec()
    decoded = read_columns(codec, sv.topic, values)
    if decoded is not None:
        assert _records(decoded, sv) == _decoded(codec, sv.topic, values)


@pytest.mark.parametrize("sv", AGENCY, ids=lambda sv: sv.topic)
def test_traffic_written_by_our_producers_is_read_in_one_call(sv: contracts.SchemaVersion) -> None:
    codec = Codec()
    values = [codec.encode(t, raw) for t, raw in agency_events(80, seed=3) if t == sv.topic]
    assert values
    decoded = read_columns(codec, sv.topic, values)
    assert decoded is not None, "canonical current-schema bodies must take the columnar path"
    assert _records(decoded, sv) == [codec.decode(sv.topic, v) for v in values]


@pytest.mark.parametrize("sv", AGENCY, ids=lambda sv: sv.topic)
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_corrupted_message_never_shifts_or_changes_a_record(sv: contracts.SchemaVersion, data: Any) -> None:
    """Truncations, flips, insertions and appended bytes in one message of a batch: either the
    columnar read refuses the batch, or every record equals the codec's (and the codec accepts it)."""
    codec = Codec()
    values = [codec.encode(t, raw) for t, raw in agency_events(30, seed=7) if t == sv.topic][:5]
    index = data.draw(st.integers(0, len(values) - 1))
    values[index] = corrupt(data, values[index], times=st.integers(1, 3))
    decoded = read_columns(codec, sv.topic, values)
    if decoded is not None:
        expected = _decoded(codec, sv.topic, values)
        assert expected is not None, "a batch with a record the codec refuses was read as columns"
        assert _records(decoded, sv) == expected


def _ports_batch() -> tuple[Codec, list[bytes]]:
    codec = Codec()
    return codec, [codec.encode(t, raw) for t, raw in agency_events(40, seed=2) if t == contracts.PORTS][:6]


@pytest.mark.parametrize("where", [0, 2, -1])
def test_a_trailing_byte_anywhere_sends_the_batch_to_the_codec(where: int) -> None:
    """The last record's trailing byte included: the reader itself does not notice that one."""
    codec, values = _ports_batch()
    values[where] += b"\x00"
    assert read_columns(codec, contracts.PORTS, values) is None
    with pytest.raises(DecodeError, match="trailing"):
        codec.decode(contracts.PORTS, values[where])


def test_non_canonical_but_valid_encodings_take_the_codec_path() -> None:
    """An overlong varint and an array written as two blocks decode fine one by one; the columnar
    read cannot prove their boundaries, so it leaves them to the codec."""
    codec, values = _ports_batch()
    sv = contracts.current(contracts.PORTS)
    body = values[1][10:]
    assert body[0] == 72  # the event id's length, 36 (zigzag 72), in one byte
    values[1] = _framed(sv, bytes([0xC8, 0x00]) + body[1:])  # the same length in two bytes
    assert codec.decode(contracts.PORTS, values[1])["event_id"]
    assert read_columns(codec, contracts.PORTS, values) is None

    customs = contracts.current(contracts.CUSTOMS)
    raw = next(raw for t, raw in agency_events(20, seed=2) if t == contracts.CUSTOMS)
    raw = {**raw, "container_ids": ["MSCU1234565", "MSCU7654321"], "exporter_id": None, "gd_number": None}
    canonical = codec.encode(contracts.CUSTOMS, raw)
    one_block = b"\x04" + _write_str("MSCU1234565") + _write_str("MSCU7654321") + b"\x00"
    two_blocks = b"\x02" + _write_str("MSCU1234565") + b"\x02" + _write_str("MSCU7654321") + b"\x00"
    assert one_block in canonical
    split = canonical.replace(one_block, two_blocks)
    assert codec.decode(contracts.CUSTOMS, split) == codec.decode(contracts.CUSTOMS, canonical)
    assert read_columns(codec, customs.topic, [canonical]) is not None
    assert read_columns(codec, customs.topic, [canonical, split]) is None


def _write_str(s: str) -> bytes:
    data = s.encode()
    assert len(data) < 64
    return bytes([len(data) * 2]) + data


def test_what_the_columnar_read_leaves_to_the_codec() -> None:
    codec, values = _ports_batch()
    assert read_columns(codec, contracts.PORTS, values) is not None
    assert read_columns(codec, contracts.CUSTOMS, values) is None  # another family's schema
    assert read_columns(codec, contracts.PORTS, [*values, None]) is None  # a tombstone
    assert read_columns(codec, contracts.PORTS, [*values, b""]) is None
    assert read_columns(codec, contracts.PORTS, [*values, b"\x00\x00\x00\x00\x07" + values[0][10:]]) is None
    assert read_columns(codec, contracts.PORTS, [*values, values[0][:20]]) is None  # truncated
    small = Codec(max_message_bytes=len(values[0]) - 1)
    assert read_columns(small, contracts.PORTS, values) is None  # too large: the codec says so
    assert read_columns(codec, contracts.PORTS, []) is None


# -- output topics: the sink's columnar path for the processors' records ---------------------------
SIZED_OUTPUTS = [
    contracts.current(t) for t in contracts.OUTPUT_TOPICS if _plan(contracts.current(t)) is not None
]


def test_the_output_topics_read_as_columns_are_the_high_volume_ones() -> None:
    """KPI windows (about 1.35 per event) and the other booleans-free outputs; stage records (a
    boolean) and dead letters (an int) are decoded record by record."""
    assert {sv.topic for sv in SIZED_OUTPUTS} == {
        contracts.KPI_WINDOWS,
        contracts.ALERTS,
        contracts.BACKLOG,
        contracts.FEED_FRESHNESS,
    }


def _record_path(topic: str, values: list[bytes]) -> pa.Table | None:
    """What the sink's record-by-record path stores, or None if it would park a row instead."""
    codec = Codec()
    records = [codec.decode(topic, v) for v in values]
    spec = rows.output_spec(topic)
    columns = rows.output_columns(topic, records)
    if rows.out_of_range(spec, columns):
        return None
    try:
        return spec.columns_to_arrow(columns)
    except (pa.ArrowException, OverflowError, TypeError):
        return None


@pytest.mark.parametrize("sv", SIZED_OUTPUTS, ids=lambda sv: sv.topic)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_output_records_become_the_rows_the_record_path_stores(
    sv: contracts.SchemaVersion, data: Any
) -> None:
    """Random output records (any long, so negative versions and timestamps beyond DateTime64 too):
    the columnar table equals the record path's, and whenever the record path would park a row the
    columnar path declines the batch."""
    schema = _raw_schema(sv)
    records = data.draw(st.lists(strategy(schema, {}), min_size=1, max_size=5))
    _amounts(sv, records, data)
    values = [_framed(sv, _write(schema, r)) for r in records]
    decoded = read_columns(Codec(), sv.topic, values)
    assert decoded is not None
    table = rows.output_table(sv.topic, decoded)
    expected = _record_path(sv.topic, values)
    if table is None:
        assert expected is None, "the columnar path declined a batch the record path stores whole"
    else:
        assert expected is not None and table.equals(expected)


def test_processor_shaped_outputs_take_the_columnar_path() -> None:
    codec = Codec()
    cases = {
        contracts.KPI_WINDOWS: [kpi_window(i, 3) for i in range(20)],
        contracts.ALERTS: [alert(i, "FIRING", BASE_MS + i) for i in range(20)],
        contracts.BACKLOG: [backlog(i, 2, 7) for i in range(20)],
        contracts.FEED_FRESHNESS: [freshness(a, 4) for a in ("FBR-CUSTOMS", "KPT", "PQA")],
    }
    for topic, records in cases.items():
        values = [codec.encode(topic, r) for r in records]
        decoded = read_columns(codec, topic, values)
        assert decoded is not None, topic
        table = rows.output_table(topic, decoded)
        assert table is not None and table.equals(_record_path(topic, values)), topic
