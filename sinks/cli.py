"""``backbone db migrate`` and ``backbone sink run [--serve-board]`` (and ``backbone recompute``)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Any

import typer

log = logging.getLogger("backbone.sink")

db_app = typer.Typer(help="ClickHouse schema: versioned migrations.", no_args_is_help=True)
sink_app = typer.Typer(
    help="The ClickHouse sink: topics → tables, offsets committed after inserts.", no_args_is_help=True
)


def client_or_exit(settings: Any, create_database: bool = True) -> Any:
    """Open the configured ClickHouse or exit with status 1 saying which one and why
    (unreachable server, embedded path held by another process)."""
    from sinks.client import ClickHouseUnavailable, open_client

    try:
        return open_client(settings, create_database=create_database)
    except ClickHouseUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply the missing migrations (sinks/migrations) in order; safe to run again."""
    from backbone.cli import settings_or_exit
    from sinks.client import ClickHouseUnavailable
    from sinks.migrate import MigrationError, migrate_database

    settings = settings_or_exit()
    try:
        applied = migrate_database(settings)
    except (ClickHouseUnavailable, MigrationError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    where = settings.clickhouse_url or f"chdb:///{settings.chdb_path}"
    names = ", ".join(m.label for m in applied) or "none (up to date)"
    typer.echo(f"database {settings.clickhouse_database} at {where}: applied {names}")


def _start_board(settings: Any) -> tuple[Any, Any] | None:
    """Serve the built-in board from this process (it owns the chdb path); None if not available."""
    try:
        from dashboards.board.server import start_board
    except ModuleNotFoundError as exc:
        log.warning("built-in board not available; running the sink without it", extra={"error": str(exc)})
        return None
    from sinks.client import LockedQuery, open_client

    query = LockedQuery(open_client(settings))
    handle = start_board(query, settings.board_port, settings)
    log.info("board serving", extra={"port": settings.board_port})
    return handle, query


def _stop_board(board: tuple[Any, Any] | None) -> None:
    if board is None:
        return
    handle, query = board
    for name in ("stop", "close", "shutdown"):
        stop = getattr(handle, name, None)
        if callable(stop):
            stop()
            break
    query.close()


def _require_tables(client: Any, database: str) -> None:
    """Exit with status 2 naming what is missing when the sink's tables are not there (--no-migrate)."""
    from clickhouse_connect.driver.exceptions import DatabaseError

    from sinks import rows

    wanted = {rows.EVENTS_TABLE, *rows.OUTPUT_TABLES.values()}
    try:
        result = client.query(
            "SELECT name FROM system.tables WHERE database = {db:String}", parameters={"db": database}
        )
        present = {r[0] for r in result.result_rows}
    except DatabaseError as exc:
        present = set()
        log.error("cannot list the sink's tables", extra={"error": str(exc).splitlines()[0][:300]})
    missing = sorted(wanted - present)
    if missing:
        client.close()
        typer.echo(
            f"error: --no-migrate but database {database} lacks {', '.join(missing)}; "
            "run `backbone db migrate` (with a user that may create tables) first",
            err=True,
        )
        raise typer.Exit(2)


@sink_app.command("run")
def sink_run(
    serve_board: bool = typer.Option(
        False, "--serve-board", help="Also serve the built-in board from this process."
    ),
    group: str = typer.Option(
        "backbone-sink", help="Kafka consumer group (a new group re-reads every topic)."
    ),
    batch_rows: int = typer.Option(50_000, min=1, help="Flush a table's batch at this many rows."),
    max_batch_age: float = typer.Option(
        0.5, min=0.01, help="Flush when the oldest buffered row is this old (s)."
    ),
    migrate_schema: bool = typer.Option(
        True,
        "--migrate/--no-migrate",
        help="Apply missing migrations at start; --no-migrate lets a writer user without CREATE "
        "rights run the sink (run `backbone db migrate` with an admin user first).",
    ),
) -> None:
    """Run the sink until SIGINT/SIGTERM: migrate, consume, insert in batches, commit after inserts."""
    from backbone.cli import bootstrap_or_exit, metrics_port_or_exit, settings_or_exit
    from backbone.logs import setup_logging
    from backbone.metrics import Metrics, serve
    from sinks.migrate import migrate
    from sinks.sink import Sink, SinkConfig, SinkFatal, SinkShutdownTimeout

    settings = settings_or_exit()
    bootstrap_or_exit(settings, has_option=False)
    setup_logging(settings.log_level, "backbone.sink")
    client = client_or_exit(settings, create_database=migrate_schema)
    if migrate_schema:
        migrate(client)
    else:
        _require_tables(client, settings.clickhouse_database)
    metrics = Metrics()
    try:
        with metrics_port_or_exit():
            port = serve(
                metrics, settings.sink_metrics_port, settings.metrics_address, "BACKBONE_SINK_METRICS_PORT"
            )
    except typer.Exit:
        client.close()
        raise
    config = SinkConfig(group_id=group, batch_rows=batch_rows, max_batch_age_s=max_batch_age)
    sink = Sink(settings, client, metrics, config)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        log.info("stop requested; flushing", extra={"signal": signum})
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    board = _start_board(settings) if serve_board else None
    log.info("sink running", extra={"metrics_port": port, "group": group, "topics": sink.topics})
    code = 0
    try:
        sink.run(stop)
        log.info("sink stopped cleanly", extra={"rows": sink.rows_inserted, "commits": sink.commits})
    except SinkShutdownTimeout as exc:
        log.error("sink stopped without committing", extra={"error": str(exc)})
        code = 1
    except SinkFatal as exc:
        log.error("sink failed", extra={"error": str(exc)})
        code = 1
    finally:
        _stop_board(board)
        client.close()
    sys.exit(code)


@sink_app.command("replay-history")
def sink_replay_history(
    bootstrap: str = typer.Option(
        None, "--bootstrap", help="Kafka bootstrap host:port (default: BACKBONE_KAFKA_BOOTSTRAP_SERVERS)."
    ),
) -> None:
    """Publish every event stored in ClickHouse back into the agency topics, in stored order.

    For a broker that lost its topics (``backbone up`` restarts its in-memory one with this): the
    processors then rebuild their state from the whole history. Exit 1 if a record failed.
    """
    from backbone.cli import bootstrap_or_exit, settings_or_exit
    from producers.publisher import Publisher, PublisherError
    from sinks.history_replay import replay
    from sinks.migrate import migrate

    settings = settings_or_exit()
    servers = bootstrap_or_exit(settings, bootstrap)
    client = client_or_exit(settings)
    try:
        migrate(client)
        with Publisher(settings, servers) as publisher:
            result = replay(client, publisher, on_progress=_replay_progress())
    except PublisherError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        client.close()
    for line in result.rejected[:20]:
        typer.echo(f"refused by the current contract (kept in ClickHouse): {line}", err=True)
    per_topic = ", ".join(f"{t} {n:,}" for t, n in result.published.items()) or "no stored events"
    typer.echo(
        f"replayed {result.total:,} stored events ({per_topic}); "
        f"{len(result.rejected):,} refused, {result.failed:,} failed"
    )
    if result.failed:
        raise typer.Exit(1)


def _replay_progress() -> Any:
    """Print progress every 50,000 events (a long history takes a while to publish)."""
    step = {"next": 50_000}

    def report(total: int) -> None:
        if total >= step["next"]:
            typer.echo(f"  {total:,} events replayed", err=True)
            step["next"] = total + 50_000

    return report


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
    app.add_typer(sink_app, name="sink")
    from sinks.recompute_cli import recompute_app

    app.add_typer(recompute_app, name="recompute")
