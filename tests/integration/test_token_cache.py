"""The token cache never outlives a revocation it could not hear: real PostgreSQL, real NOTIFY."""

import asyncio
from collections.abc import AsyncIterator

import pytest

from ledger import auth
from ledger.projection import Projection
from ledger.services.access import Access
from ledger.storage import Stores
from ledger.storage.tokens import TokenRecord

from .helpers import until


class HeldLookups:
    """The real token table, but each lookup waits, after it has read, until released: a revocation
    can then arrive while a lookup is under way."""

    def __init__(self, store: Stores) -> None:
        self.store = store
        self.read = asyncio.Event()
        self.release = asyncio.Event()

    async def token(self, token_hash: bytes) -> TokenRecord | None:
        record = await self.store.tokens.token(token_hash)
        self.read.set()
        await self.release.wait()
        return record


@pytest.fixture
async def projection(store: Stores, database_url: str) -> AsyncIterator[Projection]:
    projection = Projection(store.log, store.subjects, database_url, cache_size=100, max_staleness_ms=2000)
    yield projection
    await projection.stop()


async def new_token(store: Stores, name: str) -> str:
    token = auth.new_token()
    await store.tokens.create_token(name, auth.token_hash(token), ["audit:read"])
    return token


async def test_a_token_validated_before_anyone_listens_is_not_cached(store: Stores, projection: Projection) -> None:
    access = Access(store.tokens, hearing=lambda: projection.listening)
    projection.token_listeners.append(access.forget)
    token = await new_token(store, "early")
    assert await access.authenticate(token) is not None  # the projection is not listening yet
    assert await store.tokens.revoke_token("early") == 1  # its notice reaches no one
    assert await access.authenticate(token) is None


async def test_a_lookup_under_way_when_a_revocation_arrives_is_not_cached(
    store: Stores, projection: Projection
) -> None:
    held = HeldLookups(store)
    access = Access(held, hearing=lambda: projection.listening)
    heard: list[str] = []
    projection.token_listeners += [access.forget, heard.append]
    await projection.start()
    assert projection.listening  # start() returns once it is
    token = await new_token(store, "racing")
    heard.clear()  # whatever was heard before: this test waits for the revocation's notice
    lookup = asyncio.create_task(access.authenticate(token))
    await held.read.wait()  # it has read the token, still valid
    assert await store.tokens.revoke_token("racing") == 1
    await until(lambda: heard == ["racing"], within=10, what="the revocation notice")
    held.release.set()
    assert await lookup is not None  # read before the revocation: this one answer may still pass
    assert await access.authenticate(token) is None  # but it was not cached
