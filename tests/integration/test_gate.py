"""The example gateway's consent gate against a real ledger: allowed passes through, a withdrawal
is refused with 451 as soon as the mirror has it, a foreign region needs cross_border_transfer,
a mirror that cannot answer refuses with 503."""

from collections.abc import AsyncIterator

import httpx
import pytest

from examples.gateway import create_gateway
from ledger.client import LedgerClient, Mirror

from .server import ADMIN_TOKEN
from .test_mirror import ledger, mirror

__all__ = ["ledger", "mirror"]  # the fixtures, shared with test_mirror

PIXVERSE, CROSS_BORDER = "pixverse_sharing", "cross_border_transfer"


@pytest.fixture
async def gateway(mirror: Mirror) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_gateway(mirror, home_region="eu"))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        yield client


def record(ledger: LedgerClient, device: str, purpose: str, action: str = "grant") -> str:
    receipt = ledger.record(device_id=device, purpose=purpose, action=action, policy_version=1)
    token: str = receipt["consistency_token"]
    return token


async def generate(gateway: httpx.AsyncClient, device: str | None, region: str | None = "eu") -> httpx.Response:
    headers = {k: v for k, v in (("X-Device-Id", device), ("X-Region", region)) if v is not None}
    return await gateway.post("/v1/videos", headers=headers)


async def test_allowed_passes_and_a_withdrawal_is_refused_once_mirrored(
    ledger: LedgerClient, mirror: Mirror, gateway: httpx.AsyncClient
) -> None:
    assert mirror.wait_for(record(ledger, "dev-1", PIXVERSE), 5)
    passed = await generate(gateway, "dev-1")
    assert passed.status_code == 202, passed.text
    assert passed.json()["status"] == "queued with PixVerse"
    assert mirror.wait_for(record(ledger, "dev-1", PIXVERSE, "withdraw"), 5)
    refused = await generate(gateway, "dev-1")
    assert refused.status_code == 451
    assert refused.headers["content-type"] == "application/problem+json"
    problem = refused.json()
    assert problem["type"].endswith("/consent-required")
    assert (problem["status"], problem["purpose"], problem["reason"]) == (451, PIXVERSE, "withdrawn")


async def test_a_foreign_region_also_needs_cross_border_transfer(
    ledger: LedgerClient, mirror: Mirror, gateway: httpx.AsyncClient
) -> None:
    assert mirror.wait_for(record(ledger, "dev-2", PIXVERSE), 5)
    assert (await generate(gateway, "dev-2", "eu")).status_code == 202
    for region in ("us", None):  # a request that names no region is foreign: fail closed
        refused = await generate(gateway, "dev-2", region)
        assert refused.status_code == 451
        assert (refused.json()["purpose"], refused.json()["reason"]) == (CROSS_BORDER, "no_consent")
    assert mirror.wait_for(record(ledger, "dev-2", CROSS_BORDER), 5)
    assert (await generate(gateway, "dev-2", "US")).status_code == 202


async def test_no_consent_and_no_device_are_refused(gateway: httpx.AsyncClient) -> None:
    never = await generate(gateway, "dev-never")
    assert (never.status_code, never.json()["reason"]) == (451, "no_consent")
    for device in (None, "not a device id"):
        missing = await generate(gateway, device)
        assert missing.status_code == 400
        assert missing.json()["type"].endswith("/device-id-required")


async def test_a_mirror_that_cannot_answer_refuses_with_503(base_url: str, ledger: LedgerClient) -> None:
    record(ledger, "dev-3", PIXVERSE)
    unstarted = Mirror(base_url, token=ADMIN_TOKEN)  # no stream: never fresh
    transport = httpx.ASGITransport(app=create_gateway(unstarted))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as gateway:
        refused = await generate(gateway, "dev-3")
    unstarted.close()
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["type"].endswith("/consent-unknown")
