"""GET /v1/watch against real servers: every change in log order, without gaps, resumable."""

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger import auth
from ledger.storage import Stores
from tests.sse import Message, parse_block

from .conftest import bearer, ledger_server
from .server import ADMIN_TOKEN

ADMIN = bearer(ADMIN_TOKEN)
PURPOSE = "pixverse_sharing"


class Ended(Exception):
    """The server ended the stream."""


class Watch:
    """An open GET /v1/watch, read one message at a time."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.retry: int | None = None
        self._text = response.aiter_text()
        self._buffer = ""

    async def next(self, within: float = 10) -> Message:
        async with asyncio.timeout(within):
            while True:
                if "\n\n" in self._buffer:
                    block, self._buffer = self._buffer.split("\n\n", 1)
                    message, retry = parse_block(block)
                    self.retry = retry if retry is not None else self.retry
                    if message is not None:
                        return message
                    continue
                try:
                    self._buffer += await anext(self._text)
                except StopAsyncIteration:
                    raise Ended(self._buffer) from None

    async def heartbeat(self) -> Message:
        message = await self.next()
        assert message.event == "heartbeat", message
        return message

    async def to_the_end(self, within: float = 20) -> None:
        """Read until the server ends the stream (Ended), whatever it sends before; a stream that
        keeps going (heartbeats) fails with TimeoutError after `within` seconds."""
        async with asyncio.timeout(within):
            while True:
                await self.next()

    async def changes(self, count: int, within: float = 20) -> list[Message]:
        """The next `count` messages that are not heartbeats."""
        found: list[Message] = []
        async with asyncio.timeout(within):  # heartbeats alone would keep it waiting for ever
            while len(found) < count:
                message = await self.next()
                if message.event != "heartbeat":
                    found.append(message)
        return found

    async def until_size(self, size: int, within: float = 20) -> list[Message]:
        """Every message that is not a heartbeat, until a heartbeat says the stream covers `size`."""
        found: list[Message] = []
        async with asyncio.timeout(within):
            while True:
                message = await self.next()
                if message.event != "heartbeat":
                    found.append(message)
                elif message.data["size"] >= size:
                    return found


@contextlib.asynccontextmanager
async def watching(
    client: httpx.AsyncClient, token: str, params: dict[str, str] | None = None, headers: dict[str, str] | None = None
) -> AsyncIterator[Watch]:
    async with client.stream("GET", "/v1/watch", params=params, headers={**bearer(token), **(headers or {})}) as r:
        assert r.status_code == 200, (await r.aread()).decode()
        yield Watch(r)


async def record(client: httpx.AsyncClient, device: str, action: str = "grant") -> dict[str, Any]:
    body = {"device_id": device, "purpose": PURPOSE, "action": action, "policy_version": 1}
    response = await client.post("/v1/consents", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    receipt: dict[str, Any] = response.json()
    return receipt


async def check(client: httpx.AsyncClient, device: str, **params: str) -> dict[str, Any]:
    response = await client.get("/v1/check", params={"device_id": device, "purpose": PURPOSE, **params}, headers=ADMIN)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def log_size(client: httpx.AsyncClient) -> int:
    return int((await client.get("/v1/log/checkpoint")).text.split("\n")[1])


def size_of(token: str) -> int:
    return int(token.removeprefix("ct1."))


def is_decision(receipt: dict[str, Any], action_reason: str) -> Callable[[Message], None]:
    def verify(message: Message) -> None:
        assert message.event == "decision"
        assert message.id == receipt["consistency_token"]
        assert message.data["index"] == receipt["index"]
        assert message.data["decision"]["reason"] == action_reason

    return verify


async def test_watching_needs_a_token_with_the_check_scope_and_starts_with_where_it_stands(
    client: httpx.AsyncClient, tokens: dict[str, str]
) -> None:
    refused = await client.get("/v1/watch")
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/problem+json"
    for other in ("consent:write", "audit:read"):
        assert (await client.get("/v1/watch", headers=bearer(tokens[other]))).status_code == 403
    for allowed in ("consent:check", "admin"):
        async with watching(client, tokens[allowed]) as watch:
            headers = watch.response.headers
            assert headers["content-type"].startswith("text/event-stream")
            assert headers["cache-control"] == "no-store"
            assert headers["x-accel-buffering"] == "no"
            first = await watch.heartbeat()
            assert watch.retry == 1000
            size = await log_size(client)
            assert first.data == {"type": "heartbeat", "size": size}
            assert first.id == headers["consistency-token"] == f"ct1.{size}"


async def test_a_grant_then_a_withdrawal_arrive_as_decisions_equal_to_the_check_answer(
    client: httpx.AsyncClient, tokens: dict[str, str]
) -> None:
    async with watching(client, tokens["consent:check"]) as watch:
        await watch.heartbeat()
        for action, reason in (("grant", "granted"), ("withdraw", "withdrawn")):
            receipt = await record(client, "gw-1", action)
            [event] = await watch.changes(1)
            is_decision(receipt, reason)(event)
            assert event.data["device_id"] == "gw-1"
            assert event.data["purpose"] == PURPOSE
            assert event.data["decision"] == await check(client, "gw-1")
        # Nothing else was sent, and the stream says it has everything up to the withdrawal.
        heartbeat = await watch.heartbeat()
        assert heartbeat.data["size"] == size_of(receipt["consistency_token"])


async def test_resuming_with_last_event_id_or_from_gives_exactly_the_missed_changes(
    client: httpx.AsyncClient, tokens: dict[str, str]
) -> None:
    async with watching(client, tokens["consent:check"]) as watch:
        await watch.heartbeat()
        receipts = [await record(client, f"resume-{n}") for n in range(4)]
        seen = await watch.changes(4)
    assert [m.id for m in seen] == [r["consistency_token"] for r in receipts]
    # Missed while nobody watched: the last two, and three more.
    receipts += [await record(client, f"resume-{n}", "withdraw" if n == 5 else "grant") for n in range(4, 7)]
    size = size_of(receipts[-1]["consistency_token"])
    missed = [r["consistency_token"] for r in receipts[2:]]
    resume = seen[1].id
    assert resume is not None
    for params, headers in (
        (None, {"Last-Event-ID": resume}),
        ({"from": resume}, None),
        ({"from": "ct1.0"}, {"Last-Event-ID": resume}),  # Last-Event-ID wins
    ):
        async with watching(client, tokens["consent:check"], params, headers) as watch:
            events = await watch.until_size(size)
        assert [m.id for m in events] == missed, (params, headers)
        assert [m.data["index"] for m in events] == [r["index"] for r in receipts[2:]]
    # Resuming where the log ends: nothing but the heartbeat.
    async with watching(client, tokens["consent:check"], {"from": f"ct1.{size}"}) as watch:
        assert (await watch.next()).data == {"type": "heartbeat", "size": size}


async def test_erasures_and_registry_publishes_are_events(client: httpx.AsyncClient, tokens: dict[str, str]) -> None:
    await record(client, "erase-1")
    in_force = (await client.get("/v1/purposes", headers=ADMIN)).json()
    registry = {"controller": in_force["controller"], "purposes": in_force["purposes"]}
    registry["purposes"]["telemetry"]["min_policy_version"] += 1
    async with watching(client, tokens["consent:check"]) as watch:
        await watch.heartbeat()
        erased = await client.post("/v1/devices/erase-1/erase", headers=ADMIN)
        assert erased.status_code == 201
        [event] = await watch.changes(1)
        assert (event.event, event.id) == ("erasure", erased.json()["consistency_token"])
        # The process that appended the erasure knows the device.
        assert event.data == {"type": "erasure", "device_id": "erase-1", "index": erased.json()["index"]}
        published = await client.put("/v1/purposes", json=registry, headers=ADMIN)
        assert published.status_code == 201
        [event] = await watch.changes(1)
        assert (event.event, event.id) == ("registry", published.json()["consistency_token"])
        now = (await client.get("/v1/purposes", headers=ADMIN)).json()
        assert event.data == {"type": "registry", **now}
        assert (
            event.data["purposes"]["telemetry"]["min_policy_version"]
            == registry["purposes"]["telemetry"]["min_policy_version"]
        )


async def test_heartbeats_keep_coming_with_the_log_size(client: httpx.AsyncClient, tokens: dict[str, str]) -> None:
    receipt = await record(client, "beat-1")
    async with watching(client, tokens["consent:check"]) as watch:
        beats = [await watch.next(within=1.5) for _ in range(4)]
    assert [b.data for b in beats] == [{"type": "heartbeat", "size": size_of(receipt["consistency_token"])}] * 4
    assert {b.id for b in beats} == {receipt["consistency_token"]}


@pytest.mark.parametrize(
    ("resume", "header", "status"),
    [
        ("abc", False, 400),
        ("ct1.", False, 400),
        ("ct1.-1", True, 400),
        ("ct2.5", True, 400),
        ("ct1.99999", False, 422),
        ("ct1.99999", True, 422),
    ],
)
async def test_a_bad_resume_point_is_a_problem(
    client: httpx.AsyncClient, tokens: dict[str, str], resume: str, header: bool, status: int
) -> None:
    where = {"headers": {**bearer(tokens["consent:check"]), "Last-Event-ID": resume}, "params": {"from": "ct1.0"}}
    if not header:
        where = {"headers": bearer(tokens["consent:check"]), "params": {"from": resume}}
    response = await client.get("/v1/watch", **where)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == status
    assert "consistency-token" in response.headers


async def test_a_revoked_token_ends_its_streams(client: httpx.AsyncClient, store: Stores) -> None:
    token = auth.new_token()
    await store.tokens.create_token("watcher", auth.token_hash(token), ["consent:check"])
    async with watching(client, token) as watch:
        await watch.heartbeat()
        await store.tokens.revoke_token("watcher")
        with pytest.raises(Ended):
            await watch.to_the_end()
    assert (await client.get("/v1/watch", headers=bearer(token))).status_code == 401


def test_streams_end_cleanly_when_the_server_stops(database_url: str, tmp_path: Path, key_file: Path) -> None:
    async def watch_until_the_end(base: str) -> Exception:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http, watching(http, ADMIN_TOKEN) as watch:
            await watch.heartbeat()
            os.kill(base.pid, signal.SIGTERM)  # type: ignore[attr-defined]
            try:
                await watch.to_the_end()
            except Ended as ended:
                return ended  # the body ended as HTTP says (no reset, no timeout)

    with ledger_server(database_url, tmp_path, key_file) as base:
        assert isinstance(asyncio.run(watch_until_the_end(base)), Ended)


async def test_a_resume_point_past_the_retention_gets_a_resync_not_a_gap(
    database_url: str, tmp_path: Path, key_file: Path
) -> None:
    with ledger_server(database_url, tmp_path, key_file, LEDGER_WATCH_RETENTION="3") as base:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            receipts = [await record(http, f"ret-{n}") for n in range(6)]
            size = size_of(receipts[-1]["consistency_token"])
            async with watching(http, ADMIN_TOKEN, {"from": receipts[1]["consistency_token"]}) as watch:
                resync = await watch.next()
                assert (resync.event, resync.id) == ("resync", f"ct1.{size}")
                assert resync.data["size"] == size
                assert resync.data["reason"].startswith("retention:")
                assert (await watch.next()).data == {"type": "heartbeat", "size": size}
                later = await record(http, "ret-later")
                [event] = await watch.changes(1)
                is_decision(later, "granted")(event)
            # Exactly the retention behind: the changes themselves.
            async with watching(http, ADMIN_TOKEN, {"from": receipts[3]["consistency_token"]}) as watch:
                events = await watch.until_size(size_of(later["consistency_token"]))
            assert [e.id for e in events] == [r["consistency_token"] for r in [*receipts[4:], later]]


async def test_another_replica_streams_what_one_wrote_and_replays_what_came_before_it_started(
    database_url: str, tmp_path: Path, key_file: Path
) -> None:
    """B starts after A wrote: B's resume point is behind everything B has seen, so it replays
    from the log; then A's writes reach B's watcher through B's tail. Decisions are B's answers
    when the events were built: a replayed grant that was withdrawn since says withdrawn."""
    with ledger_server(database_url, tmp_path / "a", key_file) as a:
        async with httpx.AsyncClient(base_url=a, timeout=10) as on_a:
            unseen = await record(on_a, "rep-0")
            early = [await record(on_a, "rep-1"), await record(on_a, "rep-2"), await record(on_a, "rep-1", "withdraw")]
            with ledger_server(database_url, tmp_path / "b", key_file) as b:
                async with (
                    httpx.AsyncClient(base_url=b, timeout=10) as on_b,
                    watching(on_b, ADMIN_TOKEN, {"from": unseen["consistency_token"]}) as watch,
                ):
                    replayed = await watch.until_size(size_of(early[-1]["consistency_token"]))
                    assert [m.id for m in replayed] == [r["consistency_token"] for r in early]
                    assert [m.data["decision"]["reason"] for m in replayed] == ["withdrawn", "granted", "withdrawn"]
                    for m in replayed:
                        assert m.data["decision"] == await check(on_b, m.data["device_id"])
                    # Live: written on A, streamed by B, the same answer B gives with A's token.
                    withdrawn = await record(on_a, "rep-2", "withdraw")
                    [event] = await watch.changes(1)
                    is_decision(withdrawn, "withdrawn")(event)
                    token = withdrawn["consistency_token"]
                    assert event.data["decision"] == await check(on_b, "rep-2", consistency=token)
                    # The log names only the subject of an erasure: B names the device when it knows
                    # it (it sent and answered decisions for rep-1), else none (drop everything).
                    for device, named in (("rep-1", "rep-1"), ("rep-0", None)):
                        erased = await on_a.post(f"/v1/devices/{device}/erase", headers=ADMIN)
                        [event] = await watch.changes(1)
                        assert event.data == {"type": "erasure", "device_id": named, "index": erased.json()["index"]}
                        assert event.id == erased.json()["consistency_token"]
