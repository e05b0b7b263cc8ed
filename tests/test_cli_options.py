"""Bad options and unusable databases stop the CLI with a message naming what and why, no traceback.

Unit tests: no broker. The ClickHouse cases use an unreachable port or a chdb path held by a
child process, so every command here fails before it would start anything.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from backbone.cli import app
from backbone.config import ConfigError, load_settings
from backbone.runtime import DataDirBusy, hold_data_dir

REPO = Path(__file__).resolve().parent.parent
UNREACHABLE = "http://127.0.0.1:1"  # nothing listens on port 1: connection refused at once


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("BACKBONE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("BACKBONE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RUST_BACKTRACE", "0")


def _refused(result: object, code: int, *words: str) -> None:
    """``result`` exited with ``code``, names every word, and shows no traceback."""
    output = result.output  # type: ignore[attr-defined]
    assert result.exit_code == code, output  # type: ignore[attr-defined]
    assert "Traceback" not in output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception  # type: ignore[attr-defined]
    for word in words:
        assert word in output, output


def _backbone(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "backbone", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


# -- BACKBONE_CLICKHOUSE_URL --------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["ftp://x", "garbage", "http://", "http://h:99999", "chdb:", "localhost:8123"]
)
def test_config_refuses_a_clickhouse_url_it_cannot_use(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("BACKBONE_CLICKHOUSE_URL", url)
    with pytest.raises(ConfigError, match="BACKBONE_CLICKHOUSE_URL"):
        load_settings()
    _refused(CliRunner().invoke(app, ["config"]), 2, "BACKBONE_CLICKHOUSE_URL")


def test_a_refused_clickhouse_url_does_not_show_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKBONE_CLICKHOUSE_URL", "http://writer:s3cret@h:99999/backbone")
    result = CliRunner().invoke(app, ["config"])
    _refused(result, 2, "BACKBONE_CLICKHOUSE_URL", "writer:**********@h:99999")
    assert "s3cret" not in result.output


@pytest.mark.parametrize(
    "url", ["http://clickhouse:8123/backbone", "https://u:p@ch.example.org", "chdb:///tmp/x", "chdb://memory"]
)
def test_config_accepts_the_clickhouse_urls_the_client_supports(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("BACKBONE_CLICKHOUSE_URL", url)
    assert load_settings().clickhouse_url == url


# -- ClickHouse not usable ----------------------------------------------------------------------


@pytest.mark.parametrize("args", [["db", "migrate"], ["recompute", "list"], ["recompute", "drop", "3"]])
def test_unreachable_clickhouse_is_named_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    monkeypatch.setenv("BACKBONE_CLICKHOUSE_URL", UNREACHABLE)
    _refused(
        CliRunner().invoke(app, args), 1, f"cannot reach ClickHouse at {UNREACHABLE}: Connection refused"
    )


def test_sink_run_with_unreachable_clickhouse_exits_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKBONE_CLICKHOUSE_URL", UNREACHABLE)
    monkeypatch.setenv("BACKBONE_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    _refused(CliRunner().invoke(app, ["sink", "run"]), 1, f"cannot reach ClickHouse at {UNREACHABLE}")


def test_a_chdb_path_held_by_another_process_is_named_with_its_pid(tmp_path: Path) -> None:
    """What `db migrate` or `recompute list` meet while `backbone up`'s sink owns the path."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\n"
            "from backbone.config import load_settings\n"
            "from sinks.client import open_client\n"
            "client = open_client(load_settings())\n"
            "print('open', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        chdb_path = (tmp_path / "data" / "chdb").resolve()
        for args in (["db", "migrate"], ["recompute", "list"]):
            done = _backbone(*args)
            assert done.returncode == 1, done.stderr
            assert "Traceback" not in done.stderr
            assert "Code: 76" not in done.stderr  # chdb's own lock message, printed when it tries
            assert f"the embedded database at {chdb_path} is open in another process (pid {holder.pid})" in (
                done.stderr
            )
            assert "BACKBONE_CLICKHOUSE_URL" in done.stderr
    finally:
        holder.communicate("", timeout=30)


def test_sink_run_without_a_broker_exits_2_like_process_and_forward() -> None:
    _refused(CliRunner().invoke(app, ["sink", "run"]), 2, "no broker", "BACKBONE_KAFKA_BOOTSTRAP_SERVERS")


@pytest.mark.parametrize(
    "args",
    [
        ["produce", "-t", "customs.clearances.v1", "-f", "README.md"],
        ["simulate", "--duration", "1"],
        ["process"],
        ["sink", "replay-history"],
    ],
)
def test_commands_with_bootstrap_option_say_both_ways_to_name_a_broker(args: list[str]) -> None:
    """One wording for every command that takes ``--bootstrap`` (``backbone.cli.bootstrap_or_exit``)."""
    result = CliRunner().invoke(app, args)
    _refused(result, 2, "no broker: pass --bootstrap HOST:PORT or set BACKBONE_KAFKA_BOOTSTRAP_SERVERS")


def test_a_taken_metrics_port_is_named_with_the_setting_that_chose_it() -> None:
    """QA: a busy port ended the forwarder (and the sink) in a bare 'Address already in use' traceback."""
    from backbone.metrics import Metrics, MetricsPortUnavailable, serve

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsPortUnavailable, match=rf"127.0.0.1:{port}: .*BACKBONE_SINK_METRICS_PORT"):
            serve(Metrics(), port, "127.0.0.1", "BACKBONE_SINK_METRICS_PORT")
        result = CliRunner().invoke(
            app,
            ["alerting", "forward", "--metrics-port", str(port)],
            env={"BACKBONE_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"},
        )
        _refused(result, 2, f"cannot serve metrics on 127.0.0.1:{port}", "--metrics-port")


def test_process_names_an_unreachable_broker_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QA pass 5 (lead): ``process`` against a dead address ended in librdkafka's traceback
    (``KafkaException ... Broker transport failure``) while the sink and the forwarder wait."""
    from backbone import kafka
    from backbone.config import load_settings

    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(kafka.BrokerUnreachable, match=rf"cannot reach Kafka at 127.0.0.1:{port} within 2 s"):
        kafka.ensure_topics(load_settings(), f"127.0.0.1:{port}", timeout_s=2)
    real = kafka.ensure_topics  # the CLI waits the production 30 s: shorten it for the test
    monkeypatch.setattr(kafka, "ensure_topics", lambda *a, **k: real(*a, **{**k, "timeout_s": 2}))
    monkeypatch.setattr("stream_processors.worker.ensure_topics", kafka.ensure_topics)
    result = CliRunner().invoke(
        app,
        ["process", "--bootstrap", f"127.0.0.1:{port}", "--metrics-port", "0"],
        env={"BACKBONE_DATA_DIR": str(tmp_path)},
    )
    _refused(result, 3, f"cannot reach Kafka at 127.0.0.1:{port}", "BACKBONE_KAFKA_BOOTSTRAP_SERVERS")


# -- backbone up --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--time-scale", "0"], "--time-scale"),
        (["--time-scale", "-5"], "--time-scale"),
        (["--time-scale", "20000"], "--time-scale"),  # the simulator's --delay-scale floor is 1/10,000
        (["--workers", "0"], "--workers"),
        (["--rate", "0"], "--rate"),
        (["--rate", "-1"], "--rate"),
        (["--rate", "-1", "--no-simulate"], "--rate"),
        (["--duration", "-1"], "--duration"),
    ],
)
def test_up_checks_its_options_before_starting_anything(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, args: list[str], option: str
) -> None:
    import backbone.runtime

    def started(*_a: object, **_k: object) -> int:
        raise AssertionError("run_up was called")

    monkeypatch.setattr(backbone.runtime, "run_up", started)
    _refused(CliRunner().invoke(app, ["up", *args]), 2, option)
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("content", [None, "missions: [{id: x}]\n"])
def test_up_checks_the_missions_file_before_starting_anything(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: str | None
) -> None:
    """A missing or invalid missions file: one line naming the variable and the reason, exit 2
    (QA: ``up`` ended in a MissionsError traceback while ``missions check`` gave the line)."""
    import backbone.runtime

    def started(*_a: object, **_k: object) -> int:
        raise AssertionError("run_up was called")

    monkeypatch.setattr(backbone.runtime, "run_up", started)
    missions = tmp_path / "missions.yaml"
    if content is not None:
        missions.write_text(content)
    monkeypatch.setenv("BACKBONE_MISSIONS_FILE", str(missions))
    _refused(CliRunner().invoke(app, ["up"]), 2, "BACKBONE_MISSIONS_FILE", str(missions))
    assert not (tmp_path / "data").exists()


def test_up_accepts_rate_0_without_the_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    """With --no-simulate the rate is not used, so 0 is no error (documented: rate of the simulator)."""
    import backbone.runtime

    calls: list[dict[str, object]] = []
    monkeypatch.setattr(backbone.runtime, "run_up", lambda _settings, **kw: calls.append(kw) or 0)
    result = CliRunner().invoke(app, ["up", "--rate", "0", "--no-simulate"])
    assert result.exit_code == 0, result.output
    assert calls[0]["rate"] == 0 and calls[0]["simulate"] is False


def test_the_data_dir_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with hold_data_dir(data_dir):
        with pytest.raises(
            DataDirBusy, match=f"another backbone up is running on {data_dir} \\(pid {os.getpid()}\\)"
        ):
            with hold_data_dir(data_dir):
                pass
    with hold_data_dir(data_dir):  # released on exit
        pass


def test_a_second_up_on_the_same_data_dir_refuses_and_a_dead_ones_lock_does_not_block(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The first `up` is a child holding the lock; the second must not touch logs or files."""
    data_dir = (tmp_path / "data").resolve()
    first = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\n"
            "from pathlib import Path\n"
            "from backbone.runtime import hold_data_dir\n"
            "with hold_data_dir(Path(sys.argv[1])):\n"
            "    print('held', flush=True)\n"
            "    sys.stdin.read()\n",
            str(data_dir),
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert first.stdout is not None and first.stdout.readline().strip() == "held"
        result = CliRunner().invoke(app, ["up", "--duration", "1"])
        _refused(result, 2, f"another backbone up is running on {data_dir} (pid {first.pid})")
        assert not (data_dir / "logs").exists()
    finally:
        first.kill()  # dies without cleanup: the lock file stays behind
        first.communicate(timeout=30)
    assert (data_dir / "up.lock").read_text().strip() == str(first.pid)
    with hold_data_dir(data_dir):
        assert (data_dir / "up.lock").read_text().strip() == str(os.getpid())


# -- backbone recompute (no database needed) ----------------------------------------------------


def test_recompute_refuses_a_bad_from_with_the_accepted_forms_before_opening_the_database(
    tmp_path: Path,
) -> None:
    _refused(CliRunner().invoke(app, ["recompute", "--from", "garbage"]), 2, "--from 'garbage'", "2026-01-31")
    assert not (tmp_path / "data").exists()


def test_recompute_checks_the_missions_file_before_opening_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broken rules file is named even while ClickHouse is unreachable, and nothing is created."""
    monkeypatch.setenv("BACKBONE_CLICKHOUSE_URL", UNREACHABLE)
    broken = tmp_path / "missions.yaml"
    broken.write_text("windows: [{name: 1m, size: 60}]\nmissions: []\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["recompute", "--missions", str(broken)])
    _refused(result, 1, str(broken))
    assert "cannot reach ClickHouse" not in result.output
    monkeypatch.delenv("BACKBONE_CLICKHOUSE_URL")
    _refused(
        CliRunner().invoke(app, ["recompute", "--missions", str(tmp_path / "absent.yaml")]), 1, "absent.yaml"
    )
    assert not (tmp_path / "data").exists()


def test_recompute_drop_0_says_the_stream_results_cannot_be_dropped(tmp_path: Path) -> None:
    _refused(CliRunner().invoke(app, ["recompute", "drop", "0"]), 2, "0 means the stream results")
    assert not (tmp_path / "data").exists()


# -- backbone simulate --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--span", "0d"], "--span"),
        (["--span", "1000000d"], "--span"),
        (["--start", "1999-06-01T00:00:00Z", "--span", "1d"], "--start"),
        (["--rate", "-5"], "--rate"),
        (["--duration", "-1"], "--duration"),
    ],
)
def test_simulate_names_the_bad_option(tmp_path: Path, args: list[str], option: str) -> None:
    out = tmp_path / "events.jsonl"
    _refused(CliRunner().invoke(app, ["simulate", *args, "--to-file", str(out)]), 2, option)
    assert not out.exists()


# -- backbone bench -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--events", "0"], "--events"),
        (["--events", "-5"], "--events"),
        (["--rate", "0"], "--rate"),
        (["--partitions", "0"], "--partitions"),
    ],
)
def test_bench_checks_its_options_before_any_section(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, args: list[str], option: str
) -> None:
    import backbone.bench

    def ran(*_a: object, **_k: object) -> list[object]:
        raise AssertionError("a section ran")

    monkeypatch.setattr(backbone.bench, "run_sections", ran)
    _refused(CliRunner().invoke(app, ["bench", *args, "--out", str(tmp_path / "out")]), 2, option)
