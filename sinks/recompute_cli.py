"""``backbone recompute [--from DATE] [--missions FILE] [--drop-old]``, ``recompute list|drop|activate``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from backbone.config import Settings

recompute_app = typer.Typer(
    help="Recompute stage records and KPI windows from the raw events in ClickHouse, as a new version.",
    invoke_without_command=True,
)


def _client(settings: Settings | None = None) -> tuple[Settings, Any]:
    """The settings (read now unless given) and a migrated ClickHouse client, or exit saying why."""
    from backbone.cli import settings_or_exit
    from sinks.cli import client_or_exit
    from sinks.migrate import migrate

    settings = settings or settings_or_exit()
    client = client_or_exit(settings)
    migrate(client)
    return settings, client


@recompute_app.callback()
def recompute(
    ctx: typer.Context,
    from_: str = typer.Option(
        None,
        "--from",
        help="Recompute cases active from this date (2026-01-31, UTC) and windows ending after it.",
    ),
    missions: Path = typer.Option(  # noqa: B008
        None, "--missions", help="Missions file (default: BACKBONE_MISSIONS_FILE)."
    ),
    drop_old: bool = typer.Option(
        False, "--drop-old", help="Drop every other version once the board has switched."
    ),
) -> None:
    """Write a new version from the events table and switch the board to it atomically."""
    if ctx.invoked_subcommand is not None:
        return
    from backbone.cli import settings_or_exit
    from sinks.recompute import RecomputeError, parse_from, rule_differences
    from sinks.recompute import recompute as run
    from stream_processors.missions import MissionsError, load_missions

    try:
        from_ms = parse_from(from_) if from_ is not None else None
    except RecomputeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    settings = settings_or_exit()
    try:  # the rules first: a broken missions file must not open (or migrate) ClickHouse
        rules = load_missions(missions or settings.missions_file)
    except MissionsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    settings, client = _client(settings)
    try:
        differences = rule_differences(client, rules)
        if differences:
            typer.echo("note: the rules differ from those of the processors' stored records:", err=True)
            for line in differences:
                typer.echo(f"  {line}", err=True)
        result = run(
            client,
            rules,
            grace_ms=settings.grace_ms,
            from_ms=from_ms,
            drop_old=drop_old,
            on_phase=lambda name, s: typer.echo(f"  {name}: {s:.2f} s", err=True),
        )
    except RecomputeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        client.close()
    typer.echo(
        f"version {result.version} active: {result.stage_records:,} stage records, "
        f"{result.kpi_windows:,} KPI windows from {result.events:,} events in {result.seconds:.2f} s "
        f"({result.events_per_s:,.0f} events/s)"
        + (f"; dropped {', '.join(map(str, result.dropped))}" if result.dropped else "")
    )


@recompute_app.command("list")
def list_cmd() -> None:
    """List recomputed versions (* = the one the board shows)."""
    from sinks.recompute import list_versions

    _settings, client = _client()
    try:
        versions = list_versions(client)
    finally:
        client.close()
    for v in versions:
        mark = "*" if v.active else " "
        tables = "" if v.tables_present else " (tables dropped)"
        scope = f"from {v.from_time:%Y-%m-%dT%H:%M:%S}Z" if v.from_time else "all history"
        typer.echo(
            f"{mark} v{v.version} {v.status}{tables}: {v.stage_records:,} records, "
            f"{v.kpi_windows:,} windows, {scope}, "
            f"{v.seconds:.2f} s, {v.missions_file} at {v.snapshot_at}"
        )
    if not versions:
        typer.echo(
            "no recomputed versions; the board shows the stream results (`backbone recompute` writes one)"
        )


@recompute_app.command("drop")
def drop_cmd(version: int = typer.Argument(..., help="Version to drop (not the active one).")) -> None:
    """Drop a version's tables."""
    from sinks.recompute import RecomputeError, drop_version, list_versions

    if version <= 0:
        typer.echo(
            f"error: version {version}: versions are numbered from 1; 0 means the stream results, "
            "which cannot be dropped",
            err=True,
        )
        raise typer.Exit(2)
    _settings, client = _client()
    try:
        known = {v.version: v for v in list_versions(client)}
        if version not in known:
            raise RecomputeError(f"no version {version} (`backbone recompute list` shows them)")
        if not known[version].tables_present:
            raise RecomputeError(f"version {version} is already dropped (its tables are gone)")
        drop_version(client, version)
    except RecomputeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        client.close()
    typer.echo(f"version {version} dropped")


@recompute_app.command("activate")
def activate_cmd(
    version: int = typer.Argument(..., help="Version to show on the board; 0 = the stream only."),
) -> None:
    """Switch the board views to another complete version (a rollback), or to the stream only."""
    from sinks.recompute import RecomputeError, activate

    _settings, client = _client()
    try:
        activate(client, version)
    except RecomputeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        client.close()
    typer.echo(f"board shows {'the stream only' if version == 0 else f'version {version}'}")
