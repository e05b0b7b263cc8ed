"""Semantic validation of decoded events, beyond what the Avro schema enforces.

Works on *raw* records (timestamps as epoch millis, money as integer paisa) because that is
what the processors decode on their hot path; producers normalise to the same shape first.
Returns the first problem as an :class:`InvalidRecord` naming the field and the reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from schemas import contracts
from schemas.registry import Registry, default_registry

MIN_EVENT_TIME_MS = 946_684_800_000  # 2000-01-01: nothing in these systems predates it
DEFAULT_MAX_FUTURE_SKEW_MS = 10 * 60 * 1000
MAX_CASE_ID_LEN = 128
MAX_STRING_LEN = 1024
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
"""C0 and C1 control characters and DEL: no identifier holds one. A NUL or a newline in a case id
travels into alert labels, tracker links, log lines and CSV exports, where it breaks or forges
them, so identifiers are refused with one; free text (an energy instrument's title) may keep a tab."""
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class InvalidRecord(ValueError):
    """A record that decodes but breaks the contract. ``field`` is the offending field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _check_time(name: str, value: Any, now_ms: int, max_future_skew_ms: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRecord(name, f"must be epoch milliseconds, got {type(value).__name__}")
    if value < MIN_EVENT_TIME_MS:
        raise InvalidRecord(name, f"{value} is before 2000-01-01")
    if value > now_ms + max_future_skew_ms:
        raise InvalidRecord(name, f"{value} is {(value - now_ms) // 1000} s in the future")


def _nonempty(rec: Mapping[str, Any], name: str, max_len: int = MAX_STRING_LEN) -> str:
    value = rec.get(name)
    if not isinstance(value, str) or not value.strip():
        raise InvalidRecord(name, "must be a non-empty string")
    if len(value) > max_len:
        raise InvalidRecord(name, f"longer than {max_len} characters")
    return value


def _identifier(rec: Mapping[str, Any], name: str, max_len: int) -> str:
    """A non-empty string without control characters (see :data:`CONTROL_CHARS`)."""
    value = _nonempty(rec, name, max_len)
    bad = CONTROL_CHARS.search(value)
    if bad is not None:
        raise InvalidRecord(
            name, f"contains control character U+{ord(bad.group()):04X} at position {bad.start()}"
        )
    return value


def _province(rec: Mapping[str, Any], name: str, reg: Registry) -> None:
    value = _nonempty(rec, name)
    if value not in reg.provinces:
        raise InvalidRecord(
            name, f"unknown province {value!r}; expected one of {', '.join(sorted(reg.provinces))}"
        )


def _port(rec: Mapping[str, Any], reg: Registry) -> None:
    value = _nonempty(rec, "port")
    if value not in reg.ports:
        raise InvalidRecord("port", f"unknown port {value!r}; expected one of {', '.join(sorted(reg.ports))}")


def _money(rec: Mapping[str, Any], name: str) -> None:
    value = rec.get(name)
    if value is None:
        raise InvalidRecord(name, "is required")
    if value < 0:
        raise InvalidRecord(name, "must not be negative")


def _customs(rec: Mapping[str, Any], reg: Registry) -> None:
    _port(rec, reg)
    _identifier(rec, "hs_code", 16)
    _money(rec, "declared_value_pkr")
    ids = rec.get("container_ids")
    if not isinstance(ids, list) or not ids:
        raise InvalidRecord("container_ids", "must list at least one container")


def _permits(rec: Mapping[str, Any], reg: Registry) -> None:
    _province(rec, "from_province", reg)
    _province(rec, "to_province", reg)
    _identifier(rec, "vehicle_reg", 32)


def _ports(rec: Mapping[str, Any], reg: Registry) -> None:
    _port(rec, reg)
    _identifier(rec, "terminal", 64)
    _identifier(rec, "container_id", 32)


def _rebates(rec: Mapping[str, Any], reg: Registry) -> None:
    _identifier(rec, "exporter_id", 64)
    _money(rec, "amount_pkr")


def _energy(rec: Mapping[str, Any], reg: Registry) -> None:
    _nonempty(rec, "instrument")
    _identifier(rec, "sector", 64)


FAMILY_CHECKS: dict[str, Callable[[Mapping[str, Any], Registry], None]] = {
    contracts.CUSTOMS: _customs,
    contracts.PERMITS: _permits,
    contracts.PORTS: _ports,
    contracts.REBATES: _rebates,
    contracts.ENERGY: _energy,
}


def validate_event(
    topic: str,
    rec: Mapping[str, Any],
    now_ms: int,
    registry: Registry | None = None,
    max_future_skew_ms: int = DEFAULT_MAX_FUTURE_SKEW_MS,
) -> None:
    """Raise :class:`InvalidRecord` if ``rec`` (raw shape) breaks the contract of ``topic``."""
    reg = registry or default_registry()
    event_id = rec.get("event_id")
    if not isinstance(event_id, str) or not _UUID.match(event_id):
        raise InvalidRecord("event_id", f"must be a UUID, got {event_id!r:.60}")
    _identifier(rec, "case_id", MAX_CASE_ID_LEN)
    agency = _nonempty(rec, "agency", 64)
    if agency not in reg.agencies:
        raise InvalidRecord("agency", f"unknown agency {agency!r}; see schemas/registry.yaml")
    if not reg.agency_may_publish(agency, topic):
        raise InvalidRecord("agency", f"agency {agency!r} does not publish on {topic}")
    _province(rec, "province", reg)
    _check_time("occurred_at", rec.get("occurred_at"), now_ms, max_future_skew_ms)
    _check_time("published_at", rec.get("published_at"), now_ms, max_future_skew_ms)
    check = FAMILY_CHECKS.get(topic)
    if check is None:
        raise InvalidRecord("topic", f"{topic!r} is not an agency event topic")
    check(rec, reg)
