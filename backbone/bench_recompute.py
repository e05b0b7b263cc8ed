"""``backbone bench --sections recompute``: the history recompute against a bare pivot, same run, same events.

The events (a year of export journeys with their permits, container moves, drawback claims and a
few tariff notifications; re-sent duplicates, stalled cases and rejected claims included; the
delays and mixes of ``producers/simulator.py``) are generated *inside ClickHouse* with one
``INSERT ... SELECT`` from ``numbers()``, so a run of millions of events takes a minute, not an
hour of Python. Then, on the same table of a fresh chdb database:

* the **ceiling**: the bare ``GROUP BY case_id`` pivot with one ``minIf`` per stage boundary of
  the missions file (:meth:`sinks.recompute_sql.RecomputeSql.ceiling`), into a ``Null`` table so
  every column is computed and nothing is stored;
* the **recompute**: :func:`sinks.recompute.recompute` end to end (stage records and every KPI
  window of the missions file written as a new version, the board views switched), timed from
  its start to the switch;
* the **write floor**: the version's rows, held in ``Memory`` tables, inserted again into empty
  tables of the same kind (same columns, codecs, sort keys and settings). The recompute has to
  write these rows, so no SQL makes it faster than this insert on this machine: it shows how
  much of the 5M ev/s target the output alone takes.

The ceiling runs before and after the recompute and the faster run counts. The notes also give the
CPU seconds this process spent on each (chdb is in-process): on a machine shared with other work
the CPU ratio is the steadier figure.

Default size: ``max(--events, 3,000,000)`` events; ``--events 20000000`` for a year of national
traffic.
"""

from __future__ import annotations

import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from clickhouse_connect.driver.client import Client

from backbone.bench import BenchOptions, BenchRow
from backbone.config import DEFAULT_MISSIONS_FILE, load_settings
from sinks.client import open_client
from sinks.migrate import migrate
from sinks.recompute import RecomputeResult, kpi_table, recompute, stage_table, stored_columns
from sinks.recompute_sql import KPI_WINDOW_COLUMNS, STAGE_RECORD_COLUMNS, RecomputeSql
from stream_processors.missions import load_missions

MIN_EVENTS = 3_000_000
EVENTS_PER_CASE = 10.4  # measured mean of the generator below (duplicates and claims included)
BENCH_START_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z
YEAR_MS = 365 * 24 * 3_600_000
TARGET_EVENTS_PER_S = 5_000_000
Out = TypeVar("Out")

H = 3_600_000
D = 24 * H
C, P, PO, R, E = (
    "customs.clearances.v1",
    "transport.permits.v1",
    "ports.container_moves.v1",
    "rebates.drawback.v1",
    "energy.notifications.v1",
)
# slot -> (topic, status, progress step for stalls)
SLOTS = (
    [
        (C, "FILED", 0),
        (C, "ASSESSED", 1),
        (C, "EXAMINED", 1),
        (C, "CLEARED", 2),
        (P, "REQUESTED", 3),
        (P, "ISSUED", 4),
    ]
    + [(PO, "GATE_IN", 4)] * 3
    + [(PO, "LOADED", 5)] * 3
    + [(PO, "DEPARTED", 5)] * 3
    + [(R, "FILED", 5), (R, "AUDIT_STARTED", 5), (R, "REJECTED", 5), (R, "APPROVED", 5), (R, "PAID", 5)]
    + [(E, "DETERMINED", 0), (E, "NOTIFIED", 1), (E, "EFFECTIVE", 2)]
)


def u(k: int) -> str:
    """A uniform in [0, 1) per case, deterministic in (seed, case, k)."""
    return f"(cityHash64(seed, number, {k}) % 1000000) / 1000000.0"


def z(k: int) -> str:
    """A standard normal (Box-Muller)."""
    return f"(sqrt(-2 * log({u(k)} + 1e-9)) * cos(2 * pi() * {u(k + 1000)}))"


def delay(median_ms: int, sigma: float, k: int) -> str:
    """A lognormal delay, like the simulator's."""
    return f"toInt64({median_ms} * exp({sigma} * {z(k)}))"


def lit(values: list[str]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def bench_events_sql(seed: int, start_ms: int, span_ms: int, cases: int) -> str:
    """``INSERT INTO events SELECT ...``: ``cases`` journeys over ``span_ms``, generated in ClickHouse."""
    topics = lit([s[0] for s in SLOTS])
    statuses = lit([s[1] for s in SLOTS])
    steps = "[" + ", ".join(str(s[2]) for s in SLOTS) + "]"
    n = len(SLOTS)
    return f"""
INSERT INTO events (event_id, case_id, topic, agency, province, status, occurred_at, published_at,
                    port, declared_value_pkr, amount_pkr, kafka_partition, kafka_offset)
SELECT
    reinterpretAsUUID(concat(reinterpretAsString(cityHash64(seed, number, slot, 1)),
                             reinterpretAsString(cityHash64(seed, number, slot, 2)))) AS event_id,
    concat(multiIf(slot < 15, 'EXP-', slot < 20, 'DDT-', 'NEPRA-TRF-'),
           leftPad(toString(number), 9, '0')) AS case_id,
    topic,
    multiIf(slot < 4, 'FBR-CUSTOMS', slot < 6, permit_agency, slot < 15, authority, slot < 20, 'FBR-DRAWBACK',
            slot = 20, 'NEPRA', 'MOE-POWER') AS agency,
    multiIf(slot < 6, province, slot < 15, port_province, slot < 20, province, 'PK-IS') AS province,
    status,
    fromUnixTimestamp64Milli(at, 'UTC') AS occurred_at,
    fromUnixTimestamp64Milli(at + 200 + cityHash64(seed, number, slot, 3) % 5000, 'UTC') AS published_at,
    if(slot < 4 OR (slot >= 6 AND slot < 15), port, '') AS port,
    if(slot < 4, declared, NULL) AS declared_value_pkr,
    if(slot >= 15 AND slot < 20, declared * 5 / 100, NULL) AS amount_pkr,
    0 AS kafka_partition,
    number AS kafka_offset
FROM
(
    SELECT
        seed, number, province, port, permit_agency, authority, port_province, declared, slot, at,
        {topics}[slot + 1] AS topic,
        {statuses}[slot + 1] AS status
    FROM
    (
        SELECT
            *,
            t0 + {delay(90 * 60_000, 0.9, 12)} AS assessed,
            assessed + {delay(5 * H, 0.6, 13)} AS examined,
            if(r_exam < 0.25, examined, assessed) + {delay(8 * H, 0.6, 14)} AS cleared,
            cleared + {delay(40 * 60_000, 1.0, 15)} AS requested,
            requested + toInt64({delay(4 * H, 0.75, 16)} * speed) AS issued,
            issued + {delay(20 * H, 0.35, 17)} + if(port = 'GWD', {8 * H}, 0) AS gate_in,
            gate_in + toInt64({delay(22 * H, 0.55, 18)} * port_speed) AS loaded,
            loaded + 1200000 * (containers - 1) + {delay(6 * H, 0.5, 19)} AS departed,
            departed + {delay(4 * D, 0.7, 20)} AS reb_filed,
            reb_filed + {delay(5 * D, 0.6, 21)} AS reb_audit,
            reb_audit + {delay(9 * D, 0.55, 22)} AS reb_approved,
            t0 + {delay(9 * D, 0.6, 25)} AS notified,
            [t0, assessed, examined, cleared, requested, issued,
             gate_in, gate_in + 1200000, gate_in + 2400000,
             loaded, loaded + 600000, loaded + 1200000,
             departed, departed + 1000, departed + 2000,
             reb_filed, reb_audit, reb_audit + {delay(8 * D, 0.6, 23)}, reb_approved,
             reb_approved + {delay(3 * D, 0.5, 24)},
             t0, notified, notified + {delay(3 * D, 0.7, 26)}] AS times
        FROM
        (
            SELECT
                number, {seed} AS seed,
                {start_ms} + intDiv(number * {span_ms}, {cases}) AS t0,
                {u(1)} AS r_prov, {u(2)} AS r_port, {u(3)} AS r_exam, {u(4)} AS r_cont,
                multiIf(r_prov < 0.55, 'PK-PB', r_prov < 0.83, 'PK-SD', r_prov < 0.92, 'PK-KP',
                        r_prov < 0.96, 'PK-BA', 'PK-IS') AS province,
                multiIf(r_port < 0.55, 'KPT', r_port < 0.95, 'PQA', 'GWD') AS port,
                if(port = 'GWD', 'GPA', port) AS authority,
                if(port = 'GWD', 'PK-BA', 'PK-SD') AS port_province,
                multiIf(province = 'PK-SD', 'SD-TRANSPORT', province = 'PK-KP', 'KP-TRANSPORT',
                        province = 'PK-BA', 'BA-TRANSPORT', 'PB-TRANSPORT') AS permit_agency,
                multiIf(province = 'PK-SD', 0.8, province = 'PK-KP', 1.5,
                        province = 'PK-BA', 1.9, 1.0) AS speed,
                multiIf(port = 'PQA', 1.2, port = 'GWD', 0.8, 1.0) AS port_speed,
                1 + (r_cont < 0.25) + (r_cont < 0.08) AS containers,
                if({u(5)} < 0.03, toUInt8(floor({u(9)} * 5)), 255) AS stall_at,
                {u(6)} < 0.4 AS has_rebate,
                {u(7)} < 0.12 AS rebate_rejected,
                {u(8)} < 0.02 AS is_energy,
                toDecimal64(intDiv(toInt64(600000000 * exp({z(11)})), 100), 2) AS declared
            FROM numbers({cases})
        )
    )
    ARRAY JOIN times AS at, range({n}) AS slot
    WHERE {steps}[slot + 1] <= stall_at
      AND if(is_energy, slot >= 20,
             slot < 20
             AND (slot != 2 OR r_exam < 0.25)
             AND (slot < 6 OR slot >= 15 OR (slot - 6) % 3 < containers)
             AND (slot < 15 OR (has_rebate AND stall_at = 255
                                AND (slot < 17 OR (slot = 17) = rebate_rejected))))
)
ARRAY JOIN if(cityHash64(seed, number, slot, 4) % 100 = 0, [0, 1], [0]) AS copy
"""


def _process_cpu_s() -> float:
    """User + system CPU seconds of this process: chdb runs in-process, so this is its work,
    whatever other processes on the machine do (wall-clock times are not, on a shared machine)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(fn: Callable[[], Out]) -> tuple[Out, float, float]:
    """``fn()``, its wall-clock seconds and this process's CPU seconds."""
    wall, cpu = time.perf_counter(), _process_cpu_s()
    out = fn()
    return out, time.perf_counter() - wall, _process_cpu_s() - cpu


def _version_in_memory(client: Client, result: RecomputeResult) -> list[str]:
    """Hold the version's stored columns in ``Memory`` tables (read back almost for free), and
    return the INSERTs that write them again into empty tables of the same kind (``CREATE
    TABLE ... AS`` copies columns, codecs, engine, sort key and settings)."""
    inserts = []
    for table, columns in (
        (stage_table(result.version), STAGE_RECORD_COLUMNS),
        (kpi_table(result.version), KPI_WINDOW_COLUMNS),
    ):
        stored = ", ".join(stored_columns(columns))
        client.command(f"CREATE TABLE {table}_memory ENGINE = Memory AS SELECT {stored} FROM {table}")
        client.command(f"CREATE TABLE {table}_copy AS {table}")
        inserts.append(f"INSERT INTO {table}_copy ({stored}) SELECT {stored} FROM {table}_memory")
    return inserts


def run(opts: BenchOptions) -> list[BenchRow]:
    """Generate the events, then time the ceiling before and after the recompute (the faster
    of the two is the ceiling, so a burst of load during one of them does not flatter the ratio)."""
    wanted = max(opts.events, MIN_EVENTS)
    cases = max(1, int(wanted / EVENTS_PER_CASE))
    missions = load_missions(DEFAULT_MISSIONS_FILE)
    sql = RecomputeSql(missions)
    with tempfile.TemporaryDirectory(prefix="bench-recompute-") as tmp:
        settings = load_settings(data_dir=Path(tmp))
        client = open_client(settings, database="bench_recompute")
        try:
            migrate(client)
            _, generated_s, _ = _timed(
                lambda: client.command(bench_events_sql(opts.seed, BENCH_START_MS, YEAR_MS, cases))
            )
            events = int(client.query("SELECT count() FROM events").result_rows[0][0])
            client.command(
                "CREATE TABLE ceiling_sink ENGINE = Null AS SELECT * FROM ("
                + sql.ceiling("events")
                + ") LIMIT 0"
            )

            def ceiling_run() -> None:
                client.command("INSERT INTO ceiling_sink " + sql.ceiling("events"))

            _, before_s, before_cpu = _timed(ceiling_run)
            result, _, recompute_cpu = _timed(lambda: recompute(client, missions, grace_ms=settings.grace_ms))
            _, after_s, after_cpu = _timed(ceiling_run)
            inserts = _version_in_memory(client, result)
            _, write_s, write_cpu = _timed(lambda: [client.command(insert) for insert in inserts])
        finally:
            client.close()
    ceiling_s, ceiling_cpu = min(before_s, after_s), min(before_cpu, after_cpu)
    ceiling = events / ceiling_s
    cpu_ratio = ceiling_cpu / recompute_cpu if recompute_cpu > 0 else 0.0
    phases = ", ".join(f"{k} {v:.2f} s" for k, v in result.phases.items())
    notes = (
        f"{events:,} events ({cases:,} journeys over a year, generated in {generated_s:.0f} s) -> "
        f"{result.stage_records:,} stage records, {result.kpi_windows:,} KPI windows "
        f"(in {result.kpi_slices} slice{'s' if result.kpi_slices > 1 else ''} of history) "
        f"in {result.seconds:.2f} s "
        f"({phases}); ceiling {before_s:.2f} s before, {after_s:.2f} s after; "
        f"CPU {recompute_cpu:.2f} s vs ceiling {ceiling_cpu:.2f} s (CPU ratio {cpu_ratio:.2f}); chdb"
    )
    stage_s = result.phases.get("stage records", 0.0)
    rows_written = result.stage_records + result.kpi_windows
    write_floor = events / write_s if write_s else 0.0
    return [
        BenchRow(
            "recompute",
            "recompute: records + KPI windows + switch",
            result.events_per_s,
            "ev/s",
            "bare GROUP BY case_id minIf pivot",
            ceiling,
            target=f">= {TARGET_EVENTS_PER_S:,} events/s",
            notes=notes,
            extra={
                "events": events,
                "seconds": result.seconds,
                "ceiling_seconds": ceiling_s,
                "cpu_seconds": recompute_cpu,
                "ceiling_cpu_seconds": ceiling_cpu,
                "cpu_ratio": cpu_ratio,
                **result.phases,
            },
        ),
        BenchRow(
            "recompute",
            "recompute: stage records only",
            events / stage_s if stage_s else 0.0,
            "ev/s",
            "bare GROUP BY case_id minIf pivot",
            ceiling,
            notes="the pivot plus owners, states, durations, SLA flags, written as a version table",
        ),
        BenchRow(
            "recompute",
            "write floor: inserting the version's rows alone",
            write_floor,
            "ev/s",
            "bare GROUP BY case_id minIf pivot",
            ceiling,
            notes=(
                f"{rows_written:,} rows written in {write_s:.2f} s "
                f"(CPU {write_cpu:.2f} s): the recompute writes the same rows, so it cannot run faster "
                f"than {write_floor:,.0f} ev/s here; the target needs the "
                f"whole recompute in {events / TARGET_EVENTS_PER_S:.2f} s"
            ),
            extra={
                "seconds": write_s,
                "cpu_seconds": write_cpu,
                "rows": rows_written,
            },
        ),
    ]
