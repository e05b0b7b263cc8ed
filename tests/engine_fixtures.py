"""Helpers for the engine unit tests: build agency events, feed both hops with dict state stores.

No broker: messages are :class:`InputMessage` values with offsets assigned per topic-partition,
exactly as a consumer would see them, and hop 1's facts are routed to hop 2 the way the runtime
does it (key = group key, partition by key, offsets in produce order).
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Iterable
from typing import Any

from backbone.config import DEFAULT_MISSIONS_FILE, Settings
from schemas import contracts
from schemas.codec import Codec
from stream_processors.api import FACTS_TOPIC, InputMessage, Outputs
from stream_processors.clock import FixedClock
from stream_processors.journeys import JourneyEngine
from stream_processors.kpis import KpiEngine
from stream_processors.missions import Missions, load_missions

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MIN = 60_000
HOUR = 3_600_000
DAY = 24 * HOUR
CODEC = Codec()

_AGENCY = {
    contracts.CUSTOMS: "FBR-CUSTOMS",
    contracts.PERMITS: "PB-TRANSPORT",
    contracts.PORTS: "KPT",
    contracts.REBATES: "FBR-DRAWBACK",
    contracts.ENERGY: "NEPRA",
}


def missions() -> Missions:
    return load_missions(DEFAULT_MISSIONS_FILE)


def event(
    topic: str,
    case_id: str,
    status: str,
    occurred_at: int,
    *,
    province: str = "PK-PB",
    port: str = "KPT",
    agency: str | None = None,
    amount: int = 1_000_000,
    event_id: str | None = None,
    published_at: int | None = None,
) -> dict[str, Any]:
    """A valid raw event of ``topic`` (the family fields filled with plausible values)."""
    rec: dict[str, Any] = {
        "event_id": event_id or str(uuid.uuid4()),
        "case_id": case_id,
        "agency": agency or _AGENCY[topic],
        "province": province,
        "status": status,
        "occurred_at": occurred_at,
        "published_at": published_at if published_at is not None else occurred_at,
    }
    if topic == contracts.CUSTOMS:
        rec.update(
            port=port,
            hs_code="5205",
            declared_value_pkr=amount,
            container_ids=["MSCU1234565"],
            exporter_id="1234567-8",
            gd_number=None,
        )
    elif topic == contracts.PERMITS:
        rec.update(from_province=province, to_province="PK-SD", vehicle_reg="LES-1234")
    elif topic == contracts.PORTS:
        rec.update(port=port, terminal="T1", container_id="MSCU1234565", vessel=None)
    elif topic == contracts.REBATES:
        rec.update(exporter_id="1234567-8", amount_pkr=amount)
    elif topic == contracts.ENERGY:
        rec.update(regulator="NEPRA", instrument="SRO 1/2026", sector="power")
    return rec


def partition_of(key: str, partitions: int) -> int:
    return zlib.crc32(key.encode()) % partitions


class Feeder:
    """Turns raw events into consumed messages with per topic-partition offsets."""

    def __init__(self, partitions: int = 3) -> None:
        self.partitions = partitions
        self.offsets: dict[tuple[str, int], int] = {}

    def message(self, topic: str, key: str | None, value: bytes | None) -> InputMessage:
        p = partition_of(key or "", self.partitions)
        off = self.offsets.get((topic, p), 0)
        self.offsets[(topic, p)] = off + 1
        return InputMessage(topic, p, off, None if key is None else key.encode(), value, None)

    def messages(self, events: Iterable[tuple[str, dict[str, Any]]]) -> list[InputMessage]:
        return [self.message(topic, raw["case_id"], CODEC.encode(topic, raw)) for topic, raw in events]


class Pipeline:
    """Both hops with dict state stores; collects every output and keeps the latest per id.

    The engines' wall clock (idle partitions, see ``stream_processors/watermarks.py``) reads the
    ``now_ms`` of the latest push or tick, as if each call happened at that wall time.
    """

    def __init__(self, settings: Settings | None = None, partitions: int = 3, **journey_kwargs: Any) -> None:
        self.settings = settings or Settings(grace_ms=HOUR)
        self.missions = missions()
        self.wall = FixedClock()
        journey_kwargs.setdefault("wall_clock", self.wall)
        self.journeys = JourneyEngine(self.missions, self.settings, **journey_kwargs)
        self.kpis = KpiEngine(self.missions, self.settings, wall_clock=self.wall)
        self.case_states: dict[str, Any] = {}
        self.kpi_states: dict[str, Any] = {}
        self.feeder = Feeder(partitions)
        self.facts_feeder = Feeder(partitions)
        self.out = Outputs()
        self.fact_messages: list[InputMessage] = []

    def push(self, events: Iterable[tuple[str, dict[str, Any]]], now_ms: int) -> Outputs:
        return self.push_messages(self.feeder.messages(events), now_ms)

    def push_messages(self, msgs: list[InputMessage], now_ms: int) -> Outputs:
        self.wall.set(now_ms)
        hop1 = self.journeys.process(msgs, self.case_states, now_ms)
        facts = [self.facts_feeder.message(FACTS_TOPIC, k, v) for k, v in hop1.facts]
        self.fact_messages.extend(facts)
        hop2 = self.kpis.apply(facts, self.kpi_states, now_ms)
        self.out.extend(hop1)
        self.out.extend(hop2)
        hop1.extend(hop2)
        return hop1

    def tick(self, now_ms: int) -> Outputs:
        self.wall.set(now_ms)
        res = self.journeys.sweep(self.case_states, now_ms)
        res.extend(self.kpis.tick(self.kpi_states, now_ms))
        self.out.extend(res)
        return res

    # -- latest views -------------------------------------------------------------------------
    def records(self) -> dict[str, dict[str, Any]]:
        return latest(self.out.stage_records, "record_id")

    def windows(self) -> dict[str, dict[str, Any]]:
        return latest(self.out.kpi_windows, "kpi_id")

    def backlog(self) -> dict[str, dict[str, Any]]:
        return latest(self.out.backlog, "backlog_id")

    def alerts(self, kind: str | None = None) -> list[tuple[str, str]]:
        return [(a["alert_id"], a["state"]) for a in self.out.alerts if kind is None or a["kind"] == kind]


def latest(rows: list[dict[str, Any]], id_field: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        prev = out.get(r[id_field])
        if prev is None or r["version"] > prev["version"]:
            out[r[id_field]] = r
    return out


C, P, PORTS, R, E = (
    contracts.CUSTOMS,
    contracts.PERMITS,
    contracts.PORTS,
    contracts.REBATES,
    contracts.ENERGY,
)


def export_case(
    case_id: str,
    t: int,
    *,
    province: str = "PK-PB",
    port: str = "KPT",
    customs_h: float = 10,
    handoff_h: float = 5,
    port_h: float = 20,
) -> list[tuple[str, dict[str, Any]]]:
    """FILED → CLEARED → ISSUED → GATE_IN → LOADED with the given stage durations (hours)."""
    cleared = t + int(customs_h * HOUR)
    issued = cleared + int(handoff_h * HOUR)
    gate_in = issued + HOUR
    loaded = gate_in + int(port_h * HOUR)
    kw = {"province": province, "port": port}
    return [
        (C, event(C, case_id, "FILED", t, **kw)),
        (C, event(C, case_id, "CLEARED", cleared, **kw)),
        (P, event(P, case_id, "ISSUED", issued, province=province)),
        (PORTS, event(PORTS, case_id, "GATE_IN", gate_in, **kw)),
        (PORTS, event(PORTS, case_id, "LOADED", loaded, **kw)),
    ]


class _ChangelogTopic:
    def __init__(self, name: str) -> None:
        self.name = name

    def get_topic_name(self) -> str:
        return self.name


class DictTable:
    """What PartitionedTableStore uses of a Faust table: its local data and changelog topic."""

    def __init__(self, changelog: str = "test-journey_state-changelog") -> None:
        self.data: dict[str, Any] = {}
        self.changelog_topic = _ChangelogTopic(changelog)
