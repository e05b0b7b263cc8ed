"""``backbone schemas check``: published contracts stay unchanged and readable by the newest version."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

schemas_app = typer.Typer(
    help="Check the event contracts (Avro schemas) and their evolution.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(schemas_app, name="schemas")


@schemas_app.command("check")
def check(
    avro_dir: Annotated[
        Path | None,
        typer.Option("--avro-dir", help="Folder of <topic>/v<N>.avsc files (default: the repo's)."),
    ] = None,
    lock: Annotated[
        Path | None,
        typer.Option(
            "--lock", help="Published-versions lock (default: published.json beside the avro folder)."
        ),
    ] = None,
    write_lock: Annotated[
        bool, typer.Option("--write-lock", help="Add new, compatible versions to the lock (publishing them).")
    ] = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="Also fail if a version is not in the lock.")
    ] = False,
    samples: Annotated[int, typer.Option("--samples", min=1, help="Random records per older version.")] = 50,
) -> None:
    """Fail if a published version was edited or deleted, or the newest version cannot read an older one."""
    from schemas import contracts, evolution

    folder = avro_dir or contracts.AVRO_DIR
    lock_path = lock or folder.parent / "published.json"
    if not folder.is_dir():
        typer.echo(f"error: no schema folder at {folder}", err=True)
        raise typer.Exit(2)
    try:
        report = evolution.check(folder, lock_path, samples)
    except (evolution.SchemaLoadError, ValueError, OSError) as exc:  # unparseable .avsc or lock file
        typer.echo(f"error: cannot load the schemas: {exc}", err=True)
        raise typer.Exit(2) from exc
    for problem in report.problems:
        typer.echo(f"error: {problem}", err=True)
    if report.problems:
        typer.echo(f"schemas check failed: {len(report.problems)} problem(s) in {folder}", err=True)
        raise typer.Exit(1)
    if write_lock:
        added = evolution.write_lock(folder, lock_path, report)
        for sv in added:
            typer.echo(f"locked {sv.topic} v{sv.version} ({sv.fingerprint.hex()})")
        typer.echo(f"ok: {lock_path} pins {len(added)} new version(s)")
        return
    for sv in report.unlocked:
        typer.echo(
            f"notice: {sv.topic} v{sv.version} is not yet published (not in {lock_path.name}); when it is, "
            "run `backbone schemas check --write-lock` and commit the lock with it",
            err=True,
        )
    if strict and report.unlocked:
        raise typer.Exit(1)
    typer.echo(f"ok: {report.checked} older version(s) readable by the newest; published versions unchanged")
