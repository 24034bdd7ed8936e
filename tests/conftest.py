"""Every test that touches storage gets a fresh, migrated database on a real PostgreSQL.

By default that is an embedded pgserver started for the session; with LEDGER_TEST_DATABASE_URL
set, the server behind that URL (its database is only used to create and drop test databases).
"""

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from ledger import embedded
from ledger.storage import Stores, create_pool, open_stores
from ledger.storage.migrations import migrate


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    url = os.environ.get("LEDGER_TEST_DATABASE_URL")
    if url:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="ledger-test-pg-") as data_dir:
        server, url = embedded.start(Path(data_dir))
        yield url
        server.cleanup()


@pytest.fixture(scope="session")
async def template_database(server_url: str) -> AsyncIterator[str]:
    """One migrated database per session; each test copies it, which is much faster than migrating."""
    name = f"ledger_tpl_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        await migrate(embedded.with_database(server_url, name))
        yield name
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


async def _fresh_database(server_url: str, template: str) -> str:
    name = f"ledger_t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await conn.close()
    return name


async def _drop_database(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def database_url(server_url: str, template_database: str) -> AsyncIterator[str]:
    name = await _fresh_database(server_url, template_database)
    yield embedded.with_database(server_url, name)
    await _drop_database(server_url, name)


@pytest.fixture
async def empty_database_url(server_url: str) -> AsyncIterator[str]:
    """A database with no migrations applied."""
    name = await _fresh_database(server_url, "template0")
    yield embedded.with_database(server_url, name)
    await _drop_database(server_url, name)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Stores]:
    pool = await create_pool(database_url, max_size=20)
    yield open_stores(pool)
    await asyncio.wait_for(pool.close(), 10)
