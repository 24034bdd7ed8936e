"""Webhook subscriptions, the outbox of deliveries, and their attempts."""

import json
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import NamedTuple

import asyncpg

from ledger.core.webhooks import REDACTED_ERASURE
from ledger.storage.database import translated


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


class OutboxStore:
    """Subscriptions and their deliveries, leased and settled around each HTTP call."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

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
