"""Helpers for the static deployment tests: load docker-compose.yml the way Compose does.

No Docker engine runs on the test machines, so the tests interpolate ``${VAR}`` references
themselves (the Compose specification's rules: ``${VAR}``, ``${VAR:-default}``,
``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}``, ``$$`` for a literal ``$``) and then
check the result against the Compose JSON schema and the repository.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
COMPOSE_SCHEMA = REPO / "tests" / "data" / "compose-spec" / "compose-spec.json"

_REFERENCE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(ValueError):
    """A ``${VAR:?message}`` (or ``${VAR?message}``) reference whose variable is unset/empty."""


def read_env_file(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    """``KEY=value`` lines of a .env file (comments and blank lines skipped, no quoting rules needed)."""
    env: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = stripped.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"{path}:{number}: not a KEY=value line: {line!r}")
        env[key] = value
    return env


def variable_names(node: Any) -> set[str]:
    """Every variable the string values of a loaded Compose document refer to (comments excluded)."""
    if isinstance(node, dict):
        return set().union(*(variable_names(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(variable_names(v) for v in node)) if node else set()
    if isinstance(node, str):
        found = (m for m in _REFERENCE.finditer(node) if not m.group("escaped"))
        return {m.group("braced") or m.group("plain") for m in found}
    return set()


def required_variable_names(node: Any) -> set[str]:
    """Variables referenced as ``${VAR:?...}``: Compose refuses to start while they are empty."""
    if isinstance(node, dict):
        return set().union(*(required_variable_names(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(required_variable_names(v) for v in node)) if node else set()
    if isinstance(node, str):
        return {m.group("braced") for m in _REFERENCE.finditer(node) if m.group("op") == ":?"}
    return set()


def interpolate_string(value: str, env: Mapping[str, str]) -> str:
    def replace(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        name = m.group("braced") or m.group("plain")
        op, arg = m.group("op"), m.group("arg") or ""
        current = env.get(name)
        unset_or_empty = current is None or (current == "" and op is not None and op.startswith(":"))
        if op in (":-", "-"):
            return arg if unset_or_empty or current is None else current
        if op in (":?", "?"):
            if unset_or_empty or current is None:
                raise MissingVariable(f"{name}: {arg or 'required variable is missing'}")
            return current
        return current or ""

    return _REFERENCE.sub(replace, value)


def interpolate(node: Any, env: Mapping[str, str]) -> Any:
    """Interpolate every string value (not keys) of a loaded Compose document."""
    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    if isinstance(node, str):
        return interpolate_string(node, env)
    return node


def raw_compose() -> dict[str, Any]:
    """The file as YAML (anchors and ``<<`` merge keys resolved), before interpolation."""
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), "docker-compose.yml must be a mapping"
    return data


def example_env_with_secrets() -> dict[str, str]:
    """.env.example with every empty value filled, as an operator's .env would be."""
    return {k: (v or f"test-{k.lower().replace('_', '-')}") for k, v in read_env_file().items()}


def loaded_compose() -> dict[str, Any]:
    return interpolate(raw_compose(), example_env_with_secrets())


def volume_source(volume: str | dict[str, Any]) -> tuple[str, str]:
    """``(type, source)`` of a service volume in short or long syntax."""
    if isinstance(volume, dict):
        return str(volume.get("type", "volume")), str(volume.get("source", ""))
    source = volume.split(":", 1)[0]
    kind = "bind" if source.startswith((".", "/", "~")) else "volume"
    return kind, source
