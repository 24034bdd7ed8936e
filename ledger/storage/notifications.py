"""NOTIFY channels, and a connection that LISTENs to them."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import asyncpg

from ledger.storage.database import translated

LOG_CHANNEL = "consent_ledger_log"
TOKEN_CHANNEL = "consent_ledger_tokens"


@contextlib.asynccontextmanager
async def listening(
    url: str, channels: dict[str, Callable[[str], None]], on_lost: Callable[[], None]
) -> AsyncIterator[asyncpg.Connection]:
    """A dedicated connection LISTENing on `channels`; notifications go to the callbacks and
    `on_lost` is called if the connection closes under us."""
    with translated():
        conn = await asyncpg.connect(url)
    conn.add_termination_listener(lambda _conn: on_lost())
    try:
        for channel, callback in channels.items():
            await conn.add_listener(channel, lambda _c, _pid, _ch, payload, cb=callback: cb(payload))
        yield conn
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), 2)
