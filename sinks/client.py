"""The ClickHouse client: embedded chdb or a ClickHouse server, same clickhouse-connect API, same SQL.

``settings.clickhouse_url`` empty means embedded: ``chdb:///<settings.chdb_path>``. A chdb path
can be open in one process only (readers included), so in the embedded setup one process
owns it (the sink, which also serves the built-in board; or ``backbone db migrate`` /
``backbone recompute`` while the sink is down).
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from backbone.config import Settings


class QueryFunction(Protocol):
    """What the board gets: run one SELECT with bound parameters, rows as dicts."""

    def __call__(self, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]: ...


def client_dsn(settings: Settings) -> str:
    """The clickhouse-connect DSN for these settings (embedded chdb unless a server URL is set)."""
    if settings.embedded_clickhouse:
        path = settings.chdb_path
        path.mkdir(parents=True, exist_ok=True)
        return f"chdb:///{path}"
    return settings.clickhouse_url


def open_client(settings: Settings, database: str | None = None, create_database: bool = True) -> Client:
    """Open a client whose default database is ``database`` (default ``settings.clickhouse_database``).

    The database is created first when missing, so a fresh chdb path or server works at once.
    """
    db = database or settings.clickhouse_database
    credentials: dict[str, str] = {}
    if settings.clickhouse_username and not settings.embedded_clickhouse:
        credentials = {
            "username": settings.clickhouse_username,
            "password": settings.clickhouse_password.get_secret_value(),
        }
    client = clickhouse_connect.get_client(dsn=client_dsn(settings), **credentials)
    try:
        if create_database:
            client.command(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(db)}")
        client.database = db
    except Exception:
        client.close()
        raise
    return client


def quote_identifier(name: str) -> str:
    """Backtick-quote an identifier (database/table names come from settings, not users)."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


class LockedQuery:
    """A thread-safe :class:`QueryFunction` over one client (clickhouse-connect clients are not)."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._lock = threading.Lock()

    def __call__(self, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with self._lock:
            result = self._client.query(sql, parameters=parameters)
            return list(result.named_results())

    def close(self) -> None:
        with self._lock:
            self._client.close()
