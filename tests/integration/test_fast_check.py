"""The check fast path answers only the plain case, and answers it exactly as the full route does."""

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
import pytest

from ledger import auth
from ledger.api.fast_check import FastCheck
from ledger.composition import Services
from ledger.core.batch import Draft
from ledger.core.entry import format_time
from ledger.core.note import Signer
from ledger.models import DecisionOut
from ledger.settings import Settings

from .conftest import bearer
from .server import ADMIN_TOKEN


class Downstream:
    """Stands in for the Litestar app: counts what reaches it."""

    def __init__(self, ledger: Services) -> None:
        self.state = type("State", (), {"ledger": ledger})()
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"downstream"})


@pytest.fixture
async def ledger(database_url: str) -> AsyncIterator[Services]:
    opened = await Services.open(Settings(database_url=database_url), database_url, Signer.generate("fast.test/log"))
    yield opened
    await opened.close()


async def call(app: FastCheck, query: str, token: str | None) -> tuple[int, bytes, dict[bytes, bytes]]:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    scope = {"type": "http", "method": "GET", "path": "/v1/check", "query_string": query.encode(), "headers": headers}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], sent[1]["body"], dict(sent[0]["headers"])


def grant(device: str, **extra: object) -> Draft:
    fields: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "device_id": device,
        "purpose": "telemetry",
        "action": "grant",
        "policy_version": 1,
        "occurred_at": format_time(datetime.now(UTC)),
        "actor": "user",
        "method": "settings",
        "evidence": {},
    }
    fields.update(extra)
    return Draft(**fields)


async def test_only_the_plain_case_is_answered_and_it_matches_the_full_decision(ledger: Services) -> None:
    token = auth.new_token()
    await ledger.stores.tokens.create_token("checker", auth.token_hash(token), ["consent:check"])
    writer = auth.new_token()
    await ledger.stores.tokens.create_token("writer", auth.token_hash(writer), ["consent:write"])
    soon = format_time(datetime.now(UTC) + timedelta(hours=1))
    sealed = await ledger.appender.append(grant("fast-1", expires_at=soon))
    assert await ledger.projection.wait_for(sealed.tree_size, 5)
    downstream = Downstream(ledger)
    app = FastCheck(downstream)
    plain = "device_id=fast-1&purpose=telemetry"

    # Not yet validated token, then a cache miss: both go to the full route.
    assert (await call(app, plain, token))[0] == 299
    await ledger.access.authenticate(token)
    assert (await call(app, plain, token))[0] == 299
    await ledger.projection.lookup([("fast-1", "telemetry")])

    status, body, headers = await call(app, plain, token)
    assert status == 200
    assert downstream.calls == 2
    [decision] = await ledger.checking.decide([("fast-1", "telemetry")])
    assert body == msgspec.json.encode(DecisionOut.of("fast-1", decision))
    assert msgspec.json.decode(body)["expires_at"] == soon
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"consistency-token"] == ledger.consistency_token().encode()

    await ledger.access.authenticate(writer)
    for query, presented in [
        (plain, None),
        (plain, "cl_unknown"),
        (plain, writer),  # valid, but without the consent:check scope
        (plain + "&consistency=ct1.1", token),
        (plain + "&at=2026-01-01T00:00:00Z", token),
        ("device_id=fast-1", token),
        ("device_id=bad%20id&purpose=telemetry", token),
        ("device_id=fast-1&purpose=marketing", token),
        ("device_id=never-looked-up&purpose=telemetry", token),
    ]:
        before = downstream.calls
        assert (await call(app, query, presented))[0] == 299, query
        assert downstream.calls == before + 1

    # A stale projection is never answered from here.
    ledger.projection.caught_up_at -= 3600
    assert (await call(app, plain, token))[0] == 299


async def test_fast_and_full_answers_are_byte_identical_through_the_server(
    client: httpx.AsyncClient, tokens: dict[str, str]
) -> None:
    admin = bearer(ADMIN_TOKEN)
    for device, action in (("same-1", "grant"), ("same-2", "withdraw")):
        body = {"device_id": device, "purpose": "telemetry", "action": action, "policy_version": 1}
        receipt = (await client.post("/v1/consents", json=body, headers=admin)).json()
        params = {"device_id": device, "purpose": "telemetry"}
        full = await client.get(
            "/v1/check", params={**params, "consistency": receipt["consistency_token"]}, headers=admin
        )
        fast = await client.get("/v1/check", params=params, headers=admin)
        assert full.status_code == fast.status_code == 200
        assert fast.content == full.content
        assert fast.headers["content-type"] == full.headers["content-type"]
        assert "consistency-token" in fast.headers
    unknown = await client.get("/v1/check", params={"device_id": "same-3", "purpose": "telemetry"}, headers=admin)
    again = await client.get("/v1/check", params={"device_id": "same-3", "purpose": "telemetry"}, headers=admin)
    assert unknown.content == again.content
    assert again.json()["reason"] == "no_consent"


async def test_a_revoked_token_stops_working_on_the_fast_path_too(
    client: httpx.AsyncClient, store: Any, tokens: dict[str, str]
) -> None:
    import asyncio
    import time

    params = {"device_id": "revoke-1", "purpose": "telemetry"}
    headers = bearer(tokens["consent:check"])
    for _ in range(3):  # validated, cached, then answered by the fast path
        assert (await client.get("/v1/check", params=params, headers=headers)).status_code == 200
    assert await store.tokens.revoke_token("t-consent:check") == 1
    revoked_at = time.monotonic()
    while (await client.get("/v1/check", params=params, headers=headers)).status_code == 200:
        # The NOTIFY reaches every process within milliseconds; the 5 s cache TTL is only a backstop.
        assert time.monotonic() - revoked_at < 1, "a revoked token was still accepted after 1 s"
        await asyncio.sleep(0.005)
    assert (await client.get("/v1/check", params=params, headers=headers)).status_code == 401
