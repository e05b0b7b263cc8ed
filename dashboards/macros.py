"""The grafana-clickhouse-datasource plugin's SQL macros, expanded the way the plugin expands them.

Grafana sends a panel's ``rawSql`` to the plugin's backend, which expands ``$__`` macros before the
query reaches ClickHouse (``pkg/macros/macros.go`` of grafana/clickhouse-datasource, through
``grafana/macropro``). The built-in board and the panel tests run the very same SQL, so they must
expand it identically; the expansions below follow that Go source token for token:

=====================  ==========================================================================
``$__timeFilter(c)``     ``c >= toDateTime(<from s>) AND c <= toDateTime(<to s>)``
``$__timeFilter_ms(c)``  ``c >= fromUnixTimestamp64Milli(<from ms>) AND c <= ...(<to ms>)``
``$__dateFilter(c)``     ``c >= toDate('YYYY-MM-DD') AND c <= toDate('YYYY-MM-DD')``
``$__dateTimeFilter``    ``(d >= toDate(..) AND d <= toDate(..)) AND (t >= toDateTime(..) AND ..)``
``$__dt``                alias of ``$__dateTimeFilter``
``$__timeFrom(c)``       ``c >= toDateTime(<from s>)``
``$__timeTo(c)``         ``c <= toDateTime(<to s>)``
``$__fromTime``          ``toDateTime(<from s>)``; ``$__toTime`` likewise
``$__fromTime_ms``       ``fromUnixTimestamp64Milli(<from ms>)``; ``$__toTime_ms`` likewise
``$__timeInterval(c)``   ``toStartOfInterval(toDateTime(c), INTERVAL <max(interval s, 1)> second)``
``$__timeInterval_ms``   ``toStartOfInterval(toDateTime64(c, 3), INTERVAL <max(interval ms, 1)> millisecond)``
``$__interval_s``        ``<max(interval s, 1)>``
``$__timeGroup(c, 5m)``  ``toStartOfInterval(toDateTime(c), INTERVAL 300 second)``
=====================  ==========================================================================

Seconds are Go's ``time.Unix()`` (floored), dates are UTC. Macros nest innermost first
(``$__timeFilter(coalesce(x, $__toTime))``), arguments are trimmed, a wrong argument count is an
error, and names the plugin does not know are left untouched. Macros inside string literals,
backtick identifiers or comments are not expanded. The statement macros (``$__columns`` ...) and the
SDK defaults ``$__interval``/``$__interval_ms``/``$__table``/``$__column`` are refused rather than
approximated: our panel SQL does not use them, and a silent difference would defeat the purpose.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime


class MacroError(ValueError):
    """A macro could not be expanded; the message names the macro and the reason."""


@dataclass(frozen=True)
class TimeRange:
    """The panel's time range and interval, as Grafana hands them to the plugin."""

    from_ms: int
    to_ms: int
    interval_ms: int = 60_000

    def __post_init__(self) -> None:
        if self.to_ms < self.from_ms:
            raise MacroError(f"time range ends ({self.to_ms}) before it starts ({self.from_ms})")


def _unix_seconds(ms: int) -> int:
    return ms // 1000  # Go's time.Unix(): whole seconds, floored


def _date_time(ms: int) -> str:
    return f"toDateTime({_unix_seconds(ms)})"


def _date_time64(ms: int) -> str:
    return f"fromUnixTimestamp64Milli({ms})"


def _date(ms: int) -> str:
    return f"toDate('{datetime.fromtimestamp(ms / 1000, UTC).strftime('%Y-%m-%d')}')"


def _interval_seconds(tr: TimeRange) -> int:
    return int(max(tr.interval_ms / 1000, 1))


_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Seconds in a Go ``time.ParseDuration`` string such as ``5m``, ``1h30m`` or ``-1.5h``."""
    s = text
    sign = 1.0
    if s[:1] in "+-":
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(s):
        m = _GO_DURATION_PART.match(s, pos)
        if not m:
            raise MacroError(f"invalid duration {text!r}")
        total += float(m.group(1)) * _GO_UNITS[m.group(2)]
        pos = m.end()
    if not s:
        raise MacroError(f"invalid duration {text!r}")
    return sign * total


def _want(name: str, args: list[str], n: int) -> None:
    if len(args) != n:
        raise MacroError(f"$__{name} expected {n} argument(s), received {len(args)}")


def _time_filter(tr: TimeRange, args: list[str]) -> str:
    _want("timeFilter", args, 1)
    c = args[0]
    return f"{c} >= {_date_time(tr.from_ms)} AND {c} <= {_date_time(tr.to_ms)}"


def _time_filter_ms(tr: TimeRange, args: list[str]) -> str:
    _want("timeFilter_ms", args, 1)
    c = args[0]
    return f"{c} >= {_date_time64(tr.from_ms)} AND {c} <= {_date_time64(tr.to_ms)}"


def _date_filter(tr: TimeRange, args: list[str]) -> str:
    _want("dateFilter", args, 1)
    c = args[0]
    return f"{c} >= {_date(tr.from_ms)} AND {c} <= {_date(tr.to_ms)}"


def _date_time_filter(tr: TimeRange, args: list[str]) -> str:
    _want("dateTimeFilter", args, 2)
    d, t = args
    return (
        f"({d} >= {_date(tr.from_ms)} AND {d} <= {_date(tr.to_ms)}) AND "
        f"({t} >= {_date_time(tr.from_ms)} AND {t} <= {_date_time(tr.to_ms)})"
    )


def _time_from(tr: TimeRange, args: list[str]) -> str:
    _want("timeFrom", args, 1)
    return f"{args[0]} >= {_date_time(tr.from_ms)}"


def _time_to(tr: TimeRange, args: list[str]) -> str:
    _want("timeTo", args, 1)
    return f"{args[0]} <= {_date_time(tr.to_ms)}"


def _time_interval(tr: TimeRange, args: list[str]) -> str:
    _want("timeInterval", args, 1)
    return f"toStartOfInterval(toDateTime({args[0]}), INTERVAL {_interval_seconds(tr)} second)"


def _time_interval_ms(tr: TimeRange, args: list[str]) -> str:
    _want("timeInterval_ms", args, 1)
    ms = int(max(tr.interval_ms, 1))
    return f"toStartOfInterval(toDateTime64({args[0]}, 3), INTERVAL {ms} millisecond)"


def _time_group(tr: TimeRange, args: list[str]) -> str:
    _want("timeGroup", args, 2)
    col = args[0].strip()
    period = args[1].strip().strip("'\"")
    secs = round(parse_go_duration(period))
    if secs <= 0:
        raise MacroError(f"$__timeGroup: interval must be positive, got {period!r}")
    return f"toStartOfInterval(toDateTime({col}), INTERVAL {secs} second)"


_Handler = Callable[[TimeRange, list[str]], str]

MACROS: dict[str, _Handler] = {
    "timeFilter": _time_filter,
    "timeFrom": _time_from,
    "timeTo": _time_to,
    "timeGroup": _time_group,
    "fromTime": lambda tr, a: _date_time(tr.from_ms),
    "toTime": lambda tr, a: _date_time(tr.to_ms),
    "fromTime_ms": lambda tr, a: _date_time64(tr.from_ms),
    "toTime_ms": lambda tr, a: _date_time64(tr.to_ms),
    "timeFilter_ms": _time_filter_ms,
    "dateFilter": _date_filter,
    "dateTimeFilter": _date_time_filter,
    "dt": _date_time_filter,
    "timeInterval": _time_interval,
    "timeInterval_ms": _time_interval_ms,
    "interval_s": lambda tr, a: str(_interval_seconds(tr)),
}
"""The plugin's ``ClickHouseMacros`` that this module reproduces exactly."""

REFUSED = frozenset(
    {
        "columns",
        "rateColumns",
        "perSecondColumns",
        "increaseColumns",
        "lttb",
        "interval",
        "interval_ms",
        "table",
        "column",
    }
)
"""Macros the plugin knows but this module does not reproduce (see the module docstring)."""

_NAME = re.compile(r"\$__([A-Za-z0-9_]+)")


def _skip_quoted(sql: str, i: int) -> int:
    """Index just after the literal, identifier or comment starting at ``sql[i]``, or ``i`` if none."""
    ch = sql[i]
    if ch == "'":
        j = i + 1
        while j < len(sql):
            if sql[j] == "\\":
                j += 2
                continue
            if sql[j] == "'":
                if j + 1 < len(sql) and sql[j + 1] == "'":
                    j += 2
                    continue
                return j + 1
            j += 1
        raise MacroError(f"unterminated string literal at offset {i}")
    if ch == "`":
        end = sql.find("`", i + 1)
        if end < 0:
            raise MacroError(f"unterminated backtick identifier at offset {i}")
        return end + 1
    if sql.startswith("--", i):
        end = sql.find("\n", i)
        return len(sql) if end < 0 else end + 1
    if sql.startswith("/*", i):
        end = sql.find("*/", i + 2)
        if end < 0:
            raise MacroError(f"unterminated block comment at offset {i}")
        return end + 2
    if ch == "$":
        m = re.match(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$", sql[i:])
        if m and not sql.startswith("$__", i):
            tag = m.group(0)
            end = sql.find(tag, i + len(tag))
            if end < 0:
                raise MacroError(f"unterminated dollar-quoted string at offset {i}")
            return end + len(tag)
    return i


def _split_args(sql: str, open_paren: int) -> tuple[list[str], int]:
    """Top-level comma-separated arguments of the call whose ``(`` is at ``open_paren``; and the end."""
    depth, start, i = 0, open_paren + 1, open_paren
    args: list[str] = []
    while i < len(sql):
        j = _skip_quoted(sql, i)
        if j != i:
            i = j
            continue
        ch = sql[i]
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                args.append(sql[start:i])
                return args, i + 1
        elif ch == "," and depth == 1:
            args.append(sql[start:i])
            start = i + 1
        i += 1
    raise MacroError(f"unbalanced parentheses in macro arguments at offset {open_paren}")


def expand_macros(sql: str, time_range: TimeRange) -> str:
    """Expand every plugin macro in ``sql`` for ``time_range``, as the plugin's backend does."""
    out: list[str] = []
    i = 0
    while i < len(sql):
        j = _skip_quoted(sql, i)
        if j != i:
            out.append(sql[i:j])
            i = j
            continue
        m = _NAME.match(sql, i) if sql[i] == "$" else None
        if not m:
            out.append(sql[i])
            i += 1
            continue
        name = m.group(1)
        if name in REFUSED:
            raise MacroError(f"$__{name} is not reproduced by dashboards.macros; do not use it in panel SQL")
        handler = MACROS.get(name)
        end = m.end()
        args: list[str] = []
        if end < len(sql) and sql[end] == "(":
            raw_args, end = _split_args(sql, end)
            args = [expand_macros(a, time_range).strip() for a in raw_args]
            if args == [""]:
                args = []
        if handler is None:
            out.append(sql[i:end])  # unknown to the plugin: left unchanged
        else:
            out.append(handler(time_range, args))
        i = end
    return "".join(out)
