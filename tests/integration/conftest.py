"""Fixtures for tests that go through a real `ledger serve` process."""

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from ledger import auth
from ledger.core.note import Verifier
from ledger.keys import write_key_file
from ledger.storage import Stores

from .server import running_server, server_env

ORIGIN = "api.test/log"


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    write_key_file(tmp_path / "signing.key", ORIGIN)
    return tmp_path / "signing.key"


@contextmanager
def ledger_server(database_url: str, tmp_path: Path, key_file: Path, **extra: str) -> Iterator[str]:
    """A `ledger serve` on the test database, signing with the test key, with extra settings."""
    env = server_env(database_url, tmp_path, LEDGER_SIGNING_KEY=str(key_file), LEDGER_LOG_ORIGIN=ORIGIN, **extra)
    with running_server(env) as url:
        yield url


@pytest.fixture
def base_url(database_url: str, tmp_path: Path, key_file: Path) -> Iterator[str]:
    with ledger_server(database_url, tmp_path, key_file) as url:
        yield url


@pytest.fixture
async def tokens(store: Stores, base_url: str) -> dict[str, str]:
    made = {}
    for scope in auth.SCOPES:
        made[scope] = auth.new_token()
        await store.tokens.create_token(f"t-{scope}", auth.token_hash(made[scope]), [scope])
    return made


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def log_verifier(client: httpx.AsyncClient, origin: str = ORIGIN) -> Verifier:
    """The log's verifier key as /v1/keys publishes it (the webhook key is listed beside it)."""
    keys = (await client.get("/v1/keys")).json()["keys"]
    [vkey] = [k["vkey"] for k in keys if k["key_name"] == origin]
    return Verifier.from_vkey(vkey)
