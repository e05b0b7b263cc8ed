"""Validation of a whole batch of decoded agency events at once: the common all-valid case in a few
C-level passes per column (set membership, min/max, one regex map) instead of
:func:`schemas.validation.validate_event` per record, which costs the sink about as much as a
third of the decode.

Contract: :func:`batch_valid` returns True only if ``validate_event`` and the sink's key check
would accept *every* record of the batch. It may return False for a batch that is in fact valid
(its checks are stricter: e.g. the UUID must match exactly, without the trailing newline ``$``
lets through, and a record's "now" is the batch's clock, never the later message timestamp);
the sink then validates record by record with ``validate_event``, which decides. So a batch is
never accepted here that the processors would dead-letter. :func:`table_valid` is the same
contract over a batch decoded into Arrow columns (:mod:`schemas.columnar_reader`); both read
one list of rules per topic.

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

import pyarrow as pa
import pyarrow.compute as pc

from schemas import contracts, validation
from schemas.columnar_reader import unscaled
from schemas.registry import Registry, default_registry
from sinks.rows import MAX_ABS_PAISA, MONEY_SCALE

log = logging.getLogger(__name__)

VALIDATION_SHA256 = "4df2ab3ea29d8adf48800a5074fdaab470151d952b0d6cea0e925704b9feec43"
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


def _ids(values: Iterable[Any], max_len: int) -> bool:
    """:func:`_texts`, and no value holds a control character (``validation._identifier``)."""
    distinct = set(values)
    return _texts(distinct, max_len) and not any(validation.CONTROL_CHARS.search(v) for v in distinct)


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


Rule = tuple[str, str, Any]
"""(field, check, argument): check ``among`` (argument: the allowed names), ``text`` or ``id`` (a text
without control characters; argument: the maximum length), ``money`` or ``list``: one rule of
``schemas.validation.FAMILY_CHECKS``."""


@cache
def _family_rules(topic: str) -> tuple[Rule, ...]:
    """The family rules of ``topic`` (``schemas.validation.FAMILY_CHECKS``) as data, so the column
    check and the Arrow check below read the same list."""
    reg = default_registry()
    ports = _allowed(reg.ports, validation.MAX_STRING_LEN)
    provinces = _allowed(reg.provinces, validation.MAX_STRING_LEN)
    rules: dict[str, tuple[Rule, ...]] = {
        contracts.CUSTOMS: (
            ("port", "among", ports),
            ("hs_code", "id", 16),
            ("declared_value_pkr", "money", None),
            ("container_ids", "list", None),
        ),
        contracts.PERMITS: (
            ("from_province", "among", provinces),
            ("to_province", "among", provinces),
            ("vehicle_reg", "id", 32),
        ),
        contracts.PORTS: (("port", "among", ports), ("terminal", "id", 64), ("container_id", "id", 32)),
        contracts.REBATES: (("exporter_id", "id", 64), ("amount_pkr", "money", None)),
        contracts.ENERGY: (("instrument", "text", validation.MAX_STRING_LEN), ("sector", "id", 64)),
    }
    return rules[topic]


_COLUMN_CHECKS: dict[str, Callable[[Any, Any], bool]] = {
    "among": _among,
    "text": _texts,
    "id": _ids,
    "money": lambda values, _: _money(values),
    "list": lambda values, _: _lists(values),
}


@cache
def _envelope_sets(topic: str) -> tuple[frozenset[str], frozenset[str]]:
    """(agencies that may publish on ``topic``, provinces), as ``validate_event`` accepts them."""
    reg: Registry = default_registry()
    agencies = _allowed((a for a in reg.agencies if reg.agency_may_publish(a, topic)), 64)
    return agencies, _allowed(reg.provinces, validation.MAX_STRING_LEN)


def _envelope_rules(topic: str) -> tuple[Rule, ...]:
    """The envelope rules of ``validate_event`` (the UUID, the case id, who may publish, times)."""
    agencies, provinces = _envelope_sets(topic)
    return (
        ("event_id", "uuid", None),
        ("case_id", "id", validation.MAX_CASE_ID_LEN),
        ("agency", "among", agencies),
        ("province", "among", provinces),
        ("occurred_at", "time", None),
        ("published_at", "time", None),
    )


def batch_valid(
    topic: str, columns: Columns, keys: Sequence[bytes | None], now_ms: int, max_future_skew_ms: int
) -> bool:
    """True only if every event (columns by field name, ``keys`` the message keys) is valid."""
    if topic not in contracts.INPUT_TOPICS or not fast_path_enabled():
        return False
    latest_ms = now_ms + max_future_skew_ms
    checks: dict[str, Callable[[Any, Any], bool]] = {
        **_COLUMN_CHECKS,
        "uuid": lambda values, _: _uuids(values),
        "time": lambda values, _: _times(values, latest_ms),
    }
    try:
        return bool(
            list(keys) == [c.encode() if type(c) is str else None for c in columns["case_id"]]
            and all(
                checks[check](columns[name], arg)
                for name, check, arg in _envelope_rules(topic) + _family_rules(topic)
            )
        )
    except TypeError:  # a value of an unexpected type (unhashable, not comparable): not conclusive
        return False


# -- the same rules over a batch decoded into Arrow columns (schemas.columnar_reader) --------------
_UUID_ANCHORED = f"^{_UUID_EXACT.pattern}$"  # RE2: $ is the end of the text, never before a newline
# "non-blank" without Python's Unicode whitespace table: a value with an ASCII letter or digit is not
# blank; one without (all punctuation, or another script) takes the record-by-record path
_NOT_BLANK = "[0-9A-Za-z]"
_CONTROL_RE2 = validation.CONTROL_CHARS.pattern  # RE2 reads the same \xNN class


def _all_true(mask: pa.ChunkedArray | pa.Array) -> bool:
    return mask.null_count == 0 and pc.all(mask).as_py() is True


def _arrow_check(column: pa.ChunkedArray, check: str, arg: Any, latest_ms: int) -> bool:
    """Whether every value of ``column`` passes ``check`` (no value may be null)."""
    if column.null_count:
        return False
    if check == "uuid":
        return _all_true(pc.match_substring_regex(column, _UUID_ANCHORED))
    if check in ("text", "id"):
        longest = pc.max(pc.utf8_length(column)).as_py()
        if check == "id" and pc.any(pc.match_substring_regex(column, _CONTROL_RE2)).as_py():
            return False
        return (longest is None or longest <= arg) and _all_true(pc.match_substring_regex(column, _NOT_BLANK))
    if check == "among":
        return frozenset(arg).issuperset(pc.unique(column).to_pylist())
    if check in ("time", "money"):
        values = column.cast(pa.int64()) if check == "time" else unscaled(column, MONEY_SCALE)
        bounds = pc.min_max(values).as_py()
        if bounds["min"] is None:
            return True
        if check == "time":
            return bool(bounds["min"] >= validation.MIN_EVENT_TIME_MS and bounds["max"] <= latest_ms)
        # also within Decimal(18, 2), which the record path checks at conversion (rows.out_of_range)
        return bool(bounds["min"] >= 0 and bounds["max"] <= MAX_ABS_PAISA)
    if check == "list":
        shortest = pc.min(pc.list_value_length(column)).as_py()
        return shortest is None or shortest >= 1
    raise ValueError(f"unknown check {check!r}")


def table_valid(
    topic: str, table: pa.Table, keys: Sequence[bytes | None], now_ms: int, max_future_skew_ms: int
) -> bool:
    """:func:`batch_valid` for a batch decoded into Arrow columns: True only if every event is
    valid and its money fits ``events``' Decimal(18, 2)."""
    if topic not in contracts.INPUT_TOPICS or not fast_path_enabled() or table.num_rows != len(keys):
        return False
    latest_ms = now_ms + max_future_skew_ms
    try:
        case_ids = table.column("case_id").cast(pa.binary())
        if not _all_true(pc.equal(case_ids, pa.array(keys, type=pa.binary()))):
            return False
        return all(
            _arrow_check(table.column(name), check, arg, latest_ms)
            for name, check, arg in _envelope_rules(topic) + _family_rules(topic)
        )
    except (pa.ArrowException, OverflowError, TypeError):  # e.g. an amount beyond int64
        return False
