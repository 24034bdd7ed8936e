"""The watch hub: one log tail per process fanned out to every GET /v1/watch stream.

The projection tells the hub, in log order and exactly once, what each entry it applies changed
(`Projection.change_listeners`): the appender's own batch as soon as it commits, when it is next
in line, otherwise the tail's pages, which NOTIFY wakes. The hub turns each page into events
once, with one batched decision lookup through the checking code (`Checking.current`), and keeps
the encoded frames in a bounded ring. Watchers never touch the database while they are live:
each reads the ring from its own cursor and sends what it finds, so a watcher costs one
coroutine, not a tail or a query.

No gaps, ever: a watcher that the ring has lapped (it consumed slower than the log grew by
RING_CAPACITY events) gets a resync event and continues from the ring's end; a resume point
further behind than the retention gets one too; a resume point behind the ring but within the
retention is replayed from the log, a page at a time, then joins the ring.

Decisions are built from the state at the time the event is built, which is at least as new as
the entry: an event may already show what a later entry decided, and that entry's own event
follows it. So a client that applies events in order ends with the current decision.
"""

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import NamedTuple, Protocol

import msgspec

from ledger import metrics
from ledger.core.decision import Decision
from ledger.core.watch import (
    RETRY,
    Change,
    ConsentChange,
    ErasureChange,
    change_of_row,
    decision_frame,
    erasure_frame,
    heartbeat_frame,
    registry_frame,
    resync_frame,
)
from ledger.errors import Stale, StorageError, UnprocessableRequest
from ledger.models import DecisionOut
from ledger.projection import TAIL_PAGE, Projection
from ledger.storage.log import TailRow

__all__ = ["HEARTBEAT_SECONDS", "RING_CAPACITY", "Hub", "Watcher"]

log = logging.getLogger("ledger.watch")
# How often a watcher sends a heartbeat, events or not: twice a second, so "at least once a second"
# holds with room for a busy event loop, and a client's 2 s staleness bound sees four of them.
HEARTBEAT_SECONDS = 0.5
# Events held for watchers to read; a watcher further behind than this is told to resync.
RING_CAPACITY = 16_384
# Most bytes a watcher hands to one send: a lagging watcher catches up in a few large writes.
CHUNK_BYTES = 256 * 1024
# Watchers replaying from the log at once (each holds a database connection while it reads).
REPLAYS = 4
# Devices remembered by subject from the entries this process applied, so an erasure read back
# from the log (which names only the subject) can still name its device: about 4 MB.
DEVICES_REMEMBERED = 16_384
Decisions = Callable[[Sequence[tuple[str, str]]], Awaitable[list[Decision | None]]]
_encode = msgspec.json.Encoder().encode


class LogTail(Protocol):
    async def log_size(self) -> int: ...
    async def tail(self, start: int, end: int) -> list[TailRow]: ...


class Event(NamedTuple):
    index: int  # type: ignore[assignment]  # the entry's index; shadowing tuple.index is intended
    frame: bytes


class _Page(NamedTuple):
    start: int
    end: int
    changes: list[Change]
    arrived: float


class Ring:
    """The latest events, addressed by a sequence number that only grows."""

    def __init__(self, capacity: int) -> None:
        self._slots: list[Event | None] = [None] * capacity
        self.capacity = capacity
        self.first = 0  # the oldest sequence number still held
        self.next = 0  # the sequence number the next event gets

    def push(self, event: Event) -> Event | None:
        """Hold `event`; return the event it pushed out, if the ring was full."""
        evicted = None
        if self.next - self.first == self.capacity:
            evicted = self._slots[self.first % self.capacity]
            self.first += 1
        self._slots[self.next % self.capacity] = event
        self.next += 1
        return evicted

    def clear(self) -> None:
        """Hold nothing; sequence numbers go on from where they were."""
        self._slots = [None] * self.capacity
        self.first = self.next

    def __getitem__(self, seq: int) -> Event:
        event = self._slots[seq % self.capacity]
        assert event is not None, "read outside the ring"
        return event

    def seek(self, index: int) -> int:
        """The sequence number of the first held event at or after log index `index`."""
        low, high = self.first, self.next
        while low < high:
            middle = (low + high) // 2
            if self[middle].index < index:
                low = middle + 1
            else:
                high = middle
        return low


class Hub:
    def __init__(
        self,
        projection: Projection,
        decisions: Decisions,
        log_tail: LogTail,
        *,
        retention: int,
        fresh: Callable[[], bool],
        ring_capacity: int = RING_CAPACITY,
    ) -> None:
        self.projection = projection
        self.decisions = decisions
        self.log_tail = log_tail
        self.retention = retention
        self._fresh = fresh
        self.max_staleness = projection.max_staleness
        self.ring = Ring(ring_capacity)
        # Every change before `position` is in the ring or was pushed out of it; the ring holds
        # every event from `ring_start` on.
        self.position = 0
        self.ring_start = 0
        self.closed = False
        self.watching = 0  # streams open on this process
        self.changed = asyncio.Event()
        # Bumped when tokens were revoked somewhere: watchers check theirs again.
        self.tokens_generation = 0
        self._verdicts: dict[str, asyncio.Future[bool]] = {}
        self._pending: deque[_Page] = deque()
        self._devices: OrderedDict[str, str] = OrderedDict()  # subject -> device, least recent first
        self._wake = asyncio.Event()
        self._replays = asyncio.Semaphore(REPLAYS)
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start where the projection is now. Synchronous: nothing can be applied between
        reading its position and listening to it."""
        self.position = self.ring_start = self.projection.applied
        self.projection.change_listeners.append(self._applied)
        self.projection.token_listeners.append(self._tokens_changed)
        self._task = asyncio.create_task(self._run(), name="ledger-watch-hub")

    def end_streams(self) -> None:
        """End every stream now (each returns at its next wake-up) and refuse new ones: the
        process is stopping, and its server waits for open responses before it stops."""
        self.closed = True
        self._wake_watchers()

    async def close(self) -> None:
        """End every stream and stop building events."""
        self.end_streams()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def now(self) -> int:
        """The position this process's checks answer from: its projection may be a page ahead of
        the hub. A watcher that starts or resynchronises starts here (its client reads decisions
        from checks, which reflect at least this much), so it is not sent what it already has."""
        return max(self.position, self.projection.applied)

    def fresh(self) -> bool:
        """Whether watchers may say "nothing happened": the projection is fresh and the hub is
        not more than the staleness bound behind it."""
        if not self._fresh():
            return False
        return not self._pending or time.monotonic() - self._pending[0].arrived <= self.max_staleness

    # -- building events ---------------------------------------------------------------------

    def _applied(self, start: int, end: int, changes: list[Change]) -> None:
        self._pending.append(_Page(start, end, [self._named(c) for c in changes], time.monotonic()))
        self._wake.set()

    def _named(self, change: Change) -> Change:
        """Remember which device each subject is; name the device of an erasure that came
        without one, if this process saw an entry of it (in index order, so before the erasure)."""
        if isinstance(change, ConsentChange) and change.device_id is not None:
            self._devices[change.subject] = change.device_id
            self._devices.move_to_end(change.subject)
            if len(self._devices) > DEVICES_REMEMBERED:
                self._devices.popitem(last=False)
        elif isinstance(change, ErasureChange):
            known = self._devices.pop(change.subject, None)
            if change.device_id is None and known is not None:
                return change._replace(device_id=known)
        return change

    def _tokens_changed(self, _: object = None) -> None:
        self.tokens_generation += 1
        self._verdicts.clear()
        self._wake_watchers()

    async def still_allowed(self, token: str, allowed: Callable[[], Awaitable[bool]]) -> bool:
        """Whether a stream's token still holds its scope, asked once per token however many
        streams share it (all of them wake at once after a revocation notice). A token that
        cannot be checked now counts as revoked: its streams end and their clients reconnect."""
        verdict = self._verdicts.get(token)
        if verdict is None:
            verdict = self._verdicts[token] = asyncio.ensure_future(allowed())
        try:
            return await asyncio.shield(verdict)
        except Exception:
            return False

    async def _run(self) -> None:
        failing = False
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                # Everything waiting, up to a tail page of changes, in one lookup.
                if not self.watching:
                    self._skip(self._pending[-1].end)
                    break
                taken, changes = 0, list[Change]()
                for page in self._pending:
                    if taken and len(changes) + len(page.changes) > TAIL_PAGE:
                        break
                    taken += 1
                    changes.extend(page.changes)
                try:
                    events = await self.build(changes)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # Stale projection, database gone, corrupted state: watchers stay silent
                    # (no heartbeats once this is older than the staleness bound) until it works.
                    if not failing:
                        log.warning("cannot build watch events yet (%s); retrying", exc)
                    failing = True
                    await asyncio.sleep(0.05)
                    continue
                failing = False
                end = self._pending[taken - 1].end
                for _ in range(taken):
                    self._pending.popleft()
                self._publish(events, end)

    async def build(self, changes: Sequence[Change]) -> list[Event]:
        """The events of `changes`, decisions looked up once for all of them."""
        pairs = [(c.device_id, c.purpose) for c in changes if isinstance(c, ConsentChange) and c.device_id is not None]
        unique = list(dict.fromkeys(pairs))
        decided = dict(zip(unique, await self.decisions(unique), strict=True)) if unique else {}
        events = []
        for change in changes:
            if isinstance(change, ConsentChange):
                # An erased device (its erasure event follows), or a purpose the registry no
                # longer has (its registry event says so): the position is covered all the same.
                if change.device_id is None:
                    continue
                decision = decided[change.device_id, change.purpose]
                if decision is None:
                    continue
                body = _encode(DecisionOut.of(change.device_id, decision))
                events.append(Event(change.index, decision_frame(change.index, change.device_id, change.purpose, body)))
            elif isinstance(change, ErasureChange):
                events.append(Event(change.index, erasure_frame(change.index, change.device_id)))
            else:
                events.append(Event(change.index, registry_frame(change.entry)))
        return events

    def _publish(self, events: list[Event], end: int) -> None:
        for event in events:
            evicted = self.ring.push(event)
            if evicted is not None:
                self.ring_start = evicted.index + 1
        self.position = max(self.position, end)
        metrics.count_watch_events(len(events))
        self._wake_watchers()

    def _skip(self, end: int) -> None:
        """Nobody watches: build nothing (no decision lookups on a worker without watchers) and
        start the ring afresh at `end`; a watcher resuming behind it is replayed from the log."""
        self._pending.clear()
        self.ring.clear()
        self.position = self.ring_start = max(self.position, end)

    def _wake_watchers(self) -> None:
        woken, self.changed = self.changed, asyncio.Event()
        woken.set()

    # -- watchers ----------------------------------------------------------------------------

    async def watcher(self, resume: int | None, token: str, allowed: Callable[[], Awaitable[bool]]) -> "Watcher":
        """A watcher from log position `resume` (None: from now) for a bearer `token`, which
        `allowed()` checks again after each revocation notice. Raise UnprocessableRequest for
        a position the log has not reached (a position behind the retention gets a resync), Stale
        when this process is not fresh, StorageError when it is stopping."""
        if self.closed:
            raise StorageError("this server is stopping; watch another replica or retry")
        if not self.fresh():
            # As checks do: a client should watch a replica that knows what the log says.
            raise Stale(f"this replica is more than {self.max_staleness * 1000:.0f} ms behind the database")
        if resume is not None and resume > self.position:
            head = await self.log_tail.log_size()
            if resume > head:
                raise UnprocessableRequest(
                    f"resume point ct1.{resume} is beyond the log (size {head}): not a position of this log"
                )
        return Watcher(self, self.now() if resume is None else resume, token, allowed)


class Watcher:
    """One stream's cursor: every change before `cursor` has been sent."""

    def __init__(self, hub: Hub, cursor: int, token: str, allowed: Callable[[], Awaitable[bool]]) -> None:
        self.hub = hub
        self.cursor = cursor
        self.token = token
        self.allowed = allowed
        self.tokens_generation = hub.tokens_generation
        self.seq = hub.ring.next

    async def frames(self) -> AsyncIterator[bytes]:
        hub = self.hub
        metrics.WATCHERS.inc()
        hub.watching += 1
        try:
            yield RETRY
            if hub.now() - self.cursor > hub.retention:
                yield self._resync(f"retention: the resume point is more than {hub.retention} entries behind")
            else:
                async for chunk in self._replay():
                    yield chunk
            async for chunk in self._live():
                yield chunk
        finally:
            hub.watching -= 1
            metrics.WATCHERS.dec()

    def _resync(self, reason: str) -> bytes:
        hub = self.hub
        self.seq = hub.ring.next
        self.cursor = max(self.cursor, hub.now())
        metrics.count_watch_resync(reason.split(":")[0])
        return resync_frame(self.cursor, reason)

    async def _replay(self) -> AsyncIterator[bytes]:
        """From the log, whatever happened between the cursor and the ring's oldest event."""
        hub = self.hub
        failing = False
        while self.cursor < hub.ring_start and not hub.closed:
            end = min(self.cursor + TAIL_PAGE, hub.ring_start)
            try:
                async with hub._replays:
                    rows = await hub.log_tail.tail(self.cursor, end)
                    events = await hub.build([change_of_row(r.entry, r.device_id) for r in rows])
            except Exception as exc:
                if not failing:
                    log.warning("cannot replay the log to a watcher yet (%s); retrying", exc)
                failing = True
                await asyncio.sleep(0.1)
                continue
            self.cursor = end
            if events:
                yield b"".join(e.frame for e in events)
        self.seq = hub.ring.seek(self.cursor)

    def _take(self) -> bytes:
        """What the ring holds for this watcher now (a resync if it was lapped), at most about
        CHUNK_BYTES; empty if nothing."""
        hub, ring = self.hub, self.hub.ring
        if self.seq < ring.first:
            return self._resync(f"slow consumer: more than {ring.capacity} events behind")
        parts, size = [], 0
        while self.seq < ring.next and size < CHUNK_BYTES:
            event = ring[self.seq]
            self.seq += 1
            if event.index < self.cursor:
                continue  # before the resume point
            parts.append(event.frame)
            size += len(event.frame)
            self.cursor = event.index + 1
        if self.seq == ring.next:
            self.cursor = max(self.cursor, hub.position)
        return b"".join(parts)

    async def _live(self) -> AsyncIterator[bytes]:
        hub = self.hub
        last_beat = float("-inf")  # a heartbeat at once: the client learns where it stands
        while not hub.closed:
            if self.tokens_generation != hub.tokens_generation:
                self.tokens_generation = hub.tokens_generation
                if not await hub.still_allowed(self.token, self.allowed):
                    return  # the token was revoked: the stream ends
            changed = hub.changed  # before looking: a publish after the look sets it
            chunk = self._take()
            now = time.monotonic()
            if self.seq == hub.ring.next and now - last_beat >= HEARTBEAT_SECONDS:
                # Caught up: say so at least every HEARTBEAT_SECONDS, events flowing or not, so a
                # heartbeat always means "you have everything up to here, as of now". Only a
                # fresh hub may say it: a client measures its freshness by its heartbeats, so a
                # stale worker goes silent and the client's mirror fails closed instead of
                # trusting a stream that no longer knows what the log says. A lagging watcher
                # (replaying, or behind the ring) gets events but no heartbeat until it catches up.
                if hub.fresh():
                    chunk += heartbeat_frame(self.cursor)
                    last_beat = now
                else:
                    last_beat = now - HEARTBEAT_SECONDS + 0.1  # look again soon
            if chunk:
                yield chunk
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, last_beat + HEARTBEAT_SECONDS - now)):
                    await changed.wait()
