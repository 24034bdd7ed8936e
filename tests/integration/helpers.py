"""Shared builders for integration tests."""

import asyncio
import time
import uuid
from collections.abc import Callable

from ledger.core.batch import Draft


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


async def until(condition: Callable[[], bool], within: float = 5, what: str = "the condition") -> None:
    """Wait, without touching what is watched, until `condition()` holds; fail after `within` s."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not hold within {within} s"
        await asyncio.sleep(0.005)
