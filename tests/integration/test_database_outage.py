"""PostgreSQL killed under a running server: every failure is a 503 problem with Retry-After, never
a 500; the embedded server is started again by `ledger serve` and nothing acknowledged is lost."""

import asyncio
import concurrent.futures
import logging
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger import auth, embedded
from ledger.app import create_app
from ledger.composition import open_patiently
from ledger.core.note import Signer
from ledger.settings import Settings
from ledger.storage.database import ensure_database

from .helpers import until
from .server import ADMIN_TOKEN, running_server

DEVICE = "outage-device"  # recorded before the outage; the requests fired erase another one
SAMPLE = {
    "device_id": "sample-device",
    "webhook_id": str(uuid.uuid4()),
    "delivery_id": str(uuid.uuid4()),
    "path": "openapi.yaml",
}
QUERIES = {
    "/v1/check": {"device_id": "sample-device", "purpose": "telemetry"},
    "/v1/log/entries": {"start": "0", "end": "1"},
    "/v1/log/proof/inclusion": {"index": "0", "tree_size": "1"},
    "/v1/log/proof/consistency": {"from": "1", "to": "1"},
}
BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/v1/consents"): {
        "device_id": "outage-new",
        "purpose": "telemetry",
        "action": "grant",
        "policy_version": 1,
    },
    ("POST", "/v1/check"): {"checks": [{"device_id": "sample-device", "purpose": "telemetry"}]},
    ("POST", "/v1/webhooks"): {"url": "https://hooks.example.com/consent", "events": ["consent.withdrawn"]},
}


def endpoints() -> list[tuple[str, str]]:
    """Every method and path the application routes, path parameters filled in."""
    found = []
    for route in create_app(Settings()).routes:
        path = re.sub(r"\{(\w+):\w+\}", lambda m: SAMPLE[m[1]], route.path)
        found += [(method, path) for method in sorted(getattr(route, "methods", ())) if method != "OPTIONS"]
    return found


def fire(base: str, token: str) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, timeout=30, headers=headers) as http:
        return [
            opened(http, path)
            if path in STREAMS
            else http.request(
                method,
                path,
                params=QUERIES.get(path) if method == "GET" else None,
                json=BODIES.get((method, path)),
            )
            for method, path in endpoints()
        ]


# Answers that never end by themselves: their status and headers are what is checked.
STREAMS = {"/v1/watch"}


def opened(http: httpx.Client, path: str) -> httpx.Response:
    with http.stream("GET", path) as response:
        if response.status_code != 200:
            response.read()
            return response
        return httpx.Response(200, headers=response.headers, request=response.request)


async def burst(base: str, count: int = 300, concurrency: int = 32) -> list[httpx.Response]:
    """Token lookups at once, each with a token never seen: many pooled connections in use
    when they break (where asyncpg raised its InternalClientError), then connection attempts."""
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:

        async def one() -> httpx.Response:
            async with limit:
                headers = {"Authorization": f"Bearer {auth.new_token()}"}
                return await http.get("/v1/check", params=QUERIES["/v1/check"], headers=headers)

        return await asyncio.gather(*(one() for _ in range(count)))


def assert_no_server_errors(responses: list[httpx.Response]) -> int:
    """No 500; every 5xx a 503 problem with Retry-After. Return how many 503s there were."""
    unavailable = 0
    for r in responses:
        where = f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text[:300]}"
        assert r.status_code < 500 or r.status_code == 503, where
        if r.status_code == 503:
            unavailable += 1
            assert r.headers.get("retry-after"), where
            if r.request.url.path != "/health/ready":  # answers its own small JSON
                assert r.headers["content-type"].startswith("application/problem+json"), where
                assert r.json()["status"] == 503, where
    return unavailable


def postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().split()[0])


def kill_postmaster(pgdata: Path) -> int:
    pid = postmaster_pid(pgdata)
    os.kill(pid, signal.SIGKILL)
    return pid


def wait_ready(base: str, within: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        try:
            if httpx.get(f"{base}/health/ready", timeout=1).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"not ready within {within} s")


def record(base: str, device: str) -> httpx.Response:
    body = {"device_id": device, "purpose": "telemetry", "action": "grant", "policy_version": 1}
    return httpx.post(f"{base}/v1/consents", json=body, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})


def allowed(base: str, device: str) -> bool:
    """The decision, once the service answers checks: a projection that fell behind while the
    database recovered fails closed (503) until it has caught up, even when already "ready"."""
    params = {"device_id": device, "purpose": "telemetry"}
    deadline = time.monotonic() + 30
    while True:
        answer = httpx.get(f"{base}/v1/check", params=params, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        if answer.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert answer.status_code == 200, answer.text
    return bool(answer.json()["allowed"])


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[tuple[Any, str]]:
    """A PostgreSQL of this test's own, which it may kill: nothing supervises it.

    This process becomes the reaper of the postmaster (as `ledger serve` does): where PID 1 does
    not reap, the killed postmaster would stay a zombie that PostgreSQL takes for a running
    server, and no restart would succeed (seen once on CI: 30 s of failed starts)."""
    embedded.adopt_orphans()
    server, server_url = embedded.start(tmp_path / "pg")
    asyncio.run(ensure_database(server_url, "ledger"))
    yield server, embedded.with_database(server_url, "ledger")
    restart(server)
    server.cleanup()


def restart(server: Any, within: float = 30) -> None:
    """Start the killed server again, trying again as the supervisor does: a start fails while the
    dead postmaster's backends still hold its shared memory or its pid is not yet reaped."""
    deadline = time.monotonic() + within
    while True:
        try:
            embedded.reap_postgres_zombies()
            with server._lock:
                embedded.remove_stale_pid_file(server.pgdata)
                server.ensure_postgres_running()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_a_dead_database_answers_503_with_retry_after_on_every_endpoint(
    private_postgres: tuple[Any, str], tmp_path: Path
) -> None:
    server, url = private_postgres
    env = {
        "LEDGER_DATABASE_URL": url,
        "LEDGER_DATA_DIR": str(tmp_path / "data"),
        "LEDGER_LOG_ORIGIN": "outage.test/log",
    }
    with running_server(env, workers=2) as base:
        acknowledged = record(base, DEVICE)
        assert acknowledged.status_code == 201
        before = fire(base, ADMIN_TOKEN)
        assert_no_server_errors(before)
        # Killed in the middle of a burst of token lookups: pooled connections break in use.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            lookups = pool.submit(asyncio.run, burst(base, count=600))
            time.sleep(0.3)
            kill_postmaster(server.pgdata)
            unavailable = assert_no_server_errors(lookups.result())
        # At once (pooled connections break mid-use), and after the projection went stale;
        # with the admin token (cached by now) and with tokens never seen (looked up: the guard).
        for _ in range(2):
            for token in (ADMIN_TOKEN, auth.new_token()):
                unavailable += assert_no_server_errors(fire(base, token))
            time.sleep(2.5)  # past LEDGER_MAX_STALENESS_MS
        assert unavailable > len(endpoints())  # the outage was seen, not answered around
        assert httpx.get(f"{base}/health/ready").status_code == 503
        assert "unhandled error" not in base.output()  # what a 500 logs
        restart(server)
        wait_ready(base, 30)
        assert allowed(base, DEVICE)
        assert record(base, "after-outage").status_code == 201
        assert_no_server_errors(fire(base, ADMIN_TOKEN))


def test_the_embedded_server_is_started_again_after_a_kill(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {"LEDGER_DATA_DIR": str(data), "LEDGER_LOG_ORIGIN": "restart.test/log"}
    with running_server(env, workers=2) as base:
        for round in range(2):  # the restarted server is supervised too
            device = f"acknowledged-{round}"
            assert record(base, device).status_code == 201
            killed = kill_postmaster(data / "postgres")
            during = fire(base, auth.new_token())
            assert_no_server_errors(during)
            took = wait_ready(base, 30)
            print(f"ready again {took:.2f} s after the kill")
            assert postmaster_pid(data / "postgres") != killed
            assert allowed(base, device)  # acknowledged before the kill, still there
            assert record(base, f"after-{round}").status_code == 201
        assert "unhandled error" not in base.output()
        assert "runs again" in base.output()


def test_a_worker_that_starts_while_the_database_is_down_waits_for_it(
    private_postgres: tuple[Any, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`ledger serve` reached the database before it started its workers; one that then finds it
    down (being started again after a kill) must wait, for a worker that exits stops the server."""
    server, url = private_postgres
    settings = Settings(database_url=url, data_dir=tmp_path / "data", log_origin="outage.test/log")
    kill_postmaster(server.pgdata)

    async def scenario() -> None:
        opening = asyncio.create_task(open_patiently(settings, url, Signer.generate("outage.test/log")))
        await until(
            lambda: opening.done() or "unreachable while this worker starts" in caplog.text,
            within=30,
            what="a failed first try",
        )
        assert not opening.done(), "the worker gave up"
        with embedded.Supervisor(server):  # starts it again, as `ledger serve` does
            services = await asyncio.wait_for(opening, 60)
        try:
            assert await services.ready()
        finally:
            await services.close()

    with caplog.at_level(logging.WARNING, logger="ledger"):
        asyncio.run(scenario())
