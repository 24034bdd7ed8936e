"""Webhook destinations that embed an internal IPv4 address in IPv6 (issue 11) are refused at
subscription and again at delivery, with LEDGER_WEBHOOK_ALLOW_PRIVATE off."""

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ledger.appender import Appender
from ledger.core.webhooks import new_secret
from ledger.keys import read_key_file
from ledger.storage import Stores
from ledger.webhooks import Dispatcher, webhook_key

from .conftest import ORIGIN, bearer, ledger_server
from .receiver import Receiver
from .server import ADMIN_TOKEN
from .test_webhooks import drafts

# The four addresses of the issue, and the internal IPv4 address each one carries.
REPORTED = {
    "https://[::127.0.0.1]/hook": "127.0.0.1",  # IPv4-compatible
    "https://[64:ff9b::7f00:1]/hook": "127.0.0.1",  # NAT64 well-known prefix
    "https://[64:ff9b:1::a00:1]/hook": "10.0.0.1",  # NAT64 local-use prefix (read as a /96)
    "https://[2002:7f00:1::]/hook": "127.0.0.1",  # 6to4
}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


async def test_each_reported_url_is_refused_at_subscription(database_url: str, tmp_path: Path, key_file: Path) -> None:
    with ledger_server(database_url, tmp_path, key_file, LEDGER_WEBHOOK_ALLOW_PRIVATE="false") as url:
        async with httpx.AsyncClient(base_url=url, headers=bearer(ADMIN_TOKEN), timeout=10) as c:
            for target, embedded in REPORTED.items():
                response = await c.post("/v1/webhooks", json={"url": target, "events": ["consent.withdrawn"]})
                assert response.status_code == 422, target
                assert response.headers["content-type"].startswith("application/problem+json")
                detail = response.json()["detail"]
                assert "not a public address" in detail, detail
                assert embedded in detail, detail
            assert (await c.get("/v1/webhooks")).json()["webhooks"] == [], "a refused request changes nothing"
            # Not every IPv6 literal is refused: NAT64's well-known prefix carrying a public address is.
            public = await c.post(
                "/v1/webhooks", json={"url": "https://[64:ff9b::808:808]/hook", "events": ["consent.withdrawn"]}
            )
            assert public.status_code == 201, public.text


async def test_the_dispatcher_refuses_them_at_delivery_after_resolving(
    store: Stores, key_file: Path, receiver: Receiver
) -> None:
    """Written straight to storage, as if they had been accepted earlier or their DNS had changed.
    A name (`localhost`) shows the check applies to what the name resolves to; the IPv4-mapped
    loopback on the receiver's port would reach a live loopback service if it were not refused."""
    signer = read_key_file(key_file)
    await store.log.register_key(signer.verifier)
    targets = {
        **REPORTED,
        f"https://[::ffff:127.0.0.1]:{receiver.port}/hooks": "127.0.0.1",
        f"https://localhost:{receiver.port}/hooks": "",
    }
    ids = {
        target: (await store.outbox.create_subscription(target, ["consent.withdrawn"], None, None, new_secret())).id
        for target in targets
    }
    appender = Appender(store.log, signer, ORIGIN)
    await appender.start()
    await appender.append(drafts(["ssrf-1"])[0])
    await appender.stop()
    dispatcher = Dispatcher(store.outbox, webhook_key(signer), allow_private=False, poll_interval=0.05)
    await dispatcher.start()
    try:
        deadline = time.monotonic() + 15
        while not all([(await store.outbox.deliveries(uuid.UUID(i)))[0].attempts for i in ids.values()]):
            assert time.monotonic() < deadline, "not every delivery was attempted in time"
            await asyncio.sleep(0.05)
    finally:
        await dispatcher.stop()
    for target, embedded in targets.items():
        [delivery] = await store.outbox.deliveries(uuid.UUID(ids[target]))
        error = delivery.attempts[0].error or ""
        assert error.startswith("destination refused:"), (target, error)
        assert "not a public address" in error, (target, error)
        assert embedded in error, (target, error)
        assert delivery.status == "pending", "refused like any failure: retried later, checked again"
    assert receiver.received == []
