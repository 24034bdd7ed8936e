"""Bearer tokens: validated against their stored hash, cached briefly, forgotten on revocation.

A revocation reaches this process as a notification (ledger/projection.py listens), and the cache
is dropped when it arrives. Two lookups must therefore not be cached: one made while nobody
listens (its revocation would never be heard, and the token would be accepted for up to
TOKEN_CACHE_SECONDS), and one that was under way when the cache was dropped (it may have read
the token before the revocation, and caching it would undo the drop).
"""

import time
from collections.abc import Callable

from ledger import auth
from ledger.services.stores import TokenReads
from ledger.storage.tokens import TokenRecord

__all__ = ["TOKEN_CACHE_LIMIT", "TOKEN_CACHE_SECONDS", "Access"]

TOKEN_CACHE_SECONDS = 5.0
TOKEN_CACHE_LIMIT = 10_000


class Access:
    def __init__(self, tokens: TokenReads, hearing: Callable[[], bool] = lambda: True) -> None:
        """`hearing()` says whether revocations reach `forget` now (the LISTEN connection is up)."""
        self.tokens = tokens
        self.hearing = hearing
        self._cache: dict[bytes, tuple[TokenRecord, float]] = {}
        self._forgotten = 0  # how many times the cache was dropped

    async def authenticate(self, token: str) -> TokenRecord | None:
        presented = auth.token_hash(token)
        cached = self.cached(presented)
        if cached is not None:
            return cached
        forgotten = self._forgotten
        record = await self.tokens.token(presented)
        # The lookup is by hash (which says nothing useful about the token); comparing the stored
        # hash in constant time as well keeps any timing out of the final decision.
        if record is None or not auth.same_hash(record.token_hash, presented):
            self._cache.pop(presented, None)
            return None
        if forgotten != self._forgotten or not self.hearing():
            return record  # see the module's docstring: a revocation could go unheard
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
        self._forgotten += 1
        self._cache.clear()
