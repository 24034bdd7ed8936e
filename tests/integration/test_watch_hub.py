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


class Reader:
    """A watcher's frames, one message at a time (a write may hold several)."""

    def __init__(self, frames: AsyncIterator[bytes]) -> None:
        self.frames = frames
        self.waiting: list[Message] = []

    async def start(self) -> None:
        assert await anext(self.frames) == RETRY

    async def next(self) -> Message:
        while not self.waiting:
            async with asyncio.timeout(10):  # a failure, not a hang, when what is awaited never comes
                self.waiting = parse((await anext(self.frames)).decode())
        return self.waiting.pop(0)

    async def change(self) -> Message:
        """The next message that is not a heartbeat."""
        while (found := await self.next()).event == "heartbeat":
            pass
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
        frames = Reader((await hub.watcher(None, "token", allowed)).frames())
        await frames.start()
        assert (await frames.next()).event == "heartbeat"
        for n in range(10):  # the watcher reads nothing meanwhile
            await record(ledger, f"lapped-{n}")
        size = ledger.projection.applied
        await until(lambda: hub.position == size, what="the hub built every event")
        resync = await frames.next()
        assert (resync.event, resync.id, resync.data["size"]) == ("resync", f"ct1.{size}", size)
        assert resync.data["reason"].startswith("slow consumer:")
        assert (await frames.next()).data == {"type": "heartbeat", "size": size}
        index = await record(ledger, "after-the-resync")
        event = await frames.change()
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
        frames = Reader((await hub.watcher(None, "token", allowed)).frames())
        await frames.start()
        await frames.next()
        for n in range(10):
            index = await record(ledger, f"kept-up-{n}")
            event = await frames.change()
            assert (event.event, event.data["index"]) == ("decision", index)
    finally:
        await hub.close()


async def test_own_batches_reach_watchers_without_the_tail_and_name_the_erased_device(ledger: Services) -> None:
    stop_tailing(ledger)
    frames = Reader((await ledger.watch.watcher(None, "token", allowed)).frames())
    await frames.start()
    await frames.next()
    granted = await record(ledger, "own-1")
    event = await frames.change()
    assert (event.event, event.data["index"], event.data["decision"]["reason"]) == ("decision", granted, "granted")
    erased = await ledger.erasure.erase("own-1")
    event = await frames.change()
    assert event.data == {"type": "erasure", "device_id": "own-1", "index": erased.index}


async def test_a_stale_worker_sends_no_heartbeats(ledger: Services) -> None:
    """A client counts a heartbeat as "nothing changed up to here": once this process cannot show
    its projection is within the staleness bound, it must stay silent so the client fails closed."""
    frames = Reader((await ledger.watch.watcher(None, "token", allowed)).frames())
    await frames.start()
    for _ in range(3):
        assert (await frames.next()).event == "heartbeat"
    stop_tailing(ledger)
    await until(lambda: not ledger.projection.fresh(), what="the projection went stale")
    assert frames.waiting == []
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(frames.frames), 2)


async def test_heartbeats_keep_coming_while_events_flow(ledger: Services) -> None:
    """A heartbeat means "you have everything up to here, as of now": a client that counts its
    freshness by heartbeats must not go stale because the log is busy."""
    frames = Reader((await ledger.watch.watcher(None, "token", allowed)).frames())
    await frames.start()
    await frames.next()
    beats, n = 0, 0
    async with asyncio.timeout(20):
        while beats < 3:  # each record is followed by its event: never 0.5 s of silence
            index = await record(ledger, f"busy-{n}")
            while (found := await frames.next()).event == "heartbeat":
                beats += 1
                assert found.data["size"] <= index + 1
            assert found.data["index"] == index
            n += 1
    assert n > 3


async def test_with_nobody_watching_nothing_is_looked_up_and_a_resume_is_replayed(ledger: Services) -> None:
    looked_up = ledger.projection.hits + ledger.projection.misses
    start = ledger.projection.applied
    indexes = [await record(ledger, f"unwatched-{n}") for n in range(3)]
    await until(lambda: ledger.watch.position == indexes[-1] + 1, what="the hub moved on")
    assert ledger.projection.hits + ledger.projection.misses == looked_up
    assert ledger.watch.ring_start == ledger.watch.position
    frames = Reader((await ledger.watch.watcher(start, "token", allowed)).frames())
    await frames.start()
    assert [(await frames.change()).data["index"] for _ in indexes] == indexes


async def test_an_erasure_read_from_the_log_names_a_device_this_process_knows(database_url: str) -> None:
    """Another replica erases: the log names only the subject, and the device's row is gone when
    this process reads it. It names the device if it saw an entry of it since it started (the
    hub remembers) or has it in its cache (a check asked for it); otherwise it cannot."""
    settings = Settings(log_origin=ORIGIN)
    signer = Signer.generate(ORIGIN)  # replicas of one log share its key
    other = await Services.open(settings, database_url, signer)
    here = None
    try:
        for device in ("written-before", "checked-here"):  # before this process started
            await record(other, device)
        here = await Services.open(settings, database_url, signer)
        frames = Reader((await here.watch.watcher(None, "token", allowed)).frames())
        await frames.start()
        await frames.next()
        await record(other, "seen-here")
        assert (await frames.change()).data["device_id"] == "seen-here"
        here.projection.clear()  # so only the hub's memory knows "seen-here"
        await here.checking.decide([("checked-here", PURPOSE)])
        for device, named in (("seen-here", "seen-here"), ("checked-here", "checked-here"), ("written-before", None)):
            erased = await other.erasure.erase(device)
            event = await frames.change()
            assert event.data == {"type": "erasure", "device_id": named, "index": erased.index}
    finally:
        if here is not None:
            await here.close()
        await other.close()
