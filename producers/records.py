"""Turn what an agency hands us into a raw record its topic's contract accepts, or say why not.

Agencies give records in either shape (see :mod:`schemas.codec`):

* **raw** – timestamps as epoch-millis ``int``, money as integer paisa ``int``;
* **rich** – timestamps as timezone-aware ``datetime`` or ISO-8601 strings, money as
  ``Decimal`` or a decimal string in PKR (``"1500.50"``).

:func:`prepare` normalises to raw, fills ``published_at`` when absent, then checks the record
against the Avro schema (required fields, types, enum symbols, no unknown fields) and the
semantic contract (:func:`schemas.validation.validate_event`). The first problem is raised as
an :class:`~schemas.validation.InvalidRecord` naming the field; nothing invalid is ever encoded.
Floats are refused for money: an amount is exact or it is rejected.

The per-record work is a handful of dict lookups and pre-built type checks (one closure per
field, compiled once per schema version), because this runs on the producer's hot path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from schemas import contracts
from schemas.codec import datetime_to_ms, decimal_to_paisa
from schemas.contracts import SchemaVersion
from schemas.registry import Registry
from schemas.validation import DEFAULT_MAX_FUTURE_SKEW_MS, InvalidRecord, validate_event

# A check returns None when the value fits the Avro type, else a short reason.
TypeCheck = Callable[[Any], "str | None"]

_INT_RANGE = (-(2**31), 2**31 - 1)
_LONG_RANGE = (-(2**63), 2**63 - 1)
_MISSING = object()
_TYPE_MISMATCH = "expected "
"""How every check's reason starts when the value is of the wrong type altogether."""


@dataclass(frozen=True)
class RecordPlan:
    """What :func:`prepare` needs to know about one schema version, computed once."""

    version: SchemaVersion
    field_names: frozenset[str]
    required: tuple[str, ...]  # fields without a default
    defaults: tuple[tuple[str, Any], ...]  # optional fields and their defaults
    timestamp_fields: tuple[str, ...]
    money_fields: tuple[tuple[str, int], ...]  # (name, max abs paisa from the decimal precision)
    checks: tuple[tuple[str, TypeCheck], ...]  # type checks for the non-money fields


@cache
def plan_for(topic: str) -> RecordPlan:
    """The :class:`RecordPlan` of ``topic``'s current schema; ``KeyError`` for an unknown topic."""
    return build_plan(contracts.current(topic))


def build_plan(sv: SchemaVersion) -> RecordPlan:
    required: list[str] = []
    defaults: list[tuple[str, Any]] = []
    timestamps: list[str] = []
    money: list[tuple[str, int]] = []
    checks: list[tuple[str, TypeCheck]] = []
    for f in sv.schema["fields"]:
        name, avro_type = f["name"], f["type"]
        if "default" in f:
            defaults.append((name, f["default"]))
        else:
            required.append(name)
        logical = _logical_types(avro_type)
        if "timestamp-millis" in logical:
            timestamps.append(name)
        if "decimal" in logical:
            money.append((name, 10 ** _decimal_precision(avro_type)))
            continue
        checks.append((name, _compile(avro_type, name)))
    return RecordPlan(
        version=sv,
        field_names=frozenset(sv.field_names),
        required=tuple(required),
        defaults=tuple(defaults),
        timestamp_fields=tuple(timestamps),
        money_fields=tuple(money),
        checks=tuple(checks),
    )


def prepare(
    topic: str,
    record: Mapping[str, Any],
    now_ms: int,
    registry: Registry | None = None,
    max_future_skew_ms: int = DEFAULT_MAX_FUTURE_SKEW_MS,
) -> dict[str, Any]:
    """Return ``record`` as a new raw dict valid for ``topic``, or raise :class:`InvalidRecord`."""
    if topic not in contracts.INPUT_TOPICS:
        known = ", ".join(contracts.INPUT_TOPICS)
        raise InvalidRecord("topic", f"{topic!r} is not an agency topic; agency topics: {known}")
    plan = plan_for(topic)
    if not isinstance(record, Mapping):
        raise InvalidRecord("record", f"must be an object with named fields, got {type(record).__name__}")
    raw = dict(record)
    if not plan.field_names.issuperset(raw):
        name = sorted(raw.keys() - plan.field_names)[0]
        raise InvalidRecord(name, f"is not a field of {plan.version.record_name} v{plan.version.version}")
    if raw.get("published_at") is None:
        raw["published_at"] = now_ms
    for name in plan.required:
        if raw.get(name, None) is None:
            raise InvalidRecord(name, "missing required field")
    for name, default in plan.defaults:
        if name not in raw:
            raw[name] = default
    for name in plan.timestamp_fields:
        value = raw[name]
        if value is not None and type(value) is not int:
            raw[name] = _field_value(name, datetime_to_ms, value)
    for name, limit in plan.money_fields:
        value = raw[name]
        if value is None:
            continue
        if type(value) is not int:
            value = raw[name] = _field_value(name, decimal_to_paisa, value)
        if not -limit < value < limit:
            raise InvalidRecord(name, f"{value} paisa does not fit the contract's decimal precision")
    for name, check in plan.checks:
        reason = check(raw[name])
        if reason is not None:
            raise InvalidRecord(name, reason)
    validate_event(topic, raw, now_ms, registry, max_future_skew_ms)
    return raw


def _field_value(name: str, convert: Callable[[Any, str], int], value: Any) -> int:
    try:
        return convert(value, name)
    except ValueError as exc:
        raise InvalidRecord(name, str(exc).removeprefix(f"{name}: ")) from None


# -- schema → compiled type checks ---------------------------------------------------------


def _logical_types(avro_type: Any) -> set[str]:
    members = avro_type if isinstance(avro_type, list) else [avro_type]
    return {m["logicalType"] for m in members if isinstance(m, dict) and "logicalType" in m}


def _decimal_precision(avro_type: Any) -> int:
    members = avro_type if isinstance(avro_type, list) else [avro_type]
    return int(
        next(m["precision"] for m in members if isinstance(m, dict) and m.get("logicalType") == "decimal")
    )


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'…' if len(text) > 40 else ''}"


def _check_string(v: Any) -> str | None:
    if type(v) is not str:
        return f"expected a string, got {_describe(v)}"
    if not v.isascii():
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            return "string is not valid Unicode (lone surrogate)"
    return None


def _compile(avro_type: Any, name: str) -> TypeCheck:
    """A closure that checks a value against ``avro_type`` (named types are inline in our schemas)."""
    if isinstance(avro_type, list):
        branches = [_compile(t, name) for t in avro_type]
        labels = " or ".join(_label(t) for t in avro_type)

        def check_union(v: Any) -> str | None:
            # A branch whose type fits but whose content does not (a lone surrogate, an integer
            # out of range, an unknown enum symbol) knows the real problem; say that, not the union.
            closest = None
            for branch in branches:
                reason = branch(v)
                if reason is None:
                    return None
                if closest is None and not reason.startswith(_TYPE_MISMATCH):
                    closest = reason
            return closest or f"expected {labels}, got {_describe(v)}"

        return check_union
    kind = avro_type["type"] if isinstance(avro_type, dict) else avro_type
    if isinstance(kind, dict | list):
        return _compile(kind, name)
    if kind == "null":
        return lambda v: None if v is None else f"expected null, got {_describe(v)}"
    if kind == "boolean":
        return lambda v: None if type(v) is bool else f"expected a boolean, got {_describe(v)}"
    if kind in ("int", "long"):
        lo, hi = _INT_RANGE if kind == "int" else _LONG_RANGE

        def check_integer(v: Any) -> str | None:
            if type(v) is not int:
                return f"expected an integer, got {_describe(v)}"
            return None if lo <= v <= hi else f"{v} is out of range for Avro {kind}"

        return check_integer
    if kind in ("float", "double"):
        return lambda v: None if type(v) in (float, int) else f"expected a number, got {_describe(v)}"
    if kind == "string":
        return _check_string
    if kind == "bytes":
        return lambda v: None if type(v) is bytes else f"expected bytes, got {_describe(v)}"
    if kind == "fixed":
        size = avro_type["size"]
        return lambda v: (
            None if type(v) is bytes and len(v) == size else f"expected {size} bytes, got {_describe(v)}"
        )
    if kind == "enum":
        symbols = frozenset(avro_type["symbols"])
        listed = ", ".join(avro_type["symbols"])

        def check_enum(v: Any) -> str | None:
            if type(v) is not str:
                return f"expected one of {listed}, got {_describe(v)}"
            return None if v in symbols else f"unknown {name} {v!r:.40}; expected one of {listed}"

        return check_enum
    if kind == "array":
        item = _compile(avro_type["items"], name)

        def check_array(v: Any) -> str | None:
            if type(v) not in (list, tuple):
                return f"expected a list, got {_describe(v)}"
            for i, x in enumerate(v):
                reason = item(x)
                if reason is not None:
                    return f"item {i}: {reason}"
            return None

        return check_array
    if kind == "map":
        value_check = _compile(avro_type["values"], name)

        def check_map(v: Any) -> str | None:
            if not isinstance(v, dict):
                return f"expected an object, got {_describe(v)}"
            for k, x in v.items():
                if type(k) is not str:
                    return f"map key {k!r:.40} is not a string"
                reason = value_check(x)
                if reason is not None:
                    return f"[{k!r:.40}]: {reason}"
            return None

        return check_map
    if kind == "record":
        fields = [(f["name"], "default" in f, _compile(f["type"], f["name"])) for f in avro_type["fields"]]

        def check_record(v: Any) -> str | None:
            if not isinstance(v, dict):
                return f"expected an object, got {_describe(v)}"
            for fname, has_default, check in fields:
                x = v.get(fname, _MISSING)
                if x is _MISSING:
                    if has_default:
                        continue
                    return f"{fname}: missing required field"
                reason = check(x)
                if reason is not None:
                    return f"{fname}: {reason}"
            return None

        return check_record
    raise ValueError(
        f"{name}: cannot check Avro type {kind!r} (named type references are not supported here)"
    )


def _label(avro_type: Any) -> str:
    kind = avro_type["type"] if isinstance(avro_type, dict) else avro_type
    return str(kind) if isinstance(kind, str) else "a value"
