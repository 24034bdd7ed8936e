"""GET /v1/check has one hot path inside the router: when it answers, it answers exactly as the route.

Through a real server. Which path answered is read from `ledger_check_answers_total{path}`;
each case makes a new token, so its first request cannot be answered from memory (the token is
not cached yet) and goes through the route, and the same request again can.
"""

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger import auth
from ledger.storage import Stores

from .conftest import bearer, ledger_server
from .helpers import refused_once_revoked
from .server import ADMIN_TOKEN, Base

ADMIN = bearer(ADMIN_TOKEN)
REGISTRY_V2 = """
[purposes.telemetry]
title = "Third-party statistics and performance SDKs"
description = "Statistics"
recipients = ["an SDK vendor"]
data_categories = ["app usage"]
legal_basis = "consent"
min_policy_version = 2
"""


@pytest.fixture
def server(database_url: str, tmp_path: Path, key_file: Path) -> Iterator[Base]:
    with ledger_server(database_url, tmp_path, key_file) as base:
        yield base


def answers(base: str) -> dict[str, float]:
    found = {}
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith("ledger_check_answers_total{"):
            found[line.split('path="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
    return found


async def new_token(store: Stores, scopes: list[str]) -> str:
    token = auth.new_token()
    await store.tokens.create_token(f"paths-{token[-12:]}", auth.token_hash(token), scopes)
    return token


def record(http: httpx.Client, device: str, action: str = "grant", **extra: Any) -> dict[str, Any]:
    body = {"device_id": device, "purpose": "telemetry", "action": action, "policy_version": 1, **extra}
    response = http.post("/v1/consents", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    return dict(response.json())


def comparable(response: httpx.Response) -> tuple[int, dict[str, str], bytes]:
    headers = {k: v for k, v in response.headers.items() if k not in ("date", "x-request-id")}  # one per request
    return response.status_code, headers, response.content


def both_paths(base: str, token: str, device: str) -> tuple[httpx.Response, httpx.Response]:
    """The same request twice: the route answers the first, memory the second."""
    params = {"device_id": device, "purpose": "telemetry"}
    with httpx.Client(base_url=base, headers=bearer(token), timeout=10) as http:
        before = answers(base)
        first = http.get("/v1/check", params=params)
        middle = answers(base)
        second = http.get("/v1/check", params=params)
        after = answers(base)
    assert middle["route"] == before["route"] + 1, "the first request did not go through the route"
    assert after["memory"] == middle["memory"] + 1, "the second request was not answered from memory"
    assert after["route"] == middle["route"]
    return first, second


async def test_every_reason_is_answered_from_memory_exactly_as_the_route_answers(
    server: Base, store: Stores, database_url: str, tmp_path: Path, key_file: Path
) -> None:
    with httpx.Client(base_url=server, timeout=10) as http:
        record(http, "paths-granted")
        record(http, "paths-withdrawn")
        record(http, "paths-withdrawn", "withdraw")
        soon = (datetime.now(UTC) + timedelta(seconds=1.5)).isoformat()
        record(http, "paths-expired", expires_at=soon)
        record(http, "paths-erased")
        assert http.post("/v1/devices/paths-erased/erase", headers=ADMIN).status_code == 201
    await asyncio.sleep(max(0.0, (datetime.fromisoformat(soon) - datetime.now(UTC)).total_seconds()) + 0.1)
    seen = set()
    for device in ("paths-granted", "paths-never-seen", "paths-withdrawn", "paths-expired", "paths-erased"):
        route, memory = both_paths(server, await new_token(store, ["consent:check"]), device)
        assert comparable(route) == comparable(memory), device
        seen.add(memory.json()["reason"])
    # A grant under a policy_version the registry in force no longer accepts, once that is published.
    toml = {**ADMIN, "Content-Type": "application/toml"}
    published = await asyncio.to_thread(httpx.put, f"{server}/v1/purposes", content=REGISTRY_V2, headers=toml)
    assert published.status_code == 201, published.text
    route, memory = both_paths(server, await new_token(store, ["consent:check"]), "paths-granted")
    assert comparable(route) == comparable(memory)
    seen.add(memory.json()["reason"])
    assert seen == {"granted", "no_consent", "withdrawn", "expired", "erased", "reconsent_required"}


async def test_what_memory_cannot_know_goes_through_the_route(server: Base, store: Stores) -> None:
    checker = await new_token(store, ["consent:check"])
    writer = await new_token(store, ["consent:write"])
    plain = {"device_id": "paths-route", "purpose": "telemetry"}
    with httpx.Client(base_url=server, timeout=10) as http:
        record(http, "paths-route")
        for token in (checker, writer):  # both validated, so both are in the token cache now
            http.get("/v1/check", params=plain, headers=bearer(token))
        assert http.get("/v1/check", params=plain, headers=bearer(checker)).status_code == 200  # cached now
        cases: list[tuple[dict[str, str], dict[str, str], int]] = [
            (plain, {}, 401),
            (plain, {"Authorization": "Bearer cl_unknown"}, 401),
            (plain, {"Authorization": f"Basic {checker}"}, 401),
            (plain, bearer(writer), 403),
            ({**plain, "consistency": "ct1.1"}, bearer(checker), 200),
            ({**plain, "at": datetime.now(UTC).isoformat()}, bearer(checker), 200),
            ({"device_id": "paths-route"}, bearer(checker), 400),
            ({"device_id": "bad id", "purpose": "telemetry"}, bearer(checker), 422),
            ({"device_id": "paths-route", "purpose": "marketing"}, bearer(checker), 422),
            ({"device_id": "paths-not-cached", "purpose": "telemetry"}, bearer(checker), 200),
        ]
        for params, headers, status in cases:
            before = answers(server)
            response = http.get("/v1/check", params=params, headers=headers)
            after = answers(server)
            assert response.status_code == status, (params, headers, response.text)
            assert after["memory"] == before["memory"], (params, headers)


async def test_a_revoked_token_stops_working_from_memory_too(server: Base, store: Stores) -> None:
    token = await new_token(store, ["consent:check"])
    params = {"device_id": "paths-revoked", "purpose": "telemetry"}
    async with httpx.AsyncClient(base_url=server, headers=bearer(token), timeout=10) as http:
        validated_at = time.monotonic()
        for _ in range(3):  # validated, cached, then answered from memory
            assert (await http.get("/v1/check", params=params)).status_code == 200
        assert await store.tokens.revoke_token(f"paths-{token[-12:]}") == 1
        await refused_once_revoked(lambda: http.get("/v1/check", params=params), validated_at)
