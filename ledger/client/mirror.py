"""Mirror: the ledger's decisions in the caller's memory, kept current by the watch stream.

    with Mirror("https://ledger.internal", token=TOKEN) as mirror:
        if mirror.allowed(device_id, "pixverse_sharing"):
            ...

A miss is fetched (one batch check: the asked purpose and every other purpose the mirror holds,
for that device) with `consistency=<the stream's position>`, so the answer is never older than
the stream; afterwards the stream keeps it current. `allowed` fails closed: it answers False
when the mirror cannot show its state is younger than `max_staleness` seconds, when a miss
cannot be fetched within that time, and for a grant past its `expires_at`.

Freshness comes only from heartbeats: the server sends one at least every second, and only while
its own projection is fresh. A heartbeat saying the log had N entries makes the mirror fresh as
of its arrival once the stream has delivered everything before N. So a lost, frozen or lagging
stream turns every answer to False within `max_staleness` of the last heartbeat it caught up with
(which must therefore be longer than the heartbeat interval, 1 s).
"""

import contextlib
import itertools
import logging
import re
import socket
import threading
from collections import deque
from collections.abc import Iterable
from time import monotonic
from types import TracebackType
from typing import Any, NamedTuple, Self

import httpx

from ledger.client.cache import DecisionCache, Fetch, Key
from ledger.client.decision import EXPIRES, Decision, unexpired, unpack
from ledger.client.errors import ClientError, RequestRejected, Stale
from ledger.client.events import Heartbeat, decode_event
from ledger.client.exchange import Answers, Retry, chunks
from ledger.client.http import LedgerClient
from ledger.client.sse import EventParser, ServerEvent
from ledger.core.consistency import BadToken, consistency_token, parse_consistency_token
from ledger.core.entry import DEVICE_ID_PATTERN, PURPOSE_PATTERN

__all__ = ["Mirror", "MirrorStats"]

log = logging.getLogger("ledger.client.mirror")
_DEVICE_ID = re.compile(DEVICE_ID_PATTERN)
_PURPOSE = re.compile(PURPOSE_PATTERN)
_ONE_TRY = Retry(attempts=1)
_MAX_BEATS = 64


class MirrorStats(NamedTuple):
    hits: int
    misses: int
    stale_refusals: int
    fetch_failures: int
    reconnects: int
    size: int
    lag_seconds: float
    position: int | None
    connected: bool


class _Flight:
    """One thread's fetch of a key, which other threads missing the same key wait for."""

    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Decision | None = None
        self.error: ClientError | None = None


class Mirror:
    """Decisions in this process's memory, kept current by the ledger's watch stream (see the
    module's docstring). Thread-safe; `allowed` never raises and never blocks on a hit."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        max_staleness: float = 2.0,
        capacity: int = 100_000,
        start_timeout: float = 5.0,
    ) -> None:
        if max_staleness <= 0:
            raise ValueError("max_staleness must be positive")
        self.max_staleness = max_staleness
        self.start_timeout = start_timeout
        self._cache = DecisionCache(capacity)
        # The hit path reads these two attributes and nothing else of the mirror.
        self._decisions = self._cache.decisions
        self._fresh_until = 0.0
        self._client = LedgerClient(base_url, token, timeout=max_staleness, retry=_ONE_TRY)
        self._stream_http = httpx.Client(
            timeout=httpx.Timeout(connect=max_staleness, read=max(max_staleness, 1.5), write=max_staleness, pool=None)
        )
        self._hits = itertools.count()
        self._misses = self._stale_refusals = self._fetch_failures = self._reconnects = 0
        self._fresh_at = 0.0
        self._beats: deque[tuple[int, float]] = deque()
        self._last_id: str | None = None
        self._connected = False
        self._closing = threading.Event()
        self._response: httpx.Response | None = None
        self._flights: dict[Key, _Flight] = {}
        self._flights_lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="ledger-mirror-watch", daemon=True)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, timeout: float | None = None) -> bool:
        """Start following the stream; wait up to `timeout` (default `start_timeout`) for the
        first heartbeat. Until it comes every answer is False; returns whether it came."""
        if not self._thread.is_alive() and not self._closing.is_set():
            self._thread.start()
        deadline = monotonic() + (self.start_timeout if timeout is None else timeout)
        while not self.fresh and monotonic() < deadline:
            self._closing.wait(0.01)
        return self.fresh

    def close(self) -> None:
        self._closing.set()
        self._shut_stream()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._stream_http.close()
        self._client.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- answers ----------------------------------------------------------------------------

    def allowed(self, device_id: str, purpose: str) -> bool:
        """Whether processing is allowed now; False whenever the mirror cannot tell for sure."""
        if monotonic() > self._fresh_until:
            self._stale_refusals += 1
            return False
        by_device = self._decisions.get(purpose)
        value = None if by_device is None else by_device.get(device_id)
        if value is None:
            return self._allowed_on_miss(device_id, purpose)
        next(self._hits)
        low = value & 15
        if low == 0:
            return True
        return low == EXPIRES and unexpired(value)

    def held(self, device_id: str, purpose: str) -> Decision | None:
        """The decision from memory, or None on a miss; never asks the ledger (for callers on an
        event loop, which must not block: they run `decision` in a thread on a miss). Raises
        Stale as `decision` does."""
        if monotonic() > self._fresh_until:
            self._stale_refusals += 1
            raise Stale(f"no heartbeat caught up with in the last {self.max_staleness} s")
        by_device = self._decisions.get(purpose)
        value = None if by_device is None else by_device.get(device_id)
        if value is None:
            return None
        next(self._hits)
        return unpack(value, device_id, purpose)

    def decision(self, device_id: str, purpose: str) -> Decision:
        """The decision as the ledger would give it now (a grant past its expiry: "expired").
        Raises Stale when the mirror cannot answer from fresh state, RequestRejected for a
        malformed device_id or a purpose the ledger does not know."""
        found = self.held(device_id, purpose)
        return self._fetch(Key(device_id, purpose)) if found is None else found

    def warm(self, pairs: Iterable[tuple[str, str]], timeout: float = 10.0) -> int:
        """Fetch and keep the decisions of (device_id, purpose) pairs ahead of their first use,
        1,000 per request, each at the stream's position then; how many were kept. Raises Stale
        if the stream has no position yet or the ledger does not answer within `timeout` s."""
        kept = 0
        for chunk in chunks(pairs):
            keys = [Key(d, p) for d, p in chunk]
            fetch = self._cache.begin(keys)
            if fetch is None:
                raise Stale("the watch stream has not started")
            answers = self._ask(fetch, timeout)
            found = self._cache.finish(fetch, answers.decisions, _size(answers.consistency_token))
            kept += sum(d is not None for d in found)
        return kept

    def wait_for(self, consistency_token: str, timeout: float) -> bool:
        """Block until the stream has delivered everything `consistency_token` covers (a
        receipt's, or any response's Consistency-Token) and the mirror is fresh, so that it
        reads that write; False after `timeout` seconds."""
        return self._cache.wait_for(parse_consistency_token(consistency_token), timeout, lambda: self.fresh)

    @property
    def fresh(self) -> bool:
        return monotonic() <= self._fresh_until

    @property
    def position(self) -> str | None:
        """The consistency token of the stream's position: everything before it is applied."""
        at = self._cache.position
        return None if at is None else consistency_token(at)

    def stats(self) -> MirrorStats:
        hits = int(repr(self._hits)[len("count(") : -1])
        lag = monotonic() - self._fresh_at if self._fresh_at else float("inf")
        return MirrorStats(
            hits,
            self._misses,
            self._stale_refusals,
            self._fetch_failures,
            self._reconnects,
            len(self._cache),
            lag,
            self._cache.position,
            self._connected,
        )

    def collector(self, prefix: str = "ledger_mirror") -> Any:
        """A prometheus-client Collector of this mirror's figures, to register with a registry
        (`prometheus_client.REGISTRY.register(mirror.collector())`); needs prometheus-client."""
        from ledger.client.metrics import MirrorCollector

        return MirrorCollector(self, prefix)

    # -- misses -----------------------------------------------------------------------------

    def _allowed_on_miss(self, device_id: str, purpose: str) -> bool:
        try:
            return self._fetch(Key(device_id, purpose)).allowed
        except Stale:
            return False
        except RequestRejected as exc:
            log.warning("ledger mirror: a check of purpose %r was rejected: %s", purpose, exc)
            return False
        except Exception:  # whatever went wrong, the answer is no
            log.exception("ledger mirror: a miss failed")
            return False

    def _fetch(self, key: Key) -> Decision:
        if not (_DEVICE_ID.match(key.device_id) and _PURPOSE.match(key.purpose)):
            detail = "malformed device_id or purpose"
            raise RequestRejected(422, {"status": 422, "title": "Unprocessable Content", "detail": detail})
        self._misses += 1
        with self._flights_lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leader:
            if not flight.done.wait(self.max_staleness):
                raise Stale("a fetch of the same decision did not finish in time")
            if flight.result is None:
                raise flight.error or Stale("a fetch of the same decision failed")
            return flight.result
        try:
            flight.result = self._fetch_now(key)
            return flight.result
        except ClientError as exc:
            flight.error = exc
            raise
        finally:
            with self._flights_lock:
                del self._flights[key]
            flight.done.set()

    def _fetch_now(self, key: Key) -> Decision:
        """Ask the ledger, at or past the stream's position, within `max_staleness`; keep the answer."""
        deadline = monotonic() + self.max_staleness
        held = list(self._decisions.items())
        keys = [key] + [Key(key.device_id, p) for p, by in held if p != key.purpose and key.device_id not in by]
        while (remaining := deadline - monotonic()) > 0:
            fetch = self._cache.begin(keys)
            if fetch is None:
                raise Stale("the watch stream has not started")
            answers = self._ask(fetch, remaining)
            found = self._cache.finish(fetch, answers.decisions, _size(answers.consistency_token))[0]
            if found is not None:
                return found
            # The stream voided the answer while it was in flight: ask again, past that.
        self._fetch_failures += 1
        raise Stale(f"no answer at the stream's position within {self.max_staleness} s")

    def _ask(self, fetch: Fetch, remaining: float) -> Answers:
        flow = self._client.calls.check_many(fetch.keys, consistency_token(fetch.start), remaining, _ONE_TRY)
        try:
            return self._client.run(flow)
        except RequestRejected:
            self._cache.abandon(fetch)
            raise
        except Exception as exc:  # unreachable, failing, or an answer that does not parse
            self._cache.abandon(fetch)
            self._fetch_failures += 1
            raise Stale(f"the ledger did not answer a miss: {exc!r}") from exc

    # -- the stream -------------------------------------------------------------------------

    def _watch(self) -> None:
        delay = 0.05
        while not self._closing.is_set():
            try:
                if self._follow():
                    delay = 0.05
            except Exception as exc:  # any failure of the stream means: reconnect
                if not self._closing.is_set():
                    log.info("ledger mirror: watch stream lost: %r", exc)
            self._connected = False
            if self._closing.is_set():
                return
            self._reconnects += 1
            self._closing.wait(delay)
            delay = min(delay * 2, 1.0)

    def _follow(self) -> bool:
        """Read the stream until it ends; whether any event came."""
        headers = {**self._client.calls.headers, "Accept": "text/event-stream"}
        if self._last_id is not None:
            headers["Last-Event-ID"] = self._last_id
        url = self._client.calls.base + "/v1/watch"
        received = False
        with self._stream_http.stream("GET", url, headers=headers) as response:
            if response.status_code != 200:
                response.read()
                problem = response.text[:200]
                log.warning("ledger mirror: GET /v1/watch answered %s: %s", response.status_code, problem)
                if response.status_code in (400, 422) and self._last_id is not None:
                    # The ledger does not know the resume point (a log that was replaced?):
                    # start again from now, forgetting everything held.
                    self._last_id = None
                    self._cache.reset()
                return False
            self._response = response
            self._connected = True
            parser = EventParser()
            for chunk in response.iter_bytes():
                for event in parser.feed_bytes(chunk):
                    self._on_event(event)
                    received = True
        return received

    def _on_event(self, sse: ServerEvent) -> None:
        event = decode_event(sse.data)
        position = None if sse.id is None else parse_consistency_token(sse.id)
        self._cache.apply(event, position)
        self._last_id = sse.id
        if isinstance(event, Heartbeat):
            self._beats.append((event.size, monotonic()))
            if len(self._beats) > _MAX_BEATS:
                self._beats.popleft()
        self._catch_up()

    def _catch_up(self) -> None:
        """Fresh as of the latest heartbeat whose log the stream has now delivered."""
        at = self._cache.position
        fresh_at = None
        while self._beats and at is not None and self._beats[0][0] <= at:
            fresh_at = self._beats.popleft()[1]
        if fresh_at is not None:
            self._fresh_at = fresh_at
            self._fresh_until = fresh_at + self.max_staleness
            with self._cache.advanced:
                self._cache.advanced.notify_all()

    def _shut_stream(self) -> None:
        """Wake the stream thread out of a blocking read, so close() need not wait for one."""
        response = self._response
        stream = None if response is None else response.extensions.get("network_stream")
        sock = None if stream is None else stream.get_extra_info("socket")
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _size(token: str | None) -> int | None:
    if token is None:
        return None
    try:
        return parse_consistency_token(token)
    except BadToken:
        return None
