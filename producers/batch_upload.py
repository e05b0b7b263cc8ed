"""Publish a batch export file, accounting for every line: sent (acknowledged), rejected or failed.

Rejected = refused before sending (unparseable line, invalid record); failed = sent but not
acknowledged by the broker in time. Both go to the rejects file (JSON Lines: line number, kind,
field, reason and the original input) so nothing is lost; the invariant is
``read == sent + rejected + failed``, and blank lines (skipped) are counted apart.

One bad line never stops a run. Only a producer that cannot go on at all (:class:`PublisherError`)
or a file that becomes unreadable stops it early: the lines handed over by then are accounted for
as above, ``stopped`` says why, and the lines after it were not read.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from producers.batch_file import BatchFileError, Entry, FileFormat, read_entries, read_sources
from producers.publisher import DeliveryResult, Publisher, PublisherError

CHUNK_RECORDS = 2000


@dataclass
class UploadSummary:
    """Counts of one upload; ``problems`` holds the first few rejected/failed lines for display."""

    read: int = 0
    sent: int = 0
    rejected: int = 0
    failed: int = 0
    blank: int = 0
    stopped: str | None = None  # why the run ended before the end of the file
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.rejected == 0 and self.failed == 0 and self.read == self.sent and self.stopped is None


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
        field_name, reason, source = _printable(field_name), _printable(reason), _printable(source)
        entry = {"line": line, "kind": kind, "field": field_name, "reason": reason, "input": source}
        self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
        if len(summary.problems) < self.keep_problems:
            where = f"{field_name}: " if field_name else ""
            summary.problems.append(f"line {line}: {kind}: {where}{reason}")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _printable(text: str) -> str:
    """``text`` with lone surrogates (e.g. a field name from ``{"\\ud800": 1}``) spelled ``\\ud800``.

    They cannot be encoded as UTF-8, so written or printed as they are they would crash the run.
    """
    return text if text.isascii() else text.encode("utf-8", "backslashreplace").decode("utf-8")


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
    """Publish every record of ``path`` to ``topic`` and wait for all acknowledgements.

    Raises :class:`BatchFileError` before anything is sent if the rejects path is unusable or
    the file cannot be read at all.
    """
    check_rejects_path(path, rejects_path)
    summary = UploadSummary()
    rejects = RejectsWriter(rejects_path)
    begun = False  # a rejects file describes one run: the previous run's goes once this one reads
    failed_lines: dict[int, str] = {}
    next_progress = progress_every
    chunk: list[Entry] = []
    unsent: list[Entry] = []  # the chunk being handed over when the run had to stop
    try:
        for entry in read_entries(path, fmt, topic):
            if not begun:  # the file opened and its header fits the topic: a run, not a usage error
                rejects_path.unlink(missing_ok=True)
                begun = True
            if entry.blank:
                summary.blank += 1
                continue
            summary.read += 1
            chunk.append(entry)
            if len(chunk) >= CHUNK_RECORDS:
                unsent, chunk = chunk, []
                _send_chunk(publisher, topic, unsent, summary, rejects, failed_lines)
                unsent = []
            if progress is not None and summary.read >= next_progress:
                progress(summary)
                next_progress += progress_every
        if chunk:
            unsent, chunk = chunk, []
            _send_chunk(publisher, topic, unsent, summary, rejects, failed_lines)
            unsent = []
        if not begun:  # an empty file: a run with nothing to send
            rejects_path.unlink(missing_ok=True)
    except BatchFileError as exc:
        if summary.read == 0:
            raise  # nothing was sent: a file error, not a partial run
        summary.stopped = str(exc)
    except PublisherError as exc:
        summary.stopped = str(exc)
    finally:
        results = publisher.flush(flush_timeout_s)
        _count(results, summary, failed_lines)
        if unsent or chunk:  # only when stopped early: lines read but not (all) handed over
            _account_unsent(unsent + chunk, {r.ref for r in results}, summary, rejects, failed_lines)
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
    parsed = [(e.record, e.line) for e in chunk if e.record is not None]  # blank lines never get here
    rejected = publisher.publish_many(topic, [r for r, _ in parsed], [line for _, line in parsed])
    refused = [(e.line, "", e.error) for e in chunk if e.error is not None]
    refused += [(r.ref, r.field, r.reason) for r in rejected]
    if refused:
        sources = {e.line: e.source for e in chunk}
        for line, field_name, reason in sorted(refused, key=lambda x: x[0]):
            summary.rejected += 1
            rejects.write(summary, line, "rejected", field_name, reason, sources[line])
    _count(publisher.poll_results(0), summary, failed_lines)


def _account_unsent(
    chunk: list[Entry],
    answered: set[int],
    summary: UploadSummary,
    rejects: RejectsWriter,
    failed_lines: dict[int, str],
) -> None:
    """Account for a chunk whose hand-over stopped part-way: lines without a delivery result failed."""
    for entry in chunk:
        if entry.error is not None:
            summary.rejected += 1
            rejects.write(summary, entry.line, "rejected", "", entry.error, entry.source)
        elif entry.line not in answered:
            summary.failed += 1
            failed_lines[entry.line] = f"not sent: {summary.stopped or 'the run stopped'}"


def check_rejects_path(input_path: Path, rejects_path: Path) -> None:
    """Raise :class:`BatchFileError` if rejects cannot be written to ``rejects_path``.

    Checked before anything is sent, because the old rejects file is removed at the start of a
    run and the new one is written while it goes: a rejects path that is the input file itself
    would destroy the input, and one that is a directory would fail mid-run.
    """
    if rejects_path.is_dir():
        raise BatchFileError(f"rejects path {rejects_path} is a directory; name a file")
    if rejects_path.resolve() == input_path.resolve() or (
        rejects_path.exists() and os.path.samefile(rejects_path, input_path)
    ):
        raise BatchFileError(
            f"rejects path {rejects_path} is the input file {input_path}; it would be overwritten"
        )
    if rejects_path.exists() and not rejects_path.is_file():
        raise BatchFileError(f"rejects path {rejects_path} is not a regular file")
    existing = rejects_path.parent  # where the old rejects file is removed and the new one created
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise BatchFileError(
            f"cannot create rejects file {rejects_path}: {existing} is not a writable directory"
        )


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
