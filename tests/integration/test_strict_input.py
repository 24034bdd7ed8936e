"""Strict input at the HTTP edge (issue 11): one reading of every request, or a 4xx that changes nothing.

Whole-value patterns (no trailing newline anywhere), duplicate JSON keys, the JSON content type,
empty strings, repeated and malformed query parameters, OPTIONS, and the `ledger migrate` report
of device_ids stored before the patterns were fixed (with the README's way to erase them).
"""

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated
from urllib.parse import quote

import asyncpg
import httpx
import msgspec
import pytest

from ledger.core.entry import Entry, entry_bytes, format_time, parse_entry
from ledger.core.errors import EntryError
from ledger.models import IDEMPOTENCY_KEY_PATTERN, IdempotencyKey

from .conftest import bearer
from .server import ADMIN_TOKEN

ADMIN = bearer(ADMIN_TOKEN)
NL = "%0A"
UUID = "8b5b1f0e-1111-4222-8333-444444444444"


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=10, headers=ADMIN) as c:
        yield c


def consent(**extra: object) -> dict[str, object]:
    return {"device_id": "dev-1", "purpose": "telemetry", "action": "grant", "policy_version": 1, **extra}


async def log_size(client: httpx.AsyncClient) -> int:
    return int((await client.get("/v1/log/checkpoint")).text.splitlines()[1])


def assert_problem(response: httpx.Response, *statuses: int) -> None:
    assert response.status_code in statuses, f"{response.request.url}: {response.status_code} {response.text}"
    assert response.headers["content-type"] == "application/problem+json", response.text
    assert response.json()["status"] == response.status_code


async def test_every_pattern_checked_field_refuses_a_trailing_newline(client: httpx.AsyncClient) -> None:
    granted = await client.post("/v1/consents", json=consent())
    assert granted.status_code == 201, granted.text
    token = granted.json()["consistency_token"]
    now = format_time(datetime.now(UTC))
    later = format_time(datetime.now(UTC) + timedelta(days=1))
    size = await log_size(client)

    bodies = {
        "device_id": consent(device_id="dev-1\n"),
        "purpose": consent(purpose="telemetry\n"),
        "action": consent(action="grant\n"),
        "occurred_at": consent(occurred_at=now + "\n"),
        "expires_at": consent(expires_at=later + "\n"),
        "actor": consent(actor="user\n"),
        "method": consent(method="api\n"),
    }
    for field, body in bodies.items():
        response = await client.post("/v1/consents", json=body)
        assert response.status_code == 422, f"{field}: {response.status_code} {response.text}"
    for field in ("device_id", "purpose"):
        check = {
            "device_id": "dev-1",
            "purpose": "telemetry",
            field: "dev-1\n" if field == "device_id" else "telemetry\n",
        }
        assert_problem(await client.post("/v1/check", json={"checks": [check]}), 422)
    webhook = {"url": "https://hooks.example/ledger", "events": ["consent.withdrawn"]}
    for field, value in (("purposes", ["telemetry\n"]), ("events", ["consent.withdrawn\n"])):
        assert_problem(await client.post("/v1/webhooks", json={**webhook, field: value}), 422)
    assert_problem(await client.post("/v1/webhooks", json={**webhook, "url": webhook["url"] + "\n"}), 422)

    queries = [
        f"/v1/check?device_id=dev-1{NL}&purpose=telemetry",
        f"/v1/check?device_id=dev-1&purpose=telemetry{NL}",
        f"/v1/check?device_id=dev-1&purpose=telemetry&at={quote(now)}{NL}",
        f"/v1/check?device_id=dev-1&purpose=telemetry&consistency={token}{NL}",
        f"/v1/devices/dev-1/consents?consistency={token}{NL}",
        f"/v1/devices/dev-1/consents?at={quote(now)}{NL}",
        f"/v1/log/entries?start=0{NL}",
        f"/v1/log/entries?end=1{NL}",
        f"/v1/log/proof/inclusion?index=0{NL}&tree_size=1",
        f"/v1/log/proof/inclusion?index=0&tree_size=1{NL}",
        f"/v1/log/proof/consistency?from=1{NL}&to=1",
        f"/v1/log/proof/consistency?from=1&to=1{NL}",
        f"/v1/export?start=0{NL}",
        f"/v1/export?end=1{NL}",
        f"/v1/export?since={quote(now)}{NL}",
        f"/v1/export?until={quote(now)}{NL}",
    ]
    for path in queries:
        assert_problem(await client.get(path), 400, 422)
    assert_problem(await client.post(f"/v1/check?consistency={token}{NL}", json={"checks": []}), 400)
    for path in ("consents", "history", "export"):
        assert_problem(await client.get(f"/v1/devices/dev-1{NL}/{path}"), 422)
    assert_problem(await client.post(f"/v1/devices/dev-1{NL}/erase"), 422)
    assert_problem(await client.get(f"/v1/webhooks/{UUID}{NL}"), 404)
    assert_problem(await client.post(f"/v1/webhooks/{UUID}/deliveries/msg_1{NL}/retry"), 404)

    # A header cannot carry a newline over HTTP/1.1 (the line would end there): the type behind
    # the Idempotency-Key header refuses it, and the header refuses other non-visible characters.
    # Litestar checks the header's pattern with msgspec, as below.
    header = Annotated[str, msgspec.Meta(pattern=IDEMPOTENCY_KEY_PATTERN)]
    for key_type in (header, IdempotencyKey):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert("key-1\n", key_type)
        assert msgspec.convert("key-1", key_type) == "key-1"
    response = await client.post("/v1/consents", json=consent(), headers={"Idempotency-Key": "key 1"})
    assert_problem(response, 400)

    assert await log_size(client) == size
    assert (await client.get("/v1/check", params={"device_id": "dev-1", "purpose": "telemetry"})).json()["allowed"]


def test_log_entry_fields_refuse_a_trailing_newline() -> None:
    """The patterns of the log entry itself (what `ledger verify` and `verify-receipt` parse): the
    canonical re-encoding alone would not catch a trailing newline, which JSON escapes the same way."""
    now = format_time(datetime.now(UTC))
    entry = Entry(
        v=1,
        id="8b5b1f0e-1111-4222-8333-444444444444",
        index=0,
        subject="ab" * 32,
        purpose="telemetry",
        action="grant",
        policy_version=1,
        occurred_at=now,
        recorded_at=now,
        actor="user",
        method="api",
        evidence={},
        expires_at=now,
    )
    assert parse_entry(entry_bytes(entry)) == entry
    for field in ("id", "subject", "purpose", "occurred_at", "recorded_at", "expires_at"):
        fields = msgspec.to_builtins(entry)
        fields[field] += "\n"
        with pytest.raises(EntryError):
            parse_entry(msgspec.json.encode(dict(sorted(fields.items()))))


async def test_duplicate_json_keys_are_refused_on_every_json_endpoint(client: httpx.AsyncClient) -> None:
    size = await log_size(client)
    json_ = {"content-type": "application/json"}
    bodies = {
        "/v1/consents": [
            b'{"device_id":"dev-1","purpose":"telemetry","action":"grant","action":"withdraw","policy_version":1}',
            b'{"device_id":"dev-1","purpose":"telemetry","action":"grant","policy_version":1,'
            b'"evidence":{"popup":"v1","popup":"v2"}}',
        ],
        "/v1/check": [b'{"checks":[{"device_id":"a","device_id":"b","purpose":"telemetry"}]}'],
        "/v1/webhooks": [b'{"url":"https://a.example/","url":"https://b.example/","events":["consent.withdrawn"]}'],
    }
    for path, contents in bodies.items():
        for content in contents:
            response = await client.post(path, content=content, headers=json_)
            assert_problem(response, 400)
            assert "more than once" in response.json()["detail"]
    assert await log_size(client) == size
    assert (await client.get("/v1/webhooks")).json()["webhooks"] == []


async def test_json_bodies_need_the_json_content_type(client: httpx.AsyncClient) -> None:
    body = msgspec.json.encode(consent())
    size = await log_size(client)
    refused: list[dict[str, str] | list[tuple[str, str]]] = [
        {"content-type": "text/plain"},
        {"content-type": "application/x-www-form-urlencoded"},
        {"content-type": "application/json-seq"},
        {"content-type": "application/json; charset=iso-8859-1"},
        {},  # no Content-Type at all
        [("content-type", "application/json"), ("content-type", "text/plain")],
    ]
    for path, content in (("/v1/consents", body), ("/v1/check", b'{"checks":[]}'), ("/v1/webhooks", b"{}")):
        for headers in refused:
            response = await client.post(path, content=content, headers=headers)
            assert_problem(response, 415)
    # Authentication first: without a token, the content type is not even looked at.
    async with httpx.AsyncClient(base_url=client.base_url, timeout=10) as anonymous:
        response = await anonymous.post("/v1/consents", content=body, headers={"content-type": "text/plain"})
    assert_problem(response, 401)
    assert await log_size(client) == size
    for content_type in ("application/json", "Application/JSON; charset=UTF-8", 'application/json;charset="utf-8"'):
        response = await client.post("/v1/consents", content=body, headers={"content-type": content_type})
        assert response.status_code == 201, f"{content_type}: {response.text}"


async def test_empty_strings_are_values_not_absence(client: httpx.AsyncClient) -> None:
    size = await log_size(client)
    for field in ("occurred_at", "expires_at"):
        assert_problem(await client.post("/v1/consents", json=consent(**{field: ""})), 422)
    assert_problem(await client.post("/v1/consents", json=consent(device_id="")), 422)
    assert_problem(await client.post("/v1/consents", json=consent(evidence={"": "x"})), 422)
    assert_problem(await client.get("/v1/check?device_id=dev-1&purpose=telemetry&at="), 422)
    assert_problem(await client.get("/v1/check?device_id=dev-1&purpose=telemetry&consistency="), 400)
    assert_problem(await client.get("/v1/check?device_id=&purpose=telemetry"), 422)
    for query in ("since=", "until=", "start=", "end="):
        assert_problem(await client.get(f"/v1/export?{query}"), 400, 422)
    assert await log_size(client) == size


async def test_a_repeated_query_parameter_is_refused_everywhere(client: httpx.AsyncClient) -> None:
    paths = [
        "/v1/check?device_id=a&device_id=b&purpose=telemetry",
        "/v1/check?device_id=a&purpose=telemetry&purpose=telemetry",
        "/v1/check?device_id=a&purpose=telemetry&at=2026-01-01T00:00:00Z&at=2026-01-02T00:00:00Z",
        "/v1/devices/a/consents?consistency=ct1.0&consistency=ct1.0",
        "/v1/log/entries?start=0&start=1",
        "/v1/log/proof/inclusion?index=0&index=0&tree_size=1",
        "/v1/log/proof/consistency?from=1&to=1&to=1",
        "/v1/export?start=0&start=1",
        "/v1/export?since=2026-01-01T00:00:00Z&since=2026-01-02T00:00:00Z",
        "/v1/keys?x=1&x=2",
        "/v1/log/checkpoint?x&x",
        "/health/live?x=1&x=1",
    ]
    for path in paths:
        response = await client.get(path)
        assert_problem(response, 400)
        assert "more than once" in response.json()["detail"]
    response = await client.post("/v1/check?at=2026-01-01T00:00:00Z&at=2026-01-01T00:00:00Z", json={"checks": []})
    assert_problem(response, 400)


@pytest.mark.parametrize("value", ["null", "1.0", "1e2", "-1", "+1", " 1", "0x1", "١", "99999999999999999999", ""])
async def test_integer_query_parameters_take_decimal_digits_only(client: httpx.AsyncClient, value: str) -> None:
    for path in ("/v1/export?start=", "/v1/export?end=", "/v1/log/entries?start=", "/v1/log/entries?end="):
        assert_problem(await client.get(path + quote(value)), 400)
    assert_problem(await client.get(f"/v1/log/proof/inclusion?index={quote(value)}&tree_size=0"), 400)
    assert_problem(await client.get(f"/v1/log/proof/consistency?from=0&to={quote(value)}"), 400)


def test_options_lists_every_method_of_the_path_without_a_token(base_url: str) -> None:
    document = httpx.get(f"{base_url}/schema/openapi.json").json()
    methods = {"get", "put", "post", "delete", "patch", "head"}
    for template, item in document["paths"].items():
        path = template.replace("{device_id}", "dev-1").replace("{webhook_id}", UUID).replace("{delivery_id}", "m")
        expected = {m.upper() for m in item if m in methods} | {"OPTIONS"}
        response = httpx.options(f"{base_url}{path}")
        assert response.status_code == 204, f"{path}: {response.status_code} {response.text}"
        assert set(response.headers["allow"].split(", ")) == expected, path
    assert httpx.options(f"{base_url}/v1/nowhere").status_code == 404


def ledger_cli(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env["LEDGER_DATABASE_URL"] = database_url
    return subprocess.run([sys.executable, "-m", "ledger", *args], env=env, capture_output=True, text=True, timeout=120)


async def test_migrate_reports_stored_device_ids_the_api_refuses_and_readme_erases_them(
    client: httpx.AsyncClient, database_url: str
) -> None:
    for device in ("legacy-1", "fine-1"):
        assert (await client.post("/v1/consents", json=consent(device_id=device))).status_code == 201
    conn = await asyncpg.connect(database_url)
    try:
        # What a server before the fix could store: the same device_id with a trailing newline.
        await conn.execute("UPDATE subjects SET device_id = device_id || E'\\n' WHERE device_id = 'legacy-1'")
        clean = ledger_cli("migrate", database_url=database_url)
        assert clean.returncode == 0, clean.stderr
        assert "1 device(s) stored with a device_id the API no longer accepts" in clean.stdout
        assert "legacy-1" not in clean.stdout + clean.stderr
        assert_problem(await client.post(f"/v1/devices/legacy-1{NL}/erase"), 422)

        # README, "Erasing a device_id the API refuses": give each such row a placeholder
        # derived from its subject, then erase the placeholder through the API as usual.
        await conn.execute(
            """UPDATE subjects SET device_id = 'invalid-' || subject
               WHERE device_id !~ '^[A-Za-z0-9._:-]{1,128}$'"""
        )
        placeholders = await conn.fetch("SELECT device_id FROM subjects WHERE device_id LIKE 'invalid-%'")
        assert len(placeholders) == 1
        for row in placeholders:
            erased = await client.post(f"/v1/devices/{row['device_id']}/erase")
            assert erased.status_code == 201, erased.text
        assert await conn.fetchval("SELECT count(*) FROM subjects") == 1
    finally:
        await conn.close()
    after = ledger_cli("migrate", database_url=database_url)
    assert "no longer accepts" not in after.stdout
    assert (await client.get("/v1/devices/fine-1/consents")).json()["purposes"]["telemetry"]["allowed"]
