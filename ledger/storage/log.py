"""The log: entries, the stored nodes of the Merkle tree, checkpoints and keys, and the append
transaction.

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
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import NamedTuple

import asyncpg

from ledger.core.entry import Entry, subject_for
from ledger.core.fold import Row
from ledger.core.note import Verifier
from ledger.core.registry import REGISTRY_PURPOSE, REGISTRY_SUBJECT
from ledger.core.tree import NodeId
from ledger.core.webhooks import Delivery, Subscription
from ledger.errors import LogCorrupted
from ledger.storage.database import Queryable, translated
from ledger.storage.notifications import LOG_CHANNEL


class Head(NamedTuple):
    """The latest checkpoint: the tree every reader and the next append start from."""

    size: int
    root: bytes
    note: str
    recorded_at: datetime
    # The index of the registry in force (the latest registry entry); read only under the lock.
    registry_index: int | None = None


class KeyRecord(NamedTuple):
    key_id: str
    key_name: str
    vkey: str
    # The sizes of the first and last checkpoints the key signed (None: it signed none, as a
    # webhook key never does).
    first_size: int | None = None
    last_size: int | None = None

    @property
    def signed(self) -> bool:
        return self.first_size is not None


class Claimed(NamedTuple):
    """An Idempotency-Key already used: the request it was used for and where that landed."""

    request_hash: bytes
    idx: int
    tree_size: int


class TailRow(NamedTuple):
    idx: int
    entry: bytes
    device_id: str | None


class EntryRow(NamedTuple):
    idx: int
    entry: bytes
    subject: str
    purpose: str
    recorded_at: datetime


_HEAD = "SELECT tree_size, root, note, recorded_at FROM checkpoints ORDER BY tree_size DESC LIMIT 1"
# Registry entries are the log's rows of subject '' and purpose '#registry' (core/registry.py):
# log_entries_by_subject (subject, purpose, idx) finds the latest one by an index scan.
_REGISTRY_ROWS = f"subject = '{REGISTRY_SUBJECT}' AND purpose = '{REGISTRY_PURPOSE}'"
_LOCKED_HEAD = f"""
    SELECT tree_size, root, note, recorded_at,
           (SELECT max(idx) FROM log_entries WHERE {_REGISTRY_ROWS}) AS registry_index
    FROM checkpoints ORDER BY tree_size DESC LIMIT 1
"""
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
        # Nodes are only ever inserted with the entries they cover: a missing one was removed.
        raise LogCorrupted(f"the tree is missing stored nodes, e.g. {missing}")
    return found


def _head(row: asyncpg.Record | None) -> Head | None:
    if row is None:
        return None
    return Head(row["tree_size"], bytes(row["root"]), row["note"], row["recorded_at"], row.get("registry_index"))


class AppendTransaction:
    """One group-commit batch: lock, read the head, write entries, nodes and one checkpoint."""

    def __init__(self, conn: Queryable) -> None:
        self.conn = conn

    async def lock_head(self) -> Head | None:
        """Take the log lock; then the head, with the index of the registry in force."""
        with translated():
            await self.conn.execute("LOCK TABLE log_entries IN EXCLUSIVE MODE")
            return _head(await self.conn.fetchrow(_LOCKED_HEAD))

    async def entry(self, index: int) -> bytes | None:
        with translated():
            data: bytes | None = await self.conn.fetchval("SELECT entry FROM log_entries WHERE idx = $1", index)
        return None if data is None else bytes(data)

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

    async def existing_subject(self, device_id: str) -> str | None:
        with translated():
            subject: str | None = await self.conn.fetchval(
                "SELECT subject FROM subjects WHERE device_id = $1", device_id
            )
        return subject

    async def erase(self, subject: str, tombstone: bytes) -> None:
        """Crypto-shred a subject, after its erase entry is written in this transaction: delete
        the salt and device_id, its state, and everything else that names the device or could
        tie it to the subject's entries; keep only the keyed tombstone."""
        with translated():
            await self.conn.execute(
                """DELETE FROM idempotency_keys  -- their request hashes cover the device_id
                   WHERE idx IN (SELECT idx FROM log_entries WHERE subject = $1)""",
                subject,
            )
            await self.conn.execute(
                """DELETE FROM webhook_attempts WHERE delivery_id IN
                   (SELECT id FROM webhook_deliveries WHERE subject = $1)""",
                subject,
            )
            await self.conn.execute("DELETE FROM webhook_deliveries WHERE subject = $1", subject)
            await self.conn.execute("DELETE FROM consent_state WHERE subject = $1", subject)
            await self.conn.execute("DELETE FROM subjects WHERE subject = $1", subject)
            await self.conn.execute(
                "INSERT INTO erased_devices (tombstone) VALUES ($1) ON CONFLICT DO NOTHING", tombstone
            )

    async def claimed(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Claimed]:
        if not keys:
            return {}
        with translated():
            rows = await self.conn.fetch(
                """SELECT i.token_name, i.key, i.request_hash, i.idx, i.tree_size
                   FROM unnest($1::text[], $2::text[]) AS q(token_name, key)
                   JOIN idempotency_keys i USING (token_name, key)""",
                [k[0] for k in keys],
                [k[1] for k in keys],
            )
        return {(r["token_name"], r["key"]): Claimed(bytes(r["request_hash"]), r["idx"], r["tree_size"]) for r in rows}

    async def write(
        self,
        entries: Sequence[EntryRow],
        nodes: Sequence[tuple[NodeId, bytes]],
        head: Head,
        key_id: str,
        claims: Sequence[tuple[str, str, bytes, int]] = (),
    ) -> None:
        """Insert the batch's entries, nodes, checkpoint and the idempotency keys it settles."""
        with translated():
            if claims:
                await self.conn.copy_records_to_table(
                    "idempotency_keys",
                    records=[(t, k, h, i, head.size) for t, k, h, i in claims],
                    columns=["token_name", "key", "request_hash", "idx", "tree_size"],
                )
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

    async def notify(self, payloads: Sequence[str]) -> None:
        """Delivered at commit, so a listener never hears of entries it cannot read yet."""
        with translated():
            await self.conn.execute(
                "SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS n(payload)", LOG_CHANNEL, list(payloads)
            )

    async def upsert_state(
        self, state: Sequence[Entry], entry_counts: Mapping[tuple[str, str], int]
    ) -> dict[tuple[str, str], int]:
        """Upsert each key's deciding entry and add its entries to the count; return the counts."""
        if not state:
            return {}
        with translated():
            rows = await self.conn.fetch(
                """
            INSERT INTO consent_state AS s
                (subject, purpose, idx, action, policy_version, occurred_at, expires_at, entries)
            SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::int[],
                                 $6::text[], $7::text[], $8::bigint[])
            ON CONFLICT (subject, purpose) DO UPDATE SET
                entries = s.entries + EXCLUDED.entries,
                idx = CASE WHEN (EXCLUDED.occurred_at, EXCLUDED.idx) > (s.occurred_at, s.idx)
                           THEN EXCLUDED.idx ELSE s.idx END,
                action = CASE WHEN (EXCLUDED.occurred_at, EXCLUDED.idx) > (s.occurred_at, s.idx)
                              THEN EXCLUDED.action ELSE s.action END,
                policy_version = CASE WHEN (EXCLUDED.occurred_at, EXCLUDED.idx) > (s.occurred_at, s.idx)
                                      THEN EXCLUDED.policy_version ELSE s.policy_version END,
                expires_at = CASE WHEN (EXCLUDED.occurred_at, EXCLUDED.idx) > (s.occurred_at, s.idx)
                                  THEN EXCLUDED.expires_at ELSE s.expires_at END,
                occurred_at = CASE WHEN (EXCLUDED.occurred_at, EXCLUDED.idx) > (s.occurred_at, s.idx)
                                   THEN EXCLUDED.occurred_at ELSE s.occurred_at END
            RETURNING s.subject, s.purpose, s.entries
            """,
                [e.subject for e in state],
                [e.purpose for e in state],
                [e.index for e in state],
                [e.action for e in state],
                [e.policy_version for e in state],
                [e.occurred_at for e in state],
                [e.expires_at for e in state],
                [entry_counts.get((e.subject, e.purpose), 1) for e in state],
            )
        return {(r["subject"], r["purpose"]): r["entries"] for r in rows}

    async def subscriptions(self) -> list[Subscription]:
        """The live subscriptions, as this transaction sees them."""
        with translated():
            rows = await self.conn.fetch(
                """SELECT id, events, purposes FROM webhook_subscriptions
                   WHERE disabled_at IS NULL AND deleted_at IS NULL"""
            )
        return [Subscription(str(r["id"]), list(r["events"]), r["purposes"]) for r in rows]

    async def enqueue(self, deliveries: Sequence[Delivery]) -> None:
        """Write outbox rows in the append transaction: they commit with the entries or not at all."""
        if not deliveries:
            return
        with translated():
            await self.conn.copy_records_to_table(
                "webhook_deliveries",
                records=[
                    (d.id, uuid.UUID(d.subscription_id), d.idx, d.event_type, d.payload, d.subject) for d in deliveries
                ],
                columns=["id", "subscription_id", "idx", "event_type", "payload", "subject"],
            )


class Snapshot:
    """Reads that all see one moment of the database (a REPEATABLE READ, read-only transaction)."""

    def __init__(self, conn: Queryable) -> None:
        self.conn = conn

    async def head(self) -> Head | None:
        with translated():
            return _head(await self.conn.fetchrow(_HEAD))

    async def entries(self, start: int, end: int) -> list[bytes]:
        with translated():
            rows = await self.conn.fetch(
                "SELECT entry FROM log_entries WHERE idx >= $1 AND idx < $2 ORDER BY idx", start, end
            )
        return [bytes(r["entry"]) for r in rows]

    async def state_rows(self) -> list[tuple[tuple[str, str], Row]]:
        """Every row of the state table, as (subject, purpose) and a Row (core/fold.py)."""
        with translated():
            rows = await self.conn.fetch(
                """SELECT subject, purpose, idx, action, policy_version, occurred_at, expires_at, entries
                   FROM consent_state"""
            )
        return [((r[0], r[1]), (r[2], r[3], r[4], r[5], r[6], r[7])) for r in rows]


class LogStore:
    """Reads of the log, and the append transaction."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @contextlib.asynccontextmanager
    async def appending(self) -> AsyncIterator[AppendTransaction]:
        with translated():
            async with self.pool.acquire() as conn, conn.transaction():
                # A receipt promises durability: whatever the server's default, this commit
                # returns only once its WAL is flushed to disk.
                await conn.execute("SET LOCAL synchronous_commit = on")
                yield AppendTransaction(conn)

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[Snapshot]:
        with translated():
            async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
                yield Snapshot(conn)

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
            # Two index lookups per key (checkpoints_by_key), however long the log.
            rows = await self.pool.fetch(
                """SELECT k.key_id, k.key_name, k.vkey,
                          (SELECT min(tree_size) FROM checkpoints c WHERE c.key_id = k.key_id) AS first_size,
                          (SELECT max(tree_size) FROM checkpoints c WHERE c.key_id = k.key_id) AS last_size
                   FROM signing_keys k ORDER BY k.first_used, k.key_id"""
            )
        return [KeyRecord(r["key_id"], r["key_name"], r["vkey"], r["first_size"], r["last_size"]) for r in rows]

    async def registry_entries(self, below: int | None = None) -> dict[int, bytes]:
        """Every registry entry (with an index below `below`), oldest first."""
        with translated():
            rows = await self.pool.fetch(
                f"SELECT idx, entry FROM log_entries WHERE {_REGISTRY_ROWS} AND ($1::bigint IS NULL OR idx < $1)"
                " ORDER BY idx",
                below,
            )
        return {r["idx"]: bytes(r["entry"]) for r in rows}

    async def latest_registry(self) -> tuple[int, bytes] | None:
        """The registry entry in force, if the log holds one."""
        with translated():
            row = await self.pool.fetchrow(
                f"SELECT idx, entry FROM log_entries WHERE {_REGISTRY_ROWS} ORDER BY idx DESC LIMIT 1"
            )
        return None if row is None else (row["idx"], bytes(row["entry"]))

    async def log_size(self) -> int:
        with translated():
            size = await self.pool.fetchval("SELECT tree_size FROM checkpoints ORDER BY tree_size DESC LIMIT 1")
        return int(size or 0)

    async def tail(self, start: int, end: int) -> list[TailRow]:
        """Entries start <= idx < end with the device each belongs to (None once erased)."""
        with translated():
            rows = await self.pool.fetch(
                """SELECT l.idx, l.entry, s.device_id FROM log_entries l
                   LEFT JOIN subjects s ON s.subject = l.subject
                   WHERE l.idx >= $1 AND l.idx < $2 ORDER BY l.idx""",
                start,
                end,
            )
        return [TailRow(r["idx"], bytes(r["entry"]), r["device_id"]) for r in rows]

    async def entries_at(self, indexes: Sequence[int]) -> dict[int, bytes]:
        with translated():
            rows = await self.pool.fetch(
                "SELECT idx, entry FROM log_entries WHERE idx = ANY($1::bigint[])", list(indexes)
            )
        return {r["idx"]: bytes(r["entry"]) for r in rows}

    async def index_range(
        self, start: int, end: int, since: datetime | None, until: datetime | None
    ) -> tuple[int, int]:
        """The indexes in [start, end) recorded in [since, until), as a range: recorded_at never goes
        backwards along the log, so entries recorded in a time window are consecutive."""
        with translated():
            row = await self.pool.fetchrow(
                """SELECT min(idx) AS first, max(idx) AS last FROM log_entries
                   WHERE idx >= $1 AND idx < $2
                     AND ($3::timestamptz IS NULL OR recorded_at >= $3)
                     AND ($4::timestamptz IS NULL OR recorded_at < $4)""",
                start,
                end,
                since,
                until,
            )
        assert row is not None
        return (start, start) if row["first"] is None else (row["first"], row["last"] + 1)

    async def entries_size(self, start: int, end: int) -> int:
        """Bytes of entries.ndjson for [start, end): every entry and its newline."""
        with translated():
            size = await self.pool.fetchval(
                "SELECT coalesce(sum(octet_length(entry) + 1), 0) FROM log_entries WHERE idx >= $1 AND idx < $2",
                start,
                end,
            )
        return int(size)

    async def checkpoint_note(self, tree_size: int) -> str | None:
        with translated():
            note: str | None = await self.pool.fetchval("SELECT note FROM checkpoints WHERE tree_size = $1", tree_size)
        return note
