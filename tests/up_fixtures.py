"""The environment of a child ``backbone up`` in tests: own data dir, free ports, no inherited settings."""

from __future__ import annotations

import os
from pathlib import Path

from backbone.embedded.broker import free_port


def up_env(data_dir: Path, board_port: int | None = None) -> dict[str, str]:
    """This process's environment without any ``BACKBONE_*`` variable, plus the child's own
    data dir and free ports for the board and both metrics endpoints (tests run side by side
    with whatever else listens on this machine)."""
    board_port = board_port or free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKBONE_")}
    env.update(
        BACKBONE_DATA_DIR=str(data_dir),
        BACKBONE_BOARD_PORT=str(board_port),
        BACKBONE_BOARD_URL=f"http://127.0.0.1:{board_port}",
        BACKBONE_PROCESSOR_METRICS_PORT=str(free_port()),
        BACKBONE_SINK_METRICS_PORT=str(free_port()),
        RUST_BACKTRACE="0",
    )
    return env
