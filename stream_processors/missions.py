"""The missions file: missions, journeys, stages, SLAs, KPI targets, windows and feed thresholds.

One definition of the rules feeds the stream processors, the ClickHouse recompute and the
boards. Loading validates everything against the schemas and the agency registry and fails
with the field path and the reason (``missions[0].journeys[1].stages[0].end.status: ...``).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from schemas import contracts
from schemas.registry import Registry, default_registry

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_UNITS = ", ".join(_UNIT_MS)
_ID = r"^[a-z][a-z0-9_]*$"

MAX_DURATION_MS = 3650 * 86_400_000
"""The longest duration a missions file may give (3650d, about 10 years).

Far above any real SLA, window or silence threshold, and far below where sums of event times,
windows and grace periods would overflow the Int64 milliseconds of the stage records, the KPI
rows and the recompute's SQL.
"""


class MissionsError(ValueError):
    """The missions file is invalid; the message names the file, the field path and the reason."""


def parse_duration_ms(value: Any) -> int:
    """A duration written with its unit (``90m``, ``1.5h``, ``14d``) in milliseconds.

    A bare number is refused: ``sla: 24`` could mean hours as easily as milliseconds. The result
    is at most :data:`MAX_DURATION_MS`.
    """
    shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:36]}...'"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ValueError(f"{shown} has no unit: write a number and one of {_UNITS} (e.g. 90m, 12h or 14d)")
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"{shown} is not a duration: a number and one of {_UNITS} (e.g. 90m, 12h or 14d)")
    ms = Decimal(m.group(1)) * _UNIT_MS[m.group(2)]  # exact: no float overflow or rounding
    if ms > MAX_DURATION_MS:
        raise ValueError(f"{shown} is longer than the maximum duration of 3650d (about 10 years)")
    return int(ms)


DurationMs = Annotated[int, BeforeValidator(parse_duration_ms)]
"""A duration field of the missions file, given with a unit and stored in milliseconds."""


def _at_least_one(items: tuple[Any, ...]) -> tuple[Any, ...]:
    """A non-empty tuple. Checked after the items validated, so that an invalid sole item is
    reported once, not again as an empty tuple (as pydantic's ``min_length`` does)."""
    if not items:
        raise ValueError("at least one is required")
    return items


def _unique(items: tuple[Any, ...], field: str, what: str, listed_in: str, why: str = "") -> None:
    """Refuse two items with the same ``field`` value; name the value and both positions."""
    first: dict[Any, int] = {}
    for i, item in enumerate(items):
        value = getattr(item, field)
        if value in first:
            raise ValueError(
                f"{what} {value!r} is used twice ({listed_in}[{first[value]}] and {listed_in}[{i}]){why}"
            )
        first[value] = i


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
    sla_ms: DurationMs = Field(alias="sla", gt=0)
    handoff: bool = False
    money_field: str | None = None
    cancel_on: tuple[EventRef, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> Stage:
        if self.start == self.end:
            raise ValueError("start and end are the same event")
        for i, cancel in enumerate(self.cancel_on):
            # The processors and the recompute fold an event into every boundary it marks, and a
            # stage with an end is CLOSED whatever else was seen (SEMANTICS.md, stage instances).
            event = f"cancel_on[{i}] ({cancel.topic} {cancel.status})"
            if cancel == self.end:
                raise ValueError(
                    f"{event} is the stage's end event: that event would close and cancel the stage "
                    "at once, a close wins, so the cancel could never apply"
                )
            if cancel == self.start:
                raise ValueError(
                    f"{event} is the stage's start event: every case would be cancelled the moment "
                    "it starts, so the stage would never be open (no backlog, no SLA alerts)"
                )
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
    stages: Annotated[tuple[Stage, ...], AfterValidator(_at_least_one)]


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
    journeys: Annotated[tuple[Journey, ...], AfterValidator(_at_least_one)]
    targets: tuple[Target, ...] = ()

    @model_validator(mode="after")
    def _unique_ids(self) -> Mission:
        _unique(self.journeys, "id", "journey id", "journeys")
        _unique(self.targets, "id", "target id", "targets")
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


MIN_WINDOW_STEP_MS = 1_000
"""A window's step (its hop, or a tumbling window's size) is at least a second: the recompute keys a
pane by ``epoch ms // step`` in a UInt32, which holds seconds until 2106, and no board refreshes faster."""
MAX_HOPS_PER_WINDOW = 10_000
"""How many windows of one spec may overlap a moment (size / hop). Each completion is added to that
many windows, and each tick re-emits the changed ones: 24h with a 1m hop is 1,440; 3650d with a 1ms
hop (accepted until this limit) is 3e11, which no processor finishes."""


class Window(_Model):
    """A KPI window: tumbling when ``hop`` is absent, hopping otherwise."""

    name: str
    size_ms: DurationMs = Field(alias="size", gt=0)
    hop_ms: DurationMs | None = Field(None, alias="hop")

    @model_validator(mode="after")
    def _hop_divides(self) -> Window:
        if self.hop_ms is not None and (self.hop_ms <= 0 or self.size_ms % self.hop_ms):
            raise ValueError(f"hop must divide size evenly (size {self.size_ms} ms, hop {self.hop_ms} ms)")
        if self.step_ms < MIN_WINDOW_STEP_MS:
            which = "hop" if self.hop_ms is not None else "size of a tumbling window"
            raise ValueError(f"{which} {self.step_ms} ms is shorter than 1s, the shortest KPI window step")
        if self.size_ms // self.step_ms > MAX_HOPS_PER_WINDOW:
            raise ValueError(
                f"size / hop = {self.size_ms // self.step_ms:,} overlapping windows, more than "
                f"{MAX_HOPS_PER_WINDOW:,} (every completion updates that many windows of its group)"
            )
        return self

    @property
    def step_ms(self) -> int:
        return self.hop_ms or self.size_ms


class Feeds(_Model):
    default_silence_ms: DurationMs = Field(alias="default_silence", gt=0)
    silence_ms: dict[str, Annotated[DurationMs, Field(gt=0)]] = Field(default_factory=dict, alias="silence")

    @field_validator("silence_ms", mode="before")
    @classmethod
    def _none_is_empty(cls, v: Any) -> Any:
        return {} if v is None else v

    def threshold_ms(self, agency: str) -> int:
        return self.silence_ms.get(agency, self.default_silence_ms)


class MissionsFile(_Model):
    windows: Annotated[tuple[Window, ...], AfterValidator(_at_least_one)]
    feeds: Feeds
    missions: Annotated[tuple[Mission, ...], AfterValidator(_at_least_one)]

    @field_validator("windows")
    @classmethod
    def _unique_windows(cls, windows: tuple[Window, ...]) -> tuple[Window, ...]:
        _unique(
            windows,
            "name",
            "window name",
            "windows",
            ": KPI rows are keyed by it and would overwrite each other",
        )
        return windows

    @field_validator("missions")
    @classmethod
    def _unique_missions(cls, missions: tuple[Mission, ...]) -> tuple[Mission, ...]:
        _unique(missions, "id", "mission id", "missions")
        return missions


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


def _read_data(path: Path) -> Any:
    """The parsed content of a missions file (YAML, or TOML by extension), or a MissionsError."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise MissionsError(f"{path}: cannot read missions file: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MissionsError(
            f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            "a missions file must be YAML or TOML saved as UTF-8"
        ) from exc
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError) as exc:
        raise MissionsError(f"{path}: not valid YAML/TOML: {exc}") from exc
    return data


def load_missions(path: Path, registry: Registry | None = None) -> Missions:
    """Load and validate a missions file (YAML, or TOML by extension)."""
    return missions_from_data(_read_data(path), path, registry)


def _error_location(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as a path: ``stages[2].sla``."""
    return ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in loc).replace(".[", "[")


def _error_message(error: Any) -> str:
    """A pydantic error as ``path: reason``, our own reasons without pydantic's ``Value error, ``."""
    reason = str(error["ctx"]["error"]) if error["type"] == "value_error" else error["msg"]
    return f"{_error_location(error['loc']) or 'file'}: {reason}"


def missions_from_data(data: Any, path: Path | None = None, registry: Registry | None = None) -> Missions:
    where = str(path) if path else "missions"
    try:
        spec = MissionsFile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_error_message(e) for e in exc.errors())
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
    load_missions(path)  # the original's own errors first, with its name
    data = _read_data(path)

    def scale(value: Any) -> str:
        return f"{max(1, int(parse_duration_ms(value) / factor))}ms"

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
