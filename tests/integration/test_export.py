"""Audit exports through the CLI and the API, verified offline by `ledger verify`."""

import csv
import hashlib
import hmac
import io
import json
import os
import subprocess
import sys
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger.core.verify import verify_receipt

from .conftest import ORIGIN, bearer, log_verifier
from .server import ADMIN_TOKEN

ADMIN = bearer(ADMIN_TOKEN)


def ledger(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    return subprocess.run(
        [sys.executable, "-m", "ledger", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


async def record(client: httpx.AsyncClient, count: int, device: str = "exp") -> list[dict[str, Any]]:
    receipts = []
    for i in range(count):
        body = {"device_id": f"{device}-{i % 4}", "purpose": "telemetry", "action": "grant" if i % 3 else "withdraw",
                "policy_version": 1, "evidence": {"n": str(i)}}  # fmt: skip
        response = await client.post("/v1/consents", json=body, headers=ADMIN)
        assert response.status_code == 201
        receipts.append(response.json())
    return receipts


@pytest.fixture
async def vkey(client: httpx.AsyncClient) -> str:
    return (await log_verifier(client)).vkey


async def test_cli_export_of_the_whole_log_verifies_offline(
    client: httpx.AsyncClient, database_url: str, tmp_path: Path, vkey: str
) -> None:
    receipts = await record(client, 30)
    out = tmp_path / "bundle"
    exported = ledger("export", "--out", str(out), env={"LEDGER_DATABASE_URL": database_url})
    assert exported.returncode == 0, exported.stderr
    # Entry 0 is the purpose registry the server published at its first start.
    assert "exported 31 entries (the whole log)" in exported.stdout
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "entries.ndjson", "keys"]
    assert out.joinpath("entries.ndjson").read_bytes().split(b"\n")[1:-1] == [r["leaf"].encode() for r in receipts]
    assert vkey in out.joinpath("keys").read_text().splitlines()
    result = ledger("verify", str(out), "--key", vkey)
    assert result.returncode == 0, result.stderr
    assert "OK: 31 entries (the whole log)" in result.stdout
    assert "cannot be ruled out" in result.stdout
    held = tmp_path / "held"
    held.write_text(receipts[9]["checkpoint"])
    result = ledger("verify", str(out), "--key", vkey, "--previous-checkpoint", str(held))
    assert result.returncode == 0, result.stderr
    assert "consistent with the held checkpoint of size 11" in result.stdout


async def test_tampering_with_an_export_fails_verification_and_names_it(
    client: httpx.AsyncClient, database_url: str, tmp_path: Path, vkey: str
) -> None:
    await record(client, 12)
    out = tmp_path / "bundle"
    assert ledger("export", "--out", str(out), env={"LEDGER_DATABASE_URL": database_url}).returncode == 0
    entries = out / "entries.ndjson"
    original = entries.read_bytes()
    lines = original.split(b"\n")[:-1]
    cases = {
        "changed byte": b"\n".join([*lines[:3], lines[3].replace(b'"n":"2"', b'"n":"4"'), *lines[4:]]) + b"\n",
        "deleted entry": b"\n".join(lines[:5] + lines[6:]) + b"\n",
        "swapped entries": b"\n".join([*lines[:7], lines[8], lines[7], *lines[9:]]) + b"\n",
        "cut file": original[:-10],
    }
    expected = {
        "changed byte": "do not hash to the signed root",
        "deleted entry": "line 6 has index 6, expected 5",
        "swapped entries": "line 8 has index 8, expected 7",
        "cut file": "does not end with a newline",
    }
    for name, content in cases.items():
        entries.write_bytes(content)
        result = ledger("verify", str(out), "--key", vkey)
        assert result.returncode == 1, name
        assert expected[name] in result.stderr, (name, result.stderr)
    entries.write_bytes(original)
    other_key = ledger("keygen", "--out", str(tmp_path / "other.key")).stdout.strip().splitlines()[-1]
    result = ledger("verify", str(out), "--key", other_key)
    assert result.returncode == 1
    assert "not the key you trust" in result.stderr
    assert ledger("verify", str(out), "--key", vkey).returncode == 0


async def test_filtered_exports_carry_proofs_and_verify(
    client: httpx.AsyncClient, database_url: str, tmp_path: Path, vkey: str
) -> None:
    await record(client, 25)
    env = {"LEDGER_DATABASE_URL": database_url}
    by_index = tmp_path / "by-index"
    assert ledger("export", "--out", str(by_index), "--start", "5", "--end", "15", env=env).returncode == 0
    proofs = [json.loads(line) for line in (by_index / "proofs.ndjson").read_text().splitlines()]
    assert [p["index"] for p in proofs] == list(range(5, 15))
    assert {p["tree_size"] for p in proofs} == {26}  # with the registry entry at 0
    result = ledger("verify", str(by_index), "--key", vkey)
    assert result.returncode == 0, result.stderr
    assert "OK: 10 entries (entries 5 to 14)" in result.stdout
    everything = tmp_path / "by-time"
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    result = ledger("export", "--out", str(everything), "--since", since, env=env)
    assert result.returncode == 0, result.stderr
    assert "exported 26 entries" in result.stdout
    nothing = tmp_path / "future"
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert ledger("export", "--out", str(nothing), "--since", future, env=env).returncode == 0
    assert (nothing / "entries.ndjson").read_bytes() == b""
    assert ledger("verify", str(nothing), "--key", vkey).returncode == 0


async def test_the_api_streams_the_same_bundle_as_a_tar(
    client: httpx.AsyncClient, tmp_path: Path, vkey: str, tokens: dict[str, str]
) -> None:
    await record(client, 20)
    for params, proofs in (({}, False), ({"start": 3, "end": 11}, True)):
        response = await client.get("/v1/export", params=params, headers=bearer(tokens["audit:read"]))
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-tar"
        assert "attachment" in response.headers["content-disposition"]
        out = tmp_path / f"api-{proofs}"
        with tarfile.open(fileobj=io.BytesIO(response.content)) as tar:
            names = sorted(tar.getnames())
            tar.extractall(out, filter="data")
        assert names == sorted(["checkpoint", "keys", "entries.ndjson"] + (["proofs.ndjson"] if proofs else []))
        result = ledger("verify", str(out), "--key", vkey)
        assert result.returncode == 0, result.stderr
    assert (await client.get("/v1/export", headers=bearer(tokens["consent:check"]))).status_code == 403
    assert (await client.get("/v1/export")).status_code == 401
    assert (await client.get("/v1/export", params={"since": "soon"}, headers=ADMIN)).status_code == 422
    assert (await client.get("/v1/export", params={"start": 99}, headers=ADMIN)).status_code == 400


async def test_a_receipt_verifies_on_its_own(client: httpx.AsyncClient, tmp_path: Path, vkey: str) -> None:
    [receipt] = await record(client, 1)
    path = tmp_path / "receipt.json"
    path.write_text(json.dumps(receipt))
    result = ledger("verify-receipt", str(path), "--key", vkey)
    assert result.returncode == 0, result.stderr
    assert "OK: entry 1" in result.stdout
    path.write_text(json.dumps({**receipt, "leaf_hash": "00" * 32}))
    result = ledger("verify-receipt", str(path), "--key", vkey)
    assert result.returncode == 1
    assert "FAILED: leaf_hash is not the hash of the leaf" in result.stderr


async def test_the_persons_own_record(client: httpx.AsyncClient, tokens: dict[str, str]) -> None:
    await record(client, 8, device="me")
    response = await client.get("/v1/devices/me-1/export", headers=bearer(tokens["audit:read"]))
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"device_id", "subject", "salt", "entries", "purposes", "grants"}
    salt = bytes.fromhex(body["salt"])
    assert hmac.new(salt, b"me-1", hashlib.sha256).hexdigest() == body["subject"]
    assert [e["entry"]["subject"] for e in body["entries"]] == [body["subject"]] * 2
    assert len({e["checkpoint"] for e in body["entries"]}) == 1  # one checkpoint for all
    verifier = await log_verifier(client)
    for receipt in body["entries"]:
        verify_receipt(json.dumps(receipt).encode(), [verifier])
    telemetry = body["purposes"]["telemetry"]
    assert telemetry["record"]["controller"] == {"name": "Kuku AI", "contact": "support@ssjtech.xyz"}
    assert telemetry["record"]["recipients"]
    assert telemetry["record"]["data_categories"]
    assert telemetry["record"]["legal_basis"] == "consent"
    assert "Withdraw at any time" in telemetry["record"]["how_to_withdraw"]
    assert telemetry["reason"] in ("granted", "withdrawn")
    assert telemetry["collection_method"] == "api"
    assert body["purposes"]["pixverse_sharing"]["reason"] == "no_consent"
    assert (await client.get("/v1/devices/nobody/export", headers=ADMIN)).status_code == 404
    assert (await client.get("/v1/devices/me-1/export", headers=bearer(tokens["consent:check"]))).status_code == 403
    assert ORIGIN in body["entries"][0]["checkpoint"]


async def test_the_record_of_processing_as_json_and_csv(client: httpx.AsyncClient, tokens: dict[str, str]) -> None:
    headers = bearer(tokens["consent:check"])
    records = (await client.get("/v1/purposes/record", headers=headers)).json()["purposes"]
    # In key order: the registry in force is read from its log entry, whose keys are sorted.
    assert [r["purpose_id"] for r in records] == ["cross_border_transfer", "pixverse_sharing", "telemetry"]
    assert records[0]["controller"]["name"] == "Kuku AI"
    assert "PixVerse" in records[0]["recipients"][0]
    response = await client.get("/v1/purposes/record", headers={**headers, "Accept": "text/csv"})
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["purpose_id"] for r in rows] == ["cross_border_transfer", "pixverse_sharing", "telemetry"]
    assert rows[2]["data_categories"] == "device identifiers; app usage; crash and error events"
    assert (await client.get("/v1/purposes/record")).status_code == 401
