"""Run a benchmark job as a child process and tell, from its own counters, when it is done.

Every job of the processor benchmark (our worker, stock Faust, the naive Faust peer, the Quix
Streams peer) serves the metrics of :class:`backbone.metrics.Metrics` on a free port and prints
``metrics on 127.0.0.1:<port>`` when it starts. The harness scrapes them every
:data:`POLL_S` and calls a job *done* when

1. it has read every input event (``backbone_events_in_total`` = the events published),
2. its own "drained" condition holds (e.g. hop 2 consumed every fact hop 1 delivered), and
3. none of the watched counters moved for ``quiet_s`` seconds.

Its time is then *from the first input read to the last change of a watched counter*: start-up
and consumer-group formation are left out, the output flush of the last batch is in. The
counters move only after the broker acknowledged the outputs they count, so "done" means
"visible downstream". Tansu's high watermarks are wrong, so nothing here relies on them.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from prometheus_client.parser import text_string_to_metric_families

from backbone.child_process import ChildProcess

POLL_S = 0.2
BACKLOG_STABLE_S = 0.6
"""How long the counters must rest for a backlog milestone to count (under the event clock's 1 s quiet)."""
METRICS_LINE = re.compile(rb"metrics on 127\.0\.0\.1:(\d+)")


class JobFailed(RuntimeError):
    """A benchmark job exited, did not start, or did not finish in time; the message has its log tail."""


@dataclass(frozen=True)
class Counters:
    """One scrape: ``(metric sample name, sorted label pairs) -> value``."""

    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples called ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= set(ls))

    def watched(self, prefixes: tuple[str, ...]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Samples whose name starts with one of ``prefixes``, state changelog topics left out
        (a job may rewrite unchanged state on every timer tick: that is not output)."""
        return {
            k: v
            for k, v in self.samples.items()
            if k[0].startswith(prefixes) and not dict(k[1]).get("topic", "").endswith("-changelog")
        }


def parse_metrics(text: str) -> Counters:
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return Counters(samples)


@dataclass(frozen=True)
class JobRun:
    """How a job went: its time from first input to last output, final counters, peak memory."""

    name: str
    events: int
    seconds: float
    counters: Counters
    peak_rss_bytes: int
    complete: bool = True
    """False: stopped at its time budget before reading every input (``events`` = what it read)."""
    backlog_s: float | None = None
    """From the first input read to the scrape that saw the backlog drained (``backlog_drained``
    of :meth:`JobProcess.run_until_done`), if asked for and seen."""

    @property
    def backlog_events_per_s(self) -> float | None:
        return self.events / self.backlog_s if self.backlog_s else None

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


@dataclass
class JobProcess(ChildProcess):
    """A job child process (own session, so it and its children stop together)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    port: int | None = None
    _peak_rss: int = field(default=0, repr=False)
    signal_group_on_stop: ClassVar[bool] = True

    def start(self) -> JobProcess:
        self.spawn(self.argv, self.env, append_log=False)
        return self

    def _check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise JobFailed(
                f"{self.name} exited with code {self.process.returncode}; "
                f"log {self.log_path}:\n{self.log_tail()}"
            )

    def wait_port(self, timeout_s: float = 90.0) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            m = METRICS_LINE.search(self.log_path.read_bytes())
            if m:
                self.port = int(m.group(1))
                return self.port
            time.sleep(0.1)
        raise JobFailed(f"{self.name} printed no metrics port within {timeout_s:.0f} s:\n{self.log_tail()}")

    def wait_for_http(self, timeout_s: float = 90.0) -> None:
        """Wait until the metrics endpoint on :attr:`port` answers (jobs that print no port line)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                self.scrape()
                return
            except OSError:
                time.sleep(0.2)
        raise JobFailed(
            f"{self.name}: no metrics on port {self.port} within {timeout_s:.0f} s:\n{self.log_tail()}"
        )

    def scrape(self) -> Counters:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as resp:
            return parse_metrics(resp.read().decode())

    def sample_rss(self) -> int:
        """Peak resident set size of the job so far (``VmHWM``; the kernel keeps the maximum)."""
        if self.process is None:
            return self._peak_rss
        self._peak_rss = max(self._peak_rss, peak_rss_bytes(self.process.pid))
        return self._peak_rss

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM the job's process group, SIGKILL after ``timeout_s``; returns the exit code."""
        if self.alive:
            self.sample_rss()
        return super().stop(timeout_s)

    def run_until_done(
        self,
        events: int,
        drained: Callable[[Counters], bool],
        watched: tuple[str, ...],
        timeout_s: float,
        quiet_s: float = 3.0,
        budget_s: float | None = None,
        consumed_by: Callable[[Counters], float] | None = None,
        backlog_drained: Callable[[Counters], bool] | None = None,
    ) -> JobRun:
        """Scrape until the job is done (module docstring); raises :class:`JobFailed` on timeout.

        ``budget_s``: a job too slow to read everything in a short benchmark is measured over its
        first ``budget_s`` seconds instead (events read / time); the run is marked incomplete.
        ``consumed_by``: how many inputs the job has taken in (default ``backbone_events_in_total``).
        ``backlog_drained``: a milestone before "done" (e.g. every input processed and its
        per-event outputs delivered, the end-of-replay windows still to come); its time is
        :attr:`JobRun.backlog_s`: the first scrape on which it holds and after which the watched
        counters stay unchanged for :data:`BACKLOG_STABLE_S` (at most one poll late; a delivery
        still in flight would move them).
        """
        consumed_of = consumed_by or (lambda c: c.total("backbone_events_in_total"))
        if self.port is None:
            self.wait_port()
        deadline = time.monotonic() + timeout_s
        first_input: float | None = None
        last_change = time.monotonic()
        previous: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        counters = Counters({})
        backlog_s: float | None = None
        held_since: float | None = None
        while time.monotonic() < deadline:
            self._check_alive()
            now = time.monotonic()
            counters = self.scrape()
            consumed = consumed_of(counters)
            if first_input is None and consumed > 0:
                first_input = now
            current = counters.watched(watched)
            changed = current != previous
            if changed:
                last_change, previous = now, current
            if backlog_drained is not None and backlog_s is None and first_input is not None:
                if consumed >= events and backlog_drained(counters):
                    if changed or held_since is None:
                        held_since = now
                    elif now - held_since >= BACKLOG_STABLE_S:
                        backlog_s = held_since - first_input
                else:
                    held_since = None
            if budget_s is not None and first_input is not None and now - first_input >= budget_s:
                if consumed < events:
                    self.sample_rss()
                    return JobRun(
                        self.name, int(consumed), now - first_input, counters, self._peak_rss, False
                    )
            if (
                first_input is not None
                and consumed >= events
                and drained(counters)
                and now - last_change >= quiet_s
            ):
                self.sample_rss()
                seconds = last_change - first_input
                return JobRun(self.name, events, seconds, counters, self._peak_rss, backlog_s=backlog_s)
            self.sample_rss()
            time.sleep(POLL_S)
        raise JobFailed(
            f"{self.name} not done within {timeout_s:.0f} s: read {consumed_of(counters):,.0f}"
            f" of {events:,} events; log {self.log_path}:\n{self.log_tail()}"
        )


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process and its live descendants (``/proc``); 0 if gone.

    Why descendants: a component may run its work in a child (a wrapper script, a helper), and a
    child's time reaches its parent's counters only when it is reaped.
    """
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pending = [pid]
    while pending:
        p = pending.pop()
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            for task in Path(f"/proc/{p}/task").iterdir():
                pending.extend(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def peak_rss_bytes(pid: int) -> int:
    """``VmHWM`` (peak resident set) of a live process from ``/proc``; 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0
