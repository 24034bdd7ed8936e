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

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import NamedTuple

import asyncpg

from ledger.core.decision import Basis
from ledger.core.entry import Entry, subject_for
from ledger.core.note import Verifier
from ledger.core.tree import NodeId
from ledger.core.webhooks import REDACTED_ERASURE, Delivery, Subscription, erasure_deliveries
from ledger.errors import AppendOnlyViolation, StorageError

LOG_CHANNEL = "consent_ledger_log"
TOKEN_CHANNEL = "consent_ledger_tokens"
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


class Claimed(NamedTuple):
    """An Idempotency-Key already used: the request it was used for and where that landed."""

    request_hash: bytes
    idx: int
    tree_size: int


class SubscriptionRecord(NamedTuple):
    id: str
    url: str
    events: list[str]
    purposes: list[str] | None
    description: str | None
    created_at: datetime
    disabled_at: datetime | None
    disabled_reason: str | None
    failing_since: datetime | None
    previous_secret_until: datetime | None


class ClaimedDelivery(NamedTuple):
    """A delivery leased to one dispatcher, with what it needs to send it."""

    id: str
    subscription_id: str
    url: str
    secrets: list[str]
    payload: bytes
    attempts: int
    failing_since: datetime | None


class AttemptRecord(NamedTuple):
    attempt: int
    started_at: datetime
    status_code: int | None
    latency_ms: float
    error: str | None


class DeliveryRecord(NamedTuple):
    id: str
    event_type: str
    idx: int
    status: str
    attempts: list[AttemptRecord]
    next_attempt_at: datetime | None
    created_at: datetime
    completed_at: datetime | None
    last_error: str | None


_SUBSCRIPTION_COLUMNS = """id, url, events, purposes, description, created_at, disabled_at, disabled_reason,
    failing_since, previous_secret_until"""


def _subscription(r: asyncpg.Record) -> SubscriptionRecord:
    return SubscriptionRecord(
        str(r["id"]),
        r["url"],
        list(r["events"]),
        None if r["purposes"] is None else list(r["purposes"]),
        r["description"],
        r["created_at"],
        r["disabled_at"],
        r["disabled_reason"],
        r["failing_since"],
        r["previous_secret_until"],
    )


class StateRow(NamedTuple):
    """One looked-up (device, purpose): its subject (None: no consent on record, or erased) and
    deciding entry."""

    device_id: str
    purpose: str
    subject: str | None
    basis: Basis | None
    erased: bool = False


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

    async def existing_subject(self, device_id: str) -> str | None:
        with translated():
            subject: str | None = await self.conn.fetchval(
                "SELECT subject FROM subjects WHERE device_id = $1", device_id
            )
        return subject

    async def erase(self, subject: str, tombstone: bytes, device_id: str, erased_at: str) -> None:
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
            await self._enqueue(erasure_deliveries(device_id, await self._subscriptions(), erased_at))

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
        state: Sequence[Entry] = (),
        claims: Sequence[tuple[str, str, bytes, int]] = (),
        entry_counts: Mapping[tuple[str, str], int] | None = None,
        outbox: Callable[[dict[tuple[str, str], int], list[Subscription]], list[Delivery]] | None = None,
    ) -> None:
        with translated():
            sequences = await self._upsert_state(state, entry_counts) if state else {}
            if outbox is not None:
                await self._enqueue(outbox(sequences, await self._subscriptions()))
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
            # Delivered at commit, so a listener never hears of entries it cannot read yet.
            await self.conn.execute("SELECT pg_notify($1, $2)", LOG_CHANNEL, str(head.size))

    async def _upsert_state(
        self, state: Sequence[Entry], entry_counts: Mapping[tuple[str, str], int] | None
    ) -> dict[tuple[str, str], int]:
        """Upsert each key's deciding entry and add its entries to the count; return the counts."""
        counts = entry_counts or {}
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
            [counts.get((e.subject, e.purpose), 1) for e in state],
        )
        return {(r["subject"], r["purpose"]): r["entries"] for r in rows}

    async def _subscriptions(self) -> list[Subscription]:
        rows = await self.conn.fetch(
            "SELECT id, events, purposes FROM webhook_subscriptions WHERE disabled_at IS NULL AND deleted_at IS NULL"
        )
        return [Subscription(str(r["id"]), list(r["events"]), r["purposes"]) for r in rows]

    async def _enqueue(self, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            await self.conn.copy_records_to_table(
                "webhook_deliveries",
                records=[
                    (d.id, uuid.UUID(d.subscription_id), d.idx, d.event_type, d.payload, d.subject) for d in deliveries
                ],
                columns=["id", "subscription_id", "idx", "event_type", "payload", "subject"],
            )


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
            async with self.pool.acquire() as conn, conn.transaction():
                status = await conn.execute(
                    "UPDATE api_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL", name
                )
                # Every server process drops its cached tokens when this commits.
                await conn.execute("SELECT pg_notify($1, $2)", TOKEN_CHANNEL, name)
        return int(status.split()[-1])

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

    async def states(
        self, pairs: Sequence[tuple[str, str]], tombstones: Sequence[bytes] | None = None
    ) -> tuple[list[StateRow], int]:
        """Current state of each (device, purpose) and the log size, read in one snapshot.

        `tombstones` are the devices' keyed hashes: a device with no subject but a tombstone
        was erased."""
        stones = list(tombstones) if tombstones is not None else [bytes(32)] * len(pairs)
        with translated():
            rows = await self.pool.fetch(
                """SELECT q.device_id, q.purpose, s.subject, c.idx, c.action, c.policy_version,
                          c.occurred_at, c.expires_at, e.tombstone IS NOT NULL AS erased,
                          (SELECT tree_size FROM checkpoints ORDER BY tree_size DESC LIMIT 1) AS size
                   FROM unnest($1::text[], $2::text[], $3::bytea[]) WITH ORDINALITY
                        AS q(device_id, purpose, tombstone, n)
                   LEFT JOIN subjects s ON s.device_id = q.device_id
                   LEFT JOIN consent_state c ON c.subject = s.subject AND c.purpose = q.purpose
                   LEFT JOIN erased_devices e ON s.subject IS NULL AND e.tombstone = q.tombstone
                   ORDER BY q.n""",
                [p[0] for p in pairs],
                [p[1] for p in pairs],
                stones,
            )
        size = int(rows[0]["size"] or 0) if rows else await self.log_size()
        return [
            StateRow(
                r["device_id"],
                r["purpose"],
                r["subject"],
                None
                if r["idx"] is None
                else Basis(r["idx"], r["action"], r["policy_version"], r["occurred_at"], r["expires_at"]),
                r["erased"],
            )
            for r in rows
        ], size

    async def is_erased(self, tombstone: bytes) -> bool:
        with translated():
            found = await self.pool.fetchval("SELECT 1 FROM erased_devices WHERE tombstone = $1", tombstone)
        return found is not None

    async def subject_of(self, device_id: str) -> str | None:
        with translated():
            subject: str | None = await self.pool.fetchval(
                "SELECT subject FROM subjects WHERE device_id = $1", device_id
            )
        return subject

    async def history(self, subject: str, purpose: str | None = None) -> list[tuple[int, bytes]]:
        """A subject's entries, oldest first, for every purpose or one."""
        with translated():
            rows = await self.pool.fetch(
                """SELECT idx, entry FROM log_entries WHERE subject = $1 AND ($2::text IS NULL OR purpose = $2)
                   ORDER BY idx""",
                subject,
                purpose,
            )
        return [(r["idx"], bytes(r["entry"])) for r in rows]

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

    async def subject_salt(self, device_id: str) -> tuple[str, bytes] | None:
        with translated():
            row = await self.pool.fetchrow("SELECT subject, salt FROM subjects WHERE device_id = $1", device_id)
        return None if row is None else (row["subject"], bytes(row["salt"]))

    async def entry_at(self, idx: int) -> bytes | None:
        with translated():
            data = await self.pool.fetchval("SELECT entry FROM log_entries WHERE idx = $1", idx)
        return None if data is None else bytes(data)

    async def checkpoint_note(self, tree_size: int) -> str | None:
        with translated():
            note: str | None = await self.pool.fetchval("SELECT note FROM checkpoints WHERE tree_size = $1", tree_size)
        return note

    # -- webhooks ----------------------------------------------------------------------------

    async def create_subscription(
        self, url: str, events: Sequence[str], purposes: Sequence[str] | None, description: str | None, secret: str
    ) -> SubscriptionRecord:
        with translated():
            row = await self.pool.fetchrow(
                f"""INSERT INTO webhook_subscriptions (id, url, events, purposes, description, secret)
                    VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_SUBSCRIPTION_COLUMNS}""",
                uuid.uuid4(),
                url,
                list(events),
                None if purposes is None else list(purposes),
                description,
                secret,
            )
        assert row is not None
        return _subscription(row)

    async def subscriptions(self) -> list[SubscriptionRecord]:
        with translated():
            rows = await self.pool.fetch(
                f"""SELECT {_SUBSCRIPTION_COLUMNS} FROM webhook_subscriptions
                    WHERE deleted_at IS NULL ORDER BY created_at"""
            )
        return [_subscription(r) for r in rows]

    async def subscription(self, subscription_id: uuid.UUID) -> SubscriptionRecord | None:
        with translated():
            row = await self.pool.fetchrow(
                f"SELECT {_SUBSCRIPTION_COLUMNS} FROM webhook_subscriptions WHERE id = $1 AND deleted_at IS NULL",
                subscription_id,
            )
        return None if row is None else _subscription(row)

    async def delete_subscription(self, subscription_id: uuid.UUID) -> bool:
        """Stop a subscription; its undelivered events stay listed, as dead."""
        with translated():
            async with self.pool.acquire() as conn, conn.transaction():
                status = await conn.execute(
                    "UPDATE webhook_subscriptions SET deleted_at = now() WHERE id = $1 AND deleted_at IS NULL",
                    subscription_id,
                )
                await conn.execute(
                    """UPDATE webhook_deliveries SET status = 'dead', last_error = 'subscription deleted',
                              completed_at = now(),
                              payload = CASE WHEN event_type = 'subject.erased' THEN $2 ELSE payload END
                       WHERE subscription_id = $1 AND status = 'pending'""",
                    subscription_id,
                    REDACTED_ERASURE,
                )
        return status.endswith(" 1")

    async def rotate_secret(self, subscription_id: uuid.UUID, secret: str, overlap: timedelta) -> bool:
        with translated():
            status = await self.pool.execute(
                """UPDATE webhook_subscriptions
                   SET previous_secret = secret, previous_secret_until = now() + $3, secret = $2
                   WHERE id = $1 AND deleted_at IS NULL""",
                subscription_id,
                secret,
                overlap,
            )
        return status.endswith(" 1")

    async def claim_deliveries(self, limit: int, lease: timedelta) -> list[ClaimedDelivery]:
        """Lease due deliveries, at most one per subscription: the oldest pending one.

        Only the head of a subscription's queue is ever eligible, and only while nobody holds
        its lease, so a subscription's deliveries go out one at a time in index order and two
        dispatchers never send the same one together. SKIP LOCKED lets dispatchers claim side by
        side; the lease is committed before any HTTP call, so no transaction spans one.
        """
        with translated():
            async with self.pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(
                    """
                    SELECT d.id, d.subscription_id, d.payload, d.attempts, s.url, s.secret,
                           s.previous_secret, s.previous_secret_until, s.failing_since
                    FROM webhook_subscriptions s
                    CROSS JOIN LATERAL (
                        SELECT q.id FROM webhook_deliveries q
                        WHERE q.subscription_id = s.id AND q.status = 'pending'
                        ORDER BY q.seq LIMIT 1
                    ) head
                    JOIN webhook_deliveries d ON d.id = head.id
                    WHERE s.disabled_at IS NULL AND s.deleted_at IS NULL
                      AND d.next_attempt_at <= now() AND (d.lease_until IS NULL OR d.lease_until < now())
                    ORDER BY d.next_attempt_at
                    LIMIT $1
                    FOR UPDATE OF d SKIP LOCKED
                    """,
                    limit,
                )
                if not rows:
                    return []
                await conn.execute(
                    """UPDATE webhook_deliveries SET lease_until = now() + $2, attempts = attempts + 1
                       WHERE id = ANY($1::text[])""",
                    [r["id"] for r in rows],
                    lease,
                )
                now = await conn.fetchval("SELECT now()")
        return [
            ClaimedDelivery(
                r["id"],
                str(r["subscription_id"]),
                r["url"],
                [r["secret"]]
                + ([r["previous_secret"]] if r["previous_secret_until"] and r["previous_secret_until"] > now else []),
                bytes(r["payload"]),
                r["attempts"] + 1,
                r["failing_since"],
            )
            for r in rows
        ]

    async def finish_attempt(
        self,
        delivery: ClaimedDelivery,
        started_at: datetime,
        status_code: int | None,
        latency_ms: float,
        error: str | None,
        outcome: str,
        next_attempt_in: timedelta | None,
        reason: str | None,
    ) -> None:
        """Record the attempt and move the delivery (and, when it must, its subscription) on."""
        subscription_id = uuid.UUID(delivery.subscription_id)
        with translated():
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    """INSERT INTO webhook_attempts (delivery_id, attempt, started_at, status_code, latency_ms, error)
                       VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING""",
                    delivery.id,
                    delivery.attempts,
                    started_at,
                    status_code,
                    latency_ms,
                    error,
                )
                # A settled erasure event keeps no device_id (see REDACTED_ERASURE).
                if outcome != "retry":
                    await conn.execute(
                        "UPDATE webhook_deliveries SET payload = $2 WHERE id = $1 AND event_type = 'subject.erased'",
                        delivery.id,
                        REDACTED_ERASURE,
                    )
                if outcome == "delivered":
                    await conn.execute(
                        """UPDATE webhook_deliveries SET status = 'delivered', completed_at = now(),
                                  lease_until = NULL, last_error = NULL WHERE id = $1""",
                        delivery.id,
                    )
                    await conn.execute(
                        "UPDATE webhook_subscriptions SET failing_since = NULL WHERE id = $1", subscription_id
                    )
                    return
                await conn.execute(
                    "UPDATE webhook_subscriptions SET failing_since = coalesce(failing_since, now()) WHERE id = $1",
                    subscription_id,
                )
                if outcome == "retry":
                    await conn.execute(
                        """UPDATE webhook_deliveries SET next_attempt_at = now() + $2, lease_until = NULL,
                                  last_error = $3 WHERE id = $1""",
                        delivery.id,
                        next_attempt_in,
                        error,
                    )
                    return
                await conn.execute(
                    """UPDATE webhook_deliveries SET status = 'dead', completed_at = now(), lease_until = NULL,
                              last_error = $2 WHERE id = $1""",
                    delivery.id,
                    reason or error,
                )
                if outcome == "disabled":
                    await conn.execute(
                        """UPDATE webhook_subscriptions SET disabled_at = now(), disabled_reason = $2
                           WHERE id = $1 AND disabled_at IS NULL""",
                        subscription_id,
                        reason,
                    )

    async def deliveries(self, subscription_id: uuid.UUID, limit: int = 100) -> list[DeliveryRecord]:
        with translated():
            rows = await self.pool.fetch(
                """SELECT d.id, d.event_type, d.idx, d.status, d.next_attempt_at, d.created_at, d.completed_at,
                          d.last_error,
                          coalesce(json_agg(json_build_object(
                              'attempt', a.attempt, 'started_at', a.started_at, 'status_code', a.status_code,
                              'latency_ms', a.latency_ms, 'error', a.error) ORDER BY a.attempt)
                              FILTER (WHERE a.attempt IS NOT NULL), '[]') AS attempts
                   FROM webhook_deliveries d LEFT JOIN webhook_attempts a ON a.delivery_id = d.id
                   WHERE d.subscription_id = $1
                   GROUP BY d.id ORDER BY d.seq DESC LIMIT $2""",
                subscription_id,
                limit,
            )
        return [
            DeliveryRecord(
                r["id"],
                r["event_type"],
                r["idx"],
                r["status"],
                [
                    AttemptRecord(
                        a["attempt"],
                        datetime.fromisoformat(a["started_at"]),
                        a["status_code"],
                        a["latency_ms"],
                        a["error"],
                    )
                    for a in json.loads(r["attempts"])
                ],
                r["next_attempt_at"] if r["status"] == "pending" else None,
                r["created_at"],
                r["completed_at"],
                r["last_error"],
            )
            for r in rows
        ]

    async def retry_delivery(self, subscription_id: uuid.UUID, delivery_id: str) -> bool:
        """Send a delivery again now, whatever its state; the subscription must be live."""
        with translated():
            status = await self.pool.execute(
                """UPDATE webhook_deliveries d SET status = 'pending', next_attempt_at = now(), lease_until = NULL,
                          completed_at = NULL
                   FROM webhook_subscriptions s
                   WHERE d.id = $2 AND d.subscription_id = $1 AND s.id = d.subscription_id
                     AND s.deleted_at IS NULL""",
                subscription_id,
                delivery_id,
            )
        return status.endswith(" 1")

    async def outbox_stats(self) -> tuple[int, float]:
        """Pending deliveries and the age in seconds of the oldest one."""
        with translated():
            row = await self.pool.fetchrow(
                """SELECT count(*) AS pending, coalesce(extract(epoch FROM now() - min(created_at)), 0) AS age
                   FROM webhook_deliveries WHERE status = 'pending'"""
            )
        assert row is not None
        return int(row["pending"]), float(row["age"])

    @contextlib.asynccontextmanager
    async def listening(
        self, url: str, channels: dict[str, Callable[[str], None]], on_lost: Callable[[], None]
    ) -> AsyncIterator[asyncpg.Connection]:
        """A dedicated connection LISTENing on `channels`; notifications go to the callbacks and
        `on_lost` is called if the connection closes under us."""
        with translated():
            conn = await asyncpg.connect(url)
        conn.add_termination_listener(lambda _conn: on_lost())
        try:
            for channel, callback in channels.items():
                await conn.add_listener(channel, lambda _c, _pid, _ch, payload, cb=callback: cb(payload))
            yield conn
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)

    async def token(self, token_hash: bytes) -> TokenRecord | None:
        with translated():
            row = await self.pool.fetchrow(
                "SELECT name, scopes, token_hash FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL",
                token_hash,
            )
        return None if row is None else TokenRecord(row["name"], list(row["scopes"]), bytes(row["token_hash"]))
