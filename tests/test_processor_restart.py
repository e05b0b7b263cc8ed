# ruff: noqa: F401, F811 - module_broker is a pytest fixture imported from processor_fixtures
"""kill -9 a processor worker mid-stream, start it again: the outputs still equal the oracle.

The restarted worker recovers both tables from their changelogs (written in the same flush as
the outputs, before offsets are committed), replays the events after the last commit, and
must end with the same latest stage records, KPI windows (no double counting: hop 2 skips
facts it already applied), backlog and CASE_SLA alerts as the oracle computes from the events.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from processor_fixtures import (
    OutputReader,
    WorkerProcess,
    create_topics,
    differences,
    module_broker,
    oracle_for,
    publish_live,
    simulated_events,
    wait_until,
    worker_env,
)

from backbone.embedded.broker import TansuBroker
from schemas import contracts

pytestmark = pytest.mark.integration


def test_kill9_and_restart_mid_stream_equals_oracle(module_broker: TansuBroker, tmp_path: Path) -> None:
    events = simulated_events(cases=300, seed=23, invalid_share=0.0)
    expected = oracle_for(events)
    create_topics(module_broker.bootstrap)
    env = worker_env(module_broker.bootstrap, tmp_path / "data")
    first = WorkerProcess(env, tmp_path / "worker-1.log", app_id="proc-restart").start()
    reader = OutputReader(module_broker.bootstrap)
    second: WorkerProcess | None = None
    try:
        cut = int(len(events) * 0.45)
        publish_live(module_broker.bootstrap, events[:cut])
        # Let the worker get going, then kill it while it still has work in flight.
        assert wait_until(
            reader, lambda: len(reader.records[contracts.STAGE_RECORDS]) > 200, 60, [first], settle_s=0
        ), "the first worker produced nothing:\n" + first.log_tail()
        publish_live(module_broker.bootstrap, events[cut : cut + 300], pause_s=0.02)
        first.kill9()
        before_restart = len(reader.records[contracts.STAGE_RECORDS])
        publish_live(module_broker.bootstrap, events[cut + 300 :], pause_s=0.0)

        second = WorkerProcess(env, tmp_path / "worker-2.log", app_id="proc-restart").start()
        ok = wait_until(reader, lambda: not differences(reader, expected), timeout_s=180, workers=[second])
        problems = differences(reader, expected, limit=20)
        assert ok and not problems, (
            "after kill -9 and restart, outputs differ from the oracle:\n"
            + "\n".join(problems)
            + "\n--- restarted worker log ---\n"
            + second.log_tail()
        )
        assert len(reader.records[contracts.STAGE_RECORDS]) > before_restart
        assert "Restore complete" in second.log_path.read_text(errors="replace")
    finally:
        reader.close()
        if first.alive:
            first.kill9()
        if second is not None:
            second.stop()
