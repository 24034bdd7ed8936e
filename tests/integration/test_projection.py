"""The projection: the cache, the state table and a fold of the log always agree; staleness fails closed."""

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from ledger.appender import Appender
from ledger.core.batch import Draft
from ledger.core.decision import Basis, decide, deciding
from ledger.core.entry import format_time, parse_entry
from ledger.core.note import Signer
from ledger.core.purposes import BUILT_IN
from ledger.projection import Projection, Stale
from ledger.storage import Stores, create_pool, open_stores

from .helpers import draft, until

PURPOSES = sorted(BUILT_IN.purposes)
ORIGIN = "projection.test/log"


class Harness:
    """A store, an appender and a projection on one event loop, driven from synchronous code."""

    def __init__(self, url: str, cache_size: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.url = url
        self.cache_size = cache_size

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coro)

    async def open(self) -> None:
        self.store = open_stores(await create_pool(self.url, max_size=4))
        signer = Signer.generate(ORIGIN)
        await self.store.log.register_key(signer.verifier)
        self.appender = Appender(self.store.log, signer, ORIGIN)
        await self.appender.start()
        self.projection = Projection(
            self.store.log,
            self.store.subjects,
            self.url,
            cache_size=self.cache_size,
            max_staleness_ms=5000,
            poll_interval=0.05,
        )
        await self.projection.start()

    async def close(self) -> None:
        await self.projection.stop()
        await self.appender.stop()
        await self.store.pool.close()


def test_cache_state_table_and_log_fold_agree(database_url: str) -> None:
    harness = Harness(database_url, cache_size=4)  # small, so eviction happens too
    harness.run(harness.open())
    base = datetime.now(UTC)

    class ConsentMachine(RuleBasedStateMachine):
        @initialize()
        def setup(self) -> None:
            prefix = uuid.uuid4().hex[:8]
            self.devices = [f"{prefix}-{i}" for i in range(3)]
            self.history: dict[tuple[str, str], list[Draft]] = {}
            self.indexes: dict[str, int] = {}

        @rule(
            device=st.integers(0, 2),
            purpose=st.sampled_from(PURPOSES),
            action=st.sampled_from(["grant", "withdraw"]),
            minutes_ago=st.integers(0, 90),
            expires_in=st.none() | st.integers(1, 120),
        )
        def record(self, device: int, purpose: str, action: str, minutes_ago: int, expires_in: int | None) -> None:
            draft = Draft(
                id=str(uuid.uuid4()),
                device_id=self.devices[device],
                purpose=purpose,
                action=action,  # type: ignore[arg-type]
                policy_version=1,
                occurred_at=format_time(base - timedelta(minutes=minutes_ago)),
                actor="user",
                method="settings",
                evidence={},
                expires_at=format_time(base + timedelta(minutes=expires_in))
                if expires_in and action == "grant"
                else None,
            )
            sealed = harness.run(harness.appender.append(draft))
            self.indexes[draft.id] = sealed.entry.index
            self.history.setdefault((draft.device_id, purpose), []).append(draft)

        @rule(device=st.integers(0, 2), purpose=st.sampled_from(PURPOSES))
        def look_up(self, device: int, purpose: str) -> None:
            # Fill the cache (negative answers included) so that later writes must update it.
            harness.run(harness.projection.lookup([(self.devices[device], purpose)]))

        @rule(device=st.integers(0, 2), purpose=st.sampled_from(PURPOSES), minutes_later=st.integers(0, 150))
        def check(self, device: int, purpose: str, minutes_later: int) -> None:
            key = (self.devices[device], purpose)
            now = format_time(base + timedelta(minutes=minutes_later))
            size = harness.appender.tree_size or 0
            assert harness.run(harness.projection.wait_for(size, 5))
            [from_cache] = harness.run(harness.projection.lookup([key]))
            [again] = harness.run(harness.projection.lookup([key]))
            rows, snapshot = harness.run(harness.store.subjects.states([key]))
            assert snapshot >= size
            from_table = rows[0].basis
            subject = harness.run(harness.store.subjects.subject_of(key[0]))
            entries = {} if subject is None else harness.run(harness.store.subjects.history(subject, snapshot))
            from_log = deciding(e for e in map(parse_entry, entries.values()) if e.purpose == purpose)
            assert from_cache == again == from_table == from_log
            expected = self.expected(key)
            assert from_log == expected
            spec = BUILT_IN.purposes[purpose]
            assert decide(purpose, spec, from_cache, now) == decide(purpose, spec, expected, now)

        def expected(self, key: tuple[str, str]) -> Basis | None:
            """The model: the person's latest action by (occurred_at, index)."""
            drafts = self.history.get(key, [])
            if not drafts:
                return None
            latest = max(drafts, key=lambda d: (d.occurred_at, self.indexes[d.id]))
            return Basis(
                self.indexes[latest.id], latest.action, latest.policy_version, latest.occurred_at, latest.expires_at
            )

        @invariant()
        def bounded(self) -> None:
            assert harness.projection.size() <= 2 * harness.cache_size

    try:
        run_state_machine_as_test(
            ConsentMachine, settings=settings(max_examples=25, stateful_step_count=30, deadline=None)
        )
    finally:
        harness.run(harness.close())
        harness.loop.close()


async def open_parts(url: str, **projection: float) -> tuple[Stores, Appender, Projection]:
    store = open_stores(await create_pool(url, max_size=4))
    signer = Signer.generate(ORIGIN)
    await store.log.register_key(signer.verifier)
    appender = Appender(store.log, signer, ORIGIN)
    await appender.start()
    view = Projection(
        store.log,
        store.subjects,
        url,
        cache_size=int(projection.get("cache_size", 100)),
        max_staleness_ms=int(projection.get("max_staleness_ms", 2000)),
        poll_interval=projection.get("poll_interval"),
    )
    await view.start()
    return store, appender, view


async def close_parts(store: Stores, appender: Appender, view: Projection) -> None:
    await view.stop()
    await appender.stop()
    await store.pool.close()


async def test_a_cached_negative_answer_is_replaced_when_the_device_first_consents(database_url: str) -> None:
    parts = await open_parts(database_url)
    _store, appender, view = parts
    try:
        assert await view.lookup([("new-device", "telemetry")]) == [None]
        misses = view.misses
        assert await view.lookup([("new-device", "telemetry")]) == [None]
        assert view.misses == misses, "the negative answer was cached"
        sealed = await appender.append(draft("new-device", "telemetry"))
        assert await view.wait_for(sealed.tree_size, 5)
        [basis] = await view.lookup([("new-device", "telemetry")])
        assert basis is not None
        assert basis.action == "grant"
        sealed = await appender.append(draft("new-device", "telemetry", "withdraw"))
        assert await view.wait_for(sealed.tree_size, 5)
        [basis] = await view.lookup([("new-device", "telemetry")])
        assert basis is not None
        assert basis.action == "withdraw"
    finally:
        await close_parts(*parts)


async def test_the_tailer_updates_cached_decisions_in_place(database_url: str) -> None:
    """Without LISTEN (so no commit notice drops the key), the polling tailer alone brings the
    withdrawal into the cached entry: the next answer is a hit, and it is the withdrawal."""
    parts = await open_parts(database_url, poll_interval=0.05)
    _store, appender, view = parts
    try:
        view._tasks[0].cancel()  # the LISTEN connection
        sealed = await appender.append(draft("tailed", "telemetry"))
        await until(lambda: view.applied >= sealed.tree_size, what="the tailer")
        [basis] = await view.lookup([("tailed", "telemetry")])
        assert basis is not None
        assert basis.action == "grant"
        sealed = await appender.append(draft("tailed", "telemetry", "withdraw"))
        await until(lambda: view.applied >= sealed.tree_size, what="the tailer")
        hits = view.hits
        [basis] = await view.lookup([("tailed", "telemetry")])
        assert basis is not None
        assert basis.action == "withdraw"
        assert view.hits == hits + 1, "answered from the cache, which the tailer updated"
    finally:
        await close_parts(*parts)


async def test_another_writer_is_seen_through_notify(database_url: str) -> None:
    """The writer is another 'replica' (own pool and appender); polling is slowed right down."""
    parts = await open_parts(database_url, poll_interval=30, max_staleness_ms=120_000)
    other = open_stores(await create_pool(database_url, max_size=2))
    writer = Appender(other.log, Signer.generate(ORIGIN), ORIGIN)
    await other.log.register_key(writer.signer.verifier)
    await writer.start()
    try:
        view = parts[2]
        await view.lookup([("n1", "telemetry")])
        await until(lambda: view.listening, what="listening")
        sealed = await writer.append(draft("n1", "telemetry"))
        # Not view.wait_for: it looks at the database itself. Only the NOTIFY can wake the
        # tailer here (it polls every 30 s), so this fails when LISTEN is broken.
        await until(lambda: view.applied >= sealed.tree_size, what="the NOTIFY")
    finally:
        await writer.stop()
        await other.pool.close()
        await close_parts(*parts)


async def test_a_projection_that_cannot_confirm_it_is_current_fails_closed(database_url: str) -> None:
    parts = await open_parts(database_url, max_staleness_ms=200, poll_interval=0.05)
    store, appender, view = parts
    try:
        await appender.append(draft("s1", "telemetry"))
        await view.lookup([("s1", "telemetry")])
        await view.stop()  # the tailer no longer looks at the database
        await asyncio.sleep(0.3)
        assert not view.fresh()
        with pytest.raises(Stale):
            await view.lookup([("s1", "telemetry")])
    finally:
        await appender.stop()
        await store.pool.close()


async def test_the_cache_is_bounded(database_url: str) -> None:
    parts = await open_parts(database_url, cache_size=10)
    try:
        view = parts[2]
        for i in range(50):
            await view.lookup([(f"bounded-{i}", "telemetry")])
        assert view.size() <= 20
    finally:
        await close_parts(*parts)
