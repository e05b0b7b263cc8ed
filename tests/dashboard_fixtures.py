"""Seeded command-view data for the dashboard tests (imported by tests/test_dashboard_*.py, test_board_*.py).

The rows are built here from a seeded random journey per case, following SEMANTICS.md (owner from
the missions file's ``owner_for``, durations in event time), and written to a chdb database on
which the real migrations (``sinks.migrate``) were applied, as the sink would write them:
several versions of stage records / KPI windows / backlog rows, duplicated events, FIRING then
RESOLVED alerts. The tests compare the panels' answers with pandas computations over
:class:`Seed` (what was inserted), never with the dashboards code.
"""

from __future__ import annotations

import hashlib
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
from clickhouse_connect.driver.client import Client

from backbone.config import DEFAULT_MISSIONS_FILE, load_settings
from dashboards.board.server import BoardHandle, start_board
from sinks.client import LockedQuery, open_client
from sinks.migrate import migrate
from stream_processors.missions import Missions, load_missions

MINUTE = 60_000
HOUR = 3_600_000
DAY = 24 * HOUR
EXPORT = "export_competitiveness"
ENERGY = "energy_pass_through"
PORT_PROVINCE = {"KPT": "PK-SD", "PQA": "PK-SD", "GWD": "PK-BA"}
PORT_AGENCY = {"KPT": "KPT", "PQA": "PQA", "GWD": "GPA"}


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def ts(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


@dataclass
class Seed:
    """Everything inserted, as plain dicts (epoch ms, Decimal money), plus the board's "now"."""

    now_ms: int
    missions: Missions
    events: list[dict[str, Any]] = field(default_factory=list)
    stage_rows: list[dict[str, Any]] = field(default_factory=list)  # every version inserted
    kpi_rows: list[dict[str, Any]] = field(default_factory=list)
    backlog_rows: list[dict[str, Any]] = field(default_factory=list)
    alert_rows: list[dict[str, Any]] = field(default_factory=list)
    freshness_rows: list[dict[str, Any]] = field(default_factory=list)
    dead_letter_rows: list[dict[str, Any]] = field(default_factory=list)  # a re-sent copy included

    _cache: dict[str, pd.DataFrame] = field(default_factory=dict)

    def latest(self, rows: list[dict[str, Any]], key: str, version: str = "version") -> pd.DataFrame:
        """The latest version per id (copied: callers may add columns)."""
        cache_key = f"{key}:{id(rows)}:{len(rows)}"
        if cache_key not in self._cache:
            df = pd.DataFrame(rows)
            self._cache[cache_key] = (
                df.sort_values(version).groupby(key, as_index=False).tail(1).reset_index(drop=True)
            )
        return self._cache[cache_key].copy()

    def stages(self) -> pd.DataFrame:
        return self.latest(self.stage_rows, "record_id")

    def kpis(self) -> pd.DataFrame:
        return self.latest(self.kpi_rows, "kpi_id")

    def backlog(self) -> pd.DataFrame:
        return self.latest(self.backlog_rows, "backlog_id")

    def freshness(self) -> pd.DataFrame:
        return self.latest(self.freshness_rows, "agency")

    def alerts_current(self) -> pd.DataFrame:
        df = pd.DataFrame(self.alert_rows)
        df["_resolved"] = df["state"] == "RESOLVED"
        df = df.sort_values(["_resolved", "emitted_at"]).groupby("alert_id", as_index=False).tail(1)
        return df.drop(columns="_resolved").reset_index(drop=True)

    def distinct_events(self) -> pd.DataFrame:
        return pd.DataFrame(self.events).drop_duplicates("event_id").reset_index(drop=True)

    def dead_letters(self) -> pd.DataFrame:
        return pd.DataFrame(self.dead_letter_rows).drop_duplicates("dead_letter_id").reset_index(drop=True)


class _Builder:
    def __init__(self, now_ms: int, missions: Missions, seed: int) -> None:
        self.rng = random.Random(seed)
        self.now = now_ms
        self.missions = missions
        self.out = Seed(now_ms, missions)
        self.stage_by_key = {(r.mission.id, r.stage.id): r for r in missions.stages}

    # events ---------------------------------------------------------------------------------
    def event(
        self, topic: str, case_id: str, agency: str, province: str, status: str, at: int, **fam: Any
    ) -> int:
        base: dict[str, Any] = {
            "event_id": str(uuid.UUID(int=self.rng.getrandbits(128))),
            "case_id": case_id,
            "topic": topic,
            "agency": agency,
            "province": province,
            "status": status,
            "occurred_at": at,
            "published_at": at + self.rng.randrange(100, 60_000),
            "port": "",
            "hs_code": "",
            "declared_value_pkr": None,
            "container_ids": [],
            "exporter_id": None,
            "gd_number": None,
            "from_province": "",
            "to_province": "",
            "vehicle_reg": "",
            "terminal": "",
            "container_id": "",
            "vessel": None,
            "amount_pkr": None,
            "regulator": "",
            "instrument": "",
            "sector": "",
        }
        base.update(fam)
        self.out.events.append(base)
        if self.rng.random() < 0.1:  # at-least-once delivery: the same event stored twice
            self.out.events.append(dict(base))
        return at

    # stage records --------------------------------------------------------------------------
    def stage(
        self,
        mission: str,
        stage_id: str,
        case_id: str,
        start: int | None,
        end: int | None,
        province: str,
        port: str,
        cancelled: bool = False,
        amount: Decimal | None = None,
    ) -> None:
        if start is None or start > self.now:
            return
        ref = self.stage_by_key[(mission, stage_id)]
        s = ref.stage
        closed = end is not None and end <= self.now
        state = "CLOSED" if closed else ("CANCELLED" if cancelled else "OPEN")
        rec = {
            "record_id": sha1(f"{case_id}|{mission}|{ref.journey.id}|{stage_id}"),
            "case_id": case_id,
            "mission": mission,
            "journey": ref.journey.id,
            "stage": stage_id,
            "owner_agency": s.owner_for(province, port),
            "province": province,
            "port": port,
            "state": "OPEN",
            "started_at": start,
            "ended_at": None,
            "duration_ms": None,
            "sla_ms": s.sla_ms,
            "sla_met": None,
            "amount_pkr": amount,
            "version": 1,
        }
        self.out.stage_rows.append(rec)
        if state != "OPEN":
            final = dict(rec, state=state, version=2)
            if closed:
                assert end is not None
                duration = max(0, end - start)
                final.update(ended_at=end, duration_ms=duration, sla_met=duration <= s.sla_ms)
            self.out.stage_rows.append(final)
            if self.rng.random() < 0.2:  # a replay re-inserts the same version
                self.out.stage_rows.append(dict(final))

    # journeys -------------------------------------------------------------------------------
    def export_case(
        self, i: int, filed_ago: int | None = None, clearance_ms: int | None = None, port: str | None = None
    ) -> None:
        r = self.rng
        case = f"EXP-{i:04d}"
        province = r.choice(["PK-PB", "PK-PB", "PK-SD", "PK-BA"])  # PK-KP's feed is the silent one
        port = port or r.choice(["KPT", "KPT", "PQA", "GWD"])
        filed = self.now - (filed_ago or r.randrange(HOUR, 8 * DAY))
        cleared = filed + (clearance_ms or r.randrange(HOUR, 40 * HOUR))
        issued = cleared + r.randrange(HOUR // 2, 20 * HOUR)
        gate_in = issued + r.randrange(2 * HOUR, 30 * HOUR)
        loaded = gate_in + r.randrange(5 * HOUR, 70 * HOUR)
        customs = {
            "port": port,
            "hs_code": "520512",
            "declared_value_pkr": Decimal(r.randrange(10**6, 10**9)) / 100,
            "container_ids": [f"MSCU{i:07d}"],
            "exporter_id": f"NTN-{i % 7}",
        }
        self.event("customs.clearances.v1", case, "FBR-CUSTOMS", province, "FILED", filed, **customs)
        if cleared <= self.now:
            self.event("customs.clearances.v1", case, "FBR-CUSTOMS", province, "CLEARED", cleared, **customs)
        transport = self.stage_by_key[(EXPORT, "permit_handoff")].stage.owner_for(province, port)
        if issued <= self.now:
            self.event(
                "transport.permits.v1",
                case,
                transport,
                province,
                "ISSUED",
                issued,
                from_province=province,
                to_province=PORT_PROVINCE[port],
                vehicle_reg=f"LES-{i:04d}",
            )
        port_fields = {"port": port, "terminal": "T1", "container_id": f"MSCU{i:07d}"}
        if gate_in <= self.now:
            self.event(
                "ports.container_moves.v1",
                case,
                PORT_AGENCY[port],
                PORT_PROVINCE[port],
                "GATE_IN",
                gate_in,
                **port_fields,
            )
        if loaded <= self.now:
            self.event(
                "ports.container_moves.v1",
                case,
                PORT_AGENCY[port],
                PORT_PROVINCE[port],
                "LOADED",
                loaded,
                vessel="IMO9811000",
                **port_fields,
            )
        seen = lambda t: t if t <= self.now else None  # noqa: E731
        self.stage(EXPORT, "customs_clearance", case, filed, seen(cleared), province, port)
        self.stage(EXPORT, "permit_handoff", case, seen(cleared), seen(issued), province, port)
        self.stage(EXPORT, "port_loading", case, seen(gate_in), seen(loaded), PORT_PROVINCE[port], port)
        self.stage(EXPORT, "export_end_to_end", case, filed, seen(loaded), province, port)

    def rebate_case(self, i: int) -> None:
        r = self.rng
        case = f"DBK-{i:04d}"
        province = r.choice(["PK-PB", "PK-SD", "PK-KP"])
        # ages spread over every bucket (by i), kept a day away from the bucket edges
        lo, hi = [(1, 29), (32, 59), (62, 89), (92, 140)][i % 4]
        filed = self.now - r.randrange(lo, hi) * DAY - r.randrange(HOUR, 20 * HOUR)
        amount = Decimal(r.randrange(10_000_00, 5_000_000_00)) / 100
        fields = {"exporter_id": f"NTN-{i % 7}", "amount_pkr": amount}
        self.event("rebates.drawback.v1", case, "FBR-DRAWBACK", province, "FILED", filed, **fields)
        end: int | None = None
        cancelled = False
        if i % 5 in (1, 2):  # paid (if that day has come)
            end = filed + r.randrange(3 * DAY, 50 * DAY)
            if end <= self.now:
                self.event("rebates.drawback.v1", case, "FBR-DRAWBACK", province, "PAID", end, **fields)
            else:
                end = None
        elif i % 5 == 0:  # rejected: leaves the backlog without a completion
            rejected = filed + r.randrange(DAY, 10 * DAY)
            if rejected <= self.now:
                self.event(
                    "rebates.drawback.v1", case, "FBR-DRAWBACK", province, "REJECTED", rejected, **fields
                )
                cancelled = True
        self.stage(
            EXPORT, "rebate_payment", case, filed, end, province, "", cancelled=cancelled, amount=amount
        )

    def energy_case(self, i: int) -> None:
        r = self.rng
        case = f"TAR-{i:03d}"
        regulator = r.choice(["NEPRA", "OGRA"])
        determined = self.now - r.randrange(2 * DAY, 40 * DAY)
        notified = determined + r.randrange(2 * DAY, 30 * DAY)
        effective = notified + r.randrange(DAY, 9 * DAY)
        fields = {"regulator": regulator, "instrument": f"SRO-{i}/2026", "sector": "power"}
        self.event("energy.notifications.v1", case, regulator, "PK-IS", "DETERMINED", determined, **fields)
        if notified <= self.now:
            self.event("energy.notifications.v1", case, "MOE-POWER", "PK-IS", "NOTIFIED", notified, **fields)
        if effective <= self.now:
            self.event(
                "energy.notifications.v1", case, "MOE-POWER", "PK-IS", "EFFECTIVE", effective, **fields
            )
        seen = lambda t: t if t <= self.now else None  # noqa: E731
        self.stage(ENERGY, "energy_notification", case, determined, seen(notified), "PK-IS", "")
        self.stage(ENERGY, "energy_effective", case, seen(notified), seen(effective), "PK-IS", "")

    # processor outputs derived from the stage records ---------------------------------------
    def kpi_windows(self) -> None:
        """KPI windows around now for every target's window, several groups and versions. In the window
        the traffic lights judge, permits are met (GREEN), customs at 80% of 85% (AMBER), rebates at 50%
        of 80% (RED) and energy has no completions (NO DATA)."""
        windows = {w.name: w for w in self.missions.windows}
        for target_mission, target, ref in self.missions.targets:
            w = windows[target.window]
            current_end = self.now // w.step_ms * w.step_ms
            for k in range(0, 4):
                window_end = current_end - k * w.step_ms
                if target_mission.id == ENERGY and k == 0:
                    continue
                for province in ("PK-PB", "PK-SD", "PK-KP"):
                    completions = self.rng.randrange(2, 12)
                    met = self.rng.randrange(0, completions + 1)
                    if k == 0:  # the window the traffic lights judge: one of each colour
                        completions, met = {
                            "permits_within_12h": (7, 7),
                            "customs_within_24h": (10, 8),
                            "rebates_within_30d": (10, 5),
                        }.get(target.id, (completions, met))
                    start = window_end - w.size_ms
                    owner = ref.stage.owner_for(province, "")
                    kpi_id = sha1(
                        f"{w.name}|{start}|{target_mission.id}|{ref.journey.id}|{ref.stage.id}|{owner}|"
                        f"{province}|"
                    )
                    base = {
                        "kpi_id": kpi_id,
                        "window": w.name,
                        "window_start": start,
                        "window_end": window_end,
                        "mission": target_mission.id,
                        "journey": ref.journey.id,
                        "stage": ref.stage.id,
                        "owner_agency": owner,
                        "province": province,
                        "port": "",
                        "p50_ms": 3 * HOUR,
                        "p90_ms": 9 * HOUR,
                        "mean_ms": 4.5 * HOUR,
                        "late_events": 0,
                    }
                    # an earlier, smaller version of the same window, then the final one
                    early = max(1, completions - 2)
                    self.out.kpi_rows.append(
                        dict(
                            base,
                            completions=early,
                            sla_met=min(met, early),
                            sla_compliance=min(met, early) / early,
                            throughput_per_h=early / 24,
                            version=1,
                        )
                    )
                    self.out.kpi_rows.append(
                        dict(
                            base,
                            completions=completions,
                            sla_met=met,
                            sla_compliance=met / completions,
                            throughput_per_h=completions / 24,
                            version=2,
                        )
                    )

    def backlog(self) -> None:
        stages = self.out.stages()
        open_ = stages[stages["state"] == "OPEN"]
        groups = ["mission", "journey", "stage", "owner_agency", "province", "port"]
        for key, _ in stages.groupby(groups):
            mission, journey, stage, owner, province, port = key
            o = open_[(open_[groups] == pd.Series(dict(zip(groups, key, strict=True)))).all(axis=1)]
            amounts = [a for a in o["amount_pkr"] if a is not None and not pd.isna(a)]
            bid = sha1(f"{mission}|{journey}|{stage}|{owner}|{province}|{port}")
            base = {
                "backlog_id": bid,
                "mission": mission,
                "journey": journey,
                "stage": stage,
                "owner_agency": owner,
                "province": province,
                "port": port,
                "as_of": self.now,
            }
            # a stale version first (more cases open), then the current one
            self.out.backlog_rows.append(
                dict(
                    base,
                    open_cases=len(o) + 3,
                    oldest_started_at=self.now - 200 * DAY,
                    amount_pkr_open=Decimal("1.00"),
                    version=1,
                )
            )
            self.out.backlog_rows.append(
                dict(
                    base,
                    open_cases=len(o),
                    oldest_started_at=int(o["started_at"].min()) if len(o) else None,
                    amount_pkr_open=sum(amounts, Decimal(0)) if amounts else None,
                    version=2,
                )
            )

    def alerts(self) -> None:
        stages = self.out.stages()
        for rec in stages.itertuples():
            if pd.isna(rec.started_at):
                continue
            elapsed = (rec.ended_at if rec.state == "CLOSED" else self.now) - rec.started_at
            if rec.state == "CANCELLED" or elapsed <= rec.sla_ms:
                continue
            aid = sha1(f"CASE_SLA|{rec.record_id}")
            firing = {
                "alert_id": aid,
                "kind": "CASE_SLA",
                "state": "FIRING",
                "severity": "critical" if elapsed > 2 * rec.sla_ms else "warning",
                "mission": rec.mission,
                "journey": rec.journey,
                "stage": rec.stage,
                "agency": rec.owner_agency,
                "province": rec.province,
                "port": rec.port,
                "case_id": rec.case_id,
                "summary": f"{rec.case_id} waits at {rec.stage} past its SLA",
                "starts_at": int(rec.started_at + rec.sla_ms),
                "ends_at": None,
                "waiting_since": int(rec.started_at),
                "value": float(elapsed - rec.sla_ms),
                "threshold": float(rec.sla_ms),
                "emitted_at": int(rec.started_at + rec.sla_ms) + 1000,
            }
            self.out.alert_rows.append(firing)
            if rec.state == "CLOSED":
                self.out.alert_rows.append(
                    dict(
                        firing,
                        state="RESOLVED",
                        ends_at=int(rec.ended_at),
                        emitted_at=int(rec.ended_at) + 1000,
                    )
                )
        silent_since = self.now - 3 * HOUR
        self.out.alert_rows.append(
            {
                "alert_id": sha1(f"FEED_SILENT|KP-TRANSPORT|{silent_since}"),
                "kind": "FEED_SILENT",
                "state": "FIRING",
                "severity": "warning",
                "mission": "",
                "journey": "",
                "stage": "",
                "agency": "KP-TRANSPORT",
                "province": "",
                "port": "",
                "case_id": None,
                "summary": "KP-TRANSPORT feed silent",
                "starts_at": silent_since + 30 * 60_000,
                "ends_at": None,
                "waiting_since": silent_since,
                "value": float(3 * HOUR),
                "threshold": float(30 * 60_000),
                "emitted_at": silent_since + 30 * 60_000 + 5,
            }
        )

    def freshness(self) -> None:
        events = self.out.distinct_events()
        for agency, g in events.groupby("agency"):
            newest = g.sort_values(["occurred_at", "event_id"]).iloc[-1]
            base = {
                "agency": agency,
                "topic": newest["topic"],
                "last_occurred_at": int(newest["occurred_at"]),
                "last_published_at": int(newest["published_at"]),
                "last_seen_at": int(newest["published_at"]) + 5,
                "events_total": len(g),
            }
            self.out.freshness_rows.append(
                dict(
                    base,
                    last_occurred_at=int(newest["occurred_at"]) - DAY,
                    events_total=len(g) - 1,
                    version=1,
                )
            )
            self.out.freshness_rows.append(dict(base, version=2))

    def dead_letters(self) -> None:
        """Rejected input of three kinds at several ages (one older than every range the tests
        use), one record stored twice (a sink restart), and a key that is not UTF-8."""
        kinds = [
            ("customs.clearances.v1", "invalid_field", "processor", "declared_value_pkr: negative money"),
            ("transport.permits.v1", "undecodable", "processor", "Avro body is corrupt or truncated"),
            ("ports.container_moves.v1", "unknown_schema", "sink", "fingerprint 0x1234 is not registered"),
            ("rebates.drawback.v1", "wrong_topic", "processor", "a Clearance record on topic rebates"),
        ]
        ages = [
            (0, 60 * MINUTE, b"EXP-DL-1"),
            (0, 2 * HOUR, b"EXP-DL-2"),
            (0, 3 * HOUR + 17, b"EXP-\xff-DL-3"),
            (0, 40 * DAY, b"EXP-DL-4"),
            (1, 5 * HOUR, None),
            (1, 50 * HOUR, b""),
            (2, 20 * MINUTE, b"EXP-DL-7"),
            (3, 70 * DAY, b"DDT-DL-8"),
        ]
        for n, (kind, age, key) in enumerate(ages):
            topic, reason, source, detail = kinds[kind]
            self.out.dead_letter_rows.append(
                {
                    "dead_letter_id": sha1(f"{topic}|0|{n}"),
                    "source": source,
                    "topic": topic,
                    "partition": 0,
                    "offset": n,
                    "key": key,
                    "value": b"\x00\x01",
                    "reason": reason,
                    "detail": f"{detail} (record {n})",
                    "received_at": self.now - age,
                }
            )
        self.out.dead_letter_rows.append(dict(self.out.dead_letter_rows[1]))  # stored twice


def build_seed(now_ms: int, missions: Missions | None = None, seed: int = 11) -> Seed:
    """A deterministic data set ending at ``now_ms`` (the board's "now")."""
    b = _Builder(now_ms, missions or load_missions(DEFAULT_MISSIONS_FILE), seed)
    for i in range(80):
        b.export_case(i)
    b.export_case(80, filed_ago=5 * 60_000)  # customs' feed is fresh
    # a completion today, whatever the hour (unless the test runs in the first minute of a UTC day)
    b.export_case(81, filed_ago=3 * HOUR, clearance_ms=3 * HOUR - 60_000, port="KPT")
    for i in range(40):
        b.rebate_case(i)
    for i in range(10):
        b.energy_case(i)
    # a silent feed: Khyber Pakhtunkhwa transport's newest event is 3 h old (threshold 30 m)
    b.event(
        "transport.permits.v1",
        "EXP-KP-OLD",
        "KP-TRANSPORT",
        "PK-KP",
        "REQUESTED",
        now_ms - 3 * HOUR,
        from_province="PK-KP",
        to_province="PK-SD",
        vehicle_reg="PES-1",
    )
    b.kpi_windows()
    b.backlog()
    b.alerts()
    b.freshness()
    b.dead_letters()
    return b.out


# -- writing to ClickHouse ------------------------------------------------------------------------
_TS_COLUMNS = {
    "occurred_at",
    "published_at",
    "started_at",
    "ended_at",
    "window_start",
    "window_end",
    "oldest_started_at",
    "as_of",
    "starts_at",
    "ends_at",
    "waiting_since",
    "emitted_at",
    "last_occurred_at",
    "last_published_at",
    "last_seen_at",
    "received_at",
}


def _insert(client: Client, table: str, rows: list[dict[str, Any]]) -> None:
    columns = list(rows[0])
    data = [[ts(r[c]) if c in _TS_COLUMNS else r[c] for c in columns] for r in rows]
    client.insert(table, data, column_names=columns)


def write_seed(client: Client, seed: Seed) -> None:
    """Insert the seed as the sink would (in several batches so that versions sit in separate parts)."""
    events = [
        dict(e, event_id=uuid.UUID(e["event_id"]), kafka_partition=0, kafka_offset=i)
        for i, e in enumerate(seed.events)
    ]
    half = len(events) // 2
    _insert(client, "events", events[:half])
    _insert(client, "events", events[half:])
    for table, rows in (
        ("stage_records", seed.stage_rows),
        ("kpi_windows", seed.kpi_rows),
        ("backlog", seed.backlog_rows),
        ("alerts", seed.alert_rows),
        ("feed_freshness", seed.freshness_rows),
    ):
        by_version: dict[Any, list[dict[str, Any]]] = {}
        for r in rows:
            by_version.setdefault(r["version"] if "version" in r else r["state"], []).append(r)
        for version in sorted(by_version, key=str):
            _insert(client, table, by_version[version])
    copies = seed.dead_letter_rows
    _insert(client, "dead_letters", copies[:-1])
    _insert(client, "dead_letters", copies[-1:])  # the copy in a part of its own, as after a restart
    for view in ("kpi_daily_refresh", "backlog_ageing_refresh"):
        client.command(f"SYSTEM REFRESH VIEW {view}")
        client.command(f"SYSTEM WAIT VIEW {view}")


def board_now_ms() -> int:
    """The seed's "now": the current time to the second (the rollups age cases against the clock)."""
    return int(time.time()) * 1000


@dataclass
class SeededDatabase:
    client: Client
    seed: Seed
    path: Path


def seeded_database(path: Path, now_ms: int | None = None) -> Iterator[SeededDatabase]:
    """Open a chdb database at ``path``, apply the real migrations, write the seed; close afterwards."""
    client = open_client(load_settings(data_dir=path))
    try:
        migrate(client)
        seed = build_seed(now_ms or board_now_ms())
        write_seed(client, seed)
        yield SeededDatabase(client, seed, path)
    finally:
        client.close()


def running_board(db: SeededDatabase) -> Iterator[BoardHandle]:
    """The built-in board serving ``db`` on a free port; stopped afterwards."""
    handle = start_board(LockedQuery(db.client), 0, load_settings())
    try:
        yield handle
    finally:
        handle.stop()
