"""Simulated agency traffic: correlated export journeys, rebate claims and tariff notifications.

Pure and deterministic: :func:`generate` turns a :class:`SimulationConfig` into the events the
agencies would publish, in delivery order, as :class:`SimEvent` ``(topic, raw, deliver_at)``.
The same (seed, start, options) always gives the same events, byte for byte; nothing here
reads the clock or the network (publishing and live pacing live in ``producers.simulate_cli``).

What a run contains (see ``shared/DOMAIN.md`` for the numbers behind the delays):

* **Export shipments** (``EXP-2026-000123``), one case id across four agencies: customs
  FILED → ASSESSED → (EXAMINED) → (HELD) → CLEARED; the transport department of the
  exporter's province REQUESTED → (REJECTED → REQUESTED) → ISSUED; the port authority
  GATE_IN → LOADED → DEPARTED for each container. Hand-offs dominate the elapsed time and
  some provinces and ports are slower, so a realistic share of each SLA is breached.
* **Duty drawback claims** (``DDT-2026-000045``), filed by a share of exporters days after
  their shipment departs: FILED → AUDIT_STARTED → APPROVED → PAID, or REJECTED after audit.
* **Tariff determinations** (``NEPRA-TRF-2026-0007``): NEPRA/OGRA DETERMINED → MOE-POWER
  NOTIFIED → EFFECTIVE, with notification lags of days to weeks.

Faults, each a configurable share: *stalled* cases (the journey stops at some stage forever),
*duplicates* (the same event re-sent later with the same ``event_id`` and identical content),
*out-of-order* deliveries (an event published after a later event of its case, still within
``max_out_of_order_ms`` of its event time), and optionally *invalid* events (a corrupted copy
with its own id that the contract rejects; the processors must dead-letter it).

Records are in the raw shape (epoch-ms ints, money as integer paisa) and pass
:func:`schemas.validation.validate_event`. ``published_at`` is ``occurred_at`` plus a small
publication delay (the live runner overwrites it with the real publish time).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from statistics import NormalDist
from typing import Any, NamedTuple

from schemas import contracts
from schemas.registry import Registry, default_registry

SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
# ``until_ms=NO_CUTOFF``: let every journey run to its end (or its stall), however late.
NO_CUTOFF = 2**62


class SimEvent(NamedTuple):
    """One simulated publication: the topic, the raw record, and when it reaches the broker (epoch ms)."""

    topic: str
    raw: dict[str, Any]
    deliver_at: int


@dataclass(frozen=True)
class Delay:
    """A lognormal delay: ``median_ms`` and the spread ``sigma`` of its logarithm.

    Lognormal because waiting times at agencies are: most cases are handled in a typical time,
    a long tail waits several times longer (the tail is what breaches SLAs).
    """

    median_ms: int
    sigma: float

    def sample(self, rng: random.Random, scale: float = 1.0) -> int:
        return int(self.median_ms * scale * math.exp(rng.gauss(0.0, self.sigma)))


# Steps of each journey. Medians follow DOMAIN.md (exports: customs tens of hours, the
# hand-off to the province a few hours, haulage and the port tens of hours; rebates weeks).
DEFAULT_DELAYS: dict[str, Delay] = {
    "customs.assess": Delay(90 * MINUTE, 0.9),  # FILED → ASSESSED (automated risk assessment, PSW)
    "customs.examine": Delay(5 * HOUR, 0.6),  # ASSESSED → EXAMINED (physical examination)
    "customs.hold": Delay(20 * HOUR, 0.5),  # → HELD (query to the exporter) before release
    "customs.clear": Delay(8 * HOUR, 0.6),  # last customs step → CLEARED
    "permit.request": Delay(40 * MINUTE, 1.0),  # CLEARED → permit REQUESTED (exporter / haulier)
    "permit.issue": Delay(4 * HOUR, 0.75),  # REQUESTED → ISSUED (× province factor)
    "permit.reject": Delay(3 * HOUR, 0.6),  # REQUESTED → REJECTED (× province factor)
    "permit.rerequest": Delay(3 * HOUR, 0.7),  # REJECTED → REQUESTED again
    "port.load": Delay(22 * HOUR, 0.55),  # GATE_IN → LOADED (× port factor)
    "port.depart": Delay(6 * HOUR, 0.5),  # last LOADED → DEPARTED
    "rebate.file": Delay(4 * DAY, 0.7),  # shipment DEPARTED → drawback claim FILED
    "rebate.audit": Delay(5 * DAY, 0.6),  # FILED → AUDIT_STARTED
    "rebate.approve": Delay(9 * DAY, 0.55),  # AUDIT_STARTED → APPROVED
    "rebate.reject": Delay(8 * DAY, 0.6),  # AUDIT_STARTED → REJECTED
    "rebate.pay": Delay(3 * DAY, 0.5),  # APPROVED → PAID
    "energy.notify": Delay(9 * DAY, 0.6),  # DETERMINED → NOTIFIED (federal notification lag)
    "energy.effective": Delay(3 * DAY, 0.7),  # NOTIFIED → EFFECTIVE
}
# Provincial transport departments: relative speed of permit decisions.
DEFAULT_PROVINCE_FACTOR: dict[str, float] = {
    "PK-PB": 1.0,
    "PK-SD": 0.8,
    "PK-KP": 1.5,
    "PK-BA": 1.9,
    "PK-IS": 1.0,
}
# Ports: relative time from gate-in to loading (Port Qasim congested, Gwadar quiet).
DEFAULT_PORT_FACTOR: dict[str, float] = {"KPT": 1.0, "PQA": 1.2, "GWD": 0.8}
# Road haulage from the exporter's province to the coast (median); Gwadar adds ``GWADAR_EXTRA``.
DEFAULT_HAULAGE: dict[str, Delay] = {
    "PK-PB": Delay(20 * HOUR, 0.35),
    "PK-SD": Delay(4 * HOUR, 0.5),
    "PK-KP": Delay(28 * HOUR, 0.35),
    "PK-BA": Delay(14 * HOUR, 0.4),
    "PK-IS": Delay(24 * HOUR, 0.35),
}
GWADAR_EXTRA_MS = 8 * HOUR
DEFAULT_PROVINCE_MIX: tuple[tuple[str, float], ...] = (
    ("PK-PB", 0.55),
    ("PK-SD", 0.28),
    ("PK-KP", 0.09),
    ("PK-BA", 0.04),
    ("PK-IS", 0.04),
)
DEFAULT_PORT_MIX: tuple[tuple[str, float], ...] = (("KPT", 0.55), ("PQA", 0.40), ("GWD", 0.05))
# Where each journey can stop for good when a case is chosen to stall (the last status reached).
EXPORT_STALL_POINTS = ("FILED", "ASSESSED", "CLEARED", "REQUESTED", "GATE_IN")
REBATE_STALL_POINTS = ("FILED", "AUDIT_STARTED", "APPROVED")
ENERGY_STALL_POINTS = ("DETERMINED", "NOTIFIED")

_HS_CODES: dict[str, tuple[str, ...]] = {
    "PK-PB": ("5205.1200", "6302.2100", "6203.4200", "6110.2000", "9018.9090", "9506.6200", "1006.3010"),
    "PK-SD": ("6302.1000", "6109.1000", "0306.1700", "1006.3090", "5208.1200"),
    "PK-KP": ("2515.1200", "4407.1100", "6302.9100"),
    "PK-BA": ("2515.1200", "0805.1000", "0810.9000"),
    "PK-IS": ("8517.6200", "6302.2100", "9018.9090"),
}
_PLATE_PREFIXES: dict[str, tuple[str, ...]] = {
    "PK-PB": ("FDA", "LES", "LEC", "MNA", "GAA", "SKT"),
    "PK-SD": ("JU", "TLA", "KHI", "HDA"),
    "PK-KP": ("PRA", "PRB", "MRD"),
    "PK-BA": ("QAA", "QTA"),
    "PK-IS": ("ICT", "IDA"),
}
_TERMINALS: dict[str, tuple[str, ...]] = {
    "KPT": ("KICT", "PICT", "SAPT"),
    "PQA": ("QICT", "PIBT"),
    "GWD": ("GIT",),
}
_COLLECTORATES = {"KPT": "KPPE", "PQA": "KPQE", "GWD": "GWPE"}
_CONTAINER_OWNERS = ("MSCU", "MAEU", "CMAU", "HLXU", "CSNU", "ONEU", "EGHU", "TGHU")
_VESSELS = (
    "MSC AMELIA",
    "MAERSK KENSINGTON",
    "CMA CGM TAGE",
    "COSCO PAKISTAN",
    "ONE HARMONY",
    "HAPAG BERLIN EXPRESS",
    "EVER GOLDEN",
    "YM WELLNESS",
    "KOTA LAGU",
    "X-PRESS ANTARES",
)


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that determines a simulated run; equal configs give identical events.

    ``cases`` journeys (export shipments and tariff determinations; drawback claims follow a
    share of the shipments on top) start at sorted uniform times in ``[start_ms, start_ms +
    span_ms)``. With ``cases=None`` the run is endless at ``case_rate_per_h`` (live mode).
    Events at or after ``until_ms`` are left out (default: ``start_ms + span_ms`` for a finite
    run, no cut for an endless one; :data:`NO_CUTOFF` lets every journey finish).
    """

    start_ms: int
    seed: int = 7
    cases: int | None = 1000
    span_ms: int = 7 * DAY
    case_rate_per_h: float | None = None
    until_ms: int | None = None
    stall_share: float = 0.03
    duplicate_share: float = 0.01
    out_of_order_share: float = 0.02
    invalid_share: float = 0.0
    max_out_of_order_ms: int = HOUR
    rebate_share: float = 0.4  # shipments whose exporter files a drawback claim
    energy_share: float = 0.02  # journeys that are tariff determinations instead of shipments
    examined_share: float = 0.25
    held_share: float = 0.04
    permit_reject_share: float = 0.08
    rebate_reject_share: float = 0.12
    multi_container_shares: tuple[float, float] = (0.17, 0.08)  # 2 and 3 containers per shipment
    delay_scale: float = 1.0  # multiply every delay (e.g. 0.01 to compress a demo)
    first_serial: int = 1  # of each case id kind (EXP-2026-000001): a later run continues past earlier ones
    delays: Mapping[str, Delay] = field(default_factory=lambda: dict(DEFAULT_DELAYS))
    province_factor: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_PROVINCE_FACTOR))
    port_factor: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_PORT_FACTOR))
    haulage: Mapping[str, Delay] = field(default_factory=lambda: dict(DEFAULT_HAULAGE))
    province_mix: Sequence[tuple[str, float]] = DEFAULT_PROVINCE_MIX
    port_mix: Sequence[tuple[str, float]] = DEFAULT_PORT_MIX
    exporters: int = 400  # size of the exporter population (a few large ones dominate)

    def __post_init__(self) -> None:
        for name in (
            "stall_share",
            "duplicate_share",
            "out_of_order_share",
            "invalid_share",
            "rebate_share",
            "energy_share",
            "examined_share",
            "held_share",
            "permit_reject_share",
            "rebate_reject_share",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"SimulationConfig.{name}: {value} is not a share between 0 and 1")
        if self.cases is None:
            if not self.case_rate_per_h or self.case_rate_per_h <= 0:
                raise ValueError(
                    "SimulationConfig.case_rate_per_h: an endless run (cases=None) needs a rate > 0"
                )
        elif self.cases < 0:
            raise ValueError(f"SimulationConfig.cases: {self.cases} must not be negative")
        if self.span_ms <= 0:
            raise ValueError(f"SimulationConfig.span_ms: {self.span_ms} must be positive")
        if self.delay_scale <= 0:
            raise ValueError(f"SimulationConfig.delay_scale: {self.delay_scale} must be positive")
        if self.exporters < 1:
            raise ValueError("SimulationConfig.exporters: need at least one exporter")
        missing = set(DEFAULT_DELAYS) - set(self.delays)
        if missing:
            raise ValueError(f"SimulationConfig.delays: missing steps {', '.join(sorted(missing))}")

    @property
    def end_ms(self) -> int | None:
        """Events with ``occurred_at >= end_ms`` are left out (None: no cut)."""
        if self.until_ms is not None:
            return self.until_ms
        return None if self.cases is None else self.start_ms + self.span_ms


# -- small deterministic helpers ---------------------------------------------------------------

_UUID_CLEAR = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_UUID_SET = (0x4000 << 64) | (0x8000 << 48)


def uuid4_from(bits: int) -> str:
    """``str(uuid.UUID(int=bits, version=4))``, about three times faster (this is per event)."""
    h = f"{(bits & _UUID_CLEAR) | _UUID_SET:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def iso6346_check_digit(code: str) -> int:
    """Check digit of a container number's first 10 characters (owner, category, serial)."""
    total = 0
    for i, ch in enumerate(code):
        if ch.isdigit():
            value = int(ch)
        else:
            value = 10 + ord(ch) - ord("A")
            value += (value - 1) // 10  # letter values skip multiples of 11
        total += value << i
    return total % 11 % 10


def _cum(mix: Sequence[tuple[str, float]]) -> tuple[list[str], list[float]]:
    names = [name for name, _ in mix]
    return names, list(itertools.accumulate(w for _, w in mix))


_TABLE_SIZE = 2048
_STANDARD_NORMAL = NormalDist()
_Z = [_STANDARD_NORMAL.inv_cdf((k + 0.5) / _TABLE_SIZE) for k in range(_TABLE_SIZE)]


def _quantile_table(delay: Delay, scale: float) -> list[float]:
    """Inverse CDF of ``delay`` at ``_TABLE_SIZE`` points (plus a sentinel), for :func:`_draw`."""
    base = delay.median_ms * scale
    table = [base * math.exp(delay.sigma * z) for z in _Z]
    return table + [table[-1]]


def _draw(table: list[float], u: float) -> float:
    """A lognormal draw from uniform ``u``: linear interpolation in the quantile table."""
    x = u * _TABLE_SIZE
    k = int(x)
    lo = table[k]
    return lo + (table[k + 1] - lo) * (x - k)


@dataclass(frozen=True)
class _Exporter:
    ntn: str
    province: str


# A pending publication: (deliver_at, seq, topic, raw); seq keeps ties in a deterministic order.
_Pending = tuple[int, int, str, dict[str, Any]]


class _Journeys:
    """Builds the events of one case at a time; all randomness comes from one seeded stream.

    Hot path (the bench generates a million events): delays come from precomputed inverse-CDF
    tables instead of ``random.gauss``, and each record is one dict literal.
    """

    def __init__(self, config: SimulationConfig, registry: Registry) -> None:
        self.cfg = config
        self.reg = registry
        # Seeded with the start time too: two runs of one seed at different times must not reuse
        # event ids (downstream de-duplicates by event_id).
        self.rng = random.Random(f"delivery-backbone|{config.seed}|{config.start_ms}")
        self.random = self.rng.random
        self.scale = config.delay_scale
        self.tables = {step: _quantile_table(d, config.delay_scale) for step, d in config.delays.items()}
        self.haulage_tables = {p: _quantile_table(d, config.delay_scale) for p, d in config.haulage.items()}
        self.serial = {kind: itertools.count(config.first_serial) for kind in ("EXP", "DDT", "TRF")}
        self.permit_agency = {p: self._transport_department(p) for p in registry.provinces}
        self.province_names, self.province_cum = _cum(config.province_mix)
        self.port_names, self.port_cum = _cum(config.port_mix)
        for port in self.port_names:
            if port not in registry.ports:
                raise ValueError(f"SimulationConfig.port_mix: unknown port {port!r}")
        for province in self.province_names:
            if province not in registry.provinces:
                raise ValueError(f"SimulationConfig.province_mix: unknown province {province!r}")
        self.exporters, self.exporter_cum = self._exporter_population(config.exporters)

    def _transport_department(self, province: str) -> str:
        for code, entry in self.reg.agencies.items():
            if entry.lane == "permits" and entry.province == province:
                return code
        return "PB-TRANSPORT"  # the missions file's fallback for provinces without one

    def _exporter_population(self, n: int) -> tuple[list[_Exporter], list[float]]:
        rng = self.rng
        people: list[_Exporter] = []
        for _ in range(n):
            province = rng.choices(self.province_names, cum_weights=self.province_cum)[0]
            ntn = rng.randrange(1_000_000, 9_999_999)
            people.append(_Exporter(f"{ntn}-{ntn % 9}", province))
        # A few large exporters file most shipments (Zipf-like weights).
        return people, list(itertools.accumulate(1.0 / (i + 1) ** 0.8 for i in range(n)))

    # -- primitives ------------------------------------------------------------------------
    def delay(self, step: str, factor: float = 1.0) -> int:
        return max(1, int(_draw(self.tables[step], self.random()) * factor))

    def publication_delay(self) -> int:
        """Source system → broker: 0.2 s plus a skewed 0–6 s (mean 1.7 s)."""
        rand = self.random
        return 200 + int(rand() * rand() * 6000)

    def event_id(self) -> str:
        return uuid4_from(self.rng.getrandbits(128))

    def _event_ids(self) -> Any:
        """A bound, call-cheap ``event_id`` for the per-event closures."""
        bits = self.rng.getrandbits
        return lambda: uuid4_from(bits(128))

    # -- journeys --------------------------------------------------------------------------
    def export_case(
        self, t0: int, out: list[tuple[str, dict[str, Any]]]
    ) -> tuple[int, _Exporter, int] | None:
        """Append one shipment's events; returns (departed_at, exporter, declared paisa) if it sailed."""
        cfg, rng, rand = self.cfg, self.rng, self.random
        uid, pub, append = self._event_ids(), self.publication_delay, out.append
        exporter = self.exporters[bisect.bisect(self.exporter_cum, rand() * self.exporter_cum[-1])]
        province = exporter.province
        port = self.port_names[bisect.bisect(self.port_cum, rand() * self.port_cum[-1])]
        port_entry = self.reg.ports[port]
        filed = datetime.fromtimestamp(t0 / 1000, tz=UTC)
        case_id = f"EXP-{filed.year}-{next(self.serial['EXP']):06d}"
        stall = (
            EXPORT_STALL_POINTS[int(rand() * len(EXPORT_STALL_POINTS))] if rand() < cfg.stall_share else None
        )
        r = rand()
        two, three = cfg.multi_container_shares
        n_containers = 3 if r < three else 2 if r < two + three else 1
        owner = _CONTAINER_OWNERS[int(rand() * len(_CONTAINER_OWNERS))]
        containers = []
        for _ in range(n_containers):
            code = f"{owner}{int(rand() * 1_000_000):06d}"
            containers.append(f"{code}{iso6346_check_digit(code)}")
        declared = int(600_000_000 * math.exp(rng.gauss(0.0, 1.0)))  # paisa; median PKR 6 million
        codes = _HS_CODES.get(province, _HS_CODES["PK-PB"])
        hs_code = codes[int(rand() * len(codes))]
        gd_number = (
            None
            if rand() < 0.1
            else f"{_COLLECTORATES.get(port, 'KPPE')}-SB-{int(rand() * 1_000_000):06d}-{filed:%d-%m-%Y}"
        )
        customs_topic = contracts.CUSTOMS

        def customs(status: str, at: int) -> None:
            append(
                (
                    customs_topic,
                    {
                        "event_id": uid(),
                        "case_id": case_id,
                        "agency": "FBR-CUSTOMS",
                        "province": province,
                        "status": status,
                        "occurred_at": at,
                        "published_at": at + pub(),
                        "port": port,
                        "hs_code": hs_code,
                        "declared_value_pkr": declared,
                        "container_ids": list(containers),
                        "exporter_id": exporter.ntn,
                        "gd_number": gd_number,
                    },
                )
            )

        t = t0
        customs("FILED", t)
        if stall == "FILED":
            return None
        t += self.delay("customs.assess")
        customs("ASSESSED", t)
        if stall == "ASSESSED":
            return None
        if rand() < cfg.examined_share:
            t += self.delay("customs.examine")
            customs("EXAMINED", t)
        if rand() < cfg.held_share:
            t += self.delay("customs.hold")
            customs("HELD", t)
        t += self.delay("customs.clear")
        customs("CLEARED", t)
        if stall == "CLEARED":
            return None

        permit_agency = self.permit_agency.get(province, "PB-TRANSPORT")
        to_province = port_entry.province
        speed = cfg.province_factor.get(province, 1.0)
        plates = _PLATE_PREFIXES.get(province, ("LES",))
        plate = f"{plates[int(rand() * len(plates))]}-{100 + int(rand() * 9900)}"
        permit_topic = contracts.PERMITS

        def permit(status: str, at: int) -> None:
            append(
                (
                    permit_topic,
                    {
                        "event_id": uid(),
                        "case_id": case_id,
                        "agency": permit_agency,
                        "province": province,
                        "status": status,
                        "occurred_at": at,
                        "published_at": at + pub(),
                        "from_province": province,
                        "to_province": to_province,
                        "vehicle_reg": plate,
                    },
                )
            )

        t += self.delay("permit.request")
        permit("REQUESTED", t)
        if stall == "REQUESTED":
            return None
        if rand() < cfg.permit_reject_share:
            t += self.delay("permit.reject", speed)
            permit("REJECTED", t)
            t += self.delay("permit.rerequest")
            permit("REQUESTED", t)
        t += self.delay("permit.issue", speed)
        permit("ISSUED", t)

        haulage = self.haulage_tables.get(province) or self.haulage_tables["PK-PB"]
        t += max(1, int(_draw(haulage, rand())))
        if port == "GWD":
            t += int(GWADAR_EXTRA_MS * self.scale)
        terminals = _TERMINALS.get(port, ("T1",))
        terminal = terminals[int(rand() * len(terminals))]
        authority = port_entry.authority
        port_province = port_entry.province
        vessel = _VESSELS[int(rand() * len(_VESSELS))]
        ports_topic = contracts.PORTS

        def move(status: str, at: int, container: str) -> None:
            append(
                (
                    ports_topic,
                    {
                        "event_id": uid(),
                        "case_id": case_id,
                        "agency": authority,
                        "province": port_province,
                        "status": status,
                        "occurred_at": at,
                        "published_at": at + pub(),
                        "port": port,
                        "terminal": terminal,
                        "container_id": container,
                        "vessel": None if status == "GATE_IN" else vessel,
                    },
                )
            )

        gate_in = [t]
        for _ in containers[1:]:
            gate_in.append(gate_in[-1] + 5 * MINUTE + int(rand() * 55 * MINUTE))
        for container, at in zip(containers, gate_in, strict=True):
            move("GATE_IN", at, container)
        if stall == "GATE_IN":
            return None
        loaded = [t + self.delay("port.load", cfg.port_factor.get(port, 1.0))]
        for i in range(1, n_containers):
            loaded.append(max(loaded[-1] + 3 * MINUTE + int(rand() * 17 * MINUTE), gate_in[i] + 10 * MINUTE))
        for container, at in zip(containers, loaded, strict=True):
            move("LOADED", at, container)
        departed = loaded[-1] + self.delay("port.depart")
        for i, container in enumerate(containers):
            move("DEPARTED", departed + i * SECOND, container)
        return departed, exporter, declared

    def rebate_case(
        self, t0: int, exporter: _Exporter, declared: int, out: list[tuple[str, dict[str, Any]]]
    ) -> None:
        cfg, rand = self.cfg, self.random
        uid, pub, append = self._event_ids(), self.publication_delay, out.append
        year = datetime.fromtimestamp(t0 / 1000, tz=UTC).year
        case_id = f"DDT-{year}-{next(self.serial['DDT']):06d}"
        amount = declared * (200 + int(rand() * 600)) // 10_000  # 2–8 % drawback rate, exact paisa
        stall = (
            REBATE_STALL_POINTS[int(rand() * len(REBATE_STALL_POINTS))] if rand() < cfg.stall_share else None
        )
        province, exporter_id, topic = exporter.province, exporter.ntn, contracts.REBATES

        def claim(status: str, at: int) -> None:
            append(
                (
                    topic,
                    {
                        "event_id": uid(),
                        "case_id": case_id,
                        "agency": "FBR-DRAWBACK",
                        "province": province,
                        "status": status,
                        "occurred_at": at,
                        "published_at": at + pub(),
                        "exporter_id": exporter_id,
                        "amount_pkr": amount,
                    },
                )
            )

        t = t0
        claim("FILED", t)
        if stall == "FILED":
            return
        t += self.delay("rebate.audit")
        claim("AUDIT_STARTED", t)
        if stall == "AUDIT_STARTED":
            return
        if rand() < cfg.rebate_reject_share:
            claim("REJECTED", t + self.delay("rebate.reject"))
            return
        t += self.delay("rebate.approve")
        claim("APPROVED", t)
        if stall == "APPROVED":
            return
        claim("PAID", t + self.delay("rebate.pay"))

    def energy_case(self, t0: int, out: list[tuple[str, dict[str, Any]]]) -> None:
        cfg, rand = self.cfg, self.random
        uid, pub, append = self._event_ids(), self.publication_delay, out.append
        year = datetime.fromtimestamp(t0 / 1000, tz=UTC).year
        n = next(self.serial["TRF"])
        regulator = "NEPRA" if rand() < 0.7 else "OGRA"
        sector = "power" if regulator == "NEPRA" else ("gas", "petroleum")[int(rand() * 2)]
        case_id = f"{regulator}-TRF-{year}-{n:04d}"
        determination = f"{regulator}/TRF-{100 + int(rand() * 900)}/{year}"
        sro = f"SRO {100 + int(rand() * 1900)}(I)/{year}"
        stall = (
            ENERGY_STALL_POINTS[int(rand() * len(ENERGY_STALL_POINTS))] if rand() < cfg.stall_share else None
        )
        topic = contracts.ENERGY

        def notice(status: str, at: int, agency: str, instrument: str) -> None:
            append(
                (
                    topic,
                    {
                        "event_id": uid(),
                        "case_id": case_id,
                        "agency": agency,
                        "province": "PK-IS",
                        "status": status,
                        "occurred_at": at,
                        "published_at": at + pub(),
                        "regulator": regulator,
                        "instrument": instrument,
                        "sector": sector,
                    },
                )
            )

        t = t0
        notice("DETERMINED", t, regulator, determination)
        if stall == "DETERMINED":
            return
        t += self.delay("energy.notify")
        notice("NOTIFIED", t, "MOE-POWER", sro)
        if stall == "NOTIFIED":
            return
        notice("EFFECTIVE", t + self.delay("energy.effective"), "MOE-POWER", sro)


# Corruptions for invalid events: each breaks the contract in one field and stays Avro-encodable.
def _corrupt(topic: str, rec: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    bad = dict(rec)
    kind = rng.randrange(6)
    if kind == 0:
        bad["agency"] = bad["agency"] + "-X"  # unknown agency
    elif kind == 1:
        bad["province"] = "PK-XX"  # unknown province
    elif kind == 2:
        bad["event_id"] = "evt-" + bad["event_id"][:8]  # not a UUID
    elif kind == 3:
        bad["case_id"] = " "  # blank case id
    elif kind == 4:
        bad["occurred_at"] = 86_400_000  # 1970: before any system of record
    else:
        wrong = {contracts.ENERGY: "FBR-CUSTOMS"}.get(topic, "NEPRA")
        bad["agency"] = wrong  # a real agency that does not publish on this topic
    return bad


def _case_starts(config: SimulationConfig, rng: random.Random) -> Iterator[int]:
    """Case start times in increasing order: sorted uniforms over the span, or a Poisson process."""
    start = config.start_ms
    if config.cases is None:
        assert config.case_rate_per_h is not None
        mean_gap = HOUR / config.case_rate_per_h
        t = float(start)
        while True:
            yield int(t)
            t += rng.expovariate(1.0 / mean_gap)
    else:
        # Sequential generation of sorted uniforms (no list of N floats needed).
        u = 0.0
        n = config.cases
        for i in range(n):
            u += (1.0 - u) * (1.0 - rng.random() ** (1.0 / (n - i)))
            yield start + int(u * config.span_ms)


class _DeliveryQueue:
    """Decides when each event of a case reaches the broker (faults included) and orders them.

    Out-of-order is a property of a case: one event published after the next event of its
    case. Only pairs close enough in event time qualify (the late one stays within
    ``max_out_of_order_ms`` of its own time); a case chosen without such a pair passes the
    fault on to the next case that has one, so the configured share is what a run shows.
    """

    def __init__(self, journeys: _Journeys, end: int | None) -> None:
        self.journeys = journeys
        self.cfg = journeys.cfg
        # Faults draw from their own stream: the journeys of a run are the same with or without them.
        self.rng = random.Random(f"faults|{self.cfg.seed}|{self.cfg.start_ms}")
        self.end = end
        self.heap: list[_Pending] = []
        self.seq = itertools.count()
        self.out_of_order_owed = 0

    def add_case(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        cfg, rng, end = self.cfg, self.rng, self.end
        events.sort(key=lambda e: e[1]["occurred_at"])
        # An agency system publishes a case's events in the order they happened; out-of-order
        # delivery is only the deliberate fault below, so the configured share is what a run shows.
        previous = -1
        for _, rec in events:
            if rec["published_at"] <= previous:
                rec["published_at"] = previous + 1
            previous = rec["published_at"]
        if cfg.out_of_order_share > 0:
            wanted = rng.random() < cfg.out_of_order_share
            if wanted or self.out_of_order_owed:
                done = self._make_out_of_order(events)
                if wanted and not done:
                    self.out_of_order_owed += 1
                elif not wanted and done:
                    self.out_of_order_owed -= 1
        heap, seq, push = self.heap, self.seq, heapq.heappush
        for topic, rec in events:
            if end is not None and rec["occurred_at"] >= end:
                continue
            d = rec["published_at"]
            push(heap, (d, next(seq), topic, rec))
            if cfg.duplicate_share and rng.random() < cfg.duplicate_share:
                push(heap, (d + rng.randrange(SECOND, 10 * MINUTE), next(seq), topic, dict(rec)))
            if cfg.invalid_share and rng.random() < cfg.invalid_share:
                bad = _corrupt(topic, rec, rng)
                if bad["event_id"] == rec["event_id"]:
                    bad["event_id"] = uuid4_from(rng.getrandbits(128))
                push(heap, (d + rng.randrange(0, MINUTE), next(seq), topic, bad))

    def _make_out_of_order(self, events: list[tuple[str, dict[str, Any]]]) -> bool:
        limit, end = self.cfg.max_out_of_order_ms, self.end
        eligible = [
            i
            for i in range(len(events) - 1)
            if events[i + 1][1]["published_at"] + 2 < events[i][1]["occurred_at"] + limit
            and (end is None or events[i + 1][1]["occurred_at"] < end)
        ]
        if not eligible:
            return False
        i = self.rng.choice(eligible)
        early, late = events[i][1], events[i + 1][1]
        early["published_at"] = self.rng.randrange(late["published_at"] + 1, early["occurred_at"] + limit)
        return True

    def due_before(self, t: int | None) -> Iterator[SimEvent]:
        """Pop every queued event delivered before ``t`` (everything when ``t`` is None)."""
        heap, pop = self.heap, heapq.heappop
        while heap and (t is None or heap[0][0] < t):
            d, _, topic, raw = pop(heap)
            yield SimEvent(topic, raw, d)


def generate(config: SimulationConfig, registry: Registry | None = None) -> Iterator[SimEvent]:
    """Yield the run's events in delivery order (ties in a fixed order).

    Each case's events are built when the case starts and held in a heap until every
    earlier-delivered event has gone out; a case cannot deliver before it starts, so an event
    is yielded once its delivery time is below the next case's start.
    """
    journeys = _Journeys(config, registry or default_registry())
    rng = journeys.rng
    end = config.end_ms
    queue = _DeliveryQueue(journeys, end)
    for t0 in _case_starts(config, random.Random(f"starts|{config.seed}|{config.start_ms}")):
        if end is not None and t0 >= end:
            break
        yield from queue.due_before(t0)
        case_events: list[tuple[str, dict[str, Any]]] = []
        if rng.random() < config.energy_share:
            journeys.energy_case(t0, case_events)
            queue.add_case(case_events)
            continue
        sailed = journeys.export_case(t0, case_events)
        queue.add_case(case_events)
        if sailed is not None and rng.random() < config.rebate_share:
            departed, exporter, declared = sailed
            claim_events: list[tuple[str, dict[str, Any]]] = []
            journeys.rebate_case(departed + journeys.delay("rebate.file"), exporter, declared, claim_events)
            queue.add_case(claim_events)
    yield from queue.due_before(None)


def mean_events_per_case(
    config: SimulationConfig, within_ms: int | None = None, sample_cases: int = 1000
) -> float:
    """Average events a journey publishes (claims included), or only in its first ``within_ms``.

    Turns a target of events/s into journeys/h. A live run whose journeys started ``warmup``
    ago emits ``rate(t) = journeys/h × events_within(age)``: calibrating on the warm-up gives
    the requested rate at the start of the live stream (it then creeps up as journeys mature).
    """
    sample = SimulationConfig(
        **{
            **config.__dict__,
            "cases": sample_cases,
            "case_rate_per_h": None,
            "span_ms": 1,  # every sampled journey starts at once
            "until_ms": NO_CUTOFF if within_ms is None else config.start_ms + within_ms,
        }
    )
    count = sum(1 for _ in generate(sample))
    return max(count, 1) / max(1, sample_cases)
