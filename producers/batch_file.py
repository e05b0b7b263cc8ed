"""Batch export files (JSON Lines and CSV) → one :class:`Entry` per input record, with its line number.

File conventions (the contract agencies export against):

* **JSON Lines**: one JSON object per line; blank lines are skipped (and counted, so a summary
  can account for every line). Numbers are parsed as exact decimals, never floats.
* **CSV**: a header row of field names, one record per row; list fields (``container_ids``) are
  ``;``-separated; an empty cell is null (the field's default applies, or it is reported missing).
* **Money in files is PKR** (``1500.50`` or ``"1500.50"``, at most 2 decimals), whatever the
  format: files are written by people and exporters, and a PKR amount cannot be misread as paisa.
  Timestamps are ISO-8601 with a timezone (``2025-01-01T10:00:00+05:00``) or epoch millis.

A line that cannot be parsed becomes an ``Entry`` with an ``error`` rather than an exception, so
the caller can reject it with its line number and carry on. File-level problems (unreadable file,
a CSV header naming unknown fields) raise :class:`BatchFileError`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from producers.records import RecordPlan, plan_for

FileFormat = Literal["jsonl", "csv"]
FORMATS_BY_SUFFIX: dict[str, FileFormat] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
}
LIST_SEPARATOR = ";"


class BatchFileError(ValueError):
    """The file as a whole cannot be read (nothing was sent from it)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One input line: ``record`` when it parsed, else ``error``; ``source`` is the original text.

    A blank line (or blank CSV row) has neither: it is skipped, but yielded so that it is counted.
    """

    line: int
    record: dict[str, Any] | None
    error: str | None
    source: str

    @property
    def blank(self) -> bool:
        return self.record is None and self.error is None


def detect_format(path: Path, explicit: str | None = None) -> FileFormat:
    """The file format from ``--format`` or the file extension."""
    if explicit:
        if explicit not in ("jsonl", "csv"):
            raise BatchFileError(f"unknown format {explicit!r}; use jsonl or csv")
        return explicit  # type: ignore[return-value]
    try:
        return FORMATS_BY_SUFFIX[path.suffix.lower()]
    except KeyError:
        raise BatchFileError(
            f"cannot tell the format of {path.name} from its extension; pass --format jsonl or --format csv"
        ) from None


def read_entries(path: Path, fmt: FileFormat, topic: str) -> Iterator[Entry]:
    """Yield one :class:`Entry` per line (JSON Lines) or data row (CSV), blank ones included."""
    plan = plan_for(topic)
    try:
        if fmt == "jsonl":
            yield from _read_jsonl(path, plan)
        else:
            yield from _read_csv(path, plan)
    except OSError as exc:
        raise BatchFileError(f"cannot read {path}: {exc.strerror or exc}") from exc


def read_sources(path: Path, fmt: FileFormat, topic: str, lines: set[int]) -> dict[int, str]:
    """The original text of the records starting at ``lines`` (a second pass, used for failures)."""
    if not lines:
        return {}
    return {e.line: e.source for e in read_entries(path, fmt, topic) if e.line in lines and not e.blank}


# -- JSON Lines ------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _read_jsonl(path: Path, plan: RecordPlan) -> Iterator[Entry]:
    money = [name for name, _ in plan.money_fields]
    with path.open("rb") as f:
        for line_no, raw_line in enumerate(f, start=1):
            if line_no == 1 and raw_line.startswith(b"\xef\xbb\xbf"):
                raw_line = raw_line[3:]
            if not raw_line.strip():
                yield Entry(line_no, None, None, "")
                continue
            try:
                text = raw_line.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                source = raw_line.decode("utf-8", "backslashreplace").rstrip("\r\n")
                yield Entry(line_no, None, f"line is not valid UTF-8 (byte {exc.start})", source)
                continue
            try:
                record = json.loads(text, parse_float=Decimal, parse_constant=_reject_constant)
            except (json.JSONDecodeError, ValueError) as exc:
                yield Entry(line_no, None, f"malformed JSON: {exc}", text)
                continue
            except RecursionError:  # the parser recurses per level: [[[[...]]]] deeper than the stack
                yield Entry(line_no, None, "malformed JSON: nested too deeply", text)
                continue
            if not isinstance(record, dict):
                yield Entry(line_no, None, f"expected a JSON object, got {type(record).__name__}", text)
                continue
            for name in money:
                value = record.get(name)
                if type(value) is int:  # a bare integer in a file is PKR, like every amount in a file
                    record[name] = Decimal(value)
            yield Entry(line_no, record, None, text)


# -- CSV -------------------------------------------------------------------------------------


def _read_csv(path: Path, plan: RecordPlan) -> Iterator[Entry]:
    converters = _csv_converters(plan)
    with path.open("r", encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise BatchFileError(f"{path.name}: unreadable CSV header: {exc}") from exc
        columns = [c.strip() for c in header]
        _check_header(path, columns, plan)
        start = reader.line_num + 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield Entry(start, None, f"malformed CSV: {exc}", "")
                start = reader.line_num + 1
                continue
            line_no, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in row):
                yield Entry(line_no, None, None, "")
                continue
            yield _csv_entry(line_no, row, columns, converters)


def _check_header(path: Path, columns: list[str], plan: RecordPlan) -> None:
    name = plan.version.record_name
    unknown = [c for c in columns if c not in plan.field_names]
    if unknown:
        raise BatchFileError(
            f"{path.name}: header names fields that {name} does not have: {', '.join(unknown)}"
        )
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise BatchFileError(f"{path.name}: header repeats {', '.join(duplicated)}")
    missing = [c for c in plan.required if c not in columns and c != "published_at"]
    if missing:
        raise BatchFileError(f"{path.name}: header lacks required fields of {name}: {', '.join(missing)}")


def _csv_entry(line_no: int, row: list[str], columns: list[str], converters: dict[str, Any]) -> Entry:
    source = _csv_line(row)
    if len(row) != len(columns):
        return Entry(line_no, None, f"expected {len(columns)} cells, got {len(row)}", source)
    record: dict[str, Any] = {}
    for column, cell in zip(columns, row, strict=True):
        if not cell.strip():
            continue  # empty cell = null
        try:
            cell.encode("utf-8")
        except UnicodeEncodeError:
            return Entry(line_no, None, f"{column}: cell is not valid UTF-8", source)
        convert = converters.get(column)
        if convert is None:
            record[column] = cell
            continue
        try:
            record[column] = convert(cell)
        except ValueError as exc:
            return Entry(line_no, None, f"{column}: {exc}", source)
    return Entry(line_no, record, None, source)


def _csv_line(row: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(row)
    return out.getvalue().encode("utf-8", "backslashreplace").decode("utf-8")


def _csv_converters(plan: RecordPlan) -> dict[str, Any]:
    """Cell converters for fields that are not plain strings (timestamps and money stay text)."""
    converters: dict[str, Any] = {}
    special = set(plan.timestamp_fields) | {name for name, _ in plan.money_fields}
    for f in plan.version.schema["fields"]:
        if f["name"] in special:
            continue
        kind = _non_null_kind(f["type"])
        if kind == "array":
            converters[f["name"]] = _split_list
        elif kind in ("int", "long"):
            converters[f["name"]] = _to_int
        elif kind == "boolean":
            converters[f["name"]] = _to_bool
    return converters


def _non_null_kind(avro_type: Any) -> str | None:
    members = [m for m in (avro_type if isinstance(avro_type, list) else [avro_type]) if m != "null"]
    if len(members) != 1:
        return None
    kind = members[0]["type"] if isinstance(members[0], dict) else members[0]
    return kind if isinstance(kind, str) else None


def _split_list(cell: str) -> list[str]:
    return [item.strip() for item in cell.split(LIST_SEPARATOR) if item.strip()]


def _to_int(cell: str) -> int:
    try:
        return int(cell.strip())
    except ValueError:
        raise ValueError(f"{cell!r:.40} is not an integer") from None


def _to_bool(cell: str) -> bool:
    text = cell.strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(f"{cell!r:.40} is not true or false")
