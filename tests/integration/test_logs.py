"""The server's log output, read whole: JSON lines from every process and logger, an access line
per request with its id and route template, and none of the values a log must never hold."""

import asyncio
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger import auth
from ledger.storage import Stores

from .conftest import ORIGIN, bearer
from .receiver import Receiver
from .server import ADMIN_TOKEN, Base, running_server, server_env
from .test_startup import ledger

ADMIN = bearer(ADMIN_TOKEN)
RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
REQUIRED = {"time", "level", "logger", "message"}
ACCESS = {"request_id", "route", "method", "status", "latency_ms"}
TOMBSTONE_KEY = f"tombstone-key-{uuid.uuid4().hex}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def unique(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex[:12]}"


def parse_lines(output: str) -> list[dict[str, Any]]:
    lines = []
    for number, text in enumerate(output.splitlines(), 1):
        try:
            line = json.loads(text)
        except json.JSONDecodeError:
            pytest.fail(f"line {number} is not JSON: {text!r}")
        assert isinstance(line, dict), text
        assert line.keys() >= REQUIRED, text
        assert RFC3339_UTC.fullmatch(line["time"]), text
        assert line["level"] in ("debug", "info", "warning", "error", "critical"), text
        lines.append(line)
    return lines


async def drive(base: str, store: Stores, receiver: Receiver) -> tuple[list[str], dict[str, tuple[str, int]]]:
    """Requests that carry everything a log must not hold. Returns those values, and the route and
    status each request id must be logged with."""
    devices = [unique("device"), unique("device"), unique("erased-device")]
    checker = auth.new_token()
    await store.tokens.create_token("logs-checker", auth.token_hash(checker), ["consent:check"])
    wrong_token = auth.new_token()
    query_secret = unique("query-secret")
    hook_secret_in_url = unique("hook-url-secret")
    never = [*devices, ADMIN_TOKEN, checker, wrong_token, query_secret, hook_secret_in_url, TOMBSTONE_KEY]
    expected: dict[str, tuple[str, int]] = {}

    async with httpx.AsyncClient(base_url=base, timeout=10, headers=ADMIN) as http:

        async def call(method: str, path: str, route: str, status: int, **kwargs: Any) -> httpx.Response:
            request_id = unique("req")
            headers = {"X-Request-Id": request_id, **kwargs.pop("headers", {})}
            response = await http.request(method, path, headers=headers, **kwargs)
            assert response.status_code == status, response.text
            assert response.headers["x-request-id"] == request_id
            expected[request_id] = (route, status)
            return response

        hook = await call(
            "POST",
            "/v1/webhooks",
            "/v1/webhooks",
            201,
            json={"url": f"{receiver.url}?token={hook_secret_in_url}", "events": ["consent.withdrawn"]},
        )
        never.append(hook.json()["secret"])
        rotated = await call(
            "POST", f"/v1/webhooks/{hook.json()['id']}/rotate-secret", "/v1/webhooks/{webhook_id}/rotate-secret", 200
        )
        never.append(rotated.json()["secret"])
        for device in devices:
            body = {"device_id": device, "purpose": "pixverse_sharing", "action": "grant", "policy_version": 1}
            granted = await call("POST", "/v1/consents", "/v1/consents", 201, json=body)
            never.append(granted.json()["entry"]["subject"])
        withdrawal = {"device_id": devices[0], "purpose": "pixverse_sharing", "action": "withdraw", "policy_version": 1}
        await call("POST", "/v1/consents", "/v1/consents", 201, json=withdrawal)
        await asyncio.to_thread(receiver.wait_for, 1, 20)  # the webhook went out (httpx logs its URL at INFO)
        params = {"device_id": devices[1], "purpose": "pixverse_sharing"}
        for _ in range(3):  # the route, then the hot path from memory
            await call("GET", "/v1/check", "/v1/check", 200, params=params, headers=bearer(checker))
        await call("POST", "/v1/check", "/v1/check", 200, json={"checks": [params]}, headers=bearer(checker))
        await call("GET", f"/v1/devices/{devices[1]}/history", "/v1/devices/{device_id}/history", 200)
        await call("GET", f"/v1/devices/{devices[1]}/consents", "/v1/devices/{device_id}/consents", 200)
        export = await call("GET", f"/v1/devices/{devices[1]}/export", "/v1/devices/{device_id}/export", 200)
        never.append(export.json()["salt"])
        await call("POST", f"/v1/devices/{devices[2]}/erase", "/v1/devices/{device_id}/erase", 201)
        # Failing requests: a wrong token, a malformed body, an unknown device, a query string, an
        # unknown path and method, a wrong media type, an erased device.
        await call("GET", "/v1/check", "/v1/check", 401, params=params, headers=bearer(wrong_token))
        await call(
            "POST",
            "/v1/consents",
            "/v1/consents",
            400,
            content=f'{{"device_id": "{devices[0]}"',
            headers={"Content-Type": "application/json"},
        )
        await call("POST", "/v1/consents", "/v1/consents", 422, json={**withdrawal, "purpose": "no-such-purpose"})
        await call("GET", f"/v1/devices/{devices[2]}/export", "/v1/devices/{device_id}/export", 404)
        await call("GET", "/v1/check", "/v1/check", 400, params={**params, "device_id": [devices[0], query_secret]})
        await call("GET", f"/v1/nowhere/{devices[0]}", "unmatched", 404, params={"secret": query_secret})
        await call("DELETE", "/v1/consents", "unmatched", 405)
        await call(
            "POST",
            "/v1/consents",
            "/v1/consents",
            415,
            content=json.dumps(withdrawal),
            headers={"Content-Type": "text/plain"},
        )
        # Without an X-Request-Id (or with one that is not sane), the server makes one.
        for headers in ({}, {"X-Request-Id": f"{devices[0]} and more"}):
            response = await http.get("/v1/log/checkpoint", headers=headers)
            made = response.headers["x-request-id"]
            assert uuid.UUID(made).version == 4
            expected[made] = ("/v1/log/checkpoint", 200)
        # The access line is written once the answer is sent: one more request on the same
        # connection, so that the server is not stopped between the last answer and its line.
        await http.get("/health/live")
    return never, expected


async def test_json_logs_name_every_request_and_nothing_secret(
    database_url: str, tmp_path: Path, key_file: Path, store: Stores, receiver: Receiver
) -> None:
    # No LEDGER_LOG_FORMAT: the output goes to a file, not a terminal, so JSON is the default.
    env = server_env(
        database_url,
        tmp_path,
        LEDGER_SIGNING_KEY=str(key_file),
        LEDGER_LOG_ORIGIN=ORIGIN,
        LEDGER_WEBHOOK_ALLOW_PRIVATE="true",
        LEDGER_TOMBSTONE_KEY=TOMBSTONE_KEY,
    )
    server: Base
    with running_server(env, workers=2) as server:
        never, expected = await drive(server, store, receiver)
    # Read once the server has stopped: its shutdown lines are there too.
    output = server.output()
    private_key = (
        (await asyncio.to_thread(key_file.read_text)).strip().split("+", 4)[4]
    )  # PRIVATE+KEY+<name>+<id>+<key>
    leaked = [value for value in [*never, private_key] if value in output]
    assert not leaked, f"{leaked} in the log output:\n{output[-4000:]}"

    lines = parse_lines(output)
    access = {line["request_id"]: line for line in lines if line["logger"] == "ledger.access"}
    for request_id, (route, status) in expected.items():
        line = access.get(request_id)
        assert line is not None, f"no access line for {request_id} ({route})"
        assert line.keys() >= ACCESS
        assert (line["route"], line["status"]) == (route, status), line
        assert isinstance(line["latency_ms"], float)
    # The server process's own lines and granian's, from the main process and from each worker.
    messages = {line["message"] for line in lines}
    assert any(m.startswith("serving on http://127.0.0.1:") for m in messages)
    granian = [line for line in lines if line["logger"].startswith("granian")]
    assert {line["pid"] for line in granian} >= {server.pid}
    assert len({line["pid"] for line in granian}) == 3, granian  # the server and its two workers
    assert {line["pid"] for line in access.values()} <= {line["pid"] for line in granian}
    assert "Granian shutdown completed, see ya!" in messages


def test_text_logs_carry_the_same_fields(database_url: str, tmp_path: Path, key_file: Path) -> None:
    env = server_env(database_url, tmp_path, LEDGER_SIGNING_KEY=str(key_file), LEDGER_LOG_FORMAT="text")
    with running_server(env) as server:
        response = httpx.get(f"{server}/v1/devices/text-device/history", headers={**ADMIN, "X-Request-Id": "abc-1"})
        assert response.headers["x-request-id"] == "abc-1"
    output = server.output()
    assert not [line for line in output.splitlines() if line.startswith("{")]
    assert re.search(r" INFO granian: Listening at: http://127\.0\.0\.1:\d+\n", output)
    assert re.search(
        r" INFO ledger\.access: GET /v1/devices/\{device_id\}/history 200 \[request_id=abc-1 "
        r"route=/v1/devices/\{device_id\}/history method=GET status=200 latency_ms=[0-9.]+\]\n",
        output,
    ), output
    assert "text-device" not in output


def test_an_unknown_log_format_is_one_line(tmp_path: Path) -> None:
    result = ledger("serve", env={"LEDGER_DATA_DIR": str(tmp_path), "LEDGER_LOG_FORMAT": "xml"})
    assert result.returncode == 2
    assert result.stderr == "ledger: error: LEDGER_LOG_FORMAT='xml': expected json or text\n"
    assert not (tmp_path / "postgres").exists()  # nothing started
