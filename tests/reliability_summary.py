"""pytest plugin: what the reliability tests tried, summed up in ONE table at the end of the run.

The reliability tests (``tests/test_reliability_*.py``) record into the session's
:class:`ReliabilityLedger` (fixture ``reliability``) as they go: every fault they inject (and,
once the run's end checks pass, that it was survived), every bad input they try (and whether it
ended where it must: a dead letter or a CLI reject with the expected reason), and for every run
the per-message accounting of what was produced against what ClickHouse, the dead letters and
the CLI's rejects hold. "Records lost" is computed from that accounting (messages found in none
of those places), never written in as a constant.

At the end of the session :func:`pytest_terminal_summary` prints the table and writes it to
``test-artifacts/reliability-summary.md`` (the README quotes it). A run that selected no
reliability test prints nothing. Registered by ``pytest_plugins`` in ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import platform
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ARTIFACT = Path(__file__).resolve().parent.parent / "test-artifacts" / "reliability-summary.md"

FAULT_LABELS: dict[str, str] = {
    "worker_kill": "kill -9 of the processor worker, then restart",
    "sink_kill": "kill -9 of the sink (rows buffered), then restart",
    "rebalance": "consumer group rebalance mid-stream (a 2nd worker joins, then leaves)",
    "clickhouse_down": "ClickHouse unavailable (every insert refused), then back",
}


@dataclass
class FaultRecord:
    """One injected fault; ``survived`` is set when the run it belongs to passed its end checks."""

    kind: str
    run: str
    at: str  # where in the stream it was injected, e.g. "after 412 of 1,130 events"
    survived: bool = False


@dataclass
class InputRecord:
    """A kind of bad input tried ``tried`` times; ``handled`` ended where it must, with its reason."""

    kind: str
    source: str  # "corpus" or "fuzzed"
    path: str  # "raw bytes on a topic" or "produce CLI"
    tried: int = 0
    handled: int = 0


@dataclass
class Accounting:
    """Per-message accounting of one run: where each produced (or offered) record ended up."""

    run: str
    offered: int  # records offered: messages produced onto topics + lines given to the CLI
    stored: int = 0  # distinct valid events in ClickHouse's events table
    duplicates: int = 0  # re-sent copies of a stored event (same event_id), ignored by design
    dead_lettered: int = 0  # in the dead letters (topic and ClickHouse table) with a reason
    rejected: int = 0  # rejected by the produce CLI with line number and reason (never sent)
    lost: list[str] = field(default_factory=list)  # what none of the above holds

    @property
    def accounted(self) -> int:
        return self.stored + self.duplicates + self.dead_lettered + self.rejected


@dataclass
class ReliabilityLedger:
    """Everything the reliability tests tried in this session."""

    faults: list[FaultRecord] = field(default_factory=list)
    inputs: dict[tuple[str, str, str], InputRecord] = field(default_factory=dict)
    runs: list[Accounting] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the reliability tests (setup, call and teardown)

    def fault(self, kind: str, run: str, at: str) -> FaultRecord:
        if kind not in FAULT_LABELS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_LABELS)}")
        record = FaultRecord(kind, run, at)
        self.faults.append(record)
        return record

    def survived(self, run: str) -> None:
        """Mark every fault of ``run`` survived (call after all of the run's end checks passed)."""
        for f in self.faults:
            if f.run == run:
                f.survived = True

    def tried(self, kind: str, source: str, path: str, handled: bool) -> None:
        rec = self.inputs.setdefault((kind, source, path), InputRecord(kind, source, path))
        rec.tried += 1
        rec.handled += int(handled)

    def account(self, accounting: Accounting) -> Accounting:
        self.runs.append(accounting)
        return accounting

    @property
    def empty(self) -> bool:
        return not (self.faults or self.inputs or self.runs)

    def render(self) -> str:
        """The summary as Markdown: faults, bad inputs, and the records accounting."""
        lines = ["## Reliability summary", ""]
        if self.faults:
            runs = sorted({f.run for f in self.faults})
            injected = Counter(f.kind for f in self.faults)
            survived = Counter(f.kind for f in self.faults if f.survived)
            lines += [
                f"Faults injected at seeded random points of {len(runs)} runs "
                "(real Tansu broker, worker and sink processes, chdb):",
                "",
                "| fault | injected | survived |",
                "|---|---:|---:|",
            ]
            for kind, label in FAULT_LABELS.items():
                if injected[kind]:
                    lines.append(f"| {label} | {injected[kind]} | {survived[kind]} |")
            lines.append(f"| **all faults** | **{sum(injected.values())}** | **{sum(survived.values())}** |")
            lines.append("")
            lines.append("<details><summary>Where each fault landed</summary>")
            lines.append("")
            for run in runs:
                faults = [f for f in self.faults if f.run == run]
                lines.append(f"- {run}: " + "; ".join(f"**{f.kind}** {f.at}" for f in faults))
            lines += ["", "</details>", ""]
        if self.inputs:
            lines += [
                "Bad input (corpus + hypothesis fuzzing; handled = a dead letter with the expected "
                "reason, or a CLI reject naming the line and reason):",
                "",
                "| bad input | path | corpus | fuzzed | handled |",
                "|---|---|---:|---:|---:|",
            ]
            keys = sorted({(k, p) for k, _, p in self.inputs})
            totals = Counter[str]()
            for kind, path in keys:
                corpus = self.inputs.get((kind, "corpus", path))
                fuzzed = self.inputs.get((kind, "fuzzed", path))
                c = corpus.tried if corpus else 0
                z = fuzzed.tried if fuzzed else 0
                h = (corpus.handled if corpus else 0) + (fuzzed.handled if fuzzed else 0)
                totals.update(corpus=c, fuzzed=z, handled=h)
                lines.append(f"| {kind} | {path} | {c} | {z} | {h} |")
            lines.append(
                f"| **all bad inputs** | | **{totals['corpus']}** | **{totals['fuzzed']}** | "
                f"**{totals['handled']}** |"
            )
            lines.append("")
        if self.runs:
            lines += [
                "Records: every message produced (or line offered to the CLI) looked up where it must be:",
                "",
                "| run | offered | stored (distinct) | duplicates ignored | dead letters | CLI rejects "
                "| lost |",
                "|---|---:|---:|---:|---:|---:|---:|",
            ]
            for a in self.runs:
                lines.append(
                    f"| {a.run} | {a.offered:,} | {a.stored:,} | {a.duplicates:,} | {a.dead_lettered:,} | "
                    f"{a.rejected:,} | {len(a.lost)} |"
                )
            total_lost = sum(len(a.lost) for a in self.runs)
            total = sum(a.offered for a in self.runs)
            lines += ["", f"**Records lost: {total_lost}** (of {total:,} offered, computed per message)."]
            unbalanced = [a.run for a in self.runs if a.accounted + len(a.lost) != a.offered]
            if unbalanced:
                lines.append(f"Accounting does not balance for: {', '.join(unbalanced)}.")
            lines.append("")
        lines.append(
            f"_{platform.machine()}, {os.cpu_count()} cores; reliability tests took {self.seconds:.0f} s._"
        )
        return "\n".join(lines) + "\n"


_LEDGER = ReliabilityLedger()


@pytest.fixture(scope="session")
def reliability() -> ReliabilityLedger:
    """The session's ledger; the reliability tests record what they tried into it."""
    return _LEDGER


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "test_reliability_" in report.nodeid:
        _LEDGER.seconds += report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _LEDGER.empty:
        return
    text = _LEDGER.render()
    terminalreporter.section("reliability summary")
    for line in text.splitlines():
        terminalreporter.write_line(line)
    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_text(text, encoding="utf-8")
    terminalreporter.write_line(f"(written to {ARTIFACT.relative_to(ARTIFACT.parent.parent)})")
