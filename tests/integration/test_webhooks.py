"""Withdrawal webhooks end to end: real receivers on loopback, real servers and dispatchers."""

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from nacl.signing import VerifyKey
from standardwebhooks import Webhook

from ledger.appender import Appender
from ledger.core.batch import Draft
from ledger.core.entry import format_time
from ledger.core.note import Verifier
from ledger.core.webhooks import new_secret, signed_content
from ledger.keys import read_key_file
from ledger.storage import Stores, create_pool, open_stores
from ledger.webhooks import Dispatcher, webhook_key

from .conftest import ORIGIN, bearer, ledger_server
from .receiver import Receiver, Reply
from .server import ADMIN_TOKEN

ADMIN = bearer(ADMIN_TOKEN)
ROOT = Path(__file__).parents[2]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
def base_url(database_url: str, tmp_path: Path, key_file: Path) -> Iterator[str]:
    with ledger_server(database_url, tmp_path, key_file, LEDGER_WEBHOOK_ALLOW_PRIVATE="true") as url:
        yield url


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=10, headers=ADMIN) as c:
        yield c


def consent(device: str, action: str = "withdraw", purpose: str = "pixverse_sharing") -> dict[str, Any]:
    return {"device_id": device, "purpose": purpose, "action": action, "policy_version": 1}


async def subscribe(client: httpx.AsyncClient, url: str, **extra: Any) -> dict[str, Any]:
    response = await client.post("/v1/webhooks", json={"url": url, "events": ["consent.withdrawn"], **extra})
    assert response.status_code == 201, response.text
    return response.json()


async def webhook_verifier(client: httpx.AsyncClient) -> VerifyKey:
    keys = (await client.get("/v1/keys")).json()["keys"]
    [vkey] = [k["vkey"] for k in keys if k["key_name"] == f"{ORIGIN}/webhooks"]
    return Verifier.from_vkey(vkey).key


def verify_v1a(key: VerifyKey, headers: dict[str, str], body: bytes) -> None:
    [v1a] = [p for p in headers["webhook-signature"].split(" ") if p.startswith("v1a,")]
    content = signed_content(headers["webhook-id"], int(headers["webhook-timestamp"]), body)
    key.verify(content, base64.b64decode(v1a.removeprefix("v1a,")))


async def deliveries(client: httpx.AsyncClient, webhook_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/v1/webhooks/{webhook_id}/deliveries")
    assert response.status_code == 200
    return list(response.json()["deliveries"])


async def wait_until(predicate: Any, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_a_withdrawal_arrives_signed_with_v1_and_v1a(client: httpx.AsyncClient, receiver: Receiver) -> None:
    hook = await subscribe(client, receiver.url, description="video service")
    assert hook["secret"].startswith("whsec_")
    granted = await client.post("/v1/consents", json=consent("w-1", "grant"))
    withdrawn = (await client.post("/v1/consents", json=consent("w-1"))).json()
    [got] = await asyncio.to_thread(receiver.wait_for, 1, 10)
    payload = Webhook(hook["secret"]).verify(got.body, got.headers)  # the library checks v1 and the timestamp
    verify_v1a(await webhook_verifier(client), got.headers, got.body)
    assert payload["type"] == "consent.withdrawn"
    data = payload["data"]
    entry = withdrawn["entry"]
    assert data == {
        "device_id": "w-1",
        "subject": entry["subject"],
        "purpose": "pixverse_sharing",
        "action": "withdraw",
        "index": withdrawn["index"],
        "policy_version": 1,
        "occurred_at": entry["occurred_at"],
        "recorded_at": entry["recorded_at"],
        "sequence": 2,
        "consistency_token": withdrawn["consistency_token"],
    }
    assert payload["timestamp"] == entry["recorded_at"]
    assert granted.status_code == 201  # the grant was not sent: only consent.withdrawn is subscribed
    assert got.headers["webhook-id"].startswith("msg_")

    async def recorded() -> bool:  # the receiver answers before the sender records the outcome
        return [d["status"] for d in await deliveries(client, hook["id"])] == ["delivered"]

    await wait_until(recorded)
    [listed] = await deliveries(client, hook["id"])
    assert listed["attempts"][0]["status_code"] == 200
    metrics = (await client.get("/metrics")).text
    assert 'ledger_webhook_deliveries_total{outcome="delivered"} 1.0' in metrics
    assert "ledger_webhook_pending_deliveries" in metrics
    assert "ledger_webhook_oldest_pending_seconds" in metrics


async def test_subscriptions_can_be_listed_rotated_and_deleted(client: httpx.AsyncClient, receiver: Receiver) -> None:
    hook = await subscribe(client, receiver.url, purposes=["telemetry"], events=["consent.withdrawn", "log.checkpoint"])
    listed = (await client.get("/v1/webhooks")).json()["webhooks"]
    assert [h["id"] for h in listed] == [hook["id"]]
    assert "secret" not in listed[0]
    one = (await client.get(f"/v1/webhooks/{hook['id']}")).json()
    assert one["purposes"] == ["telemetry"]
    assert one["events"] == ["consent.withdrawn", "log.checkpoint"]
    rotated = (await client.post(f"/v1/webhooks/{hook['id']}/rotate-secret")).json()
    assert rotated["secret"] != hook["secret"]
    until = datetime.fromisoformat(rotated["previous_secret_valid_until"])
    assert timedelta(hours=23, minutes=59) < until - datetime.now(UTC) <= timedelta(hours=24)
    await client.post("/v1/consents", json=consent("w-2", purpose="telemetry"))
    received = await asyncio.to_thread(receiver.wait_for, 2, 10)
    consent_event = next(r for r in received if json.loads(r.body)["type"] == "consent.withdrawn")
    for secret in (hook["secret"], rotated["secret"]):  # both sign during the overlap
        Webhook(secret).verify(consent_event.body, consent_event.headers)
    checkpoint_event = next(r for r in received if json.loads(r.body)["type"] == "log.checkpoint")
    assert json.loads(checkpoint_event.body)["data"]["checkpoint"] == (await client.get("/v1/log/checkpoint")).text
    await client.post("/v1/consents", json=consent("w-3", purpose="pixverse_sharing"))  # not its purpose
    assert (await client.delete(f"/v1/webhooks/{hook['id']}")).status_code == 204
    assert (await client.get(f"/v1/webhooks/{hook['id']}")).status_code == 404
    assert (await client.delete(f"/v1/webhooks/{hook['id']}")).status_code == 404
    kinds = [json.loads(r.body)["type"] for r in receiver.received]
    assert kinds.count("consent.withdrawn") == 1


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"url": "https://example.invalid/x", "events": ["consent.exploded"]}, 422),
        ({"url": "ftp://example.com/x", "events": ["consent.withdrawn"]}, 422),
        ({"url": "https://user:pw@example.com/x", "events": ["consent.withdrawn"]}, 422),
        ({"url": "http://127.0.0.1:9/x", "events": ["consent.withdrawn"], "purposes": ["marketing"]}, 422),
        ({"url": "http://127.0.0.1:9/x", "events": []}, 422),
        ({"url": "http://127.0.0.1:9/x"}, 422),
        ({"url": "http://127.0.0.1:9/x", "events": ["consent.withdrawn"], "extra": 1}, 422),
    ],
)
async def test_bad_subscriptions_are_refused(client: httpx.AsyncClient, body: dict[str, Any], status: int) -> None:
    response = await client.post("/v1/webhooks", json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert (await client.get("/v1/webhooks")).json()["webhooks"] == []


async def test_webhooks_need_the_admin_scope(client: httpx.AsyncClient, tokens: dict[str, str]) -> None:
    for scope in ("consent:check", "consent:write", "audit:read"):
        assert (await client.get("/v1/webhooks", headers=bearer(tokens[scope]))).status_code == 403
    assert (await client.get("/v1/webhooks", headers={"Authorization": ""})).status_code == 401


async def test_private_destinations_are_refused_without_the_override(
    database_url: str, tmp_path: Path, key_file: Path, receiver: Receiver
) -> None:
    with ledger_server(database_url, tmp_path, key_file) as url:
        async with httpx.AsyncClient(base_url=url, headers=ADMIN) as c:
            for target in (receiver.url, "https://127.0.0.1/x", "https://[::1]/x", "https://169.254.169.254/x",
                           "https://localhost/x"):  # fmt: skip
                response = await c.post("/v1/webhooks", json={"url": target, "events": ["consent.withdrawn"]})
                assert response.status_code == 422, target
                assert "not a public address" in response.json()["detail"] or "https" in response.json()["detail"]


async def test_a_receiver_down_then_up_gets_every_withdrawal_in_order(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    hook = await subscribe(client, receiver.url)
    receiver.stop()
    indexes = [(await client.post("/v1/consents", json=consent(f"down-{i}"))).json()["index"] for i in range(5)]

    async def first_attempt_failed() -> bool:
        return any(d["attempts"] for d in await deliveries(client, hook["id"]))

    await wait_until(first_attempt_failed)
    [head] = [d for d in await deliveries(client, hook["id"]) if d["attempts"]]
    assert head["status"] == "pending"
    assert head["attempts"][0]["status_code"] is None
    assert "Connect" in head["attempts"][0]["error"]
    receiver.start()  # same port
    received = await asyncio.to_thread(receiver.wait_for, 5, 20)
    assert [json.loads(r.body)["data"]["index"] for r in received] == indexes
    assert head["id"] == received[0].headers["webhook-id"]  # the retry kept its webhook-id

    async def all_delivered() -> bool:
        return all(d["status"] == "delivered" for d in await deliveries(client, hook["id"]))

    await wait_until(all_delivered)


async def test_a_failed_attempt_is_retried_with_the_same_webhook_id(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    hook = await subscribe(client, receiver.url)
    receiver.replies.extend([Reply(500), Reply(200)])
    await client.post("/v1/consents", json=consent("retry-1"))
    # Within 20 s: the retry comes at the schedule's 5 s step (up to 10% jitter), not its next, 5 min.
    first, second = await asyncio.to_thread(receiver.wait_for, 2, 20)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.body == second.body
    assert second.at - first.at >= 4.5  # not before the step: the delay counts from the failed answer

    async def both_recorded() -> bool:  # the receiver answers before the sender records the outcome
        return [[a["status_code"] for a in d["attempts"]] for d in await deliveries(client, hook["id"])] == [[500, 200]]

    await wait_until(both_recorded)


async def test_410_disables_the_subscription(client: httpx.AsyncClient, receiver: Receiver) -> None:
    hook = await subscribe(client, receiver.url)
    receiver.default = Reply(410)
    await client.post("/v1/consents", json=consent("gone-1"))
    await asyncio.to_thread(receiver.wait_for, 1, 10)

    async def disabled() -> bool:
        return (await client.get(f"/v1/webhooks/{hook['id']}")).json()["disabled_at"] is not None

    await wait_until(disabled)
    assert "410" in (await client.get(f"/v1/webhooks/{hook['id']}")).json()["disabled_reason"]
    [delivery] = await deliveries(client, hook["id"])
    assert delivery["status"] == "dead"
    await client.post("/v1/consents", json=consent("gone-2"))
    await asyncio.sleep(1)
    assert len(receiver.received) == 1


async def test_a_redirect_is_not_followed(client: httpx.AsyncClient, receiver: Receiver) -> None:
    elsewhere = Receiver().start()
    try:
        hook = await subscribe(client, receiver.url)
        receiver.default = Reply(307, headers={"Location": elsewhere.url})
        await client.post("/v1/consents", json=consent("redirect-1"))
        await asyncio.to_thread(receiver.wait_for, 1, 10)

        async def attempted() -> bool:
            return any(d["attempts"] for d in await deliveries(client, hook["id"]))

        await wait_until(attempted)
        [delivery] = await deliveries(client, hook["id"])
        assert delivery["status"] == "pending"
        assert delivery["attempts"][0]["status_code"] == 307
        assert elsewhere.received == []
    finally:
        elsewhere.stop()


async def test_retry_after_is_honoured_and_a_delivery_can_be_sent_again(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    hook = await subscribe(client, receiver.url)
    receiver.replies.append(Reply(503, headers={"Retry-After": "600"}))
    await client.post("/v1/consents", json=consent("later-1"))
    await asyncio.to_thread(receiver.wait_for, 1, 10)

    async def scheduled() -> bool:
        return any(d["attempts"] for d in await deliveries(client, hook["id"]))

    await wait_until(scheduled)
    [delivery] = await deliveries(client, hook["id"])
    wait = datetime.fromisoformat(delivery["next_attempt_at"]) - datetime.fromisoformat(
        delivery["attempts"][0]["started_at"]
    )
    assert wait >= timedelta(seconds=599)
    retried = await client.post(f"/v1/webhooks/{hook['id']}/deliveries/{delivery['id']}/retry")
    assert retried.status_code == 202
    await asyncio.to_thread(receiver.wait_for, 2, 10)
    assert (await client.post(f"/v1/webhooks/{hook['id']}/deliveries/msg_nope/retry")).status_code == 404


# -- dispatchers without a server -------------------------------------------------------------


def drafts(devices: list[str]) -> list[Draft]:
    return [
        Draft(
            id=f"00000000-0000-4000-8000-{abs(hash(d)) % 10**12:012d}",
            device_id=d,
            purpose="pixverse_sharing",
            action="withdraw",
            policy_version=1,
            occurred_at=format_time(datetime.now(UTC)),
            actor="user",
            method="settings",
            evidence={},
        )
        for d in devices
    ]


async def test_a_dispatcher_killed_mid_delivery_is_replaced_after_the_lease(
    database_url: str, store: Stores, key_file: Path, receiver: Receiver
) -> None:
    signer = read_key_file(key_file)
    await store.log.register_key(signer.verifier)
    await store.outbox.create_subscription(receiver.url, ["consent.withdrawn"], None, None, new_secret())
    appender = Appender(store.log, signer, ORIGIN)
    await appender.start()
    await appender.append(drafts(["killed-1"])[0])
    await appender.stop()
    receiver.replies.append(Reply(200, delay=30))  # the first dispatcher never gets its answer

    def dispatcher() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.integration.dispatch_forever", database_url, str(key_file), "1"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            text=True,
        )

    first = dispatcher()
    try:
        await asyncio.to_thread(receiver.wait_for, 1, 20)
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        first.kill()
    second = dispatcher()
    try:
        one, two = await asyncio.to_thread(receiver.wait_for, 2, 20)
        assert one.headers["webhook-id"] == two.headers["webhook-id"]
        assert two.at - one.at >= 1  # not before the lease ran out
    finally:
        second.kill()
        second.wait()


async def test_two_dispatchers_never_send_one_delivery_together(
    database_url: str, store: Stores, key_file: Path
) -> None:
    receivers = [Receiver().start() for _ in range(3)]
    others: list[Stores] = []
    try:
        signer = read_key_file(key_file)
        await store.log.register_key(signer.verifier)
        for r in receivers:
            await store.outbox.create_subscription(r.url, ["consent.withdrawn"], None, None, new_secret())
            r.default = Reply(200, delay=0.01)
        appender = Appender(store.log, signer, ORIGIN)
        await appender.start()
        sealed = await asyncio.gather(*(appender.append(d) for d in drafts([f"pair-{i}" for i in range(40)])))
        await appender.stop()
        dispatchers = []
        for _ in range(2):
            other = open_stores(await create_pool(database_url, max_size=3))
            others.append(other)
            dispatchers.append(Dispatcher(other.outbox, webhook_key(signer), allow_private=True, poll_interval=0.05))
        await asyncio.gather(*(d.start() for d in dispatchers))
        for r in receivers:
            await asyncio.to_thread(r.wait_for, 40, 30)
        await asyncio.sleep(0.3)
        await asyncio.gather(*(d.stop() for d in dispatchers))
        expected = sorted(s.entry.index for s in sealed)
        for r in receivers:
            ids = [got.headers["webhook-id"] for got in r.received]
            assert len(ids) == len(set(ids)) == 40, "each delivery sent exactly once"
            assert [json.loads(got.body)["data"]["index"] for got in r.received] == expected
            assert r.max_in_flight == 1, "one subscription's deliveries go one at a time"
    finally:
        for r in receivers:
            r.stop()
        for other in others:
            await other.pool.close()


async def test_the_dispatcher_refuses_a_private_address_at_send_time(
    store: Stores, key_file: Path, receiver: Receiver
) -> None:
    signer = read_key_file(key_file)
    await store.log.register_key(signer.verifier)
    # Written straight to storage, as if the address had changed since the subscription was checked.
    record = await store.outbox.create_subscription(receiver.url, ["consent.withdrawn"], None, None, new_secret())
    appender = Appender(store.log, signer, ORIGIN)
    await appender.start()
    await appender.append(drafts(["private-1"])[0])
    await appender.stop()
    dispatcher = Dispatcher(store.outbox, webhook_key(signer), allow_private=False, poll_interval=0.05)
    await dispatcher.start()
    try:

        async def attempted() -> bool:
            return any(d.attempts for d in await store.outbox.deliveries(uuid.UUID(record.id)))

        await wait_until(attempted)
    finally:
        await dispatcher.stop()
    [delivery] = await store.outbox.deliveries(uuid.UUID(record.id))
    assert "destination refused" in (delivery.attempts[0].error or "")
    assert receiver.received == []


async def test_a_host_that_does_not_resolve_fails_its_delivery_and_nothing_else(
    store: Stores, key_file: Path, receiver: Receiver
) -> None:
    signer = read_key_file(key_file)
    await store.log.register_key(signer.verifier)
    broken = await store.outbox.create_subscription(
        "https://no-such-host.invalid/x", ["consent.withdrawn"], None, None, new_secret()
    )
    await store.outbox.create_subscription(receiver.url, ["consent.withdrawn"], None, None, new_secret())
    appender = Appender(store.log, signer, ORIGIN)
    await appender.start()
    await appender.append(drafts(["unresolvable-1"])[0])
    await appender.stop()
    dispatcher = Dispatcher(store.outbox, webhook_key(signer), allow_private=True, poll_interval=0.05)
    await dispatcher.start()
    try:
        await asyncio.to_thread(receiver.wait_for, 1, 10)

        async def attempted() -> bool:
            return any(d.attempts for d in await store.outbox.deliveries(uuid.UUID(broken.id)))

        await wait_until(attempted)
        assert dispatcher._task is not None
        assert not dispatcher._task.done(), "the dispatcher kept running"
    finally:
        await dispatcher.stop()
    [delivery] = await store.outbox.deliveries(uuid.UUID(broken.id))
    assert delivery.status == "pending"
    assert delivery.attempts[0].error
