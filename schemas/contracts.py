"""Loads the versioned Avro schemas kept under ``schemas/avro/<topic>/v<N>.avsc``.

Every version ever published stays on disk; the highest version of a topic is its current
(reader and writer) schema. Older versions are kept so data written with them still decodes.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

AVRO_DIR = Path(__file__).parent / "avro"
_VERSION_FILE = re.compile(r"^v(\d+)\.avsc$")

# Agency-facing input topics (one per family) and the pipeline's own output topics.
CUSTOMS = "customs.clearances.v1"
PERMITS = "transport.permits.v1"
PORTS = "ports.container_moves.v1"
REBATES = "rebates.drawback.v1"
ENERGY = "energy.notifications.v1"
INPUT_TOPICS: tuple[str, ...] = (CUSTOMS, PERMITS, PORTS, REBATES, ENERGY)

STAGE_RECORDS = "backbone.stage_records.v1"
KPI_WINDOWS = "backbone.kpi_windows.v1"
ALERTS = "backbone.alerts.v1"
DEAD_LETTERS = "backbone.dead_letters.v1"
BACKLOG = "backbone.backlog.v1"
FEED_FRESHNESS = "backbone.feed_freshness.v1"
OUTPUT_TOPICS: tuple[str, ...] = (STAGE_RECORDS, KPI_WINDOWS, ALERTS, DEAD_LETTERS, BACKLOG, FEED_FRESHNESS)

ENVELOPE_FIELDS: tuple[str, ...] = (
    "event_id",
    "case_id",
    "agency",
    "province",
    "status",
    "occurred_at",
    "published_at",
)


def strip_logical_types(schema: Any) -> Any:
    """Return a copy of ``schema`` without logical types.

    Decoding with it yields the wire primitives (epoch-millis ints, decimal bytes) instead of
    ``datetime``/``Decimal`` objects: several times cheaper on the processors' hot path and
    byte-identical on the wire, since logical types only annotate the primitive.
    """
    if isinstance(schema, dict):
        out = {
            k: strip_logical_types(v)
            for k, v in schema.items()
            if k not in ("logicalType", "precision", "scale")
        }
        return out
    if isinstance(schema, list):
        return [strip_logical_types(s) for s in schema]
    return schema


@dataclass(frozen=True)
class SchemaVersion:  # noqa: PLR0902 - cached_property needs __dict__, so no slots
    """One published version of a topic's record schema."""

    topic: str
    version: int
    path: Path
    schema: dict[str, Any]
    parsed: Any = field(repr=False)
    parsed_raw: Any = field(repr=False)
    canonical: str = field(repr=False)
    fingerprint: bytes = field(repr=False)  # 8 bytes, little-endian CRC-64-AVRO, as in single-object encoding

    @property
    def record_name(self) -> str:
        return f"{self.schema.get('namespace', '')}.{self.schema['name']}".lstrip(".")

    @property
    def field_names(self) -> list[str]:
        return [f["name"] for f in self.schema["fields"]]

    @cached_property
    def money_fields(self) -> tuple[str, ...]:
        """Top-level decimal fields; in the raw shape they travel as integer paisa (scale 2)."""
        return tuple(f["name"] for f in self.schema["fields"] if _is_decimal(f["type"]))


def _is_decimal(t: Any) -> bool:
    if isinstance(t, list):
        return any(_is_decimal(m) for m in t)
    return isinstance(t, dict) and t.get("logicalType") == "decimal"


def _load_version(topic: str, version: int, path: Path) -> SchemaVersion:
    schema = json.loads(path.read_text())
    parsed = fastavro.parse_schema(copy.deepcopy(schema), named_schemas={})
    parsed_raw = fastavro.parse_schema(strip_logical_types(schema), named_schemas={})
    canonical = to_parsing_canonical_form(schema)
    fp = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
    return SchemaVersion(topic, version, path, schema, parsed, parsed_raw, canonical, fp)


@cache
def all_versions(avro_dir: Path = AVRO_DIR) -> dict[str, tuple[SchemaVersion, ...]]:
    """Every topic's schema versions, oldest first."""
    out: dict[str, tuple[SchemaVersion, ...]] = {}
    for topic_dir in sorted(p for p in avro_dir.iterdir() if p.is_dir()):
        versions = []
        for f in topic_dir.iterdir():
            m = _VERSION_FILE.match(f.name)
            if m:
                versions.append(_load_version(topic_dir.name, int(m.group(1)), f))
        if versions:
            out[topic_dir.name] = tuple(sorted(versions, key=lambda v: v.version))
    return out


def current(topic: str) -> SchemaVersion:
    """The current (newest) schema of ``topic``; raises ``KeyError`` naming known topics."""
    try:
        return all_versions()[topic][-1]
    except KeyError:
        raise KeyError(
            f"unknown topic {topic!r}; known topics: {', '.join(sorted(all_versions()))}"
        ) from None


def by_fingerprint() -> dict[bytes, SchemaVersion]:
    """Index of every published version by its CRC-64-AVRO fingerprint (single-object encoding)."""
    return _by_fingerprint()


@cache
def _by_fingerprint() -> dict[bytes, SchemaVersion]:
    return {v.fingerprint: v for versions in all_versions().values() for v in versions}
