"""The log's HTTP endpoints through a real server: keys, checkpoint, entries, proofs, auth, errors."""

import time
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest

from ledger.appender import Appender
from ledger.core.checkpoint import open_checkpoint
from ledger.core.note import Verifier
from ledger.core.proof import verify_consistency, verify_inclusion
from ledger.core.rfc6962 import leaf_hash
from ledger.core.verify import verify_log
from ledger.keys import read_key_file
from ledger.storage import Stores

from .conftest import ORIGIN, bearer, log_verifier
from .helpers import draft, refused_once_revoked
from .server import ADMIN_TOKEN


class First(NamedTuple):
    """Entry 0: the purpose registry the server published at its first start."""

    leaf: bytes
    checkpoint: str


@pytest.fixture
async def filled(store: Stores, key_file: Path, base_url: str) -> list:  # type: ignore[type-arg]
    """The registry entry, then twenty entries appended by a second writer on the same database, as
    another replica would: 21 in all."""
    first = First((await store.log.entries(0, 1))[0], await store.log.checkpoint_note(1) or "")
    appender = Appender(store.log, read_key_file(key_file), ORIGIN)
    await appender.start()
    sealed = [await appender.append(draft(f"api-{i}", action="grant" if i % 3 else "withdraw")) for i in range(20)]
    await appender.stop()
    return [first, *sealed]


async def test_keys_and_checkpoint_are_public_and_verify(client: httpx.AsyncClient, filled: list) -> None:  # type: ignore[type-arg]
    keys = (await client.get("/v1/keys")).json()["keys"]
    assert sorted(k["key_name"] for k in keys) == [ORIGIN, f"{ORIGIN}/webhooks"]
    for key in keys:
        assert key["algorithm"] == "ed25519"
        assert key["active"] is True
        assert key["vkey"].startswith(f"{key['key_name']}+{key['key_id']}+")
        assert Verifier.from_vkey(key["vkey"]).id.hex() == key["key_id"]
    [key] = [k for k in keys if k["key_name"] == ORIGIN]
    response = await client.get("/v1/log/checkpoint")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.headers["consistency-token"]
    checkpoint = open_checkpoint(response.text, [Verifier.from_vkey(key["vkey"])], origin=ORIGIN)
    assert checkpoint.size == 21


async def test_entries_are_exact_bytes_and_verify_offline(
    client: httpx.AsyncClient,
    tokens: dict[str, str],
    filled: list,  # type: ignore[type-arg]
) -> None:
    response = await client.get("/v1/log/entries", params={"start": 0, "end": 21}, headers=bearer(tokens["audit:read"]))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = response.content.split(b"\n")
    assert lines[-1] == b""
    assert lines[:-1] == [s.leaf for s in filled]
    verify_log(lines[:-1], (await client.get("/v1/log/checkpoint")).text, [await log_verifier(client)])
    part = await client.get("/v1/log/entries?start=5&end=8", headers=bearer(tokens["admin"]))
    assert part.content.split(b"\n")[:-1] == [s.leaf for s in filled[5:8]]
    clamped = await client.get("/v1/log/entries?start=18&end=1000", headers=bearer(tokens["audit:read"]))
    assert clamped.content.count(b"\n") == 3


async def test_proofs_verify_against_signed_checkpoints(
    client: httpx.AsyncClient,
    tokens: dict[str, str],
    filled: list,  # type: ignore[type-arg]
) -> None:
    vkey = await log_verifier(client)
    head = open_checkpoint((await client.get("/v1/log/checkpoint")).text, [vkey])
    h = bearer(tokens["audit:read"])
    for index in (0, 7, 20):
        body = (await client.get(f"/v1/log/proof/inclusion?index={index}&tree_size=21", headers=h)).json()
        assert body["index"] == index
        assert body["tree_size"] == 21
        proof = [bytes.fromhex(p) for p in body["proof"]]
        verify_inclusion(index, 21, leaf_hash(filled[index].leaf), proof, head.root)
    # Every receipt's checkpoint is consistent with the latest one.
    for sealed in filled:
        old = open_checkpoint(sealed.checkpoint, [vkey])
        body = (await client.get(f"/v1/log/proof/consistency?from={old.size}&to=21", headers=h)).json()
        assert (body["from"], body["to"]) == (old.size, 21)
        verify_consistency(old.size, 21, old.root, head.root, [bytes.fromhex(p) for p in body["proof"]])


@pytest.mark.parametrize(
    ("path", "detail"),
    [
        ("/v1/log/proof/inclusion?index=21&tree_size=21", "not in a tree"),
        ("/v1/log/proof/inclusion?index=0&tree_size=22", "beyond"),
        ("/v1/log/proof/inclusion?index=-1&tree_size=5", ""),
        ("/v1/log/proof/inclusion?index=x&tree_size=5", ""),
        ("/v1/log/proof/inclusion?tree_size=5", "index"),
        ("/v1/log/proof/consistency?from=5&to=4", "no consistency proof"),
        ("/v1/log/proof/consistency?from=1&to=99", "beyond"),
        ("/v1/log/entries?start=22", "outside"),
        ("/v1/log/entries?start=5&end=2", "before"),
    ],
)
async def test_bad_requests_get_problem_json(
    client: httpx.AsyncClient,
    tokens: dict[str, str],
    filled: list,  # type: ignore[type-arg]
    path: str,
    detail: str,
) -> None:
    response = await client.get(path, headers=bearer(tokens["audit:read"]))
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["consistency-token"]
    body = response.json()
    assert set(body) >= {"type", "title", "status", "detail"}
    assert body["status"] == 400
    assert detail in body["detail"]


PROTECTED = [
    "/v1/log/entries?start=0&end=1",
    "/v1/log/proof/inclusion?index=0&tree_size=1",
    "/v1/log/proof/consistency?from=0&to=1",
]


@pytest.mark.parametrize("path", PROTECTED)
async def test_audit_endpoints_need_a_valid_token_with_the_scope(
    client: httpx.AsyncClient,
    tokens: dict[str, str],
    filled: list,  # type: ignore[type-arg]
    path: str,
) -> None:
    for headers in (
        {},
        bearer("cl_not-a-real-token"),
        {"Authorization": "Basic Zm9vOmJhcg=="},
        {"Authorization": "Bearer"},
    ):
        response = await client.get(path, headers=headers)
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["www-authenticate"].startswith("Bearer")
    for scope in ("consent:check", "consent:write"):
        response = await client.get(path, headers=bearer(tokens[scope]))
        assert response.status_code == 403
        assert response.json()["status"] == 403
    for scope in ("audit:read", "admin"):
        assert (await client.get(path, headers=bearer(tokens[scope]))).status_code == 200
    assert (await client.get(path, headers=bearer(ADMIN_TOKEN))).status_code == 200


async def test_a_revoked_token_is_refused(client: httpx.AsyncClient, store: Stores, tokens: dict[str, str]) -> None:
    validated_at = time.monotonic()
    assert (await client.get(PROTECTED[0], headers=bearer(tokens["audit:read"]))).status_code == 200  # now cached
    assert await store.tokens.revoke_token("t-audit:read") == 1
    await refused_once_revoked(lambda: client.get(PROTECTED[0], headers=bearer(tokens["audit:read"])), validated_at)


async def test_public_endpoints_and_unknown_routes(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health/live")).json() == {"status": "ok"}
    assert (await client.get("/health/ready")).json() == {"status": "ready"}
    missing = await client.get("/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    wrong_method = await client.delete("/v1/log/checkpoint")
    assert wrong_method.status_code == 405
    assert wrong_method.headers["content-type"] == "application/problem+json"
