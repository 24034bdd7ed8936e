"""Recording and checking through a real server: receipts, every reason, idempotency, bad input, auth."""

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from ledger.core.checkpoint import open_checkpoint
from ledger.core.entry import format_time, parse_entry
from ledger.core.proof import verify_inclusion
from ledger.core.rfc6962 import leaf_hash
from ledger.storage import Stores

from .conftest import ORIGIN, bearer, ledger_server, log_verifier
from .server import ADMIN_TOKEN, running_server, server_env

REGISTRY = """
[purposes.pixverse_sharing]
title = "Sharing images and prompts with PixVerse"
description = "Images (faces included) and prompts go to PixVerse to make the video."
recipients = ["PixVerse"]
data_categories = ["images", "prompts"]

[purposes.telemetry]
title = "Third-party statistics and performance SDKs"
description = "Statistics SDKs."
recipients = ["SDK vendors"]
data_categories = ["device identifiers", "app usage"]
min_policy_version = 2
max_age_days = 30
"""
ADMIN = bearer(ADMIN_TOKEN)


@pytest.fixture
def base_url(database_url: str, tmp_path: Path, key_file: Path) -> Iterator[str]:
    (tmp_path / "purposes.toml").write_text(REGISTRY)
    purposes = str(tmp_path / "purposes.toml")
    with ledger_server(
        database_url, tmp_path, key_file, LEDGER_PURPOSES=purposes, LEDGER_CONSISTENCY_WAIT_MS="300"
    ) as url:
        yield url


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=10, headers=ADMIN) as c:
        yield c


def consent(device: str = "dev-1", purpose: str = "pixverse_sharing", action: str = "grant", **extra: object) -> dict:
    return {"device_id": device, "purpose": purpose, "action": action, "policy_version": 2, **extra}


async def record(client: httpx.AsyncClient, **kwargs: object) -> dict:
    response = await client.post("/v1/consents", json=consent(**kwargs))  # type: ignore[arg-type]
    assert response.status_code == 201, response.text
    return response.json()


async def check(client: httpx.AsyncClient, device: str, purpose: str, **params: str) -> dict:
    response = await client.get("/v1/check", params={"device_id": device, "purpose": purpose, **params})
    assert response.status_code == 200, response.text
    return response.json()


async def log_size(store: Stores) -> int:
    return int(await store.pool.fetchval("SELECT count(*) FROM log_entries"))


async def test_a_receipt_proves_the_recorded_entry(client: httpx.AsyncClient) -> None:
    receipt = await record(client, device="phone-1", method="explicit_popup", evidence={"popup": "pixverse-v2"})
    assert receipt["device_id"] == "phone-1"
    entry = parse_entry(receipt["leaf"].encode())
    assert receipt["entry"] == {k: v for k, v in receipt["entry"].items() if v is not None}
    assert entry.index == receipt["index"] == 1  # entry 0 is the purpose registry
    assert entry.method == "explicit_popup"
    assert entry.actor == "user"
    assert "phone-1" not in receipt["leaf"]
    assert receipt["leaf_hash"] == leaf_hash(receipt["leaf"].encode()).hex()
    vkey = await log_verifier(client)
    checkpoint = open_checkpoint(receipt["checkpoint"], [vkey], origin=ORIGIN)
    proof = [bytes.fromhex(h) for h in receipt["inclusion_proof"]]
    verify_inclusion(entry.index, checkpoint.size, bytes.fromhex(receipt["leaf_hash"]), proof, checkpoint.root)
    assert receipt["consistency_token"].startswith("ct1.")


async def test_every_reason(client: httpx.AsyncClient) -> None:
    assert (await check(client, "nobody", "pixverse_sharing"))["reason"] == "no_consent"

    granted = await record(client, device="d1")
    decision = await check(client, "d1", "pixverse_sharing", consistency=granted["consistency_token"])
    assert decision == {
        "device_id": "d1",
        "purpose": "pixverse_sharing",
        "allowed": True,
        "reason": "granted",
        "policy_version": 2,
        "since": granted["entry"]["occurred_at"],
        "expires_at": None,
        "index": granted["index"],
    }

    withdrawn = await record(client, device="d1", action="withdraw")
    decision = await check(client, "d1", "pixverse_sharing", consistency=withdrawn["consistency_token"])
    assert (decision["allowed"], decision["reason"], decision["index"]) == (False, "withdrawn", withdrawn["index"])

    soon = format_time(datetime.now(UTC) + timedelta(hours=1))
    await record(client, device="d2", expires_at=soon)
    assert (await check(client, "d2", "pixverse_sharing"))["expires_at"] == soon
    later = format_time(datetime.now(UTC) + timedelta(hours=2))
    expired = await check(client, "d2", "pixverse_sharing", at=later)
    assert (expired["allowed"], expired["reason"]) == (False, "expired")

    # The purpose's max_age_days bounds a grant with no expiry of its own.
    aged = await record(client, device="d3", purpose="telemetry")
    assert (await check(client, "d3", "telemetry"))["expires_at"] is not None
    in_31_days = format_time(datetime.now(UTC) + timedelta(days=31))
    assert (await check(client, "d3", "telemetry", at=in_31_days))["reason"] == "expired"
    assert aged["entry"]["policy_version"] == 2


async def test_reconsent_required_after_the_statement_changes(
    database_url: str, tmp_path: Path, key_file: Path
) -> None:
    env = server_env(database_url, tmp_path, LEDGER_SIGNING_KEY=str(key_file), LEDGER_LOG_ORIGIN=ORIGIN)
    with running_server(env) as url:
        async with httpx.AsyncClient(base_url=url, headers=ADMIN) as c:
            await record(c, device="d9", purpose="telemetry", policy_version=1)
            assert (await check(c, "d9", "telemetry"))["reason"] == "granted"
    stricter = tmp_path / "v3.toml"
    stricter.write_text(REGISTRY.replace("min_policy_version = 2", "min_policy_version = 3"))
    with running_server({**env, "LEDGER_PURPOSES": str(stricter)}) as url:
        async with httpx.AsyncClient(base_url=url, headers=ADMIN) as c:
            # A restart with another file changes nothing (issue 10): the log's registry is in force ...
            assert (await check(c, "d9", "telemetry"))["reason"] == "granted"
            # ... until the new one is published.
            toml = {"Content-Type": "application/toml"}
            published = await c.put("/v1/purposes", content=stricter.read_bytes(), headers=toml)
            assert published.status_code == 201, published.text
            decision = await check(c, "d9", "telemetry")
            assert (decision["allowed"], decision["reason"], decision["policy_version"]) == (
                False,
                "reconsent_required",
                1,
            )
            renewed = await record(c, device="d9", purpose="telemetry", policy_version=3)
            again = await check(c, "d9", "telemetry", consistency=renewed["consistency_token"])
            assert again["reason"] == "granted"


async def test_minors_only_with_a_verified_guardian(client: httpx.AsyncClient) -> None:
    refused = await client.post("/v1/consents", json=consent("kid-1", evidence={"age_band": "minor"}))
    assert refused.status_code == 422
    assert "guardian" in refused.json()["detail"]
    evidence = {"age_band": "minor", "guardian_verification": "id-document-check"}
    granted = await client.post("/v1/consents", json=consent("kid-1", actor="guardian", evidence=evidence))
    assert granted.status_code == 201
    assert granted.json()["entry"]["actor"] == "guardian"
    # Anyone may withdraw a minor's consent.
    withdrawn = await client.post(
        "/v1/consents", json=consent("kid-1", action="withdraw", evidence={"age_band": "minor"})
    )
    assert withdrawn.status_code == 201
    adult = await client.post("/v1/consents", json=consent("adult-1", evidence={"age_band": "adult"}))
    assert adult.status_code == 201


async def test_a_retry_with_the_same_key_returns_the_first_receipt(client: httpx.AsyncClient, store: Stores) -> None:
    headers = {"Idempotency-Key": "popup-click-7f3a"}
    first = await client.post("/v1/consents", json=consent("d4"), headers=headers)
    assert first.status_code == 201
    size = await log_size(store)
    await record(client, device="someone-else")
    retry = await client.post("/v1/consents", json=consent("d4"), headers=headers)
    assert retry.status_code == 200
    assert retry.json() == first.json()
    assert await log_size(store) == size + 1  # only the other device's entry was added
    conflict = await client.post("/v1/consents", json=consent("d4", action="withdraw"), headers=headers)
    assert conflict.status_code == 409
    assert conflict.headers["content-type"] == "application/problem+json"
    assert await log_size(store) == size + 1


async def test_concurrent_retries_append_once(client: httpx.AsyncClient, store: Stores) -> None:
    headers = {"Idempotency-Key": "same-request"}
    responses = await asyncio.gather(
        *(client.post("/v1/consents", json=consent("d5"), headers=headers) for _ in range(12))
    )
    assert sorted(r.status_code for r in responses) == [200] * 11 + [201]
    assert len({r.content for r in responses}) == 1
    assert await log_size(store) == 2  # with the purpose registry at 0


async def test_keys_are_scoped_to_the_token(client: httpx.AsyncClient, tokens: dict[str, str], store: Stores) -> None:
    headers = {"Idempotency-Key": "k1"}
    a = await client.post("/v1/consents", json=consent("d6"), headers=headers)
    b = await client.post("/v1/consents", json=consent("d6"), headers={**headers, **bearer(tokens["consent:write"])})
    assert (a.status_code, b.status_code) == (201, 201)
    assert await log_size(store) == 3  # with the purpose registry at 0


FUTURE = format_time(datetime.now(UTC) + timedelta(days=1))
BAD_REQUESTS: list[tuple[str, object, dict[str, str], int]] = [
    ("unknown purpose", consent(purpose="marketing"), {}, 422),
    ("malformed device_id", consent(device="has space"), {}, 422),
    ("device_id too long", consent(device="x" * 129), {}, 422),
    ("policy below the purpose's minimum", consent(purpose="telemetry", policy_version=1), {}, 422),
    ("expires_at not after now", consent(expires_at=format_time(datetime.now(UTC) - timedelta(seconds=1))), {}, 422),
    ("expires_at not a time", consent(expires_at="tomorrow"), {}, 422),
    ("expires_at on a withdrawal", consent(action="withdraw", expires_at=FUTURE), {}, 422),
    ("occurred_at in the future", consent(occurred_at=FUTURE), {}, 422),
    ("unknown field", {**consent(), "note": "hi"}, {}, 422),
    ("unknown action", consent(action="erase"), {}, 422),
    ("policy_version zero", consent(policy_version=0), {}, 422),
    ("policy_version a string", consent(policy_version="2"), {}, 422),
    ("missing field", {"device_id": "d", "purpose": "telemetry"}, {}, 422),
    ("unknown actor", consent(actor="robot"), {}, 422),
    ("unknown method", consent(method="email"), {}, 422),
    ("too much evidence", consent(evidence={f"k{i}": "v" for i in range(17)}), {}, 422),
    ("evidence value too long", consent(evidence={"k": "v" * 257}), {}, 422),
    ("evidence not strings", consent(evidence={"k": 1}), {}, 422),
    ("malformed JSON", b'{"device_id": ', {}, 400),
    ("not an object", b"[1, 2]", {}, 422),
    ("body over 16 KiB", {**consent(), "evidence": {"k": "v" * 20_000}}, {}, 413),
    ("Idempotency-Key too long", consent(), {"Idempotency-Key": "k" * 129}, 400),
    ("Idempotency-Key with a space", consent(), {"Idempotency-Key": "a b"}, 400),
    ("a minor's grant by the user", consent(evidence={"age_band": "minor"}), {}, 422),
    (
        "a minor's grant without guardian verification",
        consent(actor="guardian", evidence={"age_band": "minor"}),
        {},
        422,
    ),
    (
        "a minor's grant with blank guardian verification",
        consent(actor="guardian", evidence={"age_band": "minor", "guardian_verification": " "}),
        {},
        422,
    ),
]


async def test_bad_input_gets_a_clear_4xx_and_changes_nothing(client: httpx.AsyncClient, store: Stores) -> None:
    await record(client, device="baseline")
    size = await log_size(store)
    for label, body, headers, status in BAD_REQUESTS:
        content = body if isinstance(body, bytes) else httpx.Request("POST", "/", json=body).content
        response = await client.post(
            "/v1/consents", content=content, headers={"content-type": "application/json", **headers}
        )
        assert response.status_code == status, f"{label}: {response.status_code} {response.text}"
        assert response.headers["content-type"] == "application/problem+json", label
        problem = response.json()
        assert problem["status"] == status, label
        assert problem["detail"], label
        assert "consistency-token" in response.headers, label
    assert await log_size(store) == size


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"device_id": "d", "purpose": "marketing"}, 422),
        ({"device_id": "bad id", "purpose": "telemetry"}, 422),
        ({"device_id": "d"}, 400),
        ({"device_id": "d", "purpose": "telemetry", "at": "yesterday"}, 422),
        ({"device_id": "d", "purpose": "telemetry", "consistency": "nonsense"}, 400),
        ({"device_id": "d", "purpose": "telemetry", "consistency": "ct1.999999"}, 503),
    ],
)
async def test_bad_checks(client: httpx.AsyncClient, params: dict[str, str], status: int) -> None:
    response = await client.get("/v1/check", params=params)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    if status == 503:
        assert response.headers["retry-after"] == "1"


async def test_batch_checks_answer_in_order(client: httpx.AsyncClient) -> None:
    receipt = await record(client, device="b1")
    checks = [
        {"device_id": "b1", "purpose": "pixverse_sharing"},
        {"device_id": "b2", "purpose": "pixverse_sharing"},
        {"device_id": "b1", "purpose": "telemetry"},
    ] * 5
    response = await client.post(
        "/v1/check", params={"consistency": receipt["consistency_token"]}, json={"checks": checks}
    )
    assert response.status_code == 200
    results = response.json()["results"]
    assert [(r["device_id"], r["purpose"]) for r in results] == [(c["device_id"], c["purpose"]) for c in checks]
    assert [r["allowed"] for r in results[:3]] == [True, False, False]
    too_many = await client.post("/v1/check", json={"checks": checks * 67})
    assert too_many.status_code == 422
    bad_item = await client.post("/v1/check", json={"checks": [*checks[:2], {"device_id": "b1", "purpose": "x"}]})
    assert bad_item.status_code == 422
    assert "checks[2]" in bad_item.json()["detail"]


async def test_device_consents_history_and_purposes(client: httpx.AsyncClient) -> None:
    first = await record(client, device="h1")
    last = await record(client, device="h1", purpose="telemetry")
    consents = (await client.get("/v1/devices/h1/consents", params={"consistency": last["consistency_token"]})).json()
    assert consents["device_id"] == "h1"
    assert set(consents["purposes"]) == {"pixverse_sharing", "telemetry"}
    assert consents["purposes"]["telemetry"]["reason"] == "granted"
    history = (await client.get("/v1/devices/h1/history")).json()
    assert [r["index"] for r in history["entries"]] == [first["index"], last["index"]]
    vkey = await log_verifier(client)
    for receipt in history["entries"]:
        checkpoint = open_checkpoint(receipt["checkpoint"], [vkey])
        proof = [bytes.fromhex(h) for h in receipt["inclusion_proof"]]
        verify_inclusion(receipt["index"], checkpoint.size, bytes.fromhex(receipt["leaf_hash"]), proof, checkpoint.root)
    assert (await client.get("/v1/devices/nobody/history")).json() == {"device_id": "nobody", "entries": []}
    assert (await client.get("/v1/devices/bad id/history")).status_code == 422
    purposes = (await client.get("/v1/purposes")).json()["purposes"]
    assert purposes["telemetry"]["min_policy_version"] == 2
    assert purposes["telemetry"]["max_age_days"] == 30


ENDPOINTS = [
    ("POST", "/v1/consents", "consent:write", consent("auth-dev")),
    ("GET", "/v1/check?device_id=a&purpose=telemetry", "consent:check", None),
    ("POST", "/v1/check", "consent:check", {"checks": [{"device_id": "a", "purpose": "telemetry"}]}),
    ("GET", "/v1/devices/a/consents", "consent:check", None),
    ("GET", "/v1/devices/a/history", "audit:read", None),
    ("GET", "/v1/purposes", "consent:check", None),
    ("GET", "/v1/log/entries?start=0", "audit:read", None),
    ("GET", "/v1/log/proof/inclusion?index=0&tree_size=1", "audit:read", None),
    ("GET", "/v1/log/proof/consistency?from=0&to=0", "audit:read", None),
]


async def test_every_endpoint_without_a_token_with_a_wrong_scope_and_with_the_right_one(
    base_url: str, tokens: dict[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as anonymous:
        await record(httpx.AsyncClient(base_url=base_url, headers=ADMIN), device="seed")
        for method, path, scope, body in ENDPOINTS:
            response = await anonymous.request(method, path, json=body)
            assert response.status_code == 401, (method, path)
            assert response.headers["content-type"] == "application/problem+json"
            for other in {"consent:check", "consent:write", "audit:read"} - {scope}:
                response = await anonymous.request(method, path, json=body, headers=bearer(tokens[other]))
                assert response.status_code == 403, (method, path, other)
            for allowed in (scope, "admin"):
                response = await anonymous.request(method, path, json=body, headers=bearer(tokens[allowed]))
                assert response.status_code in (200, 201), (method, path, allowed, response.text)
