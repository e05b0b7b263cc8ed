"""The missions file: missions, journeys, stages, SLAs, KPI targets, windows and feed thresholds.

One definition of the rules feeds the stream processors, the ClickHouse recompute and the
boards. Loading validates everything against the schemas and the agency registry and fails
with the field path and the reason (``missions[0].journeys[1].stages[0].end.status: ...``).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas import contracts
from schemas.registry import Registry, default_registry

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_ID = r"^[a-z][a-z0-9_]*$"


class MissionsError(ValueError):
    """The missions file is invalid; the message names the file, the field path and the reason."""


def parse_duration_ms(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a duration like 90m, 12h or 14d")
    return int(float(m.group(1)) * _UNIT_MS[m.group(2)])


def _status_symbols(topic: str) -> list[str]:
    for f in contracts.current(topic).schema["fields"]:
        if f["name"] == "status":
            return list(f["type"]["symbols"])
    raise ValueError(f"topic {topic} has no status field")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EventRef(_Model):
    """An event that starts or ends a stage: the topic (family) and the status reached."""

    topic: str
    status: str

    @model_validator(mode="after")
    def _known(self) -> EventRef:
        if self.topic not in contracts.INPUT_TOPICS:
            raise ValueError(
                f"unknown topic {self.topic!r}; expected one of {', '.join(contracts.INPUT_TOPICS)}"
            )
        symbols = _status_symbols(self.topic)
        if self.status not in symbols:
            raise ValueError(f"status {self.status!r} is not a {self.topic} status ({', '.join(symbols)})")
        return self


class Stage(_Model):
    id: str = Field(pattern=_ID)
    name: str
    start: EventRef
    end: EventRef
    owner: str
    owner_by_province: dict[str, str] = {}
    owner_by_port: dict[str, str] = {}
    sla_ms: int = Field(alias="sla", gt=0)
    handoff: bool = False
    money_field: str | None = None
    cancel_on: tuple[EventRef, ...] = ()

    @field_validator("sla_ms", mode="before")
    @classmethod
    def _sla(cls, v: Any) -> int:
        return parse_duration_ms(v)

    @model_validator(mode="after")
    def _consistent(self) -> Stage:
        if self.start == self.end:
            raise ValueError("start and end are the same event")
        if (
            self.money_field is not None
            and self.money_field not in contracts.current(self.start.topic).money_fields
        ):
            raise ValueError(f"money_field {self.money_field!r} is not a money field of {self.start.topic}")
        return self

    def owner_for(self, province: str, port: str) -> str:
        """The accountable agency for a case at this stage, from its start event's province/port."""
        return self.owner_by_port.get(port) or self.owner_by_province.get(province) or self.owner


class Journey(_Model):
    id: str = Field(pattern=_ID)
    name: str
    stages: tuple[Stage, ...] = Field(min_length=1)


class Target(_Model):
    id: str = Field(pattern=_ID)
    name: str
    stage: str
    min_sla_compliance: float = Field(gt=0, le=1)
    window: str
    min_completions: int = Field(1, ge=1)


class Mission(_Model):
    id: str = Field(pattern=_ID)
    name: str
    co_owners: tuple[str, ...]
    journeys: tuple[Journey, ...] = Field(min_length=1)
    targets: tuple[Target, ...] = ()

    @model_validator(mode="after")
    def _unique_stages(self) -> Mission:
        seen: set[str] = set()
        for j in self.journeys:
            for s in j.stages:
                if s.id in seen:
                    raise ValueError(f"stage id {s.id!r} is used twice in mission {self.id}")
                seen.add(s.id)
        for t in self.targets:
            if t.stage not in seen:
                raise ValueError(f"target {t.id}: unknown stage {t.stage!r}")
        return self


class Window(_Model):
    """A KPI window: tumbling when ``hop`` is absent, hopping otherwise."""

    name: str
    size_ms: int = Field(alias="size", gt=0)
    hop_ms: int | None = Field(None, alias="hop")

    @field_validator("size_ms", "hop_ms", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> int | None:
        return None if v is None else parse_duration_ms(v)

    @model_validator(mode="after")
    def _hop_divides(self) -> Window:
        if self.hop_ms is not None and (self.hop_ms <= 0 or self.size_ms % self.hop_ms):
            raise ValueError(f"hop must divide size evenly (size {self.size_ms} ms, hop {self.hop_ms} ms)")
        return self

    @property
    def step_ms(self) -> int:
        return self.hop_ms or self.size_ms


class Feeds(_Model):
    default_silence_ms: int = Field(alias="default_silence", gt=0)
    silence_ms: dict[str, int] = Field(default_factory=dict, alias="silence")

    @field_validator("default_silence_ms", mode="before")
    @classmethod
    def _d(cls, v: Any) -> int:
        return parse_duration_ms(v)

    @field_validator("silence_ms", mode="before")
    @classmethod
    def _ds(cls, v: Any) -> dict[str, int]:
        return {k: parse_duration_ms(x) for k, x in (v or {}).items()}

    def threshold_ms(self, agency: str) -> int:
        return self.silence_ms.get(agency, self.default_silence_ms)


class MissionsFile(_Model):
    windows: tuple[Window, ...] = Field(min_length=1)
    feeds: Feeds
    missions: tuple[Mission, ...] = Field(min_length=1)


@dataclass(frozen=True)
class StageRef:
    """A stage with its place in the mission tree; what the processors key their state by."""

    mission: Mission
    journey: Journey
    stage: Stage

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.mission.id, self.journey.id, self.stage.id)


@dataclass(frozen=True)
class Missions:
    """Validated missions with the lookups the hot path needs."""

    spec: MissionsFile
    source: Path | None = None

    @cached_property
    def stages(self) -> tuple[StageRef, ...]:
        return tuple(StageRef(m, j, s) for m in self.spec.missions for j in m.journeys for s in j.stages)

    @cached_property
    def stages_by_event(self) -> dict[tuple[str, str], tuple[tuple[StageRef, str], ...]]:
        """(topic, status) → ((stage, 'start'|'end'|'cancel'), ...): which boundaries an event marks."""
        out: dict[tuple[str, str], list[tuple[StageRef, str]]] = defaultdict(list)
        for ref in self.stages:
            out[(ref.stage.start.topic, ref.stage.start.status)].append((ref, "start"))
            out[(ref.stage.end.topic, ref.stage.end.status)].append((ref, "end"))
            for cancel in ref.stage.cancel_on:
                out[(cancel.topic, cancel.status)].append((ref, "cancel"))
        return {k: tuple(v) for k, v in out.items()}

    @cached_property
    def targets(self) -> tuple[tuple[Mission, Target, StageRef], ...]:
        by_key = {(r.mission.id, r.stage.id): r for r in self.stages}
        return tuple((m, t, by_key[(m.id, t.stage)]) for m in self.spec.missions for t in m.targets)

    @property
    def windows(self) -> tuple[Window, ...]:
        return self.spec.windows

    @property
    def feeds(self) -> Feeds:
        return self.spec.feeds


def _check_agencies(spec: MissionsFile, reg: Registry) -> None:
    def check(code: str, where: str) -> None:
        if code not in reg.agencies:
            raise ValueError(f"{where}: unknown agency {code!r} (see schemas/registry.yaml)")

    for mi, m in enumerate(spec.missions):
        for a in m.co_owners:
            check(a, f"missions[{mi}].co_owners")
        for ji, j in enumerate(m.journeys):
            for si, s in enumerate(j.stages):
                where = f"missions[{mi}].journeys[{ji}].stages[{si}]"
                check(s.owner, f"{where}.owner")
                for prov, a in s.owner_by_province.items():
                    if prov not in reg.provinces:
                        raise ValueError(f"{where}.owner_by_province: unknown province {prov!r}")
                    check(a, f"{where}.owner_by_province.{prov}")
                for port, a in s.owner_by_port.items():
                    if port not in reg.ports:
                        raise ValueError(f"{where}.owner_by_port: unknown port {port!r}")
                    check(a, f"{where}.owner_by_port.{port}")
        names = {w.name for w in spec.windows}
        for ti, t in enumerate(m.targets):
            if t.window not in names:
                raise ValueError(
                    f"missions[{mi}].targets[{ti}].window: unknown window {t.window!r} ({', '.join(names)})"
                )
    for agency in spec.feeds.silence_ms:
        check(agency, "feeds.silence")


def load_missions(path: Path, registry: Registry | None = None) -> Missions:
    """Load and validate a missions file (YAML, or TOML by extension)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise MissionsError(f"{path}: cannot read missions file: {exc.strerror}") from exc
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError) as exc:
        raise MissionsError(f"{path}: not valid YAML/TOML: {exc}") from exc
    return missions_from_data(data, path, registry)


def _error_location(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as a path: ``stages[2].sla``."""
    return ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in loc).replace(".[", "[")


def missions_from_data(data: Any, path: Path | None = None, registry: Registry | None = None) -> Missions:
    where = str(path) if path else "missions"
    try:
        spec = MissionsFile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{_error_location(e['loc'])}: {e['msg']}" for e in exc.errors())
        raise MissionsError(f"{where}: {problems}") from exc
    try:
        _check_agencies(spec, registry or default_registry())
    except ValueError as exc:
        raise MissionsError(f"{where}: {exc}") from exc
    return Missions(spec, path)


def time_scaled(path: Path, factor: float, out: Path) -> Path:
    """Write a copy of the missions file with every stage SLA divided by ``factor``.

    For demos only: ``backbone up`` compresses the simulated delays between a case's events by
    the same factor, so a journey of days plays out in minutes while SLA compliance keeps its
    meaning. Events still arrive in real time, so feed-silence thresholds are not scaled. The
    original file stays the single definition of the rules; this is a derived copy.
    """
    if factor <= 0:
        raise MissionsError(f"time scale must be positive, got {factor}")
    data = yaml.safe_load(path.read_text())

    def scale(value: Any) -> int:
        return max(1, int(parse_duration_ms(value) / factor))

    for mission in data.get("missions", []):
        for journey in mission.get("journeys", []):
            for stage in journey.get("stages", []):
                stage["sla"] = scale(stage["sla"])
    out.write_text(
        f"# Derived from {path} with every stage SLA divided by {factor:g} (demo time).\n"
        + yaml.safe_dump(data, sort_keys=False)
    )
    load_missions(out)  # fail here, not in a child process, if the result is invalid
    return out
