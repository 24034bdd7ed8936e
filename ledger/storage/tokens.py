"""API tokens, stored as their SHA-256."""

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

import asyncpg

from ledger.errors import NameTaken
from ledger.storage.database import translated
from ledger.storage.notifications import TOKEN_CHANNEL


class TokenRecord(NamedTuple):
    name: str
    scopes: list[str]
    token_hash: bytes


class TokenListing(NamedTuple):
    name: str
    scopes: list[str]
    created_at: datetime


class TokenStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def create_token(self, name: str, token_hash: bytes, scopes: Sequence[str]) -> None:
        """Raise NameTaken if an active token already has this name."""
        with translated():
            try:
                await self.pool.execute(
                    "INSERT INTO api_tokens (name, token_hash, scopes) VALUES ($1, $2, $3)",
                    name,
                    token_hash,
                    list(scopes),
                )
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name == "api_tokens_active_name":
                    raise NameTaken(f"an active token named {name!r} exists; revoke it first") from None
                raise

    async def ensure_token(self, name: str, token_hash: bytes, scopes: Sequence[str]) -> datetime | None:
        """Make `token_hash` the one active token called `name` (LEDGER_ADMIN_TOKEN's bootstrap).
        Return when the token it replaced, now revoked, was created; None if nothing was replaced."""
        with translated():
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", name)
                current = await conn.fetchrow(
                    "SELECT token_hash, created_at FROM api_tokens WHERE name = $1 AND revoked_at IS NULL", name
                )
                if current is not None and bytes(current["token_hash"]) == token_hash:
                    return None
                await conn.execute(
                    "UPDATE api_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL", name
                )
                await conn.execute(
                    "INSERT INTO api_tokens (name, token_hash, scopes) VALUES ($1, $2, $3)"
                    " ON CONFLICT (token_hash) DO UPDATE SET revoked_at = NULL, name = EXCLUDED.name",
                    name,
                    token_hash,
                    list(scopes),
                )
                if current is None:
                    return None
                # Running servers drop the old token from their caches when this commits.
                await conn.execute("SELECT pg_notify($1, $2)", TOKEN_CHANNEL, name)
                replaced: datetime = current["created_at"]
                return replaced

    async def revoke_token(self, name: str) -> int:
        with translated():
            async with self.pool.acquire() as conn, conn.transaction():
                status = await conn.execute(
                    "UPDATE api_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL", name
                )
                # Every server process drops its cached tokens when this commits.
                await conn.execute("SELECT pg_notify($1, $2)", TOKEN_CHANNEL, name)
        return int(status.split()[-1])

    async def active(self) -> list[TokenListing]:
        """Every token not revoked, oldest first; never the token or its hash."""
        with translated():
            rows = await self.pool.fetch(
                "SELECT name, scopes, created_at FROM api_tokens WHERE revoked_at IS NULL ORDER BY created_at, name"
            )
        return [TokenListing(r["name"], list(r["scopes"]), r["created_at"]) for r in rows]

    async def token(self, token_hash: bytes) -> TokenRecord | None:
        with translated():
            row = await self.pool.fetchrow(
                "SELECT name, scopes, token_hash FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL",
                token_hash,
            )
        return None if row is None else TokenRecord(row["name"], list(row["scopes"]), bytes(row["token_hash"]))
