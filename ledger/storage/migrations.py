"""Plain SQL migrations, `NNNN_name.sql`, applied in order, each exactly once.

Replicas that start together all call `migrate`; a session advisory lock lets one apply while the
others wait, then find nothing left to do. Each file runs in its own transaction with its record,
so a failed migration leaves no trace and is retried on the next start.
"""

import hashlib
import re
from pathlib import Path
from typing import NamedTuple

import asyncpg

from ledger.core.entry import DEVICE_ID_PATTERN
from ledger.errors import MigrationError
from ledger.storage.database import translated

# An arbitrary constant that names "the ledger's migration lock" among advisory locks.
LOCK_KEY = 0x4C454447_00000001
FILE_NAME = re.compile(r"([0-9]{4})_([a-z0-9_]+)\.sql")


class Migration(NamedTuple):
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def default_directory() -> Path:
    package = Path(__file__).resolve().parents[1]
    for candidate in (package.parent / "migrations", package / "_migrations"):
        if candidate.is_dir():
            return candidate
    raise MigrationError("no migrations directory found beside the ledger package")


def discover(directory: Path) -> list[Migration]:
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = FILE_NAME.fullmatch(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        migrations.append(Migration(int(match[1]), match[2], path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return migrations


async def migrate(url: str, directory: Path | None = None) -> list[str]:
    """Apply what is missing; return the names applied. Refuse if an applied file was edited."""
    pending = discover(directory or default_directory())
    applied_now: list[str] = []
    with translated():
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version    integer     PRIMARY KEY,
                       name       text        NOT NULL,
                       checksum   text        NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done = {r["version"]: r["checksum"] for r in await conn.fetch("SELECT * FROM schema_migrations")}
            for migration in _unapplied(pending, done):
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
                applied_now.append(f"{migration.version:04d}_{migration.name}")
        finally:
            await conn.close()
    return applied_now


def _unapplied(known: list[Migration], done: dict[int, str]) -> list[Migration]:
    """The known migrations missing from `done` (version -> checksum); refuse an applied one that was edited.
    Versions applied that this code does not know (a newer ledger migrated) are left alone."""
    for migration in known:
        if migration.version in done and done[migration.version] != migration.checksum:
            raise MigrationError(f"migration {migration.version:04d}_{migration.name} was edited after it was applied")
    return [m for m in known if m.version not in done]


async def unapplied(url: str, directory: Path | None = None) -> list[str] | None:
    """The migrations this ledger has that the database lacks, changing nothing (for commands that
    only read); None if the database has no ledger schema at all."""
    known = discover(directory or default_directory())
    with translated():
        conn = await asyncpg.connect(url)
        try:
            if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
                return None
            done = {
                r["version"]: r["checksum"] for r in await conn.fetch("SELECT version, checksum FROM schema_migrations")
            }
        finally:
            await conn.close()
    return [f"{m.version:04d}_{m.name}" for m in _unapplied(known, done)]


# PostgreSQL's `$` matches only at the very end (its regexes are not newline-sensitive by
# default), and it reads the lookahead the same way: the API's own pattern, applied to the rows.
INVALID_DEVICE_IDS = "SELECT count(*) FROM subjects WHERE device_id !~ $1"


async def count_invalid_device_ids(url: str) -> int:
    """Rows whose device_id the API no longer takes (stored before every pattern matched the whole
    value: a trailing newline). They cannot be checked or erased by device_id; README says how to
    erase them. Only the count is reported: a device_id is personal data."""
    with translated():
        conn = await asyncpg.connect(url)
        try:
            count: int = await conn.fetchval(INVALID_DEVICE_IDS, DEVICE_ID_PATTERN)
        finally:
            await conn.close()
    return count
