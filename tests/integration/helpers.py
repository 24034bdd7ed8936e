"""Shared builders for integration tests."""

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import httpx

from ledger.core.batch import Draft
from ledger.services.access import TOKEN_CACHE_SECONDS


def draft(device: str = "device-1", purpose: str = "pixverse_sharing", action: str = "grant", **extra: object) -> Draft:
    fields: dict = {
        "id": str(uuid.uuid4()),
        "device_id": device,
        "purpose": purpose,
        "action": action,
        "policy_version": 1,
        "occurred_at": "2026-11-28T10:00:00.000000Z",
        "actor": "user",
        "method": "explicit_popup",
        "evidence": {"popup": "v1"},
    }
    fields.update(extra)
    return Draft(**fields)


def eventually(check: Callable[[], None], within: float = 10, every: float = 0.05) -> None:
    """Run `check` until it stops raising AssertionError; its last failure after `within` s. For
    outcomes a background task produces (another worker's metrics, a settled delivery)."""
    deadline = time.monotonic() + within
    while True:
        try:
            check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(every)


async def until(condition: Callable[[], bool], within: float = 5, what: str = "the condition") -> None:
    """Wait, without touching what is watched, until `condition()` holds; fail after `within` s."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not hold within {within} s"
        await asyncio.sleep(0.005)


async def refused_once_revoked(ask: Callable[[], Awaitable[httpx.Response]], validated_at: float) -> None:
    """Ask with a revoked token until the answer is 401.

    README (HTTP API): a revoked token is dropped from every process's cache at once, by a NOTIFY;
    the cache's own 5 s lifetime is only a backstop. The notice takes a moment to arrive (longer on
    a loaded machine), so this waits for it, but only until the cache entry would have expired by
    itself: `validated_at` is a time taken before the request that validated (and cached) the
    token, and a 401 after that would say nothing about the notice.
    """
    deadline = validated_at + TOKEN_CACHE_SECONDS
    while (answer := await ask()).status_code == 200:
        assert time.monotonic() < deadline, "a revoked token was accepted until its cache entry expired"
        await asyncio.sleep(0.005)
    assert answer.status_code == 401, answer.text
    assert time.monotonic() < deadline, "refused only once its cache entry had expired by itself"
