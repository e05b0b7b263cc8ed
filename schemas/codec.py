"""Encode and decode agency and pipeline records.

Two shapes of the same record:

* **raw** – what travels on the wire, as Python primitives: timestamps are epoch millis
  (``int``), money is integer paisa (``int``, decimal scale 2), enums are ``str``.
  The processors work on this shape (cheap to decode, exact).
* **rich** – for people and libraries: ``datetime`` (UTC) and ``Decimal``.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import TYPE_CHECKING, Any, cast

import fastavro
from fastavro import schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError

from schemas import contracts
from schemas.contracts import SchemaVersion
from schemas.fast_reader import Malformed, Reader, Unsupported, compile_reader
from schemas.fast_writer import FALLBACK_ERRORS, Writer, compile_writer
from schemas.fast_writer import Unsupported as UnsupportedWriter
from schemas.wire import (
    CONFLUENT_MAGIC,
    SINGLE_OBJECT_MAGIC,
    BadFraming,
    RegistryFormat,
    SingleObjectFormat,
    UnknownSchema,
    WireFormat,
    resolve_single_object,
)

if TYPE_CHECKING:
    from backbone.config import Settings

DEFAULT_MAX_MESSAGE_BYTES = 1_000_000
_PAISA = Decimal("0.01")


class DecodeError(ValueError):
    """Bytes that cannot become a record of the expected topic. ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# What fastavro raises on corrupt or truncated bodies.
_AVRO_ERRORS = (EOFError, ValueError, IndexError, KeyError, TypeError, OverflowError, SchemaResolutionError)


_FAST_READ_ERRORS = (Malformed, IndexError, UnicodeDecodeError, struct.error)
"""What a generated reader raises on a body it cannot decode with certainty (see ``fast_reader``)."""


@cache
def fast_readers() -> dict[bytes, tuple[str, Reader]]:
    """Fingerprint → (topic, generated reader) for each topic's *current* schema.

    Only current versions: a body written with an older version needs schema resolution, which
    the reference decoder (fastavro) does.
    """
    out: dict[bytes, tuple[str, Reader]] = {}
    for topic in contracts.all_versions():
        sv = contracts.current(topic)
        try:
            reader = compile_reader(contracts.strip_logical_types(sv.schema), sv.money_fields)
        except Unsupported:
            continue
        out[sv.fingerprint] = (topic, reader)
    return out


@cache
def fast_writers() -> dict[bytes, Writer]:
    """Fingerprint → generated writer (:mod:`schemas.fast_writer`) for every published version."""
    out: dict[bytes, Writer] = {}
    for versions in contracts.all_versions().values():
        for sv in versions:
            try:
                writer = compile_writer(contracts.strip_logical_types(sv.schema), sv.money_fields)
            except UnsupportedWriter:
                continue
            out[sv.fingerprint] = writer
    return out


@cache
def _current_writers() -> dict[str, Writer]:
    """Topic → generated writer of its current version: the common case, one dict lookup."""
    writers = fast_writers()
    return {
        topic: writers[fp]
        for topic in contracts.all_versions()
        if (fp := contracts.current(topic).fingerprint) in writers
    }


def paisa_to_bytes(paisa: int) -> bytes:
    """Two's-complement big-endian bytes of an unscaled decimal, as Avro's decimal logical type."""
    length = max(1, (paisa.bit_length() + 8) // 8)
    return paisa.to_bytes(length, "big", signed=True)


def bytes_to_paisa(raw: bytes) -> int:
    return int.from_bytes(raw, "big", signed=True)


def decimal_to_paisa(value: Any, field: str) -> int:
    """Exact PKR → paisa; refuses floats and sub-paisa precision rather than rounding money."""
    if isinstance(value, bool) or isinstance(value, float):
        raise ValueError(f"{field}: money must be a decimal string or integer, not {type(value).__name__}")
    try:
        dec = Decimal(str(value)) if not isinstance(value, Decimal) else value
    except InvalidOperation:
        raise ValueError(f"{field}: {value!r} is not a decimal amount") from None
    if not dec.is_finite():
        raise ValueError(f"{field}: {value!r} is not a finite amount")
    try:
        exact = dec == dec.quantize(_PAISA)
    except InvalidOperation:  # more digits than the decimal context holds: far beyond any amount
        raise ValueError(f"{field}: {value!r} is too large an amount") from None
    if not exact:
        raise ValueError(f"{field}: {value!r} has more than 2 decimal places")
    return int(dec.scaleb(2))


def paisa_to_decimal(paisa: int) -> Decimal:
    return Decimal(paisa).scaleb(-2)


def ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def datetime_to_ms(value: Any, field: str) -> int:
    """Accept epoch millis (int) or an ISO-8601 string / datetime with a timezone."""
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected a timestamp, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdecimal():
            return int(text)
        try:
            value = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{field}: {value!r} is not an ISO-8601 timestamp or epoch millis") from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"{field}: timestamp {value.isoformat()} has no timezone (use Z or +05:00)")
        return int(value.timestamp() * 1000)
    raise ValueError(f"{field}: expected a timestamp, got {type(value).__name__}")


class Codec:
    """Encodes raw records for a topic and decodes bytes of either framing back to raw records."""

    def __init__(
        self,
        wire: WireFormat | None = None,
        registry_format: RegistryFormat | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.wire: WireFormat = wire or SingleObjectFormat()
        self._registry = (
            registry_format
            if registry_format is not None
            else (wire if isinstance(wire, RegistryFormat) else None)
        )
        self.max_message_bytes = max_message_bytes
        self._fast = fast_readers()
        self._writers = _current_writers()

    # -- encoding ------------------------------------------------------------------------
    def encode(self, topic: str, raw: dict[str, Any]) -> bytes:
        """Encode a raw-shaped record with the topic's current schema and the configured framing."""
        writer = self._writers.get(topic)  # encode_body's fast path, inlined: this runs per record
        if writer is None:
            return self.wire.frame(topic, self.encode_body_reference(topic, raw))
        try:
            body = writer(raw)
        except FALLBACK_ERRORS:
            body = self.encode_body_reference(topic, raw)
        return self.wire.frame(topic, body)

    @staticmethod
    def encode_body(topic: str, raw: dict[str, Any], version: SchemaVersion | None = None) -> bytes:
        """The Avro body of ``raw`` written with ``version`` (default: the topic's current schema).

        Fast path: a writer generated for that schema (:mod:`schemas.fast_writer`, about three
        times faster). Whatever it is unsure about goes through :meth:`encode_body_reference`
        (fastavro), which decides the bytes and every error.
        """
        writer = _current_writers().get(topic) if version is None else fast_writers().get(version.fingerprint)
        if writer is not None:
            try:
                return writer(raw)
            except FALLBACK_ERRORS:
                pass
        return Codec.encode_body_reference(topic, raw, version)

    @staticmethod
    def encode_body_reference(topic: str, raw: dict[str, Any], version: SchemaVersion | None = None) -> bytes:
        """:meth:`encode_body` through fastavro's generic writer: the reference the fast path must equal."""
        sv = version or contracts.current(topic)
        rec = raw
        if sv.money_fields:
            rec = dict(raw)
            for name in sv.money_fields:
                if rec.get(name) is not None:
                    rec[name] = paisa_to_bytes(rec[name])
        buf = io.BytesIO()
        schemaless_writer(buf, sv.parsed_raw, rec, strict_allow_default=True)
        return buf.getvalue()

    # -- decoding ------------------------------------------------------------------------
    def writer_schema(self, value: bytes) -> tuple[SchemaVersion, int]:
        if not value:
            raise DecodeError("empty", "message has no value")
        if value[:2] == SINGLE_OBJECT_MAGIC:
            return resolve_single_object(value), 10
        if value[0] == CONFLUENT_MAGIC:
            if self._registry is None:
                raise UnknownSchema("Confluent-framed message but no Schema Registry is configured")
            return self._registry.writer_schema(value)
        raise BadFraming(f"unknown framing header {value[:2].hex()}")

    def decode(self, topic: str, value: bytes | None) -> dict[str, Any]:
        """Decode ``value`` read from ``topic`` into the raw shape of the topic's current schema.

        Fast path: a body written with the topic's current schema is read by a reader generated
        for that schema (:mod:`schemas.fast_reader`, about twice as fast). Anything else, and
        anything the fast reader is unsure about, goes through :meth:`decode_reference`, which
        decides the result and every :class:`DecodeError` reason.
        """
        if value is not None and len(value) <= self.max_message_bytes:
            fp: bytes | None = None
            start = 10
            if value[:2] == SINGLE_OBJECT_MAGIC:
                fp = value[2:10]
            elif value[:1] == b"\x00" and self._registry is not None:
                try:
                    writer, start = self._registry.writer_schema(value)
                except (UnknownSchema, BadFraming):
                    pass
                else:
                    fp = writer.fingerprint
            fast = self._fast.get(fp) if fp is not None else None
            if fast is not None and fast[0] == topic:
                try:
                    rec, end = fast[1](value, start)
                except _FAST_READ_ERRORS:
                    pass
                else:
                    if end == len(value):
                        return rec
        return self.decode_reference(topic, value)

    def decode_reference(self, topic: str, value: bytes | None) -> dict[str, Any]:
        """:meth:`decode` through fastavro's generic reader: the reference the fast path must equal."""
        if value is None:
            raise DecodeError("empty", "message has no value (tombstone)")
        if len(value) > self.max_message_bytes:
            raise DecodeError(
                "too_large", f"{len(value)} bytes exceeds the {self.max_message_bytes} byte limit"
            )
        try:
            writer, offset = self.writer_schema(value)
        except UnknownSchema as exc:
            raise DecodeError("unknown_schema", str(exc)) from exc
        except BadFraming as exc:
            raise DecodeError("bad_framing", str(exc)) from exc
        if writer.topic != topic:
            raise DecodeError(
                "wrong_topic", f"a {writer.record_name} ({writer.topic}) record on topic {topic}"
            )
        reader = contracts.current(topic)
        buf = io.BytesIO(value)
        buf.seek(offset)
        try:
            decoded = schemaless_reader(
                buf, writer.parsed_raw, None if writer is reader else reader.parsed_raw
            )
        except UnicodeDecodeError as exc:
            raise DecodeError("bad_utf8", f"string field is not valid UTF-8: {exc.reason}") from exc
        except _AVRO_ERRORS as exc:
            raise DecodeError(
                "undecodable", f"Avro body is corrupt or truncated ({type(exc).__name__}: {exc})"
            ) from exc
        if buf.tell() != len(value):
            raise DecodeError(
                "undecodable", f"{len(value) - buf.tell()} trailing bytes after the Avro record"
            )
        rec = cast(dict[str, Any], decoded)  # a record schema reads as a dict
        for name in reader.money_fields:
            v = rec.get(name)
            if v is not None:
                rec[name] = bytes_to_paisa(v)
        return rec

    def decode_many(self, topic: str, values: Iterable[bytes]) -> list[dict[str, Any]]:
        return [self.decode(topic, v) for v in values]


def codec_for(settings: Settings) -> Codec:
    """The codec a component writes and reads with, as configured.

    Single-object Avro by default; Confluent framing through a Schema Registry client when
    ``schema_registry_url`` is set (``mock://`` URLs give confluent-kafka's in-process registry,
    for tests). One place, so the publisher, the processors and the alert forwarder agree.
    """
    if not settings.schema_registry_url:
        return Codec()
    from confluent_kafka.schema_registry import SchemaRegistryClient

    conf: dict[str, Any] = {"url": settings.schema_registry_url}
    auth = settings.schema_registry_basic_auth.get_secret_value()
    if auth:
        conf["basic.auth.user.info"] = auth
    return Codec(RegistryFormat(SchemaRegistryClient.new_client(conf)))


def to_rich(topic: str, raw: dict[str, Any]) -> dict[str, Any]:
    """Raw → rich: datetimes for timestamp-millis fields, Decimal PKR for money."""
    sv = contracts.current(topic)
    out = dict(raw)
    for f in sv.schema["fields"]:
        name, t = f["name"], f["type"]
        if out.get(name) is None:
            continue
        members = t if isinstance(t, list) else [t]
        logical = {m.get("logicalType") for m in members if isinstance(m, dict)}
        if "timestamp-millis" in logical:
            out[name] = ms_to_datetime(out[name])
        elif "decimal" in logical:
            out[name] = paisa_to_decimal(out[name])
    return out


def rich_json_value(value: Any) -> Any:
    """``json.dumps``'s ``default`` for the rich shape (:func:`to_rich`): ISO-8601 UTC timestamps
    with milliseconds and a ``Z``, PKR decimals as strings (never a float)."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__}")


def parse_schema_json(text: str) -> Any:
    return fastavro.parse_schema(text)
