"""`backbone up` (the README's run command) brings up the embedded stack and events flow end to end."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from backbone.embedded.broker import free_port
from schemas import contracts

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_COUNTS = re.compile(r"messages per topic: (.*)$")


def _last_counts(output: str) -> dict[str, int]:
    lines = [m.group(1) for m in map(_COUNTS.search, output.splitlines()) if m]
    assert lines, f"up printed no topic counts:\n{output[-3000:]}"
    return {k: int(v) for k, v in (pair.split("=") for pair in lines[-1].split())}


def test_up_runs_the_embedded_stack_and_events_flow(tmp_path: Path) -> None:
    board_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKBONE_")}
    env.update(
        BACKBONE_DATA_DIR=str(tmp_path / "data"),
        BACKBONE_BOARD_PORT=str(board_port),
        BACKBONE_BOARD_URL=f"http://127.0.0.1:{board_port}",
        BACKBONE_PROCESSOR_METRICS_PORT=str(free_port()),
        BACKBONE_SINK_METRICS_PORT=str(free_port()),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "backbone", "up", "--rate", "100", "--duration", "75"],
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
    for topic in (contracts.STAGE_RECORDS, contracts.BACKLOG, contracts.FEED_FRESHNESS):
        assert counts[topic] > 0, f"processors produced nothing on {topic}: {counts}"
    assert counts[contracts.DEAD_LETTERS] == 0, counts
    assert board_seen, "the built-in board never answered on its port"
    logs = tmp_path / "data" / "logs"
    for name in ("sink", "processor-1", "simulator"):
        text = (logs / f"{name}.log").read_text()
        assert "Traceback" not in text, f"{name} crashed:\n{text[-2000:]}"
