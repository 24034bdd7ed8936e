"""The connection to PostgreSQL, and the one boundary where its errors become the ledger's."""

import contextlib
from collections.abc import Iterator

import asyncpg

from ledger.errors import AppendOnlyViolation, StorageError

Queryable = asyncpg.Connection | asyncpg.Pool | asyncpg.pool.PoolConnectionProxy


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Turn driver errors into the ledger's own family at this one boundary."""
    try:
        yield
    except asyncpg.InsufficientPrivilegeError as exc:
        raise AppendOnlyViolation(str(exc)) from exc
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        raise StorageError(f"{type(exc).__name__}: {exc}") from exc


async def create_pool(url: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    with translated():
        pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size)
    assert pool is not None
    return pool


async def ensure_database(server_url: str, name: str) -> None:
    """Create database `name` on the server if it does not exist yet (embedded mode)."""
    with translated():
        conn = await asyncpg.connect(server_url)
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                    await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
