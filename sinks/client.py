"""The ClickHouse client: embedded chdb or a ClickHouse server, same clickhouse-connect API, same SQL.

``settings.clickhouse_url`` empty means embedded: ``chdb:///<settings.chdb_path>``. A chdb path
can be open in one process only (readers included), so in the embedded setup one process
owns it (the sink, which also serves the built-in board; or ``backbone db migrate`` /
``backbone recompute`` while the sink is down).
"""

from __future__ import annotations

import fcntl
import os
import re
import threading
from pathlib import Path
from typing import Any, Protocol

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from backbone.config import Settings, mask_url_password


class ClickHouseUnavailable(RuntimeError):
    """The database cannot be opened or reached; the message says which one and why."""


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
    username: str | None = None
    password = ""
    if settings.clickhouse_username and not settings.embedded_clickhouse:
        username = settings.clickhouse_username
        password = settings.clickhouse_password.get_secret_value()
    if settings.embedded_clickhouse:
        owner = _chdb_owner(settings.chdb_path)
        if owner not in (None, os.getpid()):
            # refuse before chdb tries: it would print its own "Code: 76 ... Cannot lock file" to stderr
            raise ClickHouseUnavailable(_held_by(settings.chdb_path, owner))
    try:
        client = clickhouse_connect.get_client(dsn=client_dsn(settings), username=username, password=password)
    except DatabaseError as exc:
        raise _unavailable(settings, exc) from exc
    try:
        if create_database:
            client.command(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(db)}")
        client.database = db
    except OperationalError as exc:
        client.close()
        raise _unavailable(settings, exc) from exc
    except Exception:
        client.close()
        raise
    return client


def _held_by(path: Path, owner: int) -> str:
    pid = f" (pid {owner})" if owner else ""
    return (
        f"the embedded database at {path} is open in another process{pid}, e.g. the sink of a "
        "running `backbone up` (chdb allows one process per path); stop it, or set "
        "BACKBONE_CLICKHOUSE_URL to a ClickHouse server"
    )


def _unavailable(settings: Settings, exc: DatabaseError) -> ClickHouseUnavailable:
    """Name the database and the reason, in words a user can act on."""
    if settings.embedded_clickhouse:
        path = settings.chdb_path
        owner = _chdb_owner(path)
        if owner is not None:
            return ClickHouseUnavailable(_held_by(path, owner))
        return ClickHouseUnavailable(f"cannot open the embedded database at {path}: {_reason(exc)}")
    where = mask_url_password(settings.clickhouse_url)
    if isinstance(exc, OperationalError):
        return ClickHouseUnavailable(f"cannot reach ClickHouse at {where}: {_reason(exc)}")
    return ClickHouseUnavailable(f"ClickHouse at {where} refused the connection: {_reason(exc)}")


def _chdb_owner(path: Path) -> int | None:
    """The pid that holds the chdb path (0 if unknown), or None if no other process holds it.

    The engine keeps ``path/status`` (``PID: N`` on its first line) locked while it is open and
    removes it on a clean exit, so a lock we cannot take means a live owner.
    """
    status = path / "status"
    try:
        fd = os.open(status, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            match = re.match(rb"PID: (\d+)", os.pread(fd, 64, 0))
            return int(match.group(1)) if match else 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _reason(exc: BaseException) -> str:
    """The innermost cause of a driver error (``Connection refused``), its first line."""
    root, seen = exc, {id(exc)}
    while (inner := root.__cause__ or root.__context__) is not None and id(inner) not in seen:
        root = inner
        seen.add(id(inner))
    text = (root.strerror if isinstance(root, OSError) else None) or str(root) or str(exc)
    return text.splitlines()[0][:300] if text else type(root).__name__


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
