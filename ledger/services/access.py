"""Bearer tokens: validated against their stored hash, cached briefly, forgotten on revocation."""

import time

from ledger import auth
from ledger.services.stores import TokenReads
from ledger.storage.tokens import TokenRecord

__all__ = ["TOKEN_CACHE_LIMIT", "TOKEN_CACHE_SECONDS", "Access"]

TOKEN_CACHE_SECONDS = 5.0
TOKEN_CACHE_LIMIT = 10_000


class Access:
    def __init__(self, tokens: TokenReads) -> None:
        self.tokens = tokens
        self._cache: dict[bytes, tuple[TokenRecord, float]] = {}

    async def authenticate(self, token: str) -> TokenRecord | None:
        presented = auth.token_hash(token)
        cached = self.cached(presented)
        if cached is not None:
            return cached
        record = await self.tokens.token(presented)
        # The lookup is by hash (which says nothing useful about the token); comparing the stored
        # hash in constant time as well keeps any timing out of the final decision.
        if record is None or not auth.same_hash(record.token_hash, presented):
            self._cache.pop(presented, None)
            return None
        if len(self._cache) >= TOKEN_CACHE_LIMIT:
            self._cache.clear()
        self._cache[presented] = (record, time.monotonic())
        return record

    def cached(self, presented: bytes) -> TokenRecord | None:
        """A token this process validated within TOKEN_CACHE_SECONDS; never asks the database."""
        found = self._cache.get(presented)
        if found is None or time.monotonic() - found[1] >= TOKEN_CACHE_SECONDS:
            return None
        return found[0]

    def forget(self, _: str = "") -> None:
        """Tokens were revoked somewhere (or we could not hear about it): ask the database again."""
        self._cache.clear()
