"""Erasure by crypto-shredding: an erase entry, and in the same transaction the device's salt goes."""

import hmac
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from ledger.appender import Appender
from ledger.core.batch import Draft
from ledger.core.entry import ALL_PURPOSES, format_time
from ledger.core.errors import NoteError
from ledger.core.note import PRIVATE_KEY_PREFIX, Signer
from ledger.errors import ConfigError, NotFound, UnknownDevice
from ledger.models import Receipt
from ledger.services.position import Position
from ledger.services.validation import check_device

__all__ = ["TOMBSTONE_LABEL", "Erasure", "tombstone_hasher"]

TOMBSTONE_LABEL = "consent-ledger tombstones v1"


def tombstone_hasher(key: str | None, signer: Signer) -> Callable[[str], bytes]:
    """HMAC-SHA256 of a device_id under LEDGER_TOMBSTONE_KEY, or a key derived from the log's.

    LEDGER_TOMBSTONE_KEY may also hold a signing key (`PRIVATE+KEY+...`): the tombstone key is
    then derived from that one. After a rotation of a log key that the tombstones were derived
    from, the earlier key file keeps the devices erased before it answering `erased`.
    """
    if key and key.startswith(PRIVATE_KEY_PREFIX):
        try:
            signer = Signer.from_skey(key)
        except NoteError as exc:
            raise ConfigError(f"LEDGER_TOMBSTONE_KEY: looks like a signing key but is not one ({exc})") from None
        key = None
    secret = key.encode() if key else bytes(signer.derive(TOMBSTONE_LABEL))

    def tombstone(device_id: str) -> bytes:
        return hmac.digest(secret, device_id.encode(), "sha256")

    return tombstone


class Erasure:
    def __init__(self, appender: Appender, tombstone: Callable[[str], bytes], position: Position) -> None:
        self.appender = appender
        self.tombstone = tombstone
        self.position = position

    async def erase(self, device_id: str) -> Receipt:
        """Append an erase entry for the device's subject and crypto-shred it (salt, device_id,
        state, and whatever else names the device), keeping only the keyed tombstone."""
        check_device(device_id)
        draft = Draft(
            id=str(uuid.uuid4()),
            device_id=device_id,
            purpose=ALL_PURPOSES,
            action="erase",
            policy_version=1,
            occurred_at=format_time(datetime.now(UTC)),
            actor="operator",
            method="support_request",
            evidence={},
        )
        try:
            sealed = await self.appender.erase(draft, self.tombstone(device_id))
        except UnknownDevice:
            raise NotFound("the ledger holds no consent for this device (never recorded, or already erased)") from None
        return self.position.receipt(device_id, sealed)
