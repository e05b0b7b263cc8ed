"""A component run as a child process, the way the benchmarks and the fault tests drive them.

The worker, the sink and the benchmark peers are started as real ``python -m ...`` processes so
a test can kill -9 them and a benchmark measures them alone. Each runs in its own session (it
and any children it starts stop together) and writes stdout and stderr to one log file, whose
tail goes into every failure message.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

from backbone.config import REPO_ROOT

KILL_WAIT_S = 15.0
"""How long a SIGKILLed process group may take to be reaped."""


class ChildProcess:
    """Start, watch and stop one child process; mixed into the dataclasses that say what to run.

    Subclasses hold ``log_path`` and ``process`` (``None`` until started) and call
    :meth:`spawn` from their ``start``.
    """

    log_path: Path
    process: subprocess.Popen[bytes] | None
    stop_timeout_s: ClassVar[float] = 30.0
    """How long :meth:`stop` waits for a clean exit by default."""
    signal_group_on_stop: ClassVar[bool] = False
    """SIGTERM the whole process group on :meth:`stop` (True) or only the child (False: the
    component shuts down its own helpers, which is what a clean exit is meant to prove)."""

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], *, append_log: bool = True) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log_path, "ab" if append_log else "wb")  # noqa: SIM115 - the child's for its life
        self.process = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill9(self) -> None:
        """SIGKILL the child's process group (a crash: no shutdown code runs)."""
        assert self.process is not None, "not started"
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(KILL_WAIT_S)

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM and wait for the exit code; SIGKILL after ``timeout_s`` (then ``None``)."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        if self.signal_group_on_stop:
            os.killpg(self.process.pid, signal.SIGTERM)
        else:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(self.stop_timeout_s if timeout_s is None else timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(KILL_WAIT_S)
            return None

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return "(no log)"
