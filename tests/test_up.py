"""`backbone up` (the README's run command) brings up the embedded stack and events flow end to end."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from up_fixtures import up_env

from backbone.config import load_settings
from backbone.embedded.broker import free_port
from schemas import contracts
from sinks.client import open_client

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_COUNTS = re.compile(r"messages per topic: (.*)$")


def _last_counts(output: str) -> dict[str, int]:
    lines = [m.group(1) for m in map(_COUNTS.search, output.splitlines()) if m]
    assert lines, f"up printed no topic counts:\n{output[-3000:]}"
    return {k: int(v) for k, v in (pair.split("=") for pair in lines[-1].split())}


def _stored_outcomes(data_dir: Path) -> dict[str, int]:
    """What the sink stored (read once ``up`` has stopped and released the chdb path)."""
    settings = load_settings(data_dir=data_dir)
    client = open_client(settings)
    try:
        windows = client.query("SELECT count() FROM kpi_windows").result_rows[0][0]
        firing, within_sla = client.query(
            """
            SELECT count(), countIf(r.state = 'CLOSED' AND r.sla_met)
            FROM (SELECT DISTINCT alert_id, case_id, mission, journey, stage FROM alerts
                  WHERE kind = 'CASE_SLA' AND state = 'FIRING') AS a
            LEFT JOIN (SELECT * FROM stage_records FINAL) AS r
              ON r.case_id = a.case_id AND r.mission = a.mission AND r.journey = a.journey
             AND r.stage = a.stage
            """
        ).result_rows[0]
        # per stage and minute: completions in the 1m windows against the closed stage records
        # (QA pass 5: the last seconds of completions never reached the windows before up stopped)
        minutes, short = client.query(
            """
            SELECT count(), countIf(ifNull(w.n, 0) != r.n)
            FROM (SELECT stage, toStartOfMinute(ended_at) AS minute, count() AS n FROM stage_records FINAL
                  WHERE state = 'CLOSED' GROUP BY stage, minute) AS r
            LEFT JOIN (SELECT stage, window_start AS minute, sum(completions) AS n FROM kpi_windows FINAL
                       WHERE window = '1m' GROUP BY stage, minute) AS w USING (stage, minute)
            """
        ).result_rows[0]
    finally:
        client.close()
    return {
        "kpi_windows": int(windows),
        "sla_alerts": int(firing),
        "false_sla_alerts": int(within_sla),
        "stage_minutes": int(minutes),
        "stage_minutes_short": int(short),
    }


def test_up_runs_the_embedded_stack_and_events_flow(tmp_path: Path) -> None:
    board_port = free_port()
    env = up_env(tmp_path / "data", board_port)
    proc = subprocess.Popen(
        # two workers: the second one's metrics port once was the sink's, and up died at start
        [sys.executable, "-m", "backbone", "up", "--rate", "100", "--duration", "75", "--workers", "2"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    board_seen = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(3)
        try:
            board_seen = httpx.get(f"http://127.0.0.1:{board_port}/", timeout=2).status_code == 200
        except httpx.HTTPError:
            continue
        if board_seen:
            break
    try:
        output, _ = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"up did not stop after --duration:\n{output[-3000:]}")
    assert proc.returncode == 0, output[-3000:]
    assert "stopped" in output
    counts = _last_counts(output)
    for topic in contracts.INPUT_TOPICS:
        assert counts[topic] > 0, f"no events on {topic}: {counts}"
    # KPI windows too: the simulated agencies never pause, and on the event clock the worker once
    # waited for quiet input before its first tick, so not one window reached the board.
    outputs = (contracts.STAGE_RECORDS, contracts.KPI_WINDOWS, contracts.BACKLOG, contracts.FEED_FRESHNESS)
    for topic in outputs:
        assert counts[topic] > 0, f"processors produced nothing on {topic}: {counts}"
    assert counts[contracts.DEAD_LETTERS] == 0, counts
    assert board_seen, "the built-in board never answered on its port"
    assert "draining:" in output  # the simulator stopped first, the rest ran on (DRAIN_S)
    stored = _stored_outcomes(tmp_path / "data")
    assert stored["kpi_windows"] > 0, stored
    assert stored["stage_minutes"] > 0 and stored["stage_minutes_short"] == 0, stored
    # The warm-up history is a backlog: judged at the catch-up clock, not the wall clock, it must
    # not fire CASE_SLA for stages that ended within their SLA (a few may, by SEMANTICS.md, when the
    # end event itself arrives after the deadline).
    assert stored["sla_alerts"] > 0, stored
    assert stored["false_sla_alerts"] <= 0.02 * stored["sla_alerts"], stored
    logs = tmp_path / "data" / "logs"
    for name in ("sink", "processor-1", "processor-2", "simulator"):
        text = (logs / f"{name}.log").read_text()
        assert "Traceback" not in text, f"{name} crashed:\n{text[-2000:]}"
