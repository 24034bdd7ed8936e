"""What a committed batch tells the other replicas: the log size, and which decisions it changed.

The notice travels as a PostgreSQL NOTIFY payload, delivered at commit to every listening
process. Carrying the changed (subject, purpose) keys lets a replica drop exactly those cached
decisions the moment it hears of the batch, instead of after its next read of the log; the log
tail still follows and refills them. Keys name subjects (pseudonyms), never device ids.

Text format, one notice per payload: `<start> <size>` then space-separated keys, each
`<subject>/<purpose>` (`<subject>/*` for an erasure). A batch whose keys do not fit in
MAX_NOTICES payloads sends the withdrawals and erasures it can and marks the last notice
`partial` (`<start> <size> partial ...`): a receiver then relies on its tail for the rest.
A batch that publishes a registry sends the one key `*/#registry` (REGISTRY_KEY): no subject is
`*`, so no receiver mistakes it for a decision; it tells every replica to read the log now.
Grants are sent last because a grant seen late refuses (fails closed), a withdrawal seen late
would allow.
"""

from collections.abc import Iterable, Sequence
from typing import NamedTuple

from ledger.core.entry import ALL_PURPOSES, Entry

__all__ = [
    "MAX_NOTICES",
    "MAX_PAYLOAD",
    "PARTIAL",
    "REGISTRY_KEY",
    "Key",
    "Notice",
    "changed_keys",
    "decode_notice",
    "encode_notices",
    "is_erasure",
    "is_registry",
]

# PostgreSQL refuses NOTIFY payloads of 8000 bytes or more.
MAX_PAYLOAD = 7900
MAX_NOTICES = 16
PARTIAL = "partial"


class Key(NamedTuple):
    subject: str
    purpose: str  # ALL_PURPOSES for an erasure


REGISTRY_KEY = Key(ALL_PURPOSES, "#registry")


class Notice(NamedTuple):
    start: int
    size: int
    keys: list[Key]
    partial: bool = False


def changed_keys(entries: Iterable[Entry]) -> list[Key]:
    """Each (subject, purpose) the entries touch, once: withdrawals and erasures before grants."""
    urgent: dict[Key, None] = {}
    later: dict[Key, None] = {}
    for entry in entries:
        key = Key(entry.subject, entry.purpose)
        (later if entry.action == "grant" else urgent)[key] = None
    return list(urgent) + [k for k in later if k not in urgent]


def encode_notices(start: int, size: int, keys: Sequence[Key]) -> list[str]:
    """The payloads announcing entries [start, size): at least one, at most MAX_NOTICES."""
    head = f"{start} {size}"
    payloads: list[str] = []
    current = head
    for key in keys:
        item = f" {key.subject}/{key.purpose}"
        if len(current) + len(item) > MAX_PAYLOAD:
            if len(payloads) == MAX_NOTICES - 1:
                payloads.append(f"{head} {PARTIAL}{current[len(head) :]}")
                return payloads
            payloads.append(current)
            current = head
        current += item
    payloads.append(current)
    return payloads


def decode_notice(payload: str) -> Notice | None:
    """The notice in `payload`, or None if it is not one (an older writer sent only the size)."""
    parts = payload.split(" ")
    if len(parts) < 2 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    partial = len(parts) > 2 and parts[2] == PARTIAL
    keys = []
    for item in parts[3 if partial else 2 :]:
        subject, sep, purpose = item.partition("/")
        if not sep or not subject or not purpose:
            return None
        keys.append(Key(subject, purpose))
    return Notice(int(parts[0]), int(parts[1]), keys, partial)


def is_erasure(key: Key) -> bool:
    return key.purpose == ALL_PURPOSES


def is_registry(key: Key) -> bool:
    return key == REGISTRY_KEY
