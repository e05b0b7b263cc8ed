"""Versioned, idempotent schema migrations: ``sinks/migrations/NNNN_<name>.sql`` applied in order.

Each applied file is recorded in ``schema_migrations`` (version, name, sha256 of the file).
Running again applies only what is missing. Editing a file that was already applied is an
error (the checksum no longer matches): add a new migration instead, so that every database
that ran the old text ends up in the same state.

ClickHouse has no transactional DDL: a migration interrupted half-way is re-run from its first
statement, so every statement is written to be re-runnable (``IF NOT EXISTS``). A file holds
several statements separated by a ``;`` at the end of a line; full-line ``--`` comments explain
the choices and are stripped before execution.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from clickhouse_connect.driver.client import Client

from backbone.config import Settings
from sinks.client import open_client

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
MIGRATIONS_TABLE = "schema_migrations"
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """A migration file is malformed, was edited after being applied, or failed; names the file."""


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    path: Path
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"

    def statements(self) -> list[str]:
        """The statements of the file, comments stripped, in order."""
        statements: list[str] = []
        current: list[str] = []
        for line in self.sql.splitlines():
            if line.strip().startswith("--") or not line.strip():
                continue
            current.append(line)
            if line.rstrip().endswith(";"):
                statements.append("\n".join(current).rstrip().rstrip(";").strip())
                current = []
        if current:
            raise MigrationError(f"{self.path.name}: the last statement does not end with ';'")
        return statements


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """All migration files of ``directory``, in version order; refuses bad names and duplicate versions."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        m = _FILE_NAME.match(path.name)
        if not m:
            raise MigrationError(f"{path.name}: migration files are named NNNN_<lowercase_name>.sql")
        version = int(m.group(1))
        if version in found:
            raise MigrationError(f"{path.name}: version {version} is also used by {found[version].path.name}")
        found[version] = Migration(version, m.group(2), path, path.read_text())
    return [found[v] for v in sorted(found)]


def _ensure_table(client: Client) -> None:
    client.command(
        f"""CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE}
        (version UInt32, name String, checksum String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3))
        ENGINE = ReplacingMergeTree(applied_at) ORDER BY version"""
    )


def applied_migrations(client: Client) -> dict[int, tuple[str, str]]:
    """version → (name, checksum) of the migrations recorded in the database."""
    _ensure_table(client)
    rows = client.query(f"SELECT version, name, checksum FROM {MIGRATIONS_TABLE} FINAL").result_rows
    return {int(v): (str(n), str(c)) for v, n, c in rows}


def migrate(client: Client, migrations: list[Migration] | None = None) -> list[Migration]:
    """Apply the missing migrations in order; returns those applied now.

    Raises :class:`MigrationError` when an applied file was edited or renamed, or a statement fails.
    """
    todo = discover() if migrations is None else migrations
    done = applied_migrations(client)
    for m in todo:
        if m.version in done:
            name, checksum = done[m.version]
            if name != m.name or checksum != m.checksum:
                raise MigrationError(
                    f"{m.path.name}: already applied as {m.version:04d}_{name} "
                    f"with checksum {checksum[:12]}, "
                    f"the file now has checksum {m.checksum[:12]}; applied migrations must not change "
                    "(add a new migration instead)"
                )
    applied_now: list[Migration] = []
    for m in todo:
        if m.version in done:
            continue
        for i, statement in enumerate(m.statements(), start=1):
            try:
                client.command(statement)
            except Exception as exc:
                first_line = statement.splitlines()[0][:100]
                raise MigrationError(f"{m.path.name}: statement {i} ({first_line}...) failed: {exc}") from exc
        client.insert(
            MIGRATIONS_TABLE, [[m.version, m.name, m.checksum]], column_names=["version", "name", "checksum"]
        )
        log.info("migration applied", extra={"migration": m.label})
        applied_now.append(m)
    return applied_now


def migrate_database(settings: Settings) -> list[Migration]:
    """Open the configured database (creating it), apply missing migrations, close."""
    client = open_client(settings)
    try:
        return migrate(client)
    finally:
        client.close()
