"""Calling the ledger from another service: a client for its API, and a live local mirror.

Depends only on httpx and msgspec (and prometheus-client for `Mirror.collector()`); importing it
needs none of the server's settings.
"""

from ledger.client.decision import Decision
from ledger.client.errors import ClientError, LedgerUnavailable, RequestRejected, Stale
from ledger.client.exchange import Retry
from ledger.client.http import AsyncLedgerClient, LedgerClient
from ledger.client.mirror import Mirror, MirrorStats

__all__ = [
    "AsyncLedgerClient",
    "ClientError",
    "Decision",
    "LedgerClient",
    "LedgerUnavailable",
    "Mirror",
    "MirrorStats",
    "RequestRejected",
    "Retry",
    "Stale",
]
