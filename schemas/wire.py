"""Wire framings for Avro bodies on Kafka.

Two framings, one contract (:class:`WireFormat`):

* :class:`SingleObjectFormat` – Avro single-object encoding (``C3 01`` + 8-byte CRC-64-AVRO
  fingerprint + body), resolved against the schemas in this repo. The embedded default.
* :class:`RegistryFormat` – Confluent framing (``00`` + 4-byte schema id + body) through
  ``confluent-kafka``'s Schema Registry client. Used when a registry URL is configured.

Decoding accepts both framings whichever one is configured for writing, so a topic can hold
a mix during a migration and data written by Confluent's own ``AvroSerializer`` decodes.
"""

from __future__ import annotations

import json
import struct
from typing import TYPE_CHECKING, Protocol

from schemas import contracts
from schemas.contracts import SchemaVersion

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import SchemaRegistryClient

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = 0
_SCHEMA_ID = struct.Struct(">I")


class UnknownSchema(LookupError):
    """The framing names a schema (fingerprint or registry id) we cannot resolve."""


class BadFraming(ValueError):
    """The bytes do not start with a known framing header."""


class WireFormat(Protocol):
    """Frames an Avro body for writing and resolves the writer schema when reading."""

    def frame(self, topic: str, body: bytes) -> bytes: ...

    def writer_schema(self, value: bytes) -> tuple[SchemaVersion, int]:
        """Return the writer schema of ``value`` and the offset where the Avro body starts."""
        ...


class SingleObjectFormat:
    """Avro single-object encoding against the repo's schemas; no network involved."""

    def __init__(self) -> None:
        self._headers: dict[str, bytes] = {}

    def frame(self, topic: str, body: bytes) -> bytes:
        header = self._headers.get(topic)
        if header is None:
            header = self._headers[topic] = SINGLE_OBJECT_MAGIC + contracts.current(topic).fingerprint
        return header + body

    def writer_schema(self, value: bytes) -> tuple[SchemaVersion, int]:
        return resolve_single_object(value), 10


def resolve_single_object(value: bytes) -> SchemaVersion:
    if len(value) < 10 or value[:2] != SINGLE_OBJECT_MAGIC:
        raise BadFraming("not Avro single-object encoding (expected C3 01 header)")
    fp = value[2:10]
    try:
        return contracts.by_fingerprint()[fp]
    except KeyError:
        raise UnknownSchema(f"unknown schema fingerprint {fp.hex()}") from None


class RegistryFormat:
    """Confluent Schema Registry framing. Schemas are registered under ``<topic>-value``."""

    def __init__(self, client: SchemaRegistryClient) -> None:
        self._client = client
        self._ids_by_topic: dict[str, int] = {}
        self._versions_by_id: dict[int, SchemaVersion] = {}

    @property
    def client(self) -> SchemaRegistryClient:
        """The registry client, e.g. to hand the same registry to Confluent's own deserializer."""
        return self._client

    def schema_id(self, topic: str) -> int:
        if topic not in self._ids_by_topic:
            from confluent_kafka.schema_registry import Schema

            sv = contracts.current(topic)
            self._ids_by_topic[topic] = self._client.register_schema(
                f"{topic}-value", Schema(json.dumps(sv.schema), "AVRO")
            )
        return self._ids_by_topic[topic]

    def frame(self, topic: str, body: bytes) -> bytes:
        return bytes([CONFLUENT_MAGIC]) + _SCHEMA_ID.pack(self.schema_id(topic)) + body

    def writer_schema(self, value: bytes) -> tuple[SchemaVersion, int]:
        if len(value) < 5 or value[0] != CONFLUENT_MAGIC:
            raise BadFraming("not Confluent framing (expected magic byte 0)")
        (schema_id,) = _SCHEMA_ID.unpack_from(value, 1)
        return self.version_for_id(schema_id), 5

    def version_for_id(self, schema_id: int) -> SchemaVersion:
        sv = self._versions_by_id.get(schema_id)
        if sv is None:
            from confluent_kafka.schema_registry.error import SchemaRegistryError

            try:
                schema = self._client.get_schema(schema_id)
            except SchemaRegistryError as exc:
                raise UnknownSchema(f"schema id {schema_id} not found in the registry: {exc}") from exc
            from fastavro.schema import fingerprint, to_parsing_canonical_form

            if (schema.schema_type or "AVRO") != "AVRO":
                raise UnknownSchema(f"schema id {schema_id} is a {schema.schema_type} schema, not Avro")
            try:
                canonical = to_parsing_canonical_form(json.loads(schema.schema_str))
            except (ValueError, TypeError, KeyError) as exc:
                raise UnknownSchema(f"schema id {schema_id} is not a valid Avro schema: {exc}") from exc
            fp = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
            try:
                sv = contracts.by_fingerprint()[fp]
            except KeyError:
                raise UnknownSchema(
                    f"schema id {schema_id} is not one of this repo's published versions"
                ) from None
            self._versions_by_id[schema_id] = sv
        return sv
