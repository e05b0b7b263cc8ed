"""Horizontal scale on one machine: two processor workers in one consumer group.

Two real ``backbone process`` children (same app id, so the same consumer group and the same
changelog topics) run against a fresh Tansu broker. The test proves, from the workers' own
logs and metrics:

1. they share the work: the group gives each a disjoint, non-empty share of the six partitions
   of every agency topic and of the facts topic, together covering all of them (the assignment
   table Faust logs at each rebalance), and each counts events in (its metrics endpoint);
2. when one is killed (SIGKILL, mid-stream: traffic is still being published), the survivor is
   assigned every partition, rebuilds the state from the changelogs and carries on;
3. nothing is lost or double counted: the latest outputs equal the independent oracle
   (``tests/oracle.py``) computed from the simulated events (``producers.simulator``).

The workers run on the event clock (a replay of simulated history). Its watermark is per
worker (SEMANTICS.md: "the newest ``occurred_at`` the processor has seen"), so two workers
replaying history at different speeds disagree on which KPI windows are already closed, and a
completion from the slower one can arrive "late" at the other's hop 2. In production the clock
is the wall clock, which every worker shares. The test therefore gives the workers (and the
oracle) a grace longer than the simulated history: no window closes, every completion is folded
in, and what remains to compare is exactly what scale-out must not change.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import oracle
import pytest
from processor_fixtures import (  # noqa: F401 - module_broker is a fixture
    OutputReader,
    WorkerProcess,
    create_topics,
    differences,
    module_broker,
    publish_events,
    simulated_events,
    wait_until,
    worker_env,
)

from backbone.embedded.broker import TansuBroker
from schemas import contracts
from stream_processors.api import FACTS_TOPIC

pytestmark = pytest.mark.integration

PARTITIONS = 6
ALL_PARTITIONS = set(range(PARTITIONS))
GRACE_MS = 400 * 24 * 3_600_000  # longer than the simulated history (see the module docstring)


_ASSIGNED = "Setting newly assigned partitions"
_ROW = re.compile(r"^\|\s*(?P<topic>[\w.-]+)\s*\|\s*\{(?P<parts>[\d,\s-]*)\}\s*\|")


def _partition_set(text: str) -> set[int]:
    """``"1, 3, 5"`` or ``"0-5"`` or ``"0-2, 4"`` → the partition numbers."""
    out: set[int] = set()
    for item in filter(None, (p.strip() for p in text.split(","))):
        low, _, high = item.partition("-")
        out |= set(range(int(low), int(high or low) + 1))
    return out


def assignments(worker: WorkerProcess) -> list[dict[str, set[int]]]:
    """Every assignment the worker's consumer received (Faust logs the group's "Topic Partition
    Set" table at each rebalance), oldest first, as ``{topic: partitions}``."""
    found: list[dict[str, set[int]]] = []
    current: dict[str, set[int]] | None = None
    for line in worker.log_path.read_text(errors="replace").splitlines():
        if _ASSIGNED in line:
            current = {}
            found.append(current)
        elif current is not None:
            row = _ROW.match(line)
            if row:
                current[row["topic"]] = _partition_set(row["parts"])
            elif line.startswith("+") and "for group" in line:
                current = None
    return found


def current_share(worker: WorkerProcess) -> tuple[set[int], set[int]] | None:
    """(input partitions, KPI facts partitions) of the worker's latest assignment, None before one.

    Every agency topic must be split the same way (case state is partitioned like its input)."""
    received = assignments(worker)
    if not received or not received[-1]:
        return None
    latest = received[-1]
    inputs = {frozenset(latest.get(topic, set())) for topic in contracts.INPUT_TOPICS}
    assert len(inputs) == 1, f"worker {worker.worker_id}: agency topics split differently: {latest}"
    return set(next(iter(inputs))), latest.get(FACTS_TOPIC, set())


def events_in(worker: WorkerProcess) -> float:
    """The worker's ``backbone_events_in_total``, summed over topics, from its metrics endpoint."""
    match = re.search(r"metrics on 127\.0\.0\.1:(\d+)", worker.log_path.read_text(errors="replace"))
    assert match, f"worker {worker.worker_id} did not report its metrics port:\n{worker.log_tail()}"
    with urllib.request.urlopen(f"http://127.0.0.1:{match.group(1)}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(v) for v in re.findall(r"^backbone_events_in_total\{[^}]*\} (\S+)$", text, flags=re.M))


def wait_for(
    condition: Callable[[], bool], timeout_s: float, workers: list[WorkerProcess], what: str
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for w in workers:
            assert w.alive, f"worker {w.worker_id} died while waiting for {what}:\n{w.log_tail()}"
        if condition():
            return
        time.sleep(0.5)
    logs = "\n".join(f"--- worker {w.worker_id} ---\n{w.log_tail(30)}" for w in workers)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{logs}")


def case_sla_problems(reader: OutputReader, expected: oracle.OracleResult) -> list[str]:
    """CASE_SLA alerts against the oracle, allowing exactly SEMANTICS.md's one arrival-dependent case:
    an instance seen overdue before its end arrived fires and resolves although its final duration
    met the SLA (publishing while a worker is caught up makes that legitimately happen)."""
    alerts = [a for a in reader.records[contracts.ALERTS] if a["kind"] == "CASE_SLA"]
    got = {state: {a["alert_id"] for a in alerts if a["state"] == state} for state in ("FIRING", "RESOLVED")}
    want = {"FIRING": expected.firing_ids("CASE_SLA"), "RESOLVED": expected.resolved_ids("CASE_SLA")}
    records = expected.stage_records
    met = records.loc[(records["state"] == "CLOSED") & (records["sla_met"] == True), "record_id"]  # noqa: E712
    seen_overdue_then_met = {oracle.sha1(f"CASE_SLA|{rid}") for rid in met}
    problems = []
    for state in ("FIRING", "RESOLVED"):
        missing = want[state] - got[state]
        unexplained = {
            a
            for a in got[state] - want[state]
            if a not in seen_overdue_then_met or a not in got["FIRING"] or a not in got["RESOLVED"]
        }
        if missing or unexplained:
            problems.append(f"CASE_SLA {state}: {len(missing)} missing, {len(unexplained)} unexplained")
    return problems


def all_problems(reader: OutputReader, expected: oracle.OracleResult) -> list[str]:
    """Stage records, KPI windows and backlog exactly as the oracle; CASE_SLA as above."""
    problems = [p for p in differences(reader, expected, limit=20) if not p.startswith("CASE_SLA")]
    return problems + case_sla_problems(reader, expected)


def test_two_workers_share_partitions_and_the_survivor_takes_over_with_no_loss(
    module_broker: TansuBroker,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    bootstrap = module_broker.bootstrap
    events = simulated_events(cases=300, seed=23)
    newest = max(raw["occurred_at"] for _, raw in events)
    expected = oracle.compute(events, now_ms=newest - GRACE_MS, watermark_ms=newest, grace_ms=GRACE_MS)
    assert newest - int(expected.events["occurred_at"].min()) < GRACE_MS, "history longer than the grace"
    assert len(events) > 2000 and len(expected.kpi_windows) > 100 and len(expected.backlog) > 10

    create_topics(bootstrap, partitions=PARTITIONS)
    app_id = f"scale-{uuid.uuid4().hex[:8]}"
    settings = {"BACKBONE_TOPIC_PARTITIONS": str(PARTITIONS), "BACKBONE_GRACE_MS": str(GRACE_MS)}
    first = WorkerProcess(
        worker_env(bootstrap, tmp_path / "w1", **settings),
        tmp_path / "worker-1.log",
        worker_id=1,
        app_id=app_id,
    ).start()
    second = WorkerProcess(
        worker_env(bootstrap, tmp_path / "w2", **settings),
        tmp_path / "worker-2.log",
        worker_id=2,
        app_id=app_id,
    ).start()
    workers = [first, second]
    reader = OutputReader(bootstrap)
    publisher: threading.Thread | None = None
    try:
        # 1. The group forms with both members and splits the partitions between them.
        def shared() -> bool:
            a, b = current_share(first), current_share(second)
            if a is None or b is None:
                return False
            return all(
                x and y and not (x & y) and (x | y) == ALL_PARTITIONS for x, y in ((a[0], b[0]), (a[1], b[1]))
            )

        wait_for(shared, 120, workers, "both workers to own a share of the partitions")

        half = len(events) // 2
        publish_events(bootstrap, events[:half])
        wait_for(
            lambda: events_in(first) + events_in(second) >= half, 120, workers, "the first half to be read"
        )
        in_before_kill = {w.worker_id: events_in(w) for w in workers}
        # Each read a part, and together about the whole once (two separate groups would read it twice).
        assert all(0 < n < half for n in in_before_kill.values()), in_before_kill
        assert sum(in_before_kill.values()) < 1.5 * half, in_before_kill

        # 2. Kill one mid-stream: the rest of the traffic is being published while it dies.
        rest = events[half:]
        chunks = [rest[i : i + 250] for i in range(0, len(rest), 250)]

        def publish_rest() -> None:
            for chunk in chunks:
                publish_events(bootstrap, chunk)
                time.sleep(0.3)

        publisher = threading.Thread(target=publish_rest, name="publish-rest", daemon=True)
        publisher.start()
        time.sleep(0.3 * min(2, len(chunks)))
        kill_count = len(assignments(first))
        second.kill9()

        wait_for(
            lambda: (
                len(assignments(first)) > kill_count
                and current_share(first) == (ALL_PARTITIONS, ALL_PARTITIONS)
            ),
            120,
            [first],
            "the survivor to own every partition",
        )
        publisher.join(timeout=120)
        assert not publisher.is_alive(), "publishing the rest of the traffic did not finish"

        # 3. Nothing lost, nothing double counted: the latest outputs equal the oracle.
        ok = wait_until(reader, lambda: not all_problems(reader, expected), timeout_s=180, workers=[first])
        problems = all_problems(reader, expected)
        assert ok and not problems, (
            "outputs differ from the oracle after the takeover:\n"
            + "\n".join(problems)
            + f"\n--- survivor log ---\n{first.log_tail()}"
        )
        assert events_in(first) > in_before_kill[1], "the survivor consumed nothing after the takeover"
    finally:
        if publisher is not None:
            publisher.join(timeout=60)
        reader.close()
        codes = [w.stop() for w in workers]
    assert codes[0] == 0, f"the survivor did not stop cleanly (exit {codes[0]}):\n{first.log_tail()}"
