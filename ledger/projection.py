"""The per-process view of current consent: a bounded cache kept current by tailing the log.

Two LRU maps, both bounded by LEDGER_CACHE_SIZE and both holding negative answers:
`device -> subject | None` (None: the device has never consented to anything) and
`(subject, purpose) -> deciding entry | None`. Keying state by subject lets an entry invalidate
it even when its device row is already gone.

The tailer applies every entry after `applied`, in index order, to whatever the cache holds, and
only then advances `applied`; a cached answer is therefore never served after its key changed
in an applied entry. It is woken by NOTIFY (a doorbell carrying the new size, on a connection
of its own), and polls anyway every `poll_interval`, so a lost notification or a dropped
listener costs at most one interval. Each successful look at the head renews `caught_up_at`;
when that is older than LEDGER_MAX_STALENESS_MS the projection is stale and checks fail closed.

A cache miss reads the state table and the log size in one statement (one snapshot). The answer
is cached only if that snapshot is not behind `horizon`, the furthest this cache has seen:
otherwise a newer entry for the key may already be applied, and caching the older state would
undo it.

Three paths bring changes in, fastest first, and all may run in any order because applying an
entry is a maximum (`Basis.supersedes`) and dropping a key only costs a miss:
- the appender of this process applies its own batch before any caller gets a receipt of it,
  so this process never answers from before its own acknowledgement (`apply_committed`);
- a commit notice from any replica names the (subject, purpose) keys its batch changed, and
  those are dropped from the cache on arrival (`_ring`), withdrawals and erasures first;
- the tailer applies every entry in index order and is what `applied` and consistency tokens
  rest on.

Whoever moves `applied` on tells `change_listeners` what the entries in between changed, in
order and each exactly once (the watch hub, ledger/watch.py, builds its events from them): the
appender's own batch when it is next in line (it then reaches watchers without waiting for the
tail, and names the device of an erasure, which the log no longer can), else the tail's pages.

A miss also checks the state row against the log entry it points at: a row that names an entry
of another subject, purpose or action cannot have been written by the ledger, and is refused
(`ImpossibleState`) instead of answered.

The projection also holds the purpose registry in force: read from the log at start, then
switched at the index of each registry entry by the same three paths (this process's own
publish, before its receipt goes out; the tailer, in index order; a commit notice only rings the
tailer at once). Registry entries change no cached state: decisions apply the registry when
they are made, so switching it needs no invalidation.
"""

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Final

from ledger import metrics
from ledger.core.batch import Committed
from ledger.core.decision import ERASED, Basis
from ledger.core.entry import Entry, parse_entry
from ledger.core.errors import EntryError
from ledger.core.notice import decode_notice, is_erasure, is_registry
from ledger.core.purposes import BUILT_IN, Registry
from ledger.core.registry import RegistryEntry, is_registry_entry, parse_registry_entry, unlogged
from ledger.core.watch import Change, change_of
from ledger.errors import ImpossibleState, Stale, StorageError
from ledger.storage import notifications
from ledger.storage.log import LogStore
from ledger.storage.notifications import LOG_CHANNEL, TOKEN_CHANNEL
from ledger.storage.subjects import StateRow, SubjectStore

__all__ = ["ERASED_DEVICE", "MISSING", "TAIL_PAGE", "Projection", "checked_basis", "log"]

log = logging.getLogger("ledger.projection")
MISSING: Final = object()
# In the device cache: this device has no subject because it was erased (not: never consented).
ERASED_DEVICE: Final = object()
TAIL_PAGE = 2000
# How long start() waits for its LISTEN connection (a connection attempt gives up after 10 s).
LISTEN_WAIT_SECONDS = 15.0


class _Lru(OrderedDict[object, object]):
    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity

    def put(self, key: object, value: object) -> None:
        if self.capacity <= 0:
            return
        self[key] = value
        self.move_to_end(key)
        if len(self) > self.capacity:
            self.popitem(last=False)

    def lookup(self, key: object) -> object:
        value = self.get(key, MISSING)
        if value is not MISSING:
            self.move_to_end(key)
        return value


class Projection:
    def __init__(
        self,
        log: LogStore,
        subjects: SubjectStore,
        database_url: str,
        *,
        cache_size: int,
        max_staleness_ms: int,
        poll_interval: float | None = None,
        on_tokens_changed: "list[object] | None" = None,
        tombstone: Callable[[str], bytes] | None = None,
        registry: Registry = BUILT_IN,
    ) -> None:
        self.log = log
        # The registry in force, and its entry (index -1 and no time: none read from the log yet).
        self.registry = registry
        self.registry_index = -1
        self.registry_recorded_at: str | None = None
        self.registry_listeners: list[Callable[[RegistryEntry], None]] = []
        self.subjects = subjects
        self.tombstone = tombstone
        self.url = database_url
        self.max_staleness = max_staleness_ms / 1000
        self.poll_interval = poll_interval or min(0.25, self.max_staleness / 4)
        self.applied = 0
        # The furthest log size any path has brought into the cache (>= applied).
        self.horizon = 0
        self.caught_up_at = 0.0
        self._subjects = _Lru(cache_size)
        self._states = _Lru(cache_size)
        self._doorbell = asyncio.Event()
        self._advanced = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.token_listeners: list[object] = on_tokens_changed or []
        self.log_listeners: list[Callable[[str], None]] = []
        # Told (start, end, changes) each time `applied` moves from start to end, in order.
        # Devices a commit notice's erasure dropped from the cache, until the tail applies the
        # erase entry (which names only the subject) and tells the listeners which device it was.
        self._dropped: dict[str, list[str]] = {}
        self.change_listeners: list[Callable[[int, int, list[Change]], None]] = []
        self.hits = 0
        self.misses = 0
        self._listening = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        # An empty cache reflects any log size: start at the head, nothing to replay. The
        # registry is read after the size, so it holds every publish below it (one after it is
        # applied again by the tail, which changes nothing).
        self.applied = self.horizon = await self.log.log_size()
        latest = await self.log.latest_registry()
        if latest is not None:
            self._adopt(parse_registry_entry(latest[1]))
        self.caught_up_at = time.monotonic()
        self._tasks = [
            asyncio.create_task(self._listen(), name="ledger-listen"),
            asyncio.create_task(self._tail(), name="ledger-tail"),
        ]
        # Serve only once revocations are heard: until then no token may be cached
        # (ledger/services/access.py), and every request would ask the database.
        try:
            async with asyncio.timeout(LISTEN_WAIT_SECONDS):
                await self._listening.wait()
        except BaseException as exc:
            await self.stop()
            if isinstance(exc, TimeoutError):
                raise StorageError(f"no LISTEN connection within {LISTEN_WAIT_SECONDS:.0f} s") from None
            raise

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    # -- reading -----------------------------------------------------------------------------

    @property
    def listening(self) -> bool:
        """Whether notifications reach this process now (its LISTEN connection is up)."""
        return self._listening.is_set()

    def staleness(self) -> float:
        return time.monotonic() - self.caught_up_at

    def fresh(self) -> bool:
        return self.staleness() <= self.max_staleness

    def size(self) -> int:
        return len(self._states) + len(self._subjects)

    def clear(self) -> None:
        self._states.clear()
        self._subjects.clear()

    async def wait_for(self, size: int, within: float) -> bool:
        """Wait until everything up to log size `size` is applied; False if `within` seconds pass first."""
        if self.applied >= size:
            return True
        self._doorbell.set()  # the writer's NOTIFY may not have reached us yet: look now
        try:
            async with asyncio.timeout(within):
                while self.applied < size:
                    await self._advanced.wait()
        except TimeoutError:
            return False
        return True

    def _advance(self, size: int, changes: list[Change]) -> None:
        """Move `applied` on (never back), wake whoever waits for it, and tell the change
        listeners what the entries in between changed (`changes` may start before them)."""
        start = self.applied
        if size <= start:
            return
        self.applied = size
        self.horizon = max(self.horizon, size)
        woken, self._advanced = self._advanced, asyncio.Event()
        woken.set()
        if self.change_listeners:
            news = [c for c in changes if c.index >= start]
            for listener in self.change_listeners:
                try:
                    listener(start, size, news)
                except Exception:
                    log.exception("a change listener failed")

    def peek(self, device_id: str, purpose: str) -> object:
        """The cached deciding entry (None included), or MISSING; never reads the database."""
        subject = self._subjects.lookup(device_id)
        if subject is None or subject is MISSING:
            return subject
        if subject is ERASED_DEVICE:
            return ERASED
        return self._states.lookup((subject, purpose))

    async def lookup(self, pairs: Sequence[tuple[str, str]]) -> list[Basis | None]:
        """The deciding entry of each (device_id, purpose), from the cache or, on a miss, the state table."""
        if not self.fresh():
            raise Stale(f"projection is {self.staleness() * 1000:.0f} ms behind the database")
        results: list[object] = []
        missing: list[int] = []
        for i, (device, purpose) in enumerate(pairs):
            subject = self._subjects.lookup(device)
            if subject is None or subject is ERASED_DEVICE:
                results.append(None if subject is None else ERASED)
                continue
            state = MISSING if subject is MISSING else self._states.lookup((subject, purpose))
            if state is MISSING:
                missing.append(i)
            results.append(state)
        self.hits += len(pairs) - len(missing)
        metrics.count_lookups(len(pairs) - len(missing), len(missing))
        if missing:
            self.misses += len(missing)
            wanted = [pairs[i] for i in missing]
            stones = [self.tombstone(device) for device, _ in wanted] if self.tombstone else None
            rows, snapshot = await self.subjects.states(wanted, stones)
            cacheable = snapshot >= self.horizon
            for i, row in zip(missing, rows, strict=True):
                basis = checked_basis(row)
                results[i] = ERASED if row.erased else basis
                if cacheable:
                    self._subjects.put(row.device_id, ERASED_DEVICE if row.erased else row.subject)
                    if row.subject is not None:
                        self._states.put((row.subject, row.purpose), basis)
        return results  # type: ignore[return-value]

    # -- changes -----------------------------------------------------------------------------

    def apply_committed(self, batch: Committed) -> None:
        """This process's own batch, applied before any of its receipts goes out.

        Synchronous on purpose: between COMMIT returning and the callers being woken there is
        no await, so no check in this process can run in between."""
        self.horizon = max(self.horizon, batch.size)
        if batch.registry is not None:
            self._adopt(batch.registry)
        try:
            for entry, device_id in batch.entries:
                if entry.action == "erase":
                    self._forget(entry.subject)
                    self._dropped.pop(entry.subject, None)
                    self._subjects.put(device_id, ERASED_DEVICE)
                else:
                    self._apply_entry(entry, device_id)
        except Exception:
            # Whatever went wrong, no cached answer may predate the batch: start from empty.
            self.clear()
            raise
        if batch.start <= self.applied:
            changes = [change_of(e, d) for e, d in batch.entries] if self.change_listeners else []
            if batch.registry is not None:
                changes.append(change_of(batch.registry, None))
            self._advance(batch.size, changes)

    def apply_replayed(self, entry: Entry, device_id: str, tree_size: int) -> None:
        """An entry a retried request found already recorded, perhaps by another replica."""
        self._apply_entry(entry, device_id)
        self.horizon = max(self.horizon, tree_size)

    # -- tailing -----------------------------------------------------------------------------

    def _ring(self, payload: str) -> None:
        notice = decode_notice(payload)
        if notice is not None and notice.size > self.applied:
            for key in notice.keys:
                if is_registry(key):
                    continue  # the doorbell below has the tailer read and apply it now
                if is_erasure(key):
                    dropped = self._forget(key.subject)
                    if dropped and len(self._dropped) < 1000:
                        self._dropped[key.subject] = dropped
                else:
                    self._states.pop((key.subject, key.purpose), None)
            # A miss that read the state table before this commit must not be cached after it.
            self.horizon = max(self.horizon, notice.size)
        self._doorbell.set()
        for listener in self.log_listeners:
            listener(payload)

    def _tokens_changed(self, payload: str) -> None:
        for listener in self.token_listeners:
            listener(payload)  # type: ignore[operator]

    async def _listen(self) -> None:
        """Keep a LISTEN connection open; reconnect after any failure. Polling covers the gaps."""
        while True:
            try:
                lost = asyncio.Event()
                async with notifications.listening(
                    self.url, {LOG_CHANNEL: self._ring, TOKEN_CHANNEL: self._tokens_changed}, on_lost=lost.set
                ):
                    self._listening.set()
                    self._doorbell.set()  # catch up on whatever happened while not listening
                    # Token lookups under way began before anyone listened: they must not be cached.
                    self._tokens_changed("")
                    await lost.wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("listener connection lost (%s); polling until it is back", exc)
            self._listening.clear()
            # Tokens may have been revoked while we could not hear about it.
            self._tokens_changed("")
            await asyncio.sleep(min(1.0, self.poll_interval * 4))

    async def _tail(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self._doorbell.wait()
            self._doorbell.clear()
            try:
                await self.catch_up()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # caught_up_at is not renewed: past the staleness bound, checks fail closed.
                log.warning("cannot tail the log (%s)", exc)

    async def catch_up(self) -> None:
        looked_at = time.monotonic()
        head = await self.log.log_size()
        while self.applied < head:
            rows = await self.log.tail(self.applied, min(self.applied + TAIL_PAGE, head))
            if not rows:
                break
            changes = [self._apply(row.entry, row.device_id) for row in rows]
            # No await between applying and advancing: a lookup that compares its snapshot with
            # `horizon` must see exactly what the cache already reflects.
            self._advance(rows[-1].idx + 1, changes)
        self.caught_up_at = max(self.caught_up_at, looked_at)
        metrics.observe_projection(self.applied, head, self.staleness(), self.size())

    def _forget(self, subject: str) -> list[str]:
        """Drop everything cached under an erased subject and return the devices cached as it.
        The device row is already gone, so the device is found by its cached subject; erasures
        are rare enough for a scan."""
        for key in [k for k in self._states if isinstance(k, tuple) and k[0] == subject]:
            del self._states[key]
        devices = [d for d, s in self._subjects.items() if s == subject and isinstance(d, str)]
        for device in devices:
            del self._subjects[device]
        return devices

    def _adopt(self, entry: RegistryEntry) -> None:
        """Switch to a registry entry's registry, never back to an older one."""
        if entry.index <= self.registry_index:
            return
        self.registry = unlogged(entry.registry)
        self.registry_index = entry.index
        self.registry_recorded_at = entry.recorded_at
        metrics.REGISTRY_INDEX.set(entry.index)
        for listener in self.registry_listeners:
            listener(entry)

    def _apply(self, data: bytes, device_id: str | None) -> Change:
        if is_registry_entry(data):
            registry = parse_registry_entry(data)
            self._adopt(registry)
            return change_of(registry, None)
        entry = parse_entry(data)
        if entry.action != "erase":
            self._apply_entry(entry, device_id)
            return change_of(entry, device_id)
        # The log no longer knows the erased device; this cache may (a device checked here).
        earlier = self._dropped.pop(entry.subject, [])
        cached = self._forget(entry.subject) or earlier
        return change_of(entry, cached[0] if device_id is None and len(cached) == 1 else device_id)

    def _apply_entry(self, entry: Entry, device_id: str | None) -> None:
        if device_id is not None and self._subjects.get(device_id, MISSING) in (None, ERASED_DEVICE):
            # A device cached as "never seen" or "erased" has a new entry: it has a subject now.
            self._subjects[device_id] = entry.subject
        key = (entry.subject, entry.purpose)
        cached = self._states.get(key, MISSING)
        if cached is MISSING:
            return
        basis = Basis.of(entry)
        if basis.supersedes(cached):  # type: ignore[arg-type]
            self._states[key] = basis


def checked_basis(row: StateRow) -> Basis | None:
    """The row's deciding entry, refused unless the log entry it points at says the same."""
    if row.basis is None:
        return None
    try:
        entry = parse_entry(row.entry) if row.entry is not None else None
    except EntryError:
        entry = None
    if entry is None or (entry.subject, entry.purpose) != (row.subject, row.purpose) or Basis.of(entry) != row.basis:
        metrics.IMPOSSIBLE_STATE_ROWS.inc()
        raise ImpossibleState(
            f"the state row of subject {row.subject} purpose {row.purpose} names entry {row.basis.index}, "
            "which the log does not hold for that subject, purpose and action"
        )
    return row.basis
