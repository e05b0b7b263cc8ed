"""``backbone produce``: publish a JSON Lines or CSV export file to an agency topic.

Exit codes: 0 every record acknowledged; 1 some records rejected or failed (see the rejects
file), or the run stopped early; 2 usage or configuration error (nothing sent); 3 broker
unreachable or topic missing (nothing sent).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, NoReturn

import typer

EXIT_REJECTED = 1
EXIT_USAGE = 2
EXIT_BROKER = 3


def register(app: typer.Typer) -> None:
    app.command("produce")(produce)


def produce(
    topic: Annotated[str, typer.Option("--topic", "-t", help="Agency topic, e.g. customs.clearances.v1.")],
    file: Annotated[
        Path, typer.Option("--file", "-f", help="JSON Lines (.jsonl) or CSV (.csv) export file.")
    ],
    fmt: Annotated[
        str | None, typer.Option("--format", help="jsonl or csv (default: from the file extension).")
    ] = None,
    bootstrap: Annotated[
        str | None,
        typer.Option(
            "--bootstrap", help="Kafka bootstrap host:port (default: BACKBONE_KAFKA_BOOTSTRAP_SERVERS)."
        ),
    ] = None,
    rejects: Annotated[
        Path | None,
        typer.Option(
            "--rejects", help="Where rejected/failed lines go, as JSON Lines (default: <file>.rejects.jsonl)."
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1.0, help="Seconds a record may wait for its acknowledgement.")
    ] = 30.0,
    progress_every: Annotated[
        int, typer.Option("--progress-every", min=1, help="Report progress on stderr every N lines.")
    ] = 10_000,
) -> None:
    """Publish every record of a file to an agency topic: each line is acknowledged or rejected with a reason.

    Money in files is PKR ("1500.50"). Timestamps are ISO-8601 with a timezone, or epoch millis.

    published_at defaults to now. CSV: a header row of field names; lists ';'-separated; empty cell = null.

    Exit 1 if anything was rejected or failed (see the rejects file), 2 on a usage error, 3 if unreachable.
    """
    from backbone.cli import bootstrap_or_exit, settings_or_exit
    from producers.batch_file import BatchFileError, detect_format
    from producers.batch_upload import check_rejects_path, progress_line, upload_file
    from producers.publisher import Publisher, PublisherError
    from schemas import contracts

    settings = settings_or_exit()
    servers = bootstrap_or_exit(settings, bootstrap, also="0 sent")
    if topic not in contracts.INPUT_TOPICS:
        _fail(f"unknown topic {topic!r}; agency topics: {', '.join(contracts.INPUT_TOPICS)}", EXIT_USAGE)
    if not file.is_file():
        _fail(f"file not found: {file}", EXIT_USAGE)
    try:
        file_format = detect_format(file, fmt)
    except BatchFileError as exc:
        _fail(str(exc), EXIT_USAGE)
    rejects_path = rejects or file.with_name(file.name + ".rejects.jsonl")
    try:
        check_rejects_path(file, rejects_path)
    except BatchFileError as exc:
        _fail(f"--rejects: {exc}" if rejects else f"{exc} (pass --rejects FILE)", EXIT_USAGE)

    publisher = Publisher(settings, servers, message_timeout_ms=int(timeout * 1000))
    try:
        publisher.check_topic(topic, timeout_s=min(timeout, 10.0))
    except PublisherError as exc:
        _fail(str(exc), EXIT_BROKER)

    started = time.monotonic()
    try:
        summary = upload_file(
            publisher,
            topic,
            file,
            file_format,
            rejects_path,
            progress=lambda s: typer.echo(progress_line(s, started), err=True),
            progress_every=progress_every,
        )
    except BatchFileError as exc:
        _fail(str(exc), EXIT_USAGE)
    for problem in summary.problems:
        typer.echo(problem, err=True)
    unlisted = summary.rejected + summary.failed - len(summary.problems)
    if unlisted > 0:
        typer.echo(f"... and {unlisted:,} more in {rejects_path}", err=True)
    if summary.stopped is not None:
        typer.echo(
            f"error: stopped after {summary.read:,} records, the rest of the file unread: {summary.stopped}",
            err=True,
        )
    elapsed = time.monotonic() - started
    blank = (
        f", {summary.blank:,} blank line{'' if summary.blank == 1 else 's'} skipped" if summary.blank else ""
    )
    typer.echo(
        f"{file.name} → {topic}: {summary.read:,} read, {summary.sent:,} sent, "
        f"{summary.rejected:,} rejected, {summary.failed:,} failed{blank} in {elapsed:.1f} s"
        + ("" if summary.ok else f" (rejects: {rejects_path})")
    )
    if not summary.ok:
        raise typer.Exit(EXIT_REJECTED)


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    typer.echo("0 sent", err=True)
    raise typer.Exit(code)
