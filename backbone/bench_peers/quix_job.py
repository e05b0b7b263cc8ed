"""The KPI job written the Quix Streams way: its own per-key state, group-by and windows.

Pipeline (one ``StreamingDataFrame`` per agency topic, concatenated, so Quix aligns the five
topics by message time):

1. decode + validate each event (the project's codec and contract, as our job does);
2. **journeys**: a stateful ``apply`` keyed by the message key (``case_id``) keeps the case's
   seen event ids and stage instances and implements SEMANTICS.md's stage rules (earliest start
   with its attributes, earliest end, cancel). Each change emits a stage record and, when a
   completion appears, moves or disappears, a ``-1`` for the old and a ``+1`` for the new one;
3. **KPIs**: the completion changes are re-keyed with ``group_by`` to their KPI group, stamped
   with ``ended_at`` as event time, and folded by Quix's own ``tumbling_window`` (1m) and
   ``hopping_window`` (1h/5m, 24h/1h) with a ``reduce`` keeping completions, SLA met, the sum
   of durations and the log-bucket duration sketch of :mod:`stream_processors.sketch` (so
   retractions work and p50/p90 obey the same 1% bound); ``current()`` emits each updated window.

Less than our job does: no backlog, feed freshness, alerts or dead letters (invalid events are
only counted), so the comparison favours Quix. Outputs: ``bench.quix.stage_records`` and
``bench.quix.kpi_windows`` (JSON). Run::

    python -m backbone.bench_peers.quix_job --app-id bench-quix --metrics-port 0
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

from backbone.bench_peers import peer_topic
from backbone.config import load_settings
from backbone.kafka import FAST_GROUP_SETTINGS, ensure_topics, topic_configs
from backbone.metrics import Metrics, serve
from schemas import contracts
from schemas.codec import Codec, DecodeError
from schemas.validation import InvalidRecord, validate_event
from stream_processors import sketch
from stream_processors.api import FACTS_TOPIC
from stream_processors.missions import Missions, StageRef, load_missions

PEER = "quix"
STAGE_RECORDS_TOPIC = peer_topic(PEER, contracts.STAGE_RECORDS)
KPI_WINDOWS_TOPIC = peer_topic(PEER, contracts.KPI_WINDOWS)
QS = (0.5, 0.9)

# instance slots
STARTED, START_EID, PROVINCE, PORT, ENDED, CANCELLED = range(6)
START, END, CANCEL = "start", "end", "cancel"


class JourneyRules:
    """SEMANTICS.md's stage-instance rules for one case, over a plain-JSON case state."""

    def __init__(self, missions: Missions) -> None:
        self.boundaries = missions.stages_by_event
        self._port_topics = {t for t in contracts.INPUT_TOPICS if "port" in contracts.current(t).field_names}

    def fold(self, topic: str, raw: dict[str, Any], case: dict[str, Any]) -> list[dict[str, Any]]:
        """Apply one valid event to ``case``; returns stage records and completion changes."""
        if raw["event_id"] in case["e"]:
            return []
        case["e"].append(raw["event_id"])
        out: list[dict[str, Any]] = []
        for ref, kind in self.boundaries.get((topic, raw["status"]), ()):
            path = "|".join(ref.key)
            inst = case["i"].get(path) or [None, None, None, None, None, None]
            old = self._completion(ref, inst)
            if not self._apply(ref, kind, inst, topic, raw):
                continue
            case["i"][path] = inst
            new = self._completion(ref, inst)
            if new != old:
                if old is not None:
                    out.append({**old, "sign": -1})
                if new is not None:
                    out.append({**new, "sign": 1})
            if inst[STARTED] is not None:
                out.append(self._record(raw["case_id"], ref, inst))
        return out

    def _apply(self, ref: StageRef, kind: str, inst: list[Any], topic: str, raw: dict[str, Any]) -> bool:
        occurred = raw["occurred_at"]
        if kind == START:
            started = inst[STARTED]
            if started is not None and (occurred, raw["event_id"]) >= (started, inst[START_EID]):
                return False
            inst[STARTED], inst[START_EID], inst[PROVINCE] = occurred, raw["event_id"], raw["province"]
            inst[PORT] = (raw.get("port") or "") if topic in self._port_topics else ""
        elif kind == END:
            if inst[ENDED] is not None and occurred >= inst[ENDED]:
                return False
            inst[ENDED] = occurred
        else:
            if inst[CANCELLED] is not None and occurred >= inst[CANCELLED]:
                return False
            inst[CANCELLED] = occurred
        return True

    @staticmethod
    def _completion(ref: StageRef, inst: list[Any]) -> dict[str, Any] | None:
        if inst[STARTED] is None or inst[ENDED] is None:
            return None
        duration = max(0, inst[ENDED] - inst[STARTED])
        owner = ref.stage.owner_for(inst[PROVINCE], inst[PORT])
        group = "|".join((*ref.key, owner, inst[PROVINCE], inst[PORT]))
        return {
            "kind": "c",
            "group": group,
            "ended_at": inst[ENDED],
            "duration_ms": duration,
            "met": 1 if duration <= ref.stage.sla_ms else 0,
        }

    @staticmethod
    def _record(case_id: str, ref: StageRef, inst: list[Any]) -> dict[str, Any]:
        started, ended = inst[STARTED], inst[ENDED]
        duration = max(0, ended - started) if ended is not None else None
        state = "CLOSED" if ended is not None else ("CANCELLED" if inst[CANCELLED] is not None else "OPEN")
        m, j, s = ref.key
        return {
            "kind": "r",
            "record_id": hashlib.sha1(f"{case_id}|{m}|{j}|{s}".encode()).hexdigest(),
            "case_id": case_id,
            "mission": m,
            "journey": j,
            "stage": s,
            "owner_agency": ref.stage.owner_for(inst[PROVINCE], inst[PORT]),
            "province": inst[PROVINCE],
            "port": inst[PORT],
            "state": state,
            "started_at": started,
            "ended_at": ended,
            "duration_ms": duration,
            "sla_ms": ref.stage.sla_ms,
            "sla_met": None if duration is None else duration <= ref.stage.sla_ms,
        }


def _init(change: dict[str, Any]) -> list[Any]:
    return _reduce([0, 0, 0, {}], change)


def _reduce(agg: list[Any], change: dict[str, Any]) -> list[Any]:
    """Window aggregate ``[completions, sla_met, sum_ms, sketch]``; ``sign`` -1 retracts."""
    sign = change["sign"]
    agg[0] += sign
    agg[1] += sign * change["met"]
    agg[2] += sign * change["duration_ms"]
    sketch.add(agg[3], sketch.bucket_key(change["duration_ms"]), sign)
    return agg


def window_row(name: str, size_ms: int) -> Any:
    def row(window: dict[str, Any], key: Any, _ts: int, _headers: Any) -> dict[str, Any]:
        n, met, total, counts = window["value"]
        p50, p90 = sketch.quantiles(counts, QS) if n > 0 else (None, None)
        mission, journey, stage, owner, province, port = key.split("|")
        return {
            "window": name,
            "window_start": window["start"],
            "window_end": window["end"],
            "mission": mission,
            "journey": journey,
            "stage": stage,
            "owner_agency": owner,
            "province": province,
            "port": port,
            "completions": n,
            "sla_met": met,
            "sla_compliance": met / n if n else None,
            "p50_ms": p50,
            "p90_ms": p90,
            "mean_ms": total / n if n else None,
            "throughput_per_h": n / (size_ms / 3_600_000),
        }

    return row


def build(app_id: str, metrics: Metrics, data_dir: Path) -> Any:
    from quixstreams import Application
    from quixstreams.dataframe.windows.definitions import TimeWindowDefinition
    from quixstreams.dataframe.windows.time_based import TimeWindow
    from quixstreams.models import TopicConfig

    settings = load_settings()
    missions = load_missions(settings.missions_file)
    codec = Codec()
    rules = JourneyRules(missions)
    app = Application(
        broker_address=settings.kafka_bootstrap_servers,
        consumer_group=app_id,
        auto_offset_reset="earliest",
        commit_interval=1.0,
        state_dir=str(data_dir / "quix-state"),
        loglevel=settings.log_level,
        consumer_extra_config=dict(FAST_GROUP_SETTINGS),
    )
    config = TopicConfig(
        num_partitions=settings.topic_partitions, replication_factor=1, extra_config=topic_configs()
    )

    def decoder(topic: str) -> Any:
        seen = metrics.events_in.labels(topic)
        invalid = metrics.dead_letters.labels("quix-peer", topic, "invalid_record")
        skew = settings.max_future_skew_ms

        def decode(value: bytes, _key: Any, timestamp: int, _headers: Any) -> dict[str, Any] | None:
            seen.inc()
            try:
                raw = codec.decode(topic, value)
                validate_event(topic, raw, timestamp, max_future_skew_ms=skew)
            except (DecodeError, InvalidRecord):
                invalid.inc()
                return None
            return {"topic": topic, "raw": raw}

        return decode

    sdf = None
    for topic in contracts.INPUT_TOPICS:
        part = app.dataframe(
            app.topic(topic, key_deserializer="str", value_deserializer="bytes", config=config)
        )
        part = part.apply(decoder(topic), metadata=True).filter(lambda v: v is not None)
        sdf = part if sdf is None else sdf.concat(part)
    assert sdf is not None

    def journey(value: dict[str, Any], state: Any) -> list[dict[str, Any]]:
        case = state.get("case") or {"e": [], "i": {}}
        out = rules.fold(value["topic"], value["raw"], case)
        if out:
            state.set("case", case)
        return out

    changes = sdf.apply(journey, stateful=True, expand=True)
    records_out = metrics.records_out.labels(contracts.STAGE_RECORDS)
    records = changes.filter(lambda v: v["kind"] == "r")
    records = records.update(lambda _v: records_out.inc())
    records.to_topic(app.topic(STAGE_RECORDS_TOPIC, value_serializer="json", config=config))

    facts_sent = metrics.records_out.labels(FACTS_TOPIC)
    facts_seen = metrics.batch_size.labels("kpis")
    completions = changes.filter(lambda v: v["kind"] == "c")
    completions = completions.set_timestamp(lambda v, _k, _t, _h: v["ended_at"])
    completions = completions.update(lambda _v: facts_sent.inc())
    grouped = completions.group_by(lambda v: v["group"], name="kpi_group")
    grouped = grouped.update(lambda _v: facts_seen.observe(1))
    kpi_out = metrics.records_out.labels(contracts.KPI_WINDOWS)
    kpi_topic = app.topic(KPI_WINDOWS_TOPIC, value_serializer="json", config=config)
    for w in missions.windows:
        spec: TimeWindowDefinition[TimeWindow]
        if w.hop_ms is None:
            spec = grouped.tumbling_window(w.size_ms, grace_ms=settings.grace_ms, name=f"kpi_{w.name}")
        else:
            spec = grouped.hopping_window(
                w.size_ms, w.hop_ms, grace_ms=settings.grace_ms, name=f"kpi_{w.name}"
            )
        rows = spec.reduce(_reduce, _init).current(closing_strategy="partition")
        rows = rows.apply(window_row(w.name, w.size_ms), metadata=True)
        rows = rows.update(lambda _v: kpi_out.inc())
        rows.to_topic(kpi_topic)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app-id", default="bench-quix")
    parser.add_argument("--metrics-port", type=int, default=0)
    args = parser.parse_args()
    settings = load_settings()
    ensure_topics(settings, settings.kafka_bootstrap_servers, (STAGE_RECORDS_TOPIC, KPI_WINDOWS_TOPIC))
    metrics = Metrics()
    port = serve(metrics, args.metrics_port)
    app = build(args.app_id, metrics, settings.data_dir)
    print(f"quix peer: metrics on 127.0.0.1:{port}", flush=True)
    app.run()


if __name__ == "__main__":
    main()
