"""The watch stream's events: what a log entry changed, and its Server-Sent Events frame.

Pure: the hub (ledger/watch.py) turns entries into `Change`s, asks the projection for the
decisions they need, and encodes each event once here; every watcher then sends the same bytes.

Every frame names the position after it as its `id:` (a consistency token, ct1.<size>): an
entry's event is `ct1.<index + 1>`, a heartbeat's or a resync's the size it covers. A client
that resumes with the last id it saw gets exactly what came after it. `data:` is one line of
JSON whose `type` says what it is:

    decision   {"type", "device_id", "purpose", "index", "decision": <GET /v1/check's answer>}
    erasure    {"type", "device_id" (null when this process cannot know it), "index"}
    registry   {"type", "index", "recorded_at", "controller", "purposes"} (GET /v1/purposes)
    heartbeat  {"type", "size"}: every change before `size` has been sent
    resync     {"type", "size", "reason"}: changes were skipped; drop everything cached
"""

from typing import NamedTuple

import msgspec

from ledger.core.consistency import consistency_token
from ledger.core.entry import Entry, parse_entry
from ledger.core.purposes import Controller
from ledger.core.registry import LoggedPurpose, RegistryEntry, is_registry_entry, parse_registry_entry

__all__ = [
    "RETRY",
    "Change",
    "ConsentChange",
    "ErasureChange",
    "RegistryChange",
    "change_of",
    "change_of_row",
    "decision_frame",
    "erasure_frame",
    "frame",
    "heartbeat_frame",
    "registry_frame",
    "resync_frame",
]

# Sent first: an EventSource reconnects after 1 s (the browser default is 3 s, and a consent
# mirror that is cut off fails closed meanwhile).
RETRY = b"retry: 1000\n\n"


class ConsentChange(NamedTuple):
    """A grant or withdrawal at `index`; `device_id` is None when the device was erased since."""

    index: int  # type: ignore[assignment]  # the entry's index; shadowing tuple.index is intended
    device_id: str | None
    purpose: str
    subject: str


class ErasureChange(NamedTuple):
    """An erasure; `device_id` is None when whoever read it could not tell the device (the log
    names only the subject, and the device's row went in the same transaction)."""

    index: int  # type: ignore[assignment]
    device_id: str | None
    subject: str


class RegistryChange(NamedTuple):
    index: int  # type: ignore[assignment]
    entry: RegistryEntry


Change = ConsentChange | ErasureChange | RegistryChange


def change_of(entry: Entry | RegistryEntry, device_id: str | None) -> Change:
    """What an entry changes, for the device it was recorded for (None: not known here)."""
    if isinstance(entry, RegistryEntry):
        return RegistryChange(entry.index, entry)
    if entry.action == "erase":
        return ErasureChange(entry.index, device_id, entry.subject)
    return ConsentChange(entry.index, device_id, entry.purpose, entry.subject)


def change_of_row(data: bytes, device_id: str | None) -> Change:
    """The change of an entry read back from the log (its bytes and its device's current id)."""
    return change_of(parse_registry_entry(data) if is_registry_entry(data) else parse_entry(data), device_id)


class _Decision(msgspec.Struct, tag="decision", tag_field="type"):
    device_id: str
    purpose: str
    index: int
    decision: msgspec.Raw


class _Erasure(msgspec.Struct, tag="erasure", tag_field="type"):
    device_id: str | None
    index: int


class _Registry(msgspec.Struct, tag="registry", tag_field="type"):
    index: int
    recorded_at: str
    controller: Controller
    purposes: dict[str, LoggedPurpose]


class _Heartbeat(msgspec.Struct, tag="heartbeat", tag_field="type"):
    size: int


class _Resync(msgspec.Struct, tag="resync", tag_field="type"):
    size: int
    reason: str


_encode = msgspec.json.Encoder().encode


def frame(event: str, position: int, data: msgspec.Struct) -> bytes:
    """One event: its name, the position after it as its id, its data as one line of JSON
    (msgspec escapes every newline inside strings, so the JSON never spans lines)."""
    return b"event: %b\nid: %b\ndata: %b\n\n" % (event.encode(), consistency_token(position).encode(), _encode(data))


def decision_frame(index: int, device_id: str, purpose: str, decision: bytes) -> bytes:
    """`decision` is the JSON GET /v1/check answers for the pair, already encoded."""
    return frame("decision", index + 1, _Decision(device_id, purpose, index, msgspec.Raw(decision)))


def erasure_frame(index: int, device_id: str | None) -> bytes:
    return frame("erasure", index + 1, _Erasure(device_id, index))


def registry_frame(entry: RegistryEntry) -> bytes:
    data = _Registry(entry.index, entry.recorded_at, entry.registry.controller, entry.registry.purposes)
    return frame("registry", entry.index + 1, data)


def heartbeat_frame(size: int) -> bytes:
    return frame("heartbeat", size, _Heartbeat(size))


def resync_frame(size: int, reason: str) -> bytes:
    return frame("resync", size, _Resync(size, reason))
