"""Source-building helper shared by the generated Avro readers and writers.

Both generators write one Python function per schema version as text, line by line, with fresh
local names and constants bound by name; only what they emit differs.
"""

from __future__ import annotations

from typing import Any


class SourceEmitter:
    """Accumulates the lines of one generated function, its constants and fresh local names."""

    def __init__(self, names: dict[str, Any]) -> None:
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {}
        self.names = names  # named types seen so far (records, enums, fixed), by full name
        self._n = 0

    def var(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def const(self, value: Any) -> str:
        name = self.var("K")
        self.consts[name] = value
        return name

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)
