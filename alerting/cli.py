"""``backbone alerting forward | stack | check``."""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from alerting.stack import (
    ALERTMANAGER_CONFIG,
    INSTALL_HINT,
    PROMETHEUS_CONFIG,
    RULE_TESTS_DIR,
)

if TYPE_CHECKING:
    from backbone.metrics import Metrics

alerting_app = typer.Typer(
    help="Alert delivery (alerts topic → Alertmanager) and Prometheus/Alertmanager.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(alerting_app, name="alerting")


@alerting_app.command("forward")
def forward(
    alertmanager_url: str = typer.Option(
        "", help="Alertmanager base URL (default: BACKBONE_ALERTMANAGER_URL, else the local stack's)."
    ),
    alertmanager_port: int | None = typer.Option(
        None,
        help="Port of the local stack's Alertmanager (default: BACKBONE_ALERTMANAGER_PORT).",
    ),
    metrics_port: int | None = typer.Option(
        None,
        help="Prometheus metrics port (default: BACKBONE_FORWARDER_METRICS_PORT; -1: none).",
    ),
    repost_interval: float = typer.Option(60.0, help="Seconds between re-posts of firing alerts."),
    firing_lease: float = typer.Option(900.0, help="endsAt of a firing alert is now + this many seconds."),
) -> None:
    """Deliver alert transitions from backbone.alerts.v1 to Alertmanager until Ctrl-C."""
    from alerting.forwarder import AlertForwarder, AlertmanagerClient, ForwarderOptions
    from alerting.stack import alertmanager_url_for
    from backbone.cli import metrics_port_or_exit, settings_or_exit
    from backbone.logs import setup_logging
    from backbone.metrics import Metrics, serve

    settings = settings_or_exit()
    setup_logging(settings.log_level, "alerting")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no log line per POST
    if settings.embedded_kafka:
        typer.echo("error: BACKBONE_KAFKA_BOOTSTRAP_SERVERS is empty (run it under `backbone up`)", err=True)
        raise typer.Exit(2)
    if repost_interval >= firing_lease:
        typer.echo("error: --repost-interval must be shorter than --firing-lease", err=True)
        raise typer.Exit(2)
    metrics = Metrics()
    _publish_missions(metrics, settings.missions_file)
    setting = "--metrics-port" if metrics_port is not None else "BACKBONE_FORWARDER_METRICS_PORT"
    metrics_port = settings.forwarder_metrics_port if metrics_port is None else metrics_port
    if metrics_port >= 0:
        with metrics_port_or_exit():
            port = serve(metrics, metrics_port, settings.metrics_address, setting)
        typer.echo(f"forwarder metrics on http://127.0.0.1:{port}/metrics")
    url = alertmanager_url or alertmanager_url_for(settings, alertmanager_port)
    forwarder = AlertForwarder(
        settings,
        AlertmanagerClient(url),
        metrics,
        ForwarderOptions(repost_interval_s=repost_interval, firing_lease_s=firing_lease),
    )
    _stop_on_signals(forwarder.stop)
    typer.echo(f"forwarding backbone.alerts.v1 to {url}")
    forwarder.run()


def _publish_missions(metrics: Metrics, missions_file: Path) -> None:
    """Export SLAs and targets for the KPI rules (the processors may export them too)."""
    from stream_processors.missions import MissionsError, load_missions

    try:
        metrics.publish_missions(load_missions(missions_file))
    except MissionsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def _stop_on_signals(stop: Callable[[], object]) -> None:
    def handler(_signum: int, _frame: object) -> None:
        stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


@alerting_app.command("stack")
def stack(
    prometheus_port: int | None = typer.Option(
        None,
        help="Prometheus port, loopback (default: BACKBONE_PROMETHEUS_PORT).",
    ),
    alertmanager_port: int | None = typer.Option(
        None,
        help="Alertmanager port, loopback (default: BACKBONE_ALERTMANAGER_PORT).",
    ),
    forwarder_metrics_port: int | None = typer.Option(
        None,
        help="Forwarder metrics port to scrape (default: BACKBONE_FORWARDER_METRICS_PORT).",
    ),
    workers: int = typer.Option(1, min=1, help="Processor workers to scrape (as `backbone up --workers`)."),
) -> None:
    """Run Prometheus and Alertmanager with the repo's configs in the foreground (Ctrl-C stops)."""
    from alerting.stack import StackError, missing_binaries, stack_for_settings
    from backbone.cli import settings_or_exit

    missing = missing_binaries()
    if missing:
        typer.echo(f"alerting stack not started: {', '.join(missing)} not found. {INSTALL_HINT}")
        raise typer.Exit(0)
    settings = settings_or_exit()
    running = stack_for_settings(
        settings, prometheus_port, alertmanager_port, forwarder_metrics_port, workers
    )
    stopping = threading.Event()
    _stop_on_signals(stopping.set)
    try:
        running.start()
    except StackError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(
        f"Prometheus {running.prometheus_url}  Alertmanager {running.alertmanager_url}  "
        f"(configs and data: {running.work_dir})"
    )
    try:
        while not stopping.wait(1.0):
            for name, process in running.processes.items():
                if process.poll() is not None:
                    typer.echo(
                        f"error: {name} exited with code {process.returncode}; see {running.log_file(name)}",
                        err=True,
                    )
                    raise typer.Exit(1)
    finally:
        running.stop()


@alerting_app.command("check")
def check() -> None:
    """Validate the configs and run the rule unit tests (promtool, amtool)."""
    commands = [
        ["promtool", "check", "config", str(PROMETHEUS_CONFIG)],
        ["promtool", "test", "rules", *sorted(str(p) for p in RULE_TESTS_DIR.glob("*.yml"))],
        ["amtool", "check-config", str(ALERTMANAGER_CONFIG)],
    ]
    missing = sorted({c[0] for c in commands if shutil.which(c[0]) is None})
    if missing:
        typer.echo(f"error: {', '.join(missing)} not found. {INSTALL_HINT}", err=True)
        raise typer.Exit(1)
    failed = 0
    for argv in commands:
        typer.echo(f"$ {' '.join(argv)}")
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        typer.echo((result.stdout + result.stderr).rstrip())
        failed += result.returncode != 0
    if failed:
        typer.echo(f"error: {failed} check(s) failed", err=True)
        raise typer.Exit(1)
    typer.echo("ok: Prometheus config, rules, rule tests and Alertmanager config are valid")
