"""Shared builders for integration tests."""

import uuid

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
