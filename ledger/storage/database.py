"""The connection to PostgreSQL, and the one boundary where its errors become the ledger's."""

import contextlib
from collections.abc import Iterator

import asyncpg

from ledger.errors import AppendOnlyViolation, StorageError

Queryable = asyncpg.Connection | asyncpg.Pool | asyncpg.pool.PoolConnectionProxy

# Everything asyncpg raises when the server or the connection to it fails. InternalClientError
# (and its ProtocolError) is not an InterfaceError: after PostgreSQL was killed, one of these from
# a pooled connection escaped as a 500. OSError covers ConnectionError and TimeoutError (the
# connect timeout). CancelledError is not here: a cancelled request must stay cancelled.
DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)
# A server that does not answer at all (a dropped packet, not a refusal) fails a connection
# attempt after this long, instead of asyncpg's default minute, while requests wait.
CONNECT_TIMEOUT_SECONDS = 10


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Turn driver errors into the ledger's own family at this one boundary."""
    try:
        yield
    except asyncpg.InsufficientPrivilegeError as exc:
        raise AppendOnlyViolation(str(exc)) from exc
    except DRIVER_ERRORS as exc:
        raise StorageError(f"{type(exc).__name__}: {exc}") from exc


async def create_pool(url: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    with translated():
        pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, timeout=CONNECT_TIMEOUT_SECONDS)
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


async def database_exists(server_url: str, name: str) -> bool:
    """Whether database `name` exists on the server, creating nothing (embedded mode, read-only commands)."""
    with translated():
        conn = await asyncpg.connect(server_url)
        try:
            return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
        finally:
            await conn.close()
