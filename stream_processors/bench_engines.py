"""Throughput of the two engines alone (no Kafka, no Faust): ``python -m stream_processors.bench_engines``.

Pushes pre-encoded agency messages through :class:`JourneyEngine.process` and the resulting
facts through :class:`KpiEngine.apply` in batches, with plain ``dict`` state stores, calling the
timers (``sweep``/``tick``) every ``tick_every`` batches as the runtime does once a second.
The traffic is a compressed year of the export mission (about 55k events per day of event
time), with 1% duplicates and a little arrival jitter. Decode and validation are included.

Times are CPU time of this process (``time.process_time``), so a machine shared with other
work slows the numbers less than wall time would; still, compare runs by their ratios to the
yardsticks measured in the same run: ``Codec.decode_reference`` (fastavro's generic reader, the
decode every event needs at the least) and ``Codec.decode`` (the generated fast path).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import time
import uuid
import zlib
from typing import Any

from backbone.config import DEFAULT_MISSIONS_FILE, Settings
from schemas import contracts
from schemas.codec import Codec
from stream_processors.api import DEFAULT_BATCH_MAX, FACTS_TOPIC, InputMessage
from stream_processors.gc_policy import freeze_state, tune_gc
from stream_processors.journeys import JourneyEngine
from stream_processors.kpis import KpiEngine
from stream_processors.missions import load_missions

T0 = 1_767_225_600_000
HOUR = 3_600_000
PROVINCES = ("PK-PB", "PK-SD", "PK-KP", "PK-BA")
PORTS = ("KPT", "PQA", "GWD")
PORT_AGENCY = {"KPT": "KPT", "PQA": "PQA", "GWD": "GPA"}
TRANSPORT = {
    "PK-PB": "PB-TRANSPORT",
    "PK-SD": "SD-TRANSPORT",
    "PK-KP": "KP-TRANSPORT",
    "PK-BA": "BA-TRANSPORT",
}


def _event(
    topic: str,
    case_id: str,
    agency: str,
    province: str,
    status: str,
    t: int,
    rng: random.Random,
    **extra: Any,
) -> tuple[str, dict[str, Any]]:
    rec = {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "case_id": case_id,
        "agency": agency,
        "province": province,
        "status": status,
        "occurred_at": t,
        "published_at": t + rng.randint(0, 60_000),
    }
    rec.update(extra)
    return topic, rec


def generate(n_events: int, seed: int = 7, events_per_day: int = 55_000) -> list[tuple[str, dict[str, Any]]]:
    """Simulated traffic ordered by published_at (arrival), roughly ``n_events`` long."""
    rng = random.Random(seed)
    out: list[tuple[str, dict[str, Any]]] = []
    gap = int(24 * HOUR / events_per_day * 5)  # a case has ~5 events
    t = T0
    i = 0
    while len(out) < n_events * 3 // 2:  # more than needed: the tail of far-future ends is cut off
        i += 1
        t += rng.randint(0, 2 * gap)
        prov = rng.choice(PROVINCES)
        kind = rng.random()
        if kind < 0.8:
            cid, port = f"EXP-{i}", rng.choice(PORTS)
            cleared = t + int(rng.lognormvariate(2.5, 0.5) * HOUR)
            issued = cleared + int(rng.lognormvariate(2.0, 0.6) * HOUR)
            gate = issued + int(rng.uniform(1, 10) * HOUR)
            loaded = gate + int(rng.lognormvariate(3.0, 0.5) * HOUR)
            cust = {
                "port": port,
                "hs_code": "5205",
                "declared_value_pkr": rng.randint(10**6, 10**9),
                "container_ids": ["MSCU1234565"],
                "exporter_id": None,
                "gd_number": None,
            }
            move = {"port": port, "terminal": "T1", "container_id": "MSCU1234565", "vessel": None}
            out += [
                _event(contracts.CUSTOMS, cid, "FBR-CUSTOMS", prov, "FILED", t, rng, **cust),
                _event(contracts.CUSTOMS, cid, "FBR-CUSTOMS", prov, "CLEARED", cleared, rng, **cust),
                _event(
                    contracts.PERMITS,
                    cid,
                    TRANSPORT[prov],
                    prov,
                    "ISSUED",
                    issued,
                    rng,
                    from_province=prov,
                    to_province="PK-SD",
                    vehicle_reg="LES-1234",
                ),
                _event(contracts.PORTS, cid, PORT_AGENCY[port], prov, "GATE_IN", gate, rng, **move),
                _event(contracts.PORTS, cid, PORT_AGENCY[port], prov, "LOADED", loaded, rng, **move),
            ]
        elif kind < 0.95:
            cid = f"RBT-{i}"
            amount = {"exporter_id": "1234567-8", "amount_pkr": rng.randint(10**5, 10**8)}
            audit = t + int(rng.uniform(1, 5) * 24 * HOUR)
            end = audit + int(rng.uniform(1, 40) * 24 * HOUR)
            out += [
                _event(contracts.REBATES, cid, "FBR-DRAWBACK", prov, "FILED", t, rng, **amount),
                _event(contracts.REBATES, cid, "FBR-DRAWBACK", prov, "AUDIT_STARTED", audit, rng, **amount),
                _event(
                    contracts.REBATES,
                    cid,
                    "FBR-DRAWBACK",
                    prov,
                    "PAID" if rng.random() < 0.9 else "REJECTED",
                    end,
                    rng,
                    **amount,
                ),
            ]
        else:
            cid = f"NRG-{i}"
            extra = {"regulator": "NEPRA", "instrument": "SRO", "sector": "power"}
            notified = t + int(rng.uniform(2, 25) * 24 * HOUR)
            out += [
                _event(contracts.ENERGY, cid, "NEPRA", "PK-IS", "DETERMINED", t, rng, **extra),
                _event(contracts.ENERGY, cid, "MOE-POWER", "PK-IS", "NOTIFIED", notified, rng, **extra),
                _event(
                    contracts.ENERGY,
                    cid,
                    "MOE-POWER",
                    "PK-IS",
                    "EFFECTIVE",
                    notified + 7 * HOUR,
                    rng,
                    **extra,
                ),
            ]
    out.sort(key=lambda e: e[1]["published_at"])
    out = out[: n_events - n_events // 100]
    for _ in range(n_events // 100):  # re-sends arrive a little after the original
        i = rng.randrange(len(out))
        out.insert(min(len(out), i + rng.randint(1, 500)), out[i])
    return out


def run(
    n_events: int = 200_000,
    batch_size: int = DEFAULT_BATCH_MAX,
    partitions: int = 6,
    tick_every: int = 8,
    gc_policy: bool = True,
) -> dict[str, Any]:
    """Run the benchmark; ``gc_policy``: the worker's collector settings (:mod:`.gc_policy`)."""
    missions = load_missions(DEFAULT_MISSIONS_FILE)
    settings = Settings(grace_ms=HOUR)
    codec = Codec()
    events = generate(n_events)
    offsets: dict[tuple[str, int], int] = {}
    msgs: list[InputMessage] = []
    for topic, raw in events:
        p = zlib.crc32(raw["case_id"].encode()) % partitions
        off = offsets.get((topic, p), 0)
        offsets[(topic, p)] = off + 1
        msgs.append(InputMessage(topic, p, off, raw["case_id"].encode(), codec.encode(topic, raw), None))
    clock = time.process_time
    reference_us = decode_us = float("inf")
    for _ in range(3):  # the decode alone, as the yardstick (the machine may be shared): best of 3
        t = clock()
        for m in msgs:
            codec.decode_reference(m.topic, m.value)
        reference_us = min(reference_us, (clock() - t) / len(msgs) * 1e6)
        t = clock()
        for m in msgs:
            codec.decode(m.topic, m.value)
        decode_us = min(decode_us, (clock() - t) / len(msgs) * 1e6)
    journeys, kpis = JourneyEngine(missions, settings, codec), KpiEngine(missions, settings)
    previous_gc = tune_gc() if gc_policy else None
    if gc_policy:
        freeze_state()  # the generated traffic lives as long as the run, like imports in a worker
    case_states: dict[str, Any] = {}
    kpi_states: dict[str, Any] = {}
    fact_offsets: dict[int, int] = {}
    counts = {"stage_records": 0, "kpi_windows": 0, "alerts": 0, "backlog": 0, "facts": 0, "dead_letters": 0}
    hop1_s = hop2_s = timers_s = 0.0
    started = clock()
    for b, i in enumerate(range(0, len(msgs), batch_size)):
        batch = msgs[i : i + batch_size]
        now = max(raw["published_at"] for _, raw in events[i : i + batch_size])
        t0 = clock()
        out1 = journeys.process(batch, case_states, now)
        t1 = clock()
        facts = []
        for key, value in out1.facts:
            p = zlib.crc32(key.encode()) % partitions
            off = fact_offsets.get(p, 0)
            fact_offsets[p] = off + 1
            facts.append(InputMessage(FACTS_TOPIC, p, off, key.encode(), value, None))
        t2 = clock()
        out2 = kpis.apply(facts, kpi_states, now)
        t3 = clock()
        hop1_s += t1 - t0
        hop2_s += t3 - t2
        outs = [out1, out2]
        if b % tick_every == tick_every - 1:
            outs += [journeys.sweep(case_states, now), kpis.tick(kpi_states, now)]
            timers_s += clock() - t3
        for o in outs:
            for name in counts:
                counts[name] += len(getattr(o, name))
    elapsed = clock() - started
    if previous_gc is not None:
        tune_gc(previous_gc)
        gc.unfreeze()
    per_event_us = elapsed / len(msgs) * 1e6
    case_json = len(json.dumps(case_states))
    kpi_json = len(json.dumps(kpi_states))
    return {
        "events": len(msgs),
        "batch_size": batch_size,
        "gc_policy": gc_policy,
        "events_per_s": round(len(msgs) / elapsed),
        "us_per_event": round(per_event_us, 2),
        "reference_decode_us_per_event": round(reference_us, 2),
        "decode_us_per_event": round(decode_us, 2),
        "us_per_event_over_reference_decode": round(per_event_us / reference_us, 2),
        "hop1_us_per_event": round(hop1_s / len(msgs) * 1e6, 2),
        "hop2_us_per_event": round(hop2_s / len(msgs) * 1e6, 2),
        "timers_us_per_event": round(timers_s / len(msgs) * 1e6, 2),
        "case_keys": len(case_states),
        "case_state_json_bytes": case_json,
        "kpi_keys": len(kpi_states),
        "kpi_state_json_bytes": kpi_json,
        **counts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH_MAX)
    parser.add_argument("--default-gc", action="store_true", help="CPython's default collector thresholds")
    args = parser.parse_args()
    print(json.dumps(run(args.events, args.batch, gc_policy=not args.default_gc), indent=2))


if __name__ == "__main__":
    main()
