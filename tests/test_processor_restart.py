"""kill -9 a processor worker mid-stream, start it again: the outputs still equal the oracle.

The restarted worker recovers both tables from their changelogs (written once the outputs are
acknowledged, before offsets are committed), replays the events after the last commit, and
must end with the same latest stage records, KPI windows (no double counting: hop 2 skips
facts it already applied), backlog and CASE_SLA alerts as the oracle computes from the events.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from processor_fixtures import (
    OutputReader,
    WorkerProcess,
    create_topics,
    differences,
    oracle_for,
    publish_live,
    simulated_events,
    wait_until,
    worker_env,
)

from backbone.embedded.broker import TansuBroker
from schemas import contracts

pytestmark = pytest.mark.integration


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[TansuBroker]:
    """A fresh broker per run: the topics have fixed names and the oracle compares whole topics."""
    with TansuBroker(log_file=tmp_path / "tansu.log") as b:
        yield b


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_kill9_and_restart_mid_stream_equals_oracle(
    own_broker: TansuBroker, tmp_path: Path, compression: str
) -> None:
    """gzip: what ``up`` runs on the embedded broker; the restarted worker restores its state from
    gzipped changelog batches (read by Faust's aiokafka consumer)."""
    events = simulated_events(cases=300, seed=23, invalid_share=0.0)
    expected = oracle_for(events)
    create_topics(own_broker.bootstrap)
    env = worker_env(own_broker.bootstrap, tmp_path / "data")
    app_id = f"proc-restart-{compression}"
    args = ("--compression", compression)
    first = WorkerProcess(env, tmp_path / "worker-1.log", app_id=app_id, extra_args=args).start()
    reader = OutputReader(own_broker.bootstrap)
    second: WorkerProcess | None = None
    try:
        cut = int(len(events) * 0.45)
        publish_live(own_broker.bootstrap, events[:cut])
        # Let the worker get going, then kill it while it still has work in flight.
        assert wait_until(
            reader, lambda: len(reader.records[contracts.STAGE_RECORDS]) > 200, 60, [first], settle_s=0
        ), "the first worker produced nothing:\n" + first.log_tail()
        publish_live(own_broker.bootstrap, events[cut : cut + 300], pause_s=0.02)
        first.kill9()
        before_restart = len(reader.records[contracts.STAGE_RECORDS])
        publish_live(own_broker.bootstrap, events[cut + 300 :], pause_s=0.0)

        second = WorkerProcess(env, tmp_path / "worker-2.log", app_id=app_id, extra_args=args).start()
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
