"""Withdrawal webhooks: subscriptions and their deliveries (scope admin)."""

from typing import Any, TypeVar
from uuid import UUID

from litestar import Controller, Request, delete, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath

from ledger.api.deps import LedgerDep
from ledger.api.guards import require
from ledger.api.openapi import scope
from ledger.api.strict import json_only
from ledger.models import (
    DeliveriesOut,
    SecretRotated,
    WebhookCreated,
    WebhookIn,
    WebhookOut,
    WebhooksOut,
    decode_body,
    webhook_decoder,
)


class WebhooksController(Controller):
    path = "/v1/webhooks"
    guards = [require("admin")]  # noqa: RUF012 (litestar's layer attribute)
    security = scope("admin")

    @post("/", request_max_body_size=16 * 1024, guards=[json_only], opt={"body": WebhookIn})
    async def create(self, request: Request[Any, Any, Any], ledger: LedgerDep) -> WebhookCreated:
        """Subscribe an https URL to events; the answer carries the signing secret, shown only here."""
        return await ledger.webhooks.create(decode_body(webhook_decoder, await request.body()))

    @get("/")
    async def list_all(self, ledger: LedgerDep) -> WebhooksOut:
        """Every subscription (without secrets)."""
        return WebhooksOut(await ledger.webhooks.all())

    @get("/{webhook_id:uuid}", opt={"problems": (404,)})
    async def one(self, ledger: LedgerDep, webhook_id: FromPath[UUID]) -> WebhookOut:
        return _found(await ledger.webhooks.get(webhook_id))

    @delete("/{webhook_id:uuid}", opt={"problems": (404,)})
    async def remove(self, ledger: LedgerDep, webhook_id: FromPath[UUID]) -> None:
        if not await ledger.webhooks.delete(webhook_id):
            raise NotFoundException("no such webhook")

    @post("/{webhook_id:uuid}/rotate-secret", status_code=200, opt={"problems": (404,)})
    async def rotate(self, ledger: LedgerDep, webhook_id: FromPath[UUID]) -> SecretRotated:
        return _found(await ledger.webhooks.rotate_secret(webhook_id))

    @get("/{webhook_id:uuid}/deliveries", opt={"problems": (404,)})
    async def deliveries(self, ledger: LedgerDep, webhook_id: FromPath[UUID]) -> DeliveriesOut:
        _found(await ledger.webhooks.get(webhook_id))
        return DeliveriesOut(await ledger.webhooks.deliveries(webhook_id))

    @post("/{webhook_id:uuid}/deliveries/{delivery_id:str}/retry", status_code=202, opt={"problems": (404,)})
    async def retry(self, ledger: LedgerDep, webhook_id: FromPath[UUID], delivery_id: FromPath[str]) -> dict[str, str]:
        if not await ledger.webhooks.retry(webhook_id, delivery_id):
            raise NotFoundException("no such delivery for this webhook")
        return {"id": delivery_id, "status": "pending"}


T = TypeVar("T")


def _found(value: T | None) -> T:
    if value is None:
        raise NotFoundException("no such webhook")
    return value
