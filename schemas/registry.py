"""The agency / province / port registry (``schemas/registry.yaml``).

Kept as data so a new agency or port is a one-line change, never a code change.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

REGISTRY_FILE = Path(__file__).parent / "registry.yaml"


class AgencyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    lane: str
    topics: tuple[str, ...]
    province: str | None = None


class PortEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    province: str
    authority: str


class RegistryFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    agencies: dict[str, AgencyEntry]
    provinces: dict[str, str]
    ports: dict[str, PortEntry]


@dataclass(frozen=True)
class Registry:
    """Validated registry with fast membership sets for the hot path."""

    agencies: dict[str, AgencyEntry]
    provinces: dict[str, str]
    ports: dict[str, PortEntry]
    agencies_by_topic: dict[str, frozenset[str]]

    def agency_may_publish(self, agency: str, topic: str) -> bool:
        return agency in self.agencies_by_topic.get(topic, frozenset())


def load_registry(path: Path = REGISTRY_FILE) -> Registry:
    """Parse and validate the registry file; errors name the file and the field path."""
    try:
        data = RegistryFile.model_validate(yaml.safe_load(path.read_text()))
    except ValidationError as exc:
        raise ValueError(f"invalid registry {path}: {exc}") from exc
    by_topic: dict[str, set[str]] = {}
    for code, entry in data.agencies.items():
        if entry.province is not None and entry.province not in data.provinces:
            raise ValueError(
                f"invalid registry {path}: agencies.{code}.province {entry.province!r} "
                f"is not a known province"
            )
        for topic in entry.topics:
            by_topic.setdefault(topic, set()).add(code)
    for code, port in data.ports.items():
        if port.province not in data.provinces:
            raise ValueError(
                f"invalid registry {path}: ports.{code}.province {port.province!r} is not a known province"
            )
    return Registry(
        agencies=dict(data.agencies),
        provinces=dict(data.provinces),
        ports=dict(data.ports),
        agencies_by_topic={t: frozenset(a) for t, a in by_topic.items()},
    )


@cache
def default_registry() -> Registry:
    return load_registry()
