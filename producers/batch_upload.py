"""Publish a batch export file, accounting for every line: sent (acknowledged), rejected or failed.

Rejected = refused before sending (unparseable line, invalid record); failed = sent but not
acknowledged by the broker in time. Both go to the rejects file (JSON Lines: line number, kind,
field, reason and the original input) so nothing is lost; the invariant is
``read == sent + rejected + failed``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from producers.batch_file import Entry, FileFormat, read_entries, read_sources
from producers.publisher import DeliveryResult, Publisher

CHUNK_RECORDS = 2000


@dataclass
class UploadSummary:
    """Counts of one upload; ``problems`` holds the first few rejected/failed lines for display."""

    read: int = 0
    sent: int = 0
    rejected: int = 0
    failed: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.rejected == 0 and self.failed == 0 and self.read == self.sent


@dataclass
class RejectsWriter:
    """Writes rejected and failed lines as JSON Lines; the file is created on the first one."""

    path: Path
    keep_problems: int = 20
    _file: IO[str] | None = None

    def write(
        self, summary: UploadSummary, line: int, kind: str, field_name: str, reason: str, source: str
    ) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("w", encoding="utf-8")
        entry = {"line": line, "kind": kind, "field": field_name, "reason": reason, "input": source}
        self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
        if len(summary.problems) < self.keep_problems:
            where = f"{field_name}: " if field_name else ""
            summary.problems.append(f"line {line}: {kind}: {where}{reason}")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def upload_file(
    publisher: Publisher,
    topic: str,
    path: Path,
    fmt: FileFormat,
    rejects_path: Path,
    progress: Callable[[UploadSummary], None] | None = None,
    progress_every: int = 10_000,
    flush_timeout_s: float | None = None,
) -> UploadSummary:
    """Publish every record of ``path`` to ``topic`` and wait for all acknowledgements."""
    summary = UploadSummary()
    if rejects_path.exists():
        rejects_path.unlink()  # a rejects file describes one run: never mix in a previous run's lines
    rejects = RejectsWriter(rejects_path)
    failed_lines: dict[int, str] = {}
    next_progress = progress_every
    chunk: list[Entry] = []
    try:
        for entry in read_entries(path, fmt, topic):
            summary.read += 1
            chunk.append(entry)
            if len(chunk) >= CHUNK_RECORDS:
                _send_chunk(publisher, topic, chunk, summary, rejects, failed_lines)
                chunk = []
            if progress is not None and summary.read >= next_progress:
                progress(summary)
                next_progress += progress_every
        if chunk:
            _send_chunk(publisher, topic, chunk, summary, rejects, failed_lines)
    finally:
        _count(publisher.flush(flush_timeout_s), summary, failed_lines)
        if failed_lines:
            sources = read_sources(path, fmt, topic, set(failed_lines))
            for line in sorted(failed_lines):
                rejects.write(summary, line, "failed", "", failed_lines[line], sources.get(line, ""))
        rejects.close()
    return summary


def _send_chunk(
    publisher: Publisher,
    topic: str,
    chunk: list[Entry],
    summary: UploadSummary,
    rejects: RejectsWriter,
    failed_lines: dict[int, str],
) -> None:
    parsed = [e for e in chunk if e.error is None]
    rejected = publisher.publish_many(topic, [e.record for e in parsed], [e.line for e in parsed])
    refused = [(e.line, "", e.error) for e in chunk if e.error is not None]
    refused += [(r.ref, r.field, r.reason) for r in rejected]
    if refused:
        sources = {e.line: e.source for e in chunk}
        for line, field_name, reason in sorted(refused, key=lambda x: x[0]):
            summary.rejected += 1
            rejects.write(summary, line, "rejected", field_name, reason, sources[line])
    _count(publisher.poll_results(0), summary, failed_lines)


def _count(results: list[DeliveryResult], summary: UploadSummary, failed_lines: dict[int, str]) -> None:
    for r in results:
        if r.ok:
            summary.sent += 1
        else:
            summary.failed += 1
            failed_lines[r.ref] = f"not acknowledged by the broker: {r.error}"


def progress_line(summary: UploadSummary, started: float) -> str:
    rate = summary.read / max(time.monotonic() - started, 1e-9)
    return (
        f"produce: {summary.read:,} read, {summary.sent:,} sent, {summary.rejected:,} rejected, "
        f"{summary.failed:,} failed ({rate:,.0f} lines/s)"
    )
