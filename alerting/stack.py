"""Prometheus and Alertmanager from the Debian binaries, on loopback, with the repo's configs.

The configs in this folder are the one source of truth. Running them elsewhere than the
defaults needs only different addresses (scrape targets, the Alertmanager Prometheus talks
to, where webhooks point) and, in tests, shorter intervals: :func:`render_prometheus_config`
and :func:`render_alertmanager_config` change exactly those keys in the parsed YAML and
nothing else. Rule files are referenced in place, never copied.

Used by ``backbone alerting stack`` (and so by ``backbone up``) and by the end-to-end tests.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import yaml

from backbone.config import FORWARDER_METRICS_PORT, Settings, processor_metrics_port

ALERTING_DIR = Path(__file__).resolve().parent
PROMETHEUS_CONFIG = ALERTING_DIR / "prometheus.yml"
ALERTMANAGER_CONFIG = ALERTING_DIR / "alertmanager.yml"
RULES_DIR = ALERTING_DIR / "rules"
RULE_TESTS_DIR = ALERTING_DIR / "tests"

DEFAULT_PROMETHEUS_PORT: int = Settings.model_fields["prometheus_port"].default
DEFAULT_ALERTMANAGER_PORT: int = Settings.model_fields["alertmanager_port"].default
DEFAULT_FORWARDER_METRICS_PORT = FORWARDER_METRICS_PORT

PROMETHEUS_BINARIES = ("prometheus",)
ALERTMANAGER_BINARIES = ("prometheus-alertmanager", "alertmanager")  # Debian's name first
INSTALL_HINT = (
    "Prometheus and Alertmanager are not installed. On Debian/Ubuntu: "
    "sudo apt-get install prometheus prometheus-alertmanager (scripts/setup.sh does it); "
    "then stop the system services they start (systemctl stop prometheus prometheus-alertmanager)."
)

# The scrape jobs of prometheus.yml, by what they scrape.
JOB_PROCESSORS = "backbone-processors"
JOB_SINK = "backbone-sink"
JOB_FORWARDER = "backbone-alert-forwarder"
JOB_PROMETHEUS = "prometheus"


class StackError(RuntimeError):
    """Prometheus or Alertmanager could not be configured or started; says which and why."""


def find_binary(candidates: Sequence[str]) -> str | None:
    for name in candidates:
        path = shutil.which(name)
        if path:
            return path
    return None


def missing_binaries() -> list[str]:
    """Names of the binaries (Debian package names) that are not on PATH."""
    missing = []
    if find_binary(PROMETHEUS_BINARIES) is None:
        missing.append("prometheus")
    if find_binary(ALERTMANAGER_BINARIES) is None:
        missing.append("prometheus-alertmanager")
    return missing


@dataclass(frozen=True)
class Timings:
    """Interval overrides (tests); ``None`` keeps the value of the repo's config."""

    scrape_interval: str | None = None
    evaluation_interval: str | None = None
    group_wait: str | None = None
    group_interval: str | None = None
    repeat_interval: str | None = None


def _load(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise StackError(f"{path}: cannot read config: {exc}") from exc
    if not isinstance(data, dict):
        raise StackError(f"{path}: expected a YAML mapping")
    return data


def _host_port(url: str) -> tuple[str, str, str]:
    parts = urlsplit(url)
    if not parts.hostname or not parts.port:
        raise StackError(f"{url!r} must be a URL with a host and a port, e.g. http://127.0.0.1:9093")
    return parts.scheme or "http", f"{parts.hostname}:{parts.port}", parts.path.rstrip("/")


def render_prometheus_config(
    scrape_targets: Mapping[str, Sequence[str]],
    alertmanager_url: str,
    timings: Timings = Timings(),
    source: Path = PROMETHEUS_CONFIG,
) -> dict[str, Any]:
    """The repo's prometheus.yml with its addresses replaced; rule files as absolute paths."""
    config = copy.deepcopy(_load(source))
    config["rule_files"] = [str((source.parent / f).resolve()) for f in config.get("rule_files", [])]
    scheme, host_port, path_prefix = _host_port(alertmanager_url)
    am: dict[str, Any] = {"scheme": scheme, "static_configs": [{"targets": [host_port]}]}
    if path_prefix:
        am["path_prefix"] = path_prefix
    config.setdefault("alerting", {})["alertmanagers"] = [am]
    jobs = {job["job_name"]: job for job in config.get("scrape_configs", [])}
    unknown = set(scrape_targets) - set(jobs)
    if unknown:
        raise StackError(
            f"{source}: no scrape job named {', '.join(sorted(unknown))} (jobs: {', '.join(jobs)})"
        )
    for name, targets in scrape_targets.items():
        jobs[name]["static_configs"] = [{"targets": list(targets)}]
    glob = config.setdefault("global", {})
    if timings.scrape_interval:
        glob["scrape_interval"] = timings.scrape_interval
    if timings.evaluation_interval:
        glob["evaluation_interval"] = timings.evaluation_interval
    return config


def _routes(route: dict[str, Any]) -> list[dict[str, Any]]:
    out = [route]
    for child in route.get("routes", []) or []:
        out.extend(_routes(child))
    return out


def render_alertmanager_config(
    webhook_base_url: str | None = None,
    timings: Timings = Timings(),
    smtp_smarthost: str | None = None,
    source: Path = ALERTMANAGER_CONFIG,
) -> dict[str, Any]:
    """The repo's alertmanager.yml with webhook hosts (path kept), SMTP host and timings replaced."""
    config = copy.deepcopy(_load(source))
    if webhook_base_url:
        base = urlsplit(webhook_base_url)
        for receiver in config.get("receivers", []):
            for hook in receiver.get("webhook_configs", []) or []:
                url = urlsplit(hook["url"])
                hook["url"] = urlunsplit((base.scheme, base.netloc, url.path, url.query, url.fragment))
    if smtp_smarthost:
        config.setdefault("global", {})["smtp_smarthost"] = smtp_smarthost
    for route in _routes(config["route"]):
        for key in ("group_wait", "group_interval", "repeat_interval"):
            value = getattr(timings, key)
            if value and (key in route or route is config["route"]):
                route[key] = value
    return config


class AlertingStack:
    """Prometheus (+ Alertmanager unless an external one is given) as child processes.

    ``work_dir`` holds the rendered configs, the TSDB, Alertmanager's state and the logs.
    """

    def __init__(
        self,
        work_dir: Path,
        prometheus_port: int = DEFAULT_PROMETHEUS_PORT,
        alertmanager_port: int = DEFAULT_ALERTMANAGER_PORT,
        scrape_targets: Mapping[str, Sequence[str]] | None = None,
        webhook_base_url: str | None = None,
        timings: Timings = Timings(),
        external_alertmanager_url: str | None = None,
        smtp_smarthost: str | None = None,
    ) -> None:
        self.work_dir = work_dir.resolve()
        self.prometheus_port = prometheus_port
        self.alertmanager_port = alertmanager_port
        self.scrape_targets = dict(scrape_targets or {})
        self.scrape_targets.setdefault(JOB_PROMETHEUS, [f"127.0.0.1:{prometheus_port}"])
        self.webhook_base_url = webhook_base_url
        self.timings = timings
        self.external_alertmanager_url = external_alertmanager_url
        self.smtp_smarthost = smtp_smarthost
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    @property
    def alertmanager_url(self) -> str:
        return (self.external_alertmanager_url or f"http://127.0.0.1:{self.alertmanager_port}").rstrip("/")

    def log_file(self, name: str) -> Path:
        return self.work_dir / f"{name}.log"

    def write_configs(self) -> tuple[Path, Path]:
        """Render both configs into ``work_dir``; returns (prometheus.yml, alertmanager.yml)."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        prom_path = self.work_dir / "prometheus.yml"
        am_path = self.work_dir / "alertmanager.yml"
        prom = render_prometheus_config(self.scrape_targets, self.alertmanager_url, self.timings)
        am = render_alertmanager_config(self.webhook_base_url, self.timings, self.smtp_smarthost)
        header = "# Rendered by alerting/stack.py from the repo's config; edit that file, not this one.\n"
        prom_path.write_text(header + yaml.safe_dump(prom, sort_keys=False))
        am_path.write_text(header + yaml.safe_dump(am, sort_keys=False))
        return prom_path, am_path

    def start(self, timeout_s: float = 30.0) -> AlertingStack:
        missing = (
            missing_binaries()
            if self.external_alertmanager_url is None
            else (["prometheus"] if find_binary(PROMETHEUS_BINARIES) is None else [])
        )
        if missing:
            raise StackError(f"missing binaries: {', '.join(missing)}. {INSTALL_HINT}")
        prom_config, am_config = self.write_configs()
        try:
            if self.external_alertmanager_url is None:
                self._spawn(
                    "alertmanager",
                    [
                        str(find_binary(ALERTMANAGER_BINARIES)),
                        f"--config.file={am_config}",
                        f"--storage.path={self.work_dir / 'alertmanager-data'}",
                        f"--web.listen-address=127.0.0.1:{self.alertmanager_port}",
                        f"--web.external-url={self.alertmanager_url}",
                        "--cluster.listen-address=",  # no gossip port: a single loopback instance
                    ],
                )
            self._spawn(
                "prometheus",
                [
                    str(find_binary(PROMETHEUS_BINARIES)),
                    f"--config.file={prom_config}",
                    f"--storage.tsdb.path={self.work_dir / 'prometheus-data'}",
                    f"--web.listen-address=127.0.0.1:{self.prometheus_port}",
                    f"--web.external-url={self.prometheus_url}",
                ],
            )
            if "alertmanager" in self.processes:
                self._wait_ready("alertmanager", self.alertmanager_url, timeout_s)
            self._wait_ready("prometheus", self.prometheus_url, timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, argv: list[str]) -> None:
        out = open(self.log_file(name), "ab")  # noqa: SIM115 - owned by the child for its life
        self.processes[name] = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        out.close()

    def _wait_ready(self, name: str, base_url: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        process = self.processes[name]
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise StackError(f"{name} exited with code {process.returncode}: {self._log_tail(name)}")
            try:
                if httpx.get(f"{base_url}/-/ready", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise StackError(f"{name} not ready at {base_url} after {timeout_s:.0f} s: {self._log_tail(name)}")

    def _log_tail(self, name: str, lines: int = 5) -> str:
        try:
            text = self.log_file(name).read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) + f" (log: {self.log_file(name)})"

    def wait(self, poll_s: float = 1.0) -> tuple[str, int]:
        """Block until one child exits; returns its name and exit code."""
        while True:
            for name, process in self.processes.items():
                code = process.poll()
                if code is not None:
                    return name, code
            time.sleep(poll_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop Prometheus first (it sends to Alertmanager), then Alertmanager."""
        for name in ("prometheus", "alertmanager"):
            process = self.processes.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            process.terminate()
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> AlertingStack:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def stack_for_settings(
    settings: Settings,
    prometheus_port: int | None = None,
    alertmanager_port: int | None = None,
    forwarder_metrics_port: int | None = None,
    workers: int = 1,
) -> AlertingStack:
    """The stack ``backbone up`` runs: scraping the ports in the settings (every one of ``workers``
    processor workers, :func:`backbone.config.processor_metrics_port`), data under data_dir. A port
    left None is the setting's (``BACKBONE_PROMETHEUS_PORT``, ...)."""
    forwarder = settings.forwarder_metrics_port if forwarder_metrics_port is None else forwarder_metrics_port
    return AlertingStack(
        work_dir=settings.data_dir / "alerting",
        prometheus_port=settings.prometheus_port if prometheus_port is None else prometheus_port,
        alertmanager_port=settings.alertmanager_port if alertmanager_port is None else alertmanager_port,
        scrape_targets={
            JOB_PROCESSORS: [
                f"127.0.0.1:{processor_metrics_port(settings, worker)}" for worker in range(1, workers + 1)
            ],
            JOB_SINK: [f"127.0.0.1:{settings.sink_metrics_port}"],
            JOB_FORWARDER: [f"127.0.0.1:{forwarder}"],
        },
        external_alertmanager_url=settings.alertmanager_url or None,
    )


def alertmanager_url_for(settings: Settings, alertmanager_port: int | None = None) -> str:
    """Where the forwarder posts: the configured Alertmanager, else the stack's own."""
    port = settings.alertmanager_port if alertmanager_port is None else alertmanager_port
    return settings.alertmanager_url or f"http://127.0.0.1:{port}"
