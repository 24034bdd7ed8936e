"""The watch hub inside one process, on a real PostgreSQL: where HTTP cannot reach (a ring of
four events, a tail that stopped), the behaviour the stream promises still holds."""

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest

from ledger.composition import Services
from ledger.core.note import Signer
from ledger.core.watch import RETRY
from ledger.settings import Settings
from ledger.watch import Hub
from tests.sse import Message, parse

from .conftest import ORIGIN
from .helpers import until

PURPOSE = "telemetry"


async def allowed() -> bool:
    return True


def stop_tailing(ledger: Services) -> None:
    """Only the appender's own hand-over reaches the projection (and its hub) from now on."""
    for task in ledger.projection._tasks:
        task.cancel()


async def record(ledger: Services, device: str, action: str = "grant") -> int:
    body = {"device_id": device, "purpose": PURPOSE, "action": action, "policy_version": 1}
    receipt, _ = await ledger.recording.record(msgspec.json.encode(body), None, "test")
    return receipt.index


async def message(frames: AsyncIterator[bytes]) -> Message:
    async with asyncio.timeout(10):  # a failure, not a hang, when what is awaited never comes
        [found] = parse((await anext(frames)).decode())
    return found


@pytest.fixture
async def ledger(database_url: str) -> AsyncIterator[Services]:
    services = await Services.open(
        Settings(log_origin=ORIGIN, max_staleness_ms=600), database_url, Signer.generate(ORIGIN)
    )
    yield services
    await services.close()


async def test_a_watcher_the_ring_laps_gets_a_resync_then_everything_after_it(ledger: Services) -> None:
    hub = Hub(
        ledger.projection,
        ledger.checking.current,
        ledger.stores.log,
        retention=10_000,
        fresh=lambda: True,
        ring_capacity=4,
    )
    hub.start()
    try:
        frames = (await hub.watcher(None, allowed)).frames()
        assert await anext(frames) == RETRY
        assert (await message(frames)).event == "heartbeat"
        for n in range(10):  # the watcher reads nothing meanwhile
            await record(ledger, f"lapped-{n}")
        size = ledger.projection.applied
        await until(lambda: hub.position == size, what="the hub built every event")
        resync = await message(frames)
        assert (resync.event, resync.id, resync.data["size"]) == ("resync", f"ct1.{size}", size)
        assert resync.data["reason"].startswith("slow consumer:")
        assert (await message(frames)).data == {"type": "heartbeat", "size": size}
        index = await record(ledger, "after-the-resync")
        event = await message(frames)
        assert (event.event, event.data["index"]) == ("decision", index)
    finally:
        await hub.close()


async def test_a_watcher_that_keeps_up_never_needs_a_resync(ledger: Services) -> None:
    hub = Hub(
        ledger.projection,
        ledger.checking.current,
        ledger.stores.log,
        retention=10_000,
        fresh=lambda: True,
        ring_capacity=4,
    )
    hub.start()
    try:
        frames = (await hub.watcher(None, allowed)).frames()
        assert await anext(frames) == RETRY
        await message(frames)
        for n in range(10):
            index = await record(ledger, f"kept-up-{n}")
            event = await message(frames)
            assert (event.event, event.data["index"]) == ("decision", index)
    finally:
        await hub.close()


async def test_own_batches_reach_watchers_without_the_tail_and_name_the_erased_device(ledger: Services) -> None:
    stop_tailing(ledger)
    frames = (await ledger.watch.watcher(None, allowed)).frames()
    assert await anext(frames) == RETRY
    await message(frames)
    granted = await record(ledger, "own-1")
    event = await message(frames)
    assert (event.event, event.data["index"], event.data["decision"]["reason"]) == ("decision", granted, "granted")
    erased = await ledger.erasure.erase("own-1")
    event = await message(frames)
    assert event.data == {"type": "erasure", "device_id": "own-1", "index": erased.index}


async def test_a_stale_worker_sends_no_heartbeats(ledger: Services) -> None:
    """A client counts a heartbeat as "nothing changed up to here": once this process cannot show
    its projection is within the staleness bound, it must stay silent so the client fails closed."""
    frames = (await ledger.watch.watcher(None, allowed)).frames()
    assert await anext(frames) == RETRY
    for _ in range(3):
        assert (await message(frames)).event == "heartbeat"
    stop_tailing(ledger)
    await until(lambda: not ledger.projection.fresh(), what="the projection went stale")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(frames), 2)
