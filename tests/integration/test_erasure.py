"""Erasure by crypto-shredding: afterwards nothing links the device to its old entries."""

import hashlib
import hmac
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger.core.verify import verify_log
from ledger.keys import read_key_file
from ledger.services.erasure import TOMBSTONE_LABEL
from ledger.storage import Stores

from .conftest import ORIGIN, bearer, ledger_server, log_verifier
from .server import ADMIN_TOKEN, Base

ADMIN = bearer(ADMIN_TOKEN)
DEVICE = "erase-me-7f3a9c"
LOG_TABLES = {"log_entries", "merkle_nodes", "checkpoints", "signing_keys"}


@pytest.fixture
def servers(database_url: str, tmp_path: Path, key_file: Path) -> Iterator[tuple[Base, Base]]:
    settings = {"LEDGER_WEBHOOK_ALLOW_PRIVATE": "true"}
    with (
        ledger_server(database_url, tmp_path / "a", key_file, **settings) as a,
        ledger_server(database_url, tmp_path / "b", key_file, **settings) as b,
    ):
        yield a, b


def consent(device: str, purpose: str, action: str = "grant") -> dict[str, Any]:
    return {"device_id": device, "purpose": purpose, "action": action, "policy_version": 1,
            "evidence": {"popup": "v1"}}  # fmt: skip


def check(base: str, device: str, purpose: str, **params: str) -> dict[str, Any]:
    response = httpx.get(f"{base}/v1/check", params={"device_id": device, "purpose": purpose, **params}, headers=ADMIN)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def occurrences(store: Stores, needle: str, skip: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """Every table and column (text or bytea) of the database that contains `needle`."""
    columns = await store.pool.fetch(
        """SELECT table_name, column_name, data_type FROM information_schema.columns
           WHERE table_schema = 'public'"""
    )
    found = []
    for c in columns:
        if c["table_name"] in skip:
            continue
        column = f'"{c["column_name"]}"'
        expression = (
            f"position(convert_to($1, 'UTF8') in {column}) > 0"
            if c["data_type"] == "bytea"
            else f"position($1 in {column}::text) > 0"
        )
        count = await store.pool.fetchval(f'SELECT count(*) FROM "{c["table_name"]}" WHERE {expression}', needle)
        if count:
            found.append(f"{c['table_name']}.{c['column_name']}")
    return found


async def test_erasure_leaves_nothing_that_links_the_device_to_its_old_entries(
    servers: tuple[Base, Base], store: Stores, key_file: Path
) -> None:
    a, b = servers
    with httpx.Client(headers=ADMIN, timeout=10) as http:
        hook = http.post(f"{a}/v1/webhooks", json={"url": "http://127.0.0.1:9/never", "events": ["consent.withdrawn"]})
        assert hook.status_code == 201
        first = http.post(
            f"{a}/v1/consents", json=consent(DEVICE, "pixverse_sharing"), headers={"Idempotency-Key": "k-1"}
        )
        http.post(f"{a}/v1/consents", json=consent(DEVICE, "telemetry"))
        last = http.post(f"{a}/v1/consents", json=consent(DEVICE, "telemetry", "withdraw")).json()
        http.post(f"{a}/v1/consents", json=consent("someone-else", "telemetry"))
        old_subject = first.json()["entry"]["subject"]
        # Replica B has the device cached before the erasure.
        assert check(b, DEVICE, "pixverse_sharing", consistency=last["consistency_token"])["allowed"]

        erased = http.post(f"{a}/v1/devices/{DEVICE}/erase")
        assert erased.status_code == 201, erased.text
        receipt = erased.json()
        assert (receipt["entry"]["action"], receipt["entry"]["purpose"]) == ("erase", "*")
        assert receipt["entry"]["subject"] == old_subject

        for base in (a, b):
            for purpose in ("pixverse_sharing", "telemetry", "cross_border_transfer"):
                answer = check(base, DEVICE, purpose, consistency=receipt["consistency_token"])
                assert answer == {
                    "device_id": DEVICE, "purpose": purpose, "allowed": False, "reason": "erased",
                    "policy_version": None, "since": None, "expires_at": None, "index": None,
                }  # fmt: skip
            # The cached answer is gone too (fast path), and the past is erased as well.
            assert check(base, DEVICE, "pixverse_sharing")["reason"] == "erased"
            assert check(base, DEVICE, "telemetry", at="2020-01-01T00:00:00Z")["reason"] == "erased"
        assert http.get(f"{a}/v1/devices/{DEVICE}/history").json()["entries"] == []
        assert http.get(f"{a}/v1/devices/{DEVICE}/export").status_code == 404
        assert http.post(f"{a}/v1/devices/{DEVICE}/erase").status_code == 404
        assert check(a, "someone-else", "telemetry")["allowed"] is True

        # Nothing in the database names the device, and outside the log nothing names its old subject.
        assert await occurrences(store, DEVICE) == []
        assert await occurrences(store, old_subject, skip=LOG_TABLES) == []
        [stone] = [bytes(r["tombstone"]) for r in await store.pool.fetch("SELECT tombstone FROM erased_devices")]
        key = bytes(read_key_file(key_file).derive(TOMBSTONE_LABEL))
        assert stone == hmac.new(key, DEVICE.encode(), hashlib.sha256).digest()
        assert await store.pool.fetchval("SELECT count(*) FROM idempotency_keys") == 0
        # Nor does either server's own output.
        for base in (a, b):
            assert DEVICE not in base.output()
            assert old_subject not in base.output()

        # The log still verifies from end to end.
        entries = http.get(f"{a}/v1/log/entries", params={"start": 0}).content.split(b"\n")[:-1]
        async with httpx.AsyncClient(base_url=a) as client:
            verifier = await log_verifier(client)
        verify_log(entries, http.get(f"{a}/v1/log/checkpoint").text, [verifier])

        # Consenting again starts a new subject.
        again = http.post(f"{a}/v1/consents", json=consent(DEVICE, "telemetry")).json()
        assert again["entry"]["subject"] != old_subject
        for base in (a, b):
            assert check(base, DEVICE, "telemetry", consistency=again["consistency_token"])["reason"] == "granted"
            assert (
                check(base, DEVICE, "pixverse_sharing", consistency=again["consistency_token"])["reason"]
                == "no_consent"
            )


async def test_erasure_needs_admin_and_a_known_device(client: httpx.AsyncClient, tokens: dict[str, str]) -> None:
    for scope in ("consent:check", "consent:write", "audit:read"):
        response = await client.post("/v1/devices/x/erase", headers=bearer(tokens[scope]))
        assert response.status_code == 403
    response = await client.post("/v1/devices/never-seen/erase", headers=ADMIN)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert (await client.post("/v1/devices/bad%20id/erase", headers=ADMIN)).status_code == 422
    assert ORIGIN


async def test_processors_are_told_and_the_told_device_id_is_not_kept(
    servers: tuple[Base, Base], store: Stores
) -> None:
    import asyncio
    import json

    from standardwebhooks import Webhook

    from .receiver import Receiver

    a, _ = servers
    receiver = Receiver().start()
    try:
        with httpx.Client(headers=ADMIN, timeout=10) as http:
            hook = http.post(f"{a}/v1/webhooks", json={"url": receiver.url, "events": ["subject.erased"]}).json()
            http.post(f"{a}/v1/consents", json=consent("told-1", "telemetry"))
            assert http.post(f"{a}/v1/devices/told-1/erase").status_code == 201
            [got] = await asyncio.to_thread(receiver.wait_for, 1, 10)
            event = Webhook(hook["secret"]).verify(got.body, got.headers)
            assert event["type"] == "subject.erased"
            assert event["data"] == {"device_id": "told-1"}

            async def settled() -> bool:
                return bool(await store.pool.fetchval("SELECT bool_and(status = 'delivered') FROM webhook_deliveries"))

            for _ in range(100):
                if await settled():
                    break
                await asyncio.sleep(0.05)
            assert await occurrences(store, "told-1") == []
            listed = http.get(f"{a}/v1/webhooks/{hook['id']}/deliveries").json()["deliveries"]
            assert [(d["event_type"], d["index"], d["status"]) for d in listed] == [("subject.erased", -1, "delivered")]
            assert json.loads(got.body)["data"] == {"device_id": "told-1"}
    finally:
        receiver.stop()
