"""The ledger's watch events (`GET /v1/watch`): each event's `data` is one JSON object whose
`type` says what happened; its SSE `id` is the consistency token just after it."""

from typing import Any

import msgspec

from ledger.client.decision import Decision

__all__ = ["Change", "Erasure", "Heartbeat", "RegistryPublished", "Resync", "Unknown", "WatchEvent", "decode_event"]


class Change(msgspec.Struct, frozen=True, tag="decision", tag_field="type"):
    """The decision of (device_id, purpose) after the entry at `index`, built from the server's
    state at that entry or later."""

    device_id: str
    purpose: str
    index: int
    decision: Decision


class Erasure(msgspec.Struct, frozen=True, tag="erasure", tag_field="type"):
    """The device was erased at `index`: every decision held for it is void. A server process
    that did not record the erasure cannot know the device (its id is shredded with it): then
    `device_id` is None and every decision held is void."""

    device_id: str | None
    index: int


class RegistryPublished(msgspec.Struct, frozen=True, tag="registry", tag_field="type"):
    """A new purpose registry is in force from `index`: any decision may have changed."""

    index: int


class Heartbeat(msgspec.Struct, frozen=True, tag="heartbeat", tag_field="type"):
    """The server's projection is fresh and the log had `size` entries when this was sent."""

    size: int


class Resync(msgspec.Struct, frozen=True, tag="resync", tag_field="type"):
    """The stream cannot continue from where the client asked (too far behind): everything held
    is void; the stream goes on from this event's id."""

    size: int
    reason: str = ""


class Unknown(msgspec.Struct, frozen=True):
    """An event of a type this client does not know. A mirror treats it as a resync: whatever
    it announces may have changed any decision."""

    type: str


WatchEvent = Change | Erasure | RegistryPublished | Heartbeat | Resync | Unknown
_Known = Change | Erasure | RegistryPublished | Heartbeat | Resync
_known: "msgspec.json.Decoder[_Known]" = msgspec.json.Decoder(_Known)
_kind = msgspec.json.Decoder(dict[str, Any])


def decode_event(data: str) -> WatchEvent:
    """The event a `data` line holds. Raises msgspec.ValidationError or DecodeError for data that
    is not an event of a known type or is malformed; an unknown `type` is `Unknown`."""
    try:
        return _known.decode(data)
    except msgspec.ValidationError:
        kind = _kind.decode(data).get("type")
        if isinstance(kind, str) and kind not in {"decision", "erasure", "registry", "heartbeat", "resync"}:
            return Unknown(kind)
        raise
