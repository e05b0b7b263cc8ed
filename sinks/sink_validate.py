"""Validation of a whole batch of decoded agency events at once: the common all-valid case in a few
C-level passes per column (set membership, min/max, one regex map) instead of
:func:`schemas.validation.validate_event` per record, which costs the sink about as much as a
third of the decode.

Contract: :func:`batch_valid` returns True only if ``validate_event`` and the sink's key check
would accept *every* record of the batch. It may return False for a batch that is in fact valid
(its checks are stricter: e.g. the UUID must match exactly, without the trailing newline ``$``
lets through, and a record's "now" is the batch's clock, never the later message timestamp);
the sink then validates record by record with ``validate_event``, which decides. So a batch is
never accepted here that the processors would dead-letter.

The rules mirror ``schemas/validation.py``; the registry sets come from the same
:func:`schemas.registry.default_registry`. If that file changes (a digest of it is pinned in
:data:`VALIDATION_SHA256`) the fast path turns itself off until someone re-reads the rules here
and updates the digest (tests/test_sink_validate.py fails meanwhile).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from schemas import contracts, validation
from schemas.registry import Registry, default_registry

log = logging.getLogger(__name__)

VALIDATION_SHA256 = "e3d56e0becc3e12306117a5b1a5d38883a4ebcd2509c17cb1799481245d74468"
"""sha256 of the ``schemas/validation.py`` these rules were checked against."""

_UUID_EXACT = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

Columns = Mapping[str, Sequence[Any]]


@cache
def fast_path_enabled() -> bool:
    """Whether ``schemas/validation.py`` is the file these rules mirror (checked once per process)."""
    digest = hashlib.sha256(Path(validation.__file__).read_bytes()).hexdigest()
    if digest != VALIDATION_SHA256:
        log.warning(
            "schemas/validation.py changed since sinks/sink_validate.py mirrored it; "
            "validating record by record",
            extra={"sha256": digest},
        )
        return False
    return True


# -- column checks (each True only if every value passes) ----------------------------------------
def _texts(values: Iterable[Any], max_len: int) -> bool:
    """Every value is a non-blank string of at most ``max_len`` characters (checked per distinct value)."""
    return all(type(v) is str and len(v) <= max_len and v.strip() for v in set(values))


def _among(values: Iterable[Any], allowed: frozenset[str]) -> bool:
    return allowed.issuperset(values)


def _times(values: Sequence[Any], latest_ms: int) -> bool:
    if not values:
        return True
    return (
        set(map(type, values)) == {int}
        and min(values) >= validation.MIN_EVENT_TIME_MS
        and max(values) <= latest_ms
    )


def _money(values: Sequence[Any]) -> bool:
    if not values:
        return True
    return set(map(type, values)) == {int} and min(values) >= 0


def _lists(values: Iterable[Any]) -> bool:
    return all(type(v) is list and v for v in values)


def _uuids(values: Iterable[Any]) -> bool:
    return all(map(_UUID_EXACT.fullmatch, values))  # TypeError for a non-string: see batch_valid


def _allowed(names: Iterable[str], max_len: int) -> frozenset[str]:
    """The registry names a value may take: only those ``_nonempty`` itself accepts."""
    return frozenset(n for n in names if n.strip() and len(n) <= max_len)


@cache
def _family_check(topic: str) -> Callable[[Columns], bool]:
    """The family rules of ``topic`` (``schemas.validation.FAMILY_CHECKS``) over columns."""
    reg = default_registry()
    ports = _allowed(reg.ports, validation.MAX_STRING_LEN)
    provinces = _allowed(reg.provinces, validation.MAX_STRING_LEN)
    checks: dict[str, Callable[[Columns], bool]] = {
        contracts.CUSTOMS: lambda c: (
            _among(c["port"], ports)
            and _texts(c["hs_code"], 16)
            and _money(c["declared_value_pkr"])
            and _lists(c["container_ids"])
        ),
        contracts.PERMITS: lambda c: (
            _among(c["from_province"], provinces)
            and _among(c["to_province"], provinces)
            and _texts(c["vehicle_reg"], 32)
        ),
        contracts.PORTS: lambda c: (
            _among(c["port"], ports) and _texts(c["terminal"], 64) and _texts(c["container_id"], 32)
        ),
        contracts.REBATES: lambda c: _texts(c["exporter_id"], 64) and _money(c["amount_pkr"]),
        contracts.ENERGY: lambda c: (
            _texts(c["instrument"], validation.MAX_STRING_LEN) and _texts(c["sector"], 64)
        ),
    }
    return checks[topic]


@cache
def _envelope_sets(topic: str) -> tuple[frozenset[str], frozenset[str]]:
    """(agencies that may publish on ``topic``, provinces), as ``validate_event`` accepts them."""
    reg: Registry = default_registry()
    agencies = _allowed((a for a in reg.agencies if reg.agency_may_publish(a, topic)), 64)
    return agencies, _allowed(reg.provinces, validation.MAX_STRING_LEN)


def batch_valid(
    topic: str, columns: Columns, keys: Sequence[bytes | None], now_ms: int, max_future_skew_ms: int
) -> bool:
    """True only if every event (columns by field name, ``keys`` the message keys) is valid."""
    if topic not in contracts.INPUT_TOPICS or not fast_path_enabled():
        return False
    agencies, provinces = _envelope_sets(topic)
    latest_ms = now_ms + max_future_skew_ms
    case_ids = columns["case_id"]
    try:
        return bool(
            _uuids(columns["event_id"])
            and _texts(case_ids, validation.MAX_CASE_ID_LEN)
            and list(keys) == [c.encode() for c in case_ids]
            and _among(columns["agency"], agencies)
            and _among(columns["province"], provinces)
            and _times(columns["occurred_at"], latest_ms)
            and _times(columns["published_at"], latest_ms)
            and _family_check(topic)(columns)
        )
    except TypeError:  # a value of an unexpected type (unhashable, not comparable): not conclusive
        return False
