""" "Allowed now" means now: no answer contradicts what the ledger has acknowledged (issue 9).

Each finding of the issue as a regression test against a real PostgreSQL and real servers:
the acknowledging process answering from before its own withdrawal, another replica hearing of
a withdrawal only through its tail, and rows changed behind the service's back becoming answers.
"""

import asyncio
import hashlib
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from ledger.appender import Appender
from ledger.composition import Services
from ledger.core.note import Signer
from ledger.projection import Projection
from ledger.settings import Settings
from ledger.storage import create_pool, open_stores

from .conftest import ORIGIN, bearer, ledger_server
from .helpers import draft, until
from .server import ADMIN_TOKEN, Base

ADMIN = bearer(ADMIN_TOKEN)
PURPOSE = "pixverse_sharing"


def consent(device: str, action: str) -> dict[str, Any]:
    return {"device_id": device, "purpose": PURPOSE, "action": action, "policy_version": 1}


@pytest.fixture
def server(database_url: str, tmp_path: Path, key_file: Path) -> Iterator[Base]:
    with ledger_server(database_url, tmp_path, key_file) as base:
        yield base


class Writers:
    """Background writers recording grants on other devices, so batches commit all the time."""

    def __init__(self, base: str, count: int) -> None:
        self.base = base
        self.stop = threading.Event()
        self.written = 0
        self.threads = [threading.Thread(target=self._write, args=(n,), daemon=True) for n in range(count)]

    def _write(self, n: int) -> None:
        with httpx.Client(base_url=self.base, headers=ADMIN, timeout=10) as http:
            i = 0
            while not self.stop.is_set():
                assert http.post("/v1/consents", json=consent(f"load-{n}-{i}", "grant")).status_code == 201
                self.written += 1
                i += 1

    def __enter__(self) -> "Writers":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)


def test_the_acknowledging_process_never_answers_from_before_its_withdrawal(server: Base) -> None:
    stale = []
    with Writers(server, 6) as writers, httpx.Client(base_url=server, headers=ADMIN, timeout=10) as http:
        for n in range(60):
            device = f"fresh-{n}"
            assert http.post("/v1/consents", json=consent(device, "grant")).status_code == 201
            params = {"device_id": device, "purpose": PURPOSE}
            # Warm the cache: the next answer for this key comes from memory.
            while not http.get("/v1/check", params=params).json()["allowed"]:
                time.sleep(0.001)
            assert http.get("/v1/check", params=params).json()["allowed"]
            assert http.post("/v1/consents", json=consent(device, "withdraw")).status_code == 201
            answer = http.get("/v1/check", params=params).json()
            if answer["allowed"] or answer["reason"] != "withdrawn":
                stale.append((n, answer))
        assert writers.written > 60, "the writers did not load the server"
    assert stale == []


async def test_the_appending_process_holds_its_batch_before_the_receipt(database_url: str) -> None:
    """The service as `ledger serve` wires it, with its LISTEN connection and its tailer stopped:
    only the appender's own hand-over can bring the withdrawal into the cache."""
    settings = Settings(max_staleness_ms=120_000, log_origin=ORIGIN)
    ledger = await Services.open(settings, database_url, Signer.generate(ORIGIN))
    try:
        for task in ledger.projection._tasks:
            task.cancel()
        pair = [("own-1", PURPOSE)]
        await ledger.recording.record(msgspec.json.encode(consent("own-1", "grant")), None, "test")
        [decision] = await ledger.checking.decide(pair)
        assert decision.allowed
        await ledger.recording.record(msgspec.json.encode(consent("own-1", "withdraw")), None, "test")
        [decision] = await ledger.checking.decide(pair)
        assert (decision.allowed, decision.reason) == (False, "withdrawn")
    finally:
        await ledger.close()


async def test_a_commit_notice_alone_drops_the_changed_decision(database_url: str) -> None:
    """Another replica's withdrawal reaches this projection's cache through NOTIFY, with its
    tailer stopped: the notice names the key, the cached grant goes, and the next answer is
    read from the state table."""
    signer = Signer.generate(ORIGIN)
    here = open_stores(await create_pool(database_url, max_size=4))
    there = open_stores(await create_pool(database_url, max_size=4))
    await here.log.register_key(signer.verifier)
    writer = Appender(there.log, signer, ORIGIN)
    await writer.start()
    view = Projection(here.log, here.subjects, database_url, cache_size=100, max_staleness_ms=120_000, poll_interval=30)
    await view.start()
    try:
        granted = await writer.append(draft("notice-1"))
        assert await view.wait_for(granted.tree_size, 5)
        [basis] = await view.lookup([("notice-1", "pixverse_sharing")])
        assert basis is not None
        assert basis.action == "grant"
        await until(lambda: view.listening)
        tailer = view._tasks[1]
        tailer.cancel()
        withdrawn = await writer.append(draft("notice-1", action="withdraw", occurred_at="2026-11-28T10:00:01.000000Z"))
        deadline = time.monotonic() + 5
        while view.horizon < withdrawn.tree_size:
            assert time.monotonic() < deadline, "no commit notice arrived"
            await asyncio.sleep(0.005)
        assert view.applied < withdrawn.tree_size, "the tailer applied it, not the notice"
        [basis] = await view.lookup([("notice-1", "pixverse_sharing")])
        assert basis is not None
        assert basis.action == "withdraw"
    finally:
        await view.stop()
        await writer.stop()
        await here.pool.close()
        await there.pool.close()


def tombstone(device_id: str) -> bytes:
    return hashlib.sha256(device_id.encode()).digest()


async def test_a_notice_of_an_erasure_drops_every_decision_of_its_subject(database_url: str) -> None:
    signer = Signer.generate(ORIGIN)
    here = open_stores(await create_pool(database_url, max_size=4))
    there = open_stores(await create_pool(database_url, max_size=4))
    await here.log.register_key(signer.verifier)
    writer = Appender(there.log, signer, ORIGIN)
    await writer.start()
    view = Projection(
        here.log,
        here.subjects,
        database_url,
        cache_size=100,
        max_staleness_ms=120_000,
        poll_interval=30,
        tombstone=tombstone,
    )
    await view.start()
    try:
        for purpose in ("pixverse_sharing", "telemetry"):
            granted = await writer.append(draft("erased-1", purpose))
        assert await view.wait_for(granted.tree_size, 5)
        pairs = [("erased-1", "pixverse_sharing"), ("erased-1", "telemetry")]
        assert all(b is not None and b.action == "grant" for b in await view.lookup(pairs))
        await until(lambda: view.listening)
        view._tasks[1].cancel()
        erase = draft("erased-1", purpose="*", action="erase", actor="operator", method="support_request", evidence={})
        erased = await writer.erase(erase, tombstone("erased-1"))
        deadline = time.monotonic() + 5
        while view.horizon < erased.tree_size:
            assert time.monotonic() < deadline, "no commit notice arrived"
            await asyncio.sleep(0.005)
        assert view.applied < erased.tree_size
        assert [b is not None and b.action for b in await view.lookup(pairs)] == ["erase", "erase"]
    finally:
        await view.stop()
        await writer.stop()
        await here.pool.close()
        await there.pool.close()


async def superuser(database_url: str, *statements: str) -> None:
    """Run statements as the database superuser with triggers switched off, as an attacker would."""
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SET session_replication_role = replica")
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def problem_of(response: httpx.Response) -> str:
    assert response.headers["content-type"].startswith("application/problem+json"), response.text
    return str(response.json()["type"]).rsplit("/", 1)[-1]


def corruption_count(base: str) -> float:
    total = 0.0
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith(("ledger_log_corruption_detected_total{", "ledger_projection_impossible_rows_total ")):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_an_altered_entry_is_never_served(server: Base, database_url: str) -> None:
    async with httpx.AsyncClient(base_url=server, headers=ADMIN, timeout=10) as http:
        assert (await http.post("/v1/consents", json=consent("tampered", "grant"))).status_code == 201
        withdrawn = (await http.post("/v1/consents", json=consent("tampered", "withdraw"))).json()
        now = datetime.now(UTC).isoformat()
        params = {"device_id": "tampered", "purpose": PURPOSE, "at": now}
        assert (await http.get("/v1/check", params=params)).json()["reason"] == "withdrawn"
        # The withdrawal's bytes become a grant: still canonical, only the signed tree can tell.
        await superuser(
            database_url,
            "UPDATE log_entries SET entry = convert_to(replace(convert_from(entry, 'UTF8'),"
            f" '\"withdraw\"', '\"grant\"'), 'UTF8') WHERE idx = {withdrawn['index']}",
        )
        for path, query in [
            ("/v1/check", params),
            ("/v1/devices/tampered/history", {}),
            ("/v1/devices/tampered/export", {}),
        ]:
            response = await http.get(path, params=query)
            assert response.status_code == 500, (path, response.text)
            assert problem_of(response) == "log-corrupted"
        pair = {"device_id": "tampered", "purpose": PURPOSE}
        answer = await http.post("/v1/check", params={"at": now}, json={"checks": [pair]})
        assert answer.status_code == 500
        assert (await http.get("/health/ready")).status_code == 503
    assert corruption_count(server) >= 4


async def test_a_replayed_receipt_is_proven_before_it_is_served(server: Base, database_url: str) -> None:
    async with httpx.AsyncClient(base_url=server, headers=ADMIN, timeout=10) as http:
        key = {"Idempotency-Key": "replay-tampered"}
        first = await http.post("/v1/consents", json=consent("replayed", "withdraw"), headers=key)
        assert first.status_code == 201
        assert (await http.post("/v1/consents", json=consent("replayed", "withdraw"), headers=key)).status_code == 200
        await superuser(
            database_url,
            "UPDATE log_entries SET entry = convert_to(replace(convert_from(entry, 'UTF8'),"
            f" '\"withdraw\"', '\"grant\"'), 'UTF8') WHERE idx = {first.json()['index']}",
        )
        again = await http.post("/v1/consents", json=consent("replayed", "withdraw"), headers=key)
        assert again.status_code == 500
        assert problem_of(again) == "log-corrupted"


async def test_an_altered_state_row_is_never_served(server: Base, database_url: str) -> None:
    async with httpx.AsyncClient(base_url=server, headers=ADMIN, timeout=10) as http:
        assert (await http.post("/v1/consents", json=consent("row-tampered", "grant"))).status_code == 201
        assert (await http.post("/v1/consents", json=consent("row-tampered", "withdraw"))).status_code == 201
        # A plain UPDATE, no superuser needed: the state table is not part of the signed log.
        await superuser(
            database_url,
            "UPDATE consent_state SET action = 'grant' WHERE subject ="
            " (SELECT subject FROM subjects WHERE device_id = 'row-tampered')",
        )
        response = await http.get("/v1/check", params={"device_id": "row-tampered", "purpose": PURPOSE})
        assert response.status_code == 500, response.text
        assert problem_of(response) == "log-corrupted"
        assert (await http.get("/health/ready")).status_code == 503
    assert corruption_count(server) >= 1
