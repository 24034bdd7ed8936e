"""The decisions a mirror holds, and the rules that keep them from going back in time.

`decisions[purpose][device_id]` is a packed decision (`decision.pack`). Readers look it up
without a lock (a dict read is atomic); every writer, the watch stream and the fetches that fill
misses, takes `lock`, so each check-and-set below is atomic.

Two sources write a key: the stream (a change event, its decision built from the server's state
at its entry or later) and a fetch (a batch check sent with `consistency=<position>`, so its
answer is at or past that position). Either can be the older. What orders them is the
decision's `order` (`decision.decision_order`): the deciding entry of a (device, purpose) only
moves to later indexes, so a write is applied only if its order is at least the held one's. An
erased device's answer names no entry; it stands at the fetch's position (or the Consistency-Token
of its answer, if later), so no change from before the erasure can overwrite it; a re-grant
between that position and the token would be missed until its next change, which errs towards
refusing.

A fetch is registered before it is sent, at the stream's position S. Every event the stream
applies afterwards (all of them at index S or later) is noted in it, so that when the answer
arrives: a change it did not yet see wins by order; an erasure after it voids it; a registry
publish or resync voids it. A void answer is not kept (the caller fetches again).
"""

import threading
from collections.abc import Callable
from itertools import islice
from typing import NamedTuple

from ledger.client.decision import Decision, decision_order, order_of, pack
from ledger.client.events import Change, Erasure, Heartbeat, WatchEvent

__all__ = ["DecisionCache", "Fetch", "Key"]


class Key(NamedTuple):
    device_id: str
    purpose: str


class Fetch:
    """A batch check in flight, and what the stream applied while it was."""

    __slots__ = ("changes", "devices", "erased", "keys", "start", "void")

    def __init__(self, keys: list[Key], start: int) -> None:
        self.keys = keys
        self.start = start
        self.devices = {k.device_id for k in keys}
        self.changes: dict[Key, Change] = {}
        self.erased: dict[str, int] = {}
        self.void = False


class DecisionCache:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.decisions: dict[str, dict[str, int]] = {}
        self.position: int | None = None
        self.lock = threading.Lock()
        self.advanced = threading.Condition(self.lock)
        self._fetches: list[Fetch] = []

    def __len__(self) -> int:
        return sum(len(by_device) for by_device in list(self.decisions.values()))

    def apply(self, event: WatchEvent, position: int | None) -> None:
        """Apply one event of the stream; `position` is the log size its id names."""
        with self.lock:
            if isinstance(event, Change):
                self._change(event)
            elif isinstance(event, Erasure) and event.device_id is not None:
                self._erase(event.device_id, event.index)
            elif not isinstance(event, Heartbeat):
                # A registry publish, a resync, an erasure of a device not named, or an event this
                # client does not know: any decision may have changed.
                self._drop_all()
            if position is not None:
                if self.position is not None and position < self.position:
                    self._drop_all()  # the log went back: nothing held can be trusted
                self.position = position
                self.advanced.notify_all()

    def reset(self) -> None:
        """Forget everything, the position too: the stream starts again from now."""
        with self.lock:
            self._drop_all()
            self.position = None

    def _change(self, event: Change) -> None:
        key = Key(event.device_id, event.purpose)
        if event.decision.reason == "erased":
            self._erase(event.device_id, event.index)
            return
        for fetch in self._fetches:
            if key.device_id in fetch.devices:
                fetch.changes[key] = event
        by_device = self.decisions.get(event.purpose)
        held = None if by_device is None else by_device.get(event.device_id)
        if by_device is None or held is None:
            return  # only what was asked for is mirrored
        order = decision_order(event.decision, event.index)
        if order < order_of(held):
            return
        packed = pack(event.decision, order)
        if packed is None:
            del by_device[event.device_id]
        else:
            by_device[event.device_id] = packed

    def _erase(self, device_id: str, index: int) -> None:
        for fetch in self._fetches:
            if device_id in fetch.devices:
                fetch.erased[device_id] = max(index, fetch.erased.get(device_id, index))
        for by_device in self.decisions.values():
            by_device.pop(device_id, None)

    def _drop_all(self) -> None:
        for fetch in self._fetches:
            fetch.void = True
        self.decisions.clear()

    def begin(self, keys: list[Key]) -> Fetch | None:
        """Register a fetch of `keys` at the current position; None before the stream has one."""
        with self.lock:
            if self.position is None:
                return None
            fetch = Fetch(keys, self.position)
            self._fetches.append(fetch)
            return fetch

    def abandon(self, fetch: Fetch) -> None:
        with self.lock:
            self._fetches.remove(fetch)

    def finish(self, fetch: Fetch, answers: list[Decision], answered_at: int | None) -> list[Decision | None]:
        """Keep what a fetch brought (`answers` in the order of its keys; `answered_at` the log
        size its Consistency-Token names) and give each key's decision, or None where the answer
        was voided in flight."""
        with self.lock:
            self._fetches.remove(fetch)
            floor = max(fetch.start, answered_at or 0)
            return [self._keep(fetch, key, answer, floor) for key, answer in zip(fetch.keys, answers, strict=True)]

    def _keep(self, fetch: Fetch, key: Key, answer: Decision, floor: int) -> Decision | None:
        if fetch.void:
            return None
        decision, order = answer, decision_order(answer, floor)
        change = fetch.changes.get(key)
        if change is not None and decision_order(change.decision, change.index) >= order:
            decision, order = change.decision, decision_order(change.decision, change.index)
        erased_at = fetch.erased.get(key.device_id)
        if erased_at is not None and decision.reason != "erased" and order < erased_at:
            return None  # answered from before an erasure the stream has since announced
        packed = pack(decision, order)
        if packed is not None:
            self._insert(key, packed)
        return decision

    def _insert(self, key: Key, packed: int) -> None:
        by_device = self.decisions.get(key.purpose)
        if by_device is None:
            by_device = self.decisions[key.purpose] = {}
        if key.device_id not in by_device and len(self) >= self.capacity:
            self._evict()
        by_device[key.device_id] = packed

    def _evict(self) -> None:
        """Make room by dropping the oldest-inserted sixteenth of the fullest purpose. No recency
        is tracked (the hit path writes nothing), so a hot key may go and cost one miss; dropping
        in batches keeps the cost per insert constant."""
        fullest = max(self.decisions.values(), key=len)
        for device_id in list(islice(fullest, max(1, len(fullest) // 16))):
            del fullest[device_id]

    def wait_for(self, position: int, timeout: float, also: Callable[[], bool] = lambda: True) -> bool:
        """Wait until the stream has passed `position` and `also()` holds (checked whenever
        `advanced` is notified)."""
        with self.advanced:
            return self.advanced.wait_for(
                lambda: self.position is not None and self.position >= position and also(), timeout
            )
