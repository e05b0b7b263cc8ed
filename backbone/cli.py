"""The ``backbone`` command. Sub-commands live beside the code they drive; this file wires them.

Each area registers its commands through a ``register(app)`` function so that heavy imports
(Faust, chdb) happen only when that command runs.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from backbone.config import (
    ConfigError,
    Settings,
    load_settings,
    mask_url_password,
    settings_markdown,
    unknown_environment_names,
)

app = typer.Typer(
    name="backbone",
    help="Delivery Backbone: cross-agency journeys, live KPIs and lag alerts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
missions_app = typer.Typer(
    help="Validate the missions file (missions, stages, SLAs, KPI windows, targets).", no_args_is_help=True
)
app.add_typer(missions_app, name="missions")


def settings_or_exit() -> Settings:
    """Load settings or exit with status 2 and the named field(s) that are wrong."""
    try:
        return load_settings()
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def bootstrap_or_exit(
    settings: Settings, bootstrap: str | None = None, has_option: bool = True, also: str | None = None
) -> str:
    """The Kafka bootstrap address (``--bootstrap``, else the setting), or exit 2 saying how to give one.

    One wording for every command that needs a broker. ``has_option``: the command takes
    ``--bootstrap``; ``also``: a last line the command prints on every failure (``produce``'s count).
    """
    servers = bootstrap or settings.kafka_bootstrap_servers
    if servers:
        return servers
    how = "pass --bootstrap HOST:PORT or set" if has_option else "set"
    typer.echo(
        f"error: no broker: {how} BACKBONE_KAFKA_BOOTSTRAP_SERVERS (`backbone up` starts an embedded one)",
        err=True,
    )
    if also:
        typer.echo(also, err=True)
    raise typer.Exit(2)


@contextmanager
def metrics_port_or_exit() -> Iterator[None]:
    """Turn :class:`~backbone.metrics.MetricsPortUnavailable` (its message names the port and the
    setting that chose it) into one ``error:`` line and exit 2, as for every other usage error."""
    from backbone.metrics import MetricsPortUnavailable

    try:
        yield
    except MetricsPortUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


@app.command("config")
def show_config(
    markdown: bool = typer.Option(False, help="Print the reference table for the README."),
) -> None:
    """Print the effective configuration (secrets masked) or the reference table."""
    if markdown:
        typer.echo(settings_markdown())
        return
    settings = settings_or_exit()
    for name, value in settings.model_dump().items():
        typer.echo(f"BACKBONE_{name.upper()}={mask_url_password(value)}")
    warn_unknown_environment()


def warn_unknown_environment() -> None:
    """One stderr line per BACKBONE_* variable that names no setting: it is ignored, say so."""
    for name in unknown_environment_names():
        typer.echo(f"warning: {name} is not a setting, ignored (`backbone config --markdown`)", err=True)


@missions_app.command("check")
def missions_check(
    file: Path = typer.Argument(None, help="Missions file (default: BACKBONE_MISSIONS_FILE)."),
) -> None:
    """Validate a missions file; exit 1 with the field path and reason if it is invalid."""
    from stream_processors.missions import MissionsError, load_missions

    path = file or settings_or_exit().missions_file
    try:
        missions = load_missions(path)
    except MissionsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    for ref in missions.stages:
        s = ref.stage
        typer.echo(
            f"{ref.mission.id}/{ref.journey.id}/{s.id}: {s.start.topic}:{s.start.status} -> "
            f"{s.end.topic}:{s.end.status}, owner {_owners(s)}, SLA {s.sla_ms / 3_600_000:g} h"
        )
    from stream_processors.worker_metrics import sla_gauge_window

    gauge = sla_gauge_window(missions.windows)
    typer.echo(f"Prometheus SLA gauge (rule SlaComplianceBelowTarget): window {gauge or '(none)'}")
    typer.echo(f"ok: {len(missions.stages)} stages, {len(missions.targets)} targets in {path}")


def _owners(stage: Any) -> str:
    """The stage's owner, with the by-province and by-port owners it falls back from."""
    rules = [f"{k} -> {v}" for k, v in {**stage.owner_by_province, **stage.owner_by_port}.items()]
    return f"{', '.join(rules)}, otherwise {stage.owner}" if rules else stage.owner


@app.command("up")
def up(
    simulate: bool = typer.Option(True, help="Run the agency simulator."),
    rate: float = typer.Option(20.0, min=0, help="Simulated events per second (ignored with --no-simulate)."),
    time_scale: float = typer.Option(
        500.0,
        min=0.0001,
        max=10_000,
        help="Demo time: simulated delays and the SLAs are compressed this many times (1 = real time).",
    ),
    duration: float = typer.Option(0.0, min=0, help="Stop after this many seconds (0: until Ctrl-C)."),
    workers: int = typer.Option(1, min=1, help="Stream processor workers."),
    seed: int = typer.Option(7, help="Simulator seed."),
) -> None:
    """Start the embedded stack (broker, topics, processors, sink, board, alerting) and the simulator."""
    from backbone.runtime import run_up
    from stream_processors.missions import MissionsError, load_missions

    if simulate and rate <= 0:
        raise typer.BadParameter(
            "must be positive when the simulator runs (or pass --no-simulate)", param_hint="'--rate'"
        )
    settings = settings_or_exit()
    warn_unknown_environment()
    try:  # before anything starts, as every other setting is checked
        load_missions(settings.missions_file)
    except MissionsError as exc:
        typer.echo(f"error: BACKBONE_MISSIONS_FILE: {exc}", err=True)
        raise typer.Exit(2) from exc

    sys.exit(
        run_up(
            settings,
            simulate=simulate,
            rate=rate,
            duration=duration,
            workers=workers,
            seed=seed,
            time_scale=time_scale,
        )
    )


def _register_areas() -> None:
    import importlib

    for module in (
        "schemas.cli",
        "producers.cli",
        "producers.simulate_cli",
        "stream_processors.cli",
        "sinks.cli",
        "dashboards.cli",
        "alerting.cli",
        "backbone.bench",
    ):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue  # that area has no commands yet
        mod.register(app)


_register_areas()
