"""Dashboard variables in panel SQL: Grafana's interpolation, and the built-in board's bound parameters.

Before a ClickHouse panel query leaves the browser, the plugin's frontend (``CHDatasource.
applyTemplateVariables``) first replaces ``$__conditionalAll(condition, $var)`` by ``1=1`` when
``var`` is "All" (or empty), then lets Grafana's template service substitute the variables with the
plugin's default formatter (an array becomes ``'a','b'``, a single value is inserted raw) or the
format named in ``${var:format}``. Our panel SQL only uses ``${var:singlequote}`` (Grafana: each value
quoted with ``'``, ``'`` escaped as ``\\'``, values joined by ``,``) inside string positions, so the
same SQL can run in the built-in board with every variable turned into a ClickHouse query
parameter (``{var:String}``): values from the browser never become SQL text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

ALL = "$__all"
"""The value Grafana gives a variable whose "All" option is selected."""

VariableValue = str | Sequence[str]


class VariableError(ValueError):
    """A variable in panel SQL cannot be substituted; the message names it and the reason."""


@dataclass(frozen=True)
class Variables:
    """Current variable values (``str`` or list of ``str``) and, for "All", every option's value."""

    values: Mapping[str, VariableValue]
    all_options: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def is_all(self, name: str) -> bool:
        value = self.values.get(name)
        if value is None:
            return False
        text = value if isinstance(value, str) else ",".join(value)
        return text in ("", ALL)


_CONDITIONAL_ALL = "$__conditionalAll("
_VAR_IN_ARG = re.compile(r"(?<=\$\{)[\w\d]+(?=\})|(?<=\$)[\w\d]+")
# Grafana's variableRegex: $var | [[var:fmt]] | ${var.field:fmt}
_VARIABLE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^\}]+))?(?::([^\}]+))?\}")
_SINGLE_QUOTED_USE = re.compile(r"\$\{(\w+):singlequote\}")


def _macro_args(sql: str, open_paren: int) -> list[str]:
    """The plugin's ``getMacroArgs``: split on commas at depth 1, counting every ( and )."""
    args: list[str] = []
    depth, last = 0, 1
    sub = sql[open_paren:]
    for m in re.finditer(r"\(|\)|,", sub):
        token = m.group(0)
        if token == "(":
            depth += 1
        elif token == ")":
            depth -= 1
        if token == "," and depth == 1:
            args.append(sub[last : m.end() - 1])
            last = m.end()
        if depth == 0:
            args.append(sub[last : m.end() - 1])
            return args
    return []


def apply_conditional_all(sql: str, variables: Variables) -> str:
    """``$__conditionalAll(cond, $var)`` → ``1=1`` if ``var`` is All/empty, else ``cond`` (plugin order)."""
    index = sql.rfind(_CONDITIONAL_ALL)
    while index != -1:
        params = _macro_args(sql, index + len(_CONDITIONAL_ALL) - 1)
        if len(params) != 2:
            return sql
        phrase = params[0]
        found = _VAR_IN_ARG.search(params[1].strip())
        if found and found.group(0) in variables.values and variables.is_all(found.group(0)):
            phrase = "1=1"
        sql = sql.replace(f"{_CONDITIONAL_ALL}{params[0]},{params[1]})", phrase, 1)
        index = sql.rfind(_CONDITIONAL_ALL)
    return sql


def _current(variables: Variables, name: str) -> list[str] | str:
    value = variables.values[name]
    if not isinstance(value, str):
        value = list(value)
        if value == [ALL]:
            return list(variables.all_options.get(name, ()))
        return value
    if value == ALL:
        return list(variables.all_options.get(name, ()))
    return value


def _format(value: list[str] | str, fmt: str | None, name: str) -> str:
    if fmt is None:  # the plugin's own formatter
        return "'" + "','".join(value) + "'" if isinstance(value, list) else value
    if fmt == "singlequote":
        items = value if isinstance(value, list) else [value]
        return ",".join("'" + v.replace("'", "\\'") + "'" for v in items)
    if fmt == "raw":
        return ",".join(value) if isinstance(value, list) else value
    raise VariableError(f"${{{name}:{fmt}}}: format {fmt!r} is not supported here (use singlequote)")


def interpolate(sql: str, variables: Variables) -> str:
    """The SQL Grafana sends to the plugin's backend for these variable values."""
    sql = apply_conditional_all(sql, variables)

    def replace(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        fmt = m.group(3) or m.group(6)
        if name not in variables.values:
            return m.group(0)  # not a dashboard variable ($__fromTime, ...): left for the backend
        return _format(_current(variables, name), fmt, name)

    return _VARIABLE.sub(replace, sql)


def bind(sql: str, variables: Variables) -> tuple[str, dict[str, str]]:
    """SQL with each ``${var:singlequote}`` turned into ClickHouse parameters, and their values.

    Used by the built-in board: the browser's values are passed to ClickHouse as bound parameters.
    A variable used any other way is refused.
    """
    sql = apply_conditional_all(sql, variables)
    params: dict[str, str] = {}

    def replace(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in variables.values:
            raise VariableError(f"${{{name}:singlequote}}: no value for variable {name!r}")
        value = _current(variables, name)
        items = value if isinstance(value, list) else [value]
        if not items:
            raise VariableError(f"variable {name!r} has no value")
        keys = [name] if isinstance(value, str) else [f"{name}_{i}" for i in range(len(items))]
        for key, item in zip(keys, items, strict=True):
            params[key] = item
        return ",".join(f"{{{key}:String}}" for key in keys)

    sql = _SINGLE_QUOTED_USE.sub(replace, sql)
    leftover = [
        m.group(0)
        for m in _VARIABLE.finditer(sql)
        if (m.group(1) or m.group(2) or m.group(4)) in variables.values
    ]
    if leftover:
        raise VariableError(f"variables used outside ${{var:singlequote}}: {', '.join(leftover)}")
    return sql, params
