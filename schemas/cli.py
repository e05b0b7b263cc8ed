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


@schemas_app.command("read")
def read(
    topic: Annotated[str, typer.Argument(help="An agency topic or a backbone.* output topic.")],
    bootstrap: Annotated[
        str | None,
        typer.Option(
            "--bootstrap", help="Kafka bootstrap host:port (default: BACKBONE_KAFKA_BOOTSTRAP_SERVERS)."
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--max", min=1, help="Stop after this many records.")] = 20,
    from_beginning: Annotated[
        bool,
        typer.Option("--from-beginning/--new-only", help="Start at the oldest record or wait for new ones."),
    ] = True,
    idle: Annotated[
        float, typer.Option("--idle", min=0.5, help="Stop after this many seconds without a record.")
    ] = 5.0,
) -> None:
    """Print a topic's records as JSON lines, decoded with the contracts (times in UTC, money as
    decimal PKR); a message that does not decode shows its reason. Commits no offset."""
    from backbone.cli import bootstrap_or_exit, settings_or_exit
    from schemas import contracts
    from schemas.topic_reader import read_topic

    known = (*contracts.INPUT_TOPICS, *contracts.OUTPUT_TOPICS)
    if topic not in known:
        typer.echo(f"error: unknown topic {topic!r}; Avro topics: {', '.join(known)}", err=True)
        raise typer.Exit(2)
    settings = settings_or_exit()
    servers = bootstrap_or_exit(settings, bootstrap)
    try:
        for line in read_topic(settings, servers, topic, limit, from_beginning, idle):
            typer.echo(line)
    except RuntimeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(3) from exc
