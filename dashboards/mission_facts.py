"""What the boards derive from the missions file and the registry: nothing about a mission is coded here.

The panel SQL and the Grafana thresholds are generated from these facts, so adding a stage, a
target or an agency to ``config/missions.yaml`` / ``schemas/registry.yaml`` changes the boards
on the next ``backbone dashboards build``.

Definitions the boards rely on (documented in the README):

* a **span stage** measures a whole journey (its start event starts another stage of the journey
  and its end event ends another one, e.g. ``export_end_to_end``). Per-agency views (backlog by
  owner, longest waiting, scorecard, time decomposition) leave span stages out, so that no wait
  is counted twice and the lead agency is not charged for everyone's time.
* a **hand-over** is a pair of consecutive non-span stages of a journey (A then B). "A finished"
  is A's end; "B acted" is B's end when B starts at A's end event (B is then entirely B's response,
  as in the ``handoff: true`` permit stage), otherwise B's start (the gap in between is nobody's
  stage, e.g. the haulage between permit and port gate-in).
* **money stages** name a ``money_field``; **energy stages** are owned by an agency of the
  registry's ``energy`` lane.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

from schemas.registry import Registry, default_registry
from stream_processors.missions import Missions, StageRef

ENERGY_LANE = "energy"


@dataclass(frozen=True)
class HandOver:
    """Consecutive stages A → B of a journey: how long B takes to act once A has finished."""

    mission: str
    journey: str
    from_stage: str
    to_stage: str
    measure_to_end: bool  # B starts at A's end event: B's own duration is the wait


@dataclass(frozen=True)
class TargetFact:
    """A KPI target with the window it is judged over."""

    mission: str
    target: str
    name: str
    stage: str
    window: str
    window_size_ms: int
    window_step_ms: int
    min_sla_compliance: float
    min_completions: int


@dataclass(frozen=True)
class MissionFacts:
    """Generated knowledge about the missions file for the boards."""

    missions: Missions
    registry: Registry

    @classmethod
    def load(cls, missions: Missions, registry: Registry | None = None) -> MissionFacts:
        return cls(missions, registry or default_registry())

    @cached_property
    def stage_keys(self) -> tuple[str, ...]:
        """``mission/stage`` for every stage, in file order (journey order within a mission)."""
        return tuple(f"{r.mission.id}/{r.stage.id}" for r in self.missions.stages)

    @cached_property
    def stage_names(self) -> dict[str, str]:
        return {f"{r.mission.id}/{r.stage.id}": r.stage.name for r in self.missions.stages}

    @cached_property
    def span_stages(self) -> tuple[StageRef, ...]:
        spans: list[StageRef] = []
        for ref in self.missions.stages:
            others = [s for s in ref.journey.stages if s.id != ref.stage.id]
            if any(s.start == ref.stage.start for s in others) and any(
                s.end == ref.stage.end for s in others
            ):
                spans.append(ref)
        return tuple(spans)

    @cached_property
    def span_keys(self) -> tuple[tuple[str, str], ...]:
        return tuple((r.mission.id, r.stage.id) for r in self.span_stages)

    def work_stages(self, mission: str | None = None) -> tuple[StageRef, ...]:
        """Non-span stages, in journey order."""
        spans = set(self.span_keys)
        return tuple(
            r
            for r in self.missions.stages
            if (r.mission.id, r.stage.id) not in spans and (mission is None or r.mission.id == mission)
        )

    @cached_property
    def hand_overs(self) -> tuple[HandOver, ...]:
        out: list[HandOver] = []
        spans = set(self.span_keys)
        for mission in self.missions.spec.missions:
            for journey in mission.journeys:
                stages = [s for s in journey.stages if (mission.id, s.id) not in spans]
                for a, b in zip(stages, stages[1:], strict=False):
                    out.append(HandOver(mission.id, journey.id, a.id, b.id, measure_to_end=b.start == a.end))
        return tuple(out)

    @cached_property
    def handoff_stage_keys(self) -> tuple[tuple[str, str], ...]:
        """Stages flagged ``handoff: true``: the collaboration KPI."""
        return tuple((r.mission.id, r.stage.id) for r in self.missions.stages if r.stage.handoff)

    @cached_property
    def money_stage_keys(self) -> tuple[tuple[str, str], ...]:
        return tuple((r.mission.id, r.stage.id) for r in self.missions.stages if r.stage.money_field)

    @cached_property
    def energy_stage_keys(self) -> tuple[tuple[str, str], ...]:
        return tuple(
            (r.mission.id, r.stage.id)
            for r in self.missions.stages
            if (entry := self.registry.agencies.get(r.stage.owner)) is not None and entry.lane == ENERGY_LANE
        )

    @cached_property
    def targets(self) -> tuple[TargetFact, ...]:
        windows = {w.name: w for w in self.missions.windows}
        return tuple(
            TargetFact(
                mission=m.id,
                target=t.id,
                name=t.name,
                stage=t.stage,
                window=t.window,
                window_size_ms=windows[t.window].size_ms,
                window_step_ms=windows[t.window].step_ms,
                min_sla_compliance=t.min_sla_compliance,
                min_completions=t.min_completions,
            )
            for m, t, _ in self.missions.targets
        )

    def targets_for_stage(self, mission: str, stage: str) -> tuple[TargetFact, ...]:
        return tuple(t for t in self.targets if t.mission == mission and t.stage == stage)

    def strictest_target(self, stages: Iterable[tuple[str, str]]) -> float | None:
        """The highest ``min_sla_compliance`` of the targets on these stages (None: no target names them)."""
        wanted = set(stages)
        values = [t.min_sla_compliance for t in self.targets if (t.mission, t.stage) in wanted]
        return max(values) if values else None

    def mission_target(self, mission: str) -> float | None:
        """The strictest target of a mission: what per-agency compliance is coloured against."""
        values = [t.min_sla_compliance for t in self.targets if t.mission == mission]
        return max(values) if values else None

    def thresholds(self) -> dict[str, object]:
        """Targets the boards colour compliance against (same rules for Grafana and the built-in board)."""
        return {
            "mission": {m.id: self.mission_target(m.id) for m in self.missions.spec.missions},
            "handoff": {
                m.id: self.strictest_target(k for k in self.handoff_stage_keys if k[0] == m.id)
                for m in self.missions.spec.missions
            },
            "money": self.strictest_target(self.money_stage_keys),
            "energy": self.strictest_target(self.energy_stage_keys),
        }

    @cached_property
    def agencies(self) -> tuple[str, ...]:
        """Every agency named by a mission (co-owner or stage owner), in registry order."""
        named: set[str] = set()
        for ref in self.missions.stages:
            named.update(
                {ref.stage.owner, *ref.stage.owner_by_province.values(), *ref.stage.owner_by_port.values()}
            )
        for m in self.missions.spec.missions:
            named.update(m.co_owners)
        return tuple(a for a in self.registry.agencies if a in named)

    def mission_agencies(self, mission: str) -> tuple[str, ...]:
        named: set[str] = set()
        for ref in self.missions.stages:
            if ref.mission.id == mission:
                s = ref.stage
                named.update({s.owner, *s.owner_by_province.values(), *s.owner_by_port.values()})
        for m in self.missions.spec.missions:
            if m.id == mission:
                named.update(m.co_owners)
        return tuple(a for a in self.registry.agencies if a in named)

    @cached_property
    def feed_agencies(self) -> tuple[str, ...]:
        """Agencies that publish events (have topics in the registry)."""
        return tuple(a for a, e in self.registry.agencies.items() if e.topics)

    def silence_ms(self, agency: str) -> int:
        return self.missions.feeds.threshold_ms(agency)
