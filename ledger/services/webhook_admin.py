"""Withdrawal webhooks: subscriptions, secrets, and their deliveries (scope admin)."""

import asyncio
import socket
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import msgspec

from ledger.core.entry import format_time
from ledger.core.purposes import Registry
from ledger.core.webhooks import DestinationRefused, check_destination, new_secret
from ledger.errors import UnprocessableRequest
from ledger.models import AttemptOut, DeliveryOut, SecretRotated, WebhookCreated, WebhookIn, WebhookOut
from ledger.services.stores import Subscriptions
from ledger.services.validation import unknown_purpose
from ledger.storage.outbox import SubscriptionRecord
from ledger.webhooks import Dispatcher

__all__ = ["SECRET_OVERLAP", "WebhookAdmin", "check_webhook_url"]

# After a rotation the old secret keeps signing for this long, so receivers can switch over.
SECRET_OVERLAP = timedelta(hours=24)


class WebhookAdmin:
    def __init__(
        self,
        registry: Callable[[], Registry],
        outbox: Subscriptions,
        dispatcher: Dispatcher | None,
        allow_private: bool,
    ) -> None:
        self.registry = registry
        self.outbox = outbox
        self.dispatcher = dispatcher
        self.allow_private = allow_private

    async def create(self, body: WebhookIn) -> WebhookCreated:
        registry = self.registry()
        unknown = sorted(set(body.purposes or ()) - set(registry.purposes))
        if unknown:
            raise UnprocessableRequest(unknown_purpose(registry, unknown[0]))
        await check_webhook_url(body.url, self.allow_private)
        secret = new_secret()
        record = await self.outbox.create_subscription(
            body.url, list(dict.fromkeys(body.events)), body.purposes, body.description, secret
        )
        return WebhookCreated(**msgspec.structs.asdict(_webhook_out(record)), secret=secret)

    async def all(self) -> list[WebhookOut]:
        return [_webhook_out(r) for r in await self.outbox.subscriptions()]

    async def get(self, webhook_id: uuid.UUID) -> WebhookOut | None:
        record = await self.outbox.subscription(webhook_id)
        return None if record is None else _webhook_out(record)

    async def delete(self, webhook_id: uuid.UUID) -> bool:
        return await self.outbox.delete_subscription(webhook_id)

    async def rotate_secret(self, webhook_id: uuid.UUID) -> SecretRotated | None:
        secret = new_secret()
        if not await self.outbox.rotate_secret(webhook_id, secret, SECRET_OVERLAP):
            return None
        record = await self.outbox.subscription(webhook_id)
        assert record is not None
        assert record.previous_secret_until is not None
        return SecretRotated(str(webhook_id), secret, format_time(record.previous_secret_until))

    async def deliveries(self, webhook_id: uuid.UUID) -> list[DeliveryOut]:
        return [
            DeliveryOut(
                d.id,
                d.event_type,
                d.idx,
                d.status,
                [
                    AttemptOut(a.attempt, format_time(a.started_at), a.status_code, a.latency_ms, a.error)
                    for a in d.attempts
                ],
                _time_or_none(d.next_attempt_at),
                format_time(d.created_at),
                _time_or_none(d.completed_at),
                d.last_error,
            )
            for d in await self.outbox.deliveries(webhook_id)
        ]

    async def retry(self, webhook_id: uuid.UUID, delivery_id: str) -> bool:
        """Send a delivery again now; False if the webhook has no such delivery."""
        if not await self.outbox.retry_delivery(webhook_id, delivery_id):
            return False
        if self.dispatcher is not None:
            self.dispatcher.ring()
        return True


def _time_or_none(moment: datetime | None) -> str | None:
    return None if moment is None else format_time(moment)


def _webhook_out(r: SubscriptionRecord) -> WebhookOut:
    return WebhookOut(
        r.id, r.url, r.events, r.purposes, r.description, format_time(r.created_at),
        _time_or_none(r.disabled_at), r.disabled_reason, _time_or_none(r.failing_since),
    )  # fmt: skip


async def check_webhook_url(url: str, allow_private: bool) -> None:
    """Refuse at subscription time what the dispatcher would refuse at send time."""
    parts = urlsplit(url)
    if not parts.hostname or parts.scheme not in ("https", "http"):
        raise UnprocessableRequest("url must be an absolute https URL")
    if parts.username or parts.password:
        raise UnprocessableRequest("url must not carry credentials; sign with the webhook secret instead")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError) as exc:
        raise UnprocessableRequest(f"url: cannot resolve {parts.hostname}: {exc}") from None
    try:
        check_destination(parts.scheme, [str(i[4][0]) for i in infos], allow_private)
    except DestinationRefused as exc:
        raise UnprocessableRequest(f"url: {exc}") from None
