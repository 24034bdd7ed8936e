"""Everything the ledger asks of PostgreSQL, and the translation of its errors.

Appends are serialized by `LOCK TABLE log_entries IN EXCLUSIVE MODE`, taken first in every
append transaction and held until it commits. That is what makes index order equal commit
order: a transaction may only choose index n after the one that wrote n - 1 has committed, so a
reader can never see entry n + 1 without entry n (no gaps), and no two writers, in this process
or another replica, ever pick the same index. EXCLUSIVE mode conflicts with itself and with the
ROW EXCLUSIVE lock any INSERT takes, but not with the ACCESS SHARE lock of a SELECT, so readers
are never blocked. See https://www.postgresql.org/docs/current/explicit-locking.html. Group
commit makes the lock cheap: one acquisition per batch, not per entry.
"""

import contextlib
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import datetime
from typing import NamedTuple

import asyncpg

from ledger.core.entry import subject_for
from ledger.core.note import Verifier
from ledger.core.tree import NodeId
from ledger.errors import AppendOnlyViolation, StorageError

LOG_CHANNEL = "consent_ledger_log"
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


class Head(NamedTuple):
    """The latest checkpoint: the tree every reader and the next append start from."""

    size: int
    root: bytes
    note: str
    recorded_at: datetime


class KeyRecord(NamedTuple):
    key_id: str
    key_name: str
    vkey: str


class TokenRecord(NamedTuple):
    name: str
    scopes: list[str]
    token_hash: bytes


class EntryRow(NamedTuple):
    idx: int
    entry: bytes
    subject: str
    purpose: str
    recorded_at: datetime


_HEAD = "SELECT tree_size, root, note, recorded_at FROM checkpoints ORDER BY tree_size DESC LIMIT 1"
_NODES = """
    SELECT n.level, n.idx, n.hash
    FROM unnest($1::smallint[], $2::bigint[]) AS q(level, idx)
    JOIN merkle_nodes n ON n.level = q.level AND n.idx = q.idx
"""


async def _fetch_nodes(conn: Queryable, ids: Sequence[NodeId]) -> dict[NodeId, bytes]:
    if not ids:
        return {}
    rows = await conn.fetch(_NODES, [n.level for n in ids], [n.index for n in ids])
    found = {NodeId(r["level"], r["idx"]): bytes(r["hash"]) for r in rows}
    if len(found) != len(set(ids)):
        missing = sorted(set(ids) - found.keys())[:3]
        raise StorageError(f"the tree is missing stored nodes, e.g. {missing}")
    return found


def _head(row: asyncpg.Record | None) -> Head | None:
    if row is None:
        return None
    return Head(row["tree_size"], bytes(row["root"]), row["note"], row["recorded_at"])


class AppendTransaction:
    """One group-commit batch: lock, read the head, write entries, nodes and one checkpoint."""

    def __init__(self, conn: Queryable) -> None:
        self.conn = conn

    async def lock_head(self) -> Head | None:
        with translated():
            await self.conn.execute("LOCK TABLE log_entries IN EXCLUSIVE MODE")
            return _head(await self.conn.fetchrow(_HEAD))

    async def nodes(self, ids: Sequence[NodeId]) -> dict[NodeId, bytes]:
        with translated():
            return await _fetch_nodes(self.conn, ids)

    async def subjects(self, device_ids: Sequence[str]) -> dict[str, str]:
        """Each device's subject, creating a salt for devices seen for the first time."""
        wanted = list(dict.fromkeys(device_ids))
        salts = [os.urandom(32) for _ in wanted]
        with translated():
            rows = await self.conn.fetch(
                """
                WITH input AS (
                    SELECT * FROM unnest($1::text[], $2::bytea[], $3::text[]) AS t(device_id, salt, subject)
                ), created AS (
                    INSERT INTO subjects (device_id, salt, subject)
                    SELECT device_id, salt, subject FROM input
                    ON CONFLICT (device_id) DO NOTHING
                    RETURNING device_id, subject
                )
                SELECT device_id, subject FROM created
                UNION ALL
                SELECT s.device_id, s.subject FROM subjects s JOIN input USING (device_id)
                """,
                wanted,
                salts,
                [subject_for(salt, device) for salt, device in zip(salts, wanted, strict=True)],
            )
        return {r["device_id"]: r["subject"] for r in rows}

    async def write(
        self,
        entries: Sequence[EntryRow],
        nodes: Sequence[tuple[NodeId, bytes]],
        head: Head,
        key_id: str,
    ) -> None:
        with translated():
            if entries:
                await self.conn.copy_records_to_table("log_entries", records=entries)
                await self.conn.copy_records_to_table(
                    "merkle_nodes",
                    records=[(n.level, n.index, h) for n, h in nodes],
                    columns=["level", "idx", "hash"],
                )
            await self.conn.execute(
                "INSERT INTO checkpoints (tree_size, root, note, key_id, recorded_at) VALUES ($1, $2, $3, $4, $5)",
                head.size,
                head.root,
                head.note,
                key_id,
                head.recorded_at,
            )
            # Delivered at commit, so a listener never hears of entries it cannot read yet.
            await self.conn.execute("SELECT pg_notify($1, $2)", LOG_CHANNEL, str(head.size))


class Store:
    """Reads for the API and the CLI, and the append transaction for the appender."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @contextlib.asynccontextmanager
    async def appending(self) -> AsyncIterator[AppendTransaction]:
        with translated():
            async with self.pool.acquire() as conn, conn.transaction():
                yield AppendTransaction(conn)

    async def head(self) -> Head | None:
        with translated():
            return _head(await self.pool.fetchrow(_HEAD))

    async def nodes(self, ids: Sequence[NodeId]) -> dict[NodeId, bytes]:
        with translated():
            return await _fetch_nodes(self.pool, ids)

    async def entries(self, start: int, end: int) -> list[bytes]:
        with translated():
            rows = await self.pool.fetch(
                "SELECT entry FROM log_entries WHERE idx >= $1 AND idx < $2 ORDER BY idx", start, end
            )
        return [bytes(r["entry"]) for r in rows]

    async def register_key(self, verifier: Verifier) -> None:
        with translated():
            await self.pool.execute(
                "INSERT INTO signing_keys (key_id, key_name, vkey) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                verifier.id.hex(),
                verifier.name,
                verifier.vkey,
            )

    async def keys(self) -> list[KeyRecord]:
        with translated():
            rows = await self.pool.fetch("SELECT key_id, key_name, vkey FROM signing_keys ORDER BY first_used, key_id")
        return [KeyRecord(r["key_id"], r["key_name"], r["vkey"]) for r in rows]

    async def create_token(self, name: str, token_hash: bytes, scopes: Sequence[str]) -> None:
        with translated():
            await self.pool.execute(
                "INSERT INTO api_tokens (name, token_hash, scopes) VALUES ($1, $2, $3)", name, token_hash, list(scopes)
            )

    async def ensure_token(self, name: str, token_hash: bytes, scopes: Sequence[str]) -> None:
        """Make `token_hash` the one active token called `name` (LEDGER_ADMIN_TOKEN's bootstrap)."""
        with translated():
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", name)
                current = await conn.fetchval(
                    "SELECT token_hash FROM api_tokens WHERE name = $1 AND revoked_at IS NULL", name
                )
                if current is not None and bytes(current) == token_hash:
                    return
                await conn.execute(
                    "UPDATE api_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL", name
                )
                await conn.execute(
                    "INSERT INTO api_tokens (name, token_hash, scopes) VALUES ($1, $2, $3)"
                    " ON CONFLICT (token_hash) DO UPDATE SET revoked_at = NULL, name = EXCLUDED.name",
                    name,
                    token_hash,
                    list(scopes),
                )

    async def revoke_token(self, name: str) -> int:
        with translated():
            status = await self.pool.execute(
                "UPDATE api_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL", name
            )
        return int(status.split()[-1])

    async def token(self, token_hash: bytes) -> TokenRecord | None:
        with translated():
            row = await self.pool.fetchrow(
                "SELECT name, scopes, token_hash FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL",
                token_hash,
            )
        return None if row is None else TokenRecord(row["name"], list(row["scopes"]), bytes(row["token_hash"]))
