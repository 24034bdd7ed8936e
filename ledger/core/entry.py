"""What a log entry is, and its exact bytes (CONTRACT section 2)."""

import hashlib
import hmac
import re
from datetime import UTC, datetime
from typing import Annotated, Literal, TypeVar

import msgspec

from ledger.core.errors import EntryError

__all__ = [
    "ALL_PURPOSES",
    "DEVICE_ID_PATTERN",
    "PURPOSE_PATTERN",
    "TIMESTAMP_PATTERN",
    "Action",
    "Actor",
    "DeviceId",
    "Entry",
    "EntryId",
    "EntryPurpose",
    "Evidence",
    "EvidenceKey",
    "EvidenceValue",
    "Method",
    "PolicyVersion",
    "PurposeKey",
    "Subject",
    "Timestamp",
    "decode_canonical",
    "entry_bytes",
    "format_time",
    "is_device_id",
    "parse_entry",
    "parse_time",
    "subject_for",
    "whole",
]


def whole(expression: str) -> str:
    r"""A pattern that matches the whole value, the same in Python and in JSON Schema.

    msgspec checks patterns with Python's `re.search`, where `$` also matches before a final
    newline, so `^x$` alone lets "x\n" through; `\Z` would fix Python but is not ECMA-262 (what
    OpenAPI tools read). `(?!\n)$` means "at the very end" in both. Digits are spelled [0-9]:
    Python's \d also matches other scripts' digits.
    """
    return f"^(?:{expression})(?!\\n)$"


DEVICE_ID_PATTERN = whole(r"[A-Za-z0-9._:-]{1,128}")
PURPOSE_PATTERN = whole(r"[a-z][a-z0-9_]{0,63}")
TIMESTAMP_PATTERN = whole(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")

DeviceId = Annotated[str, msgspec.Meta(pattern=DEVICE_ID_PATTERN)]
PurposeKey = Annotated[str, msgspec.Meta(pattern=PURPOSE_PATTERN)]
# Fixed width and always UTC, so comparing two of these as strings compares the instants.
Timestamp = Annotated[str, msgspec.Meta(pattern=TIMESTAMP_PATTERN)]
Subject = Annotated[str, msgspec.Meta(pattern=whole(r"[0-9a-f]{64}"))]
EntryId = Annotated[str, msgspec.Meta(pattern=whole(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"))]
PolicyVersion = Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]
EvidenceKey = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
EvidenceValue = Annotated[str, msgspec.Meta(max_length=256)]
Evidence = Annotated[dict[EvidenceKey, EvidenceValue], msgspec.Meta(max_length=16)]

Action = Literal["grant", "withdraw", "erase"]
# An erase entry covers every purpose of its subject.
ALL_PURPOSES = "*"
EntryPurpose = Annotated[str, msgspec.Meta(pattern=whole(r"\*|[a-z][a-z0-9_]{0,63}"))]
Actor = Literal["user", "guardian", "operator"]
Method = Literal["explicit_popup", "settings", "gpc", "support_request", "api"]

_DEVICE_ID = re.compile(DEVICE_ID_PATTERN)


class Entry(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One consent action at one index. Only `expires_at` may be absent (null fields are omitted)."""

    v: Literal[1]
    id: EntryId
    index: Annotated[int, msgspec.Meta(ge=0)]
    subject: Subject
    purpose: EntryPurpose
    action: Action
    policy_version: PolicyVersion
    occurred_at: Timestamp
    recorded_at: Timestamp
    actor: Actor
    method: Method
    evidence: Evidence
    expires_at: Timestamp | None = None


T = TypeVar("T")
_encoder = msgspec.json.Encoder(order="sorted")
_decoder = msgspec.json.Decoder(Entry)


def entry_bytes(entry: Entry) -> bytes:
    """The canonical bytes: sorted keys, no whitespace, UTF-8, integers only, nulls omitted."""
    return _encoder.encode(entry)


def parse_entry(data: bytes) -> Entry:
    """Decode entry bytes, refusing anything that is not exactly the canonical encoding."""
    return decode_canonical(_decoder, data, "log entry")


def decode_canonical(decoder: "msgspec.json.Decoder[T]", data: bytes, what: str) -> T:
    """Decode `data` as `decoder`'s type, refusing anything that is not exactly its canonical
    encoding (sorted keys, no whitespace, nulls omitted): the bytes a leaf hash covers."""
    try:
        value = decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise EntryError(f"not a {what}: {exc}") from None
    if _encoder.encode(value) != data:
        raise EntryError(f"{what} bytes are not in canonical form")
    return value


def subject_for(salt: bytes, device_id: str) -> str:
    """The device's pseudonym: HMAC-SHA256 keyed by the device's own salt."""
    return hmac.new(salt, device_id.encode(), hashlib.sha256).hexdigest()


def is_device_id(value: str) -> bool:
    return _DEVICE_ID.fullmatch(value) is not None


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a Z and microseconds, as every time in the log is written."""
    if moment.tzinfo is None:
        raise ValueError("a naive datetime has no instant")
    m = moment.astimezone(UTC)
    # Not strftime: glibc's %Y does not pad years below 1000, which would break the fixed width.
    return f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:{m.second:02d}.{m.microsecond:06d}Z"


def parse_time(text: str) -> datetime:
    """Any RFC 3339 time with an offset, as an aware datetime in UTC."""
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise ValueError(f"{text!r} is not an RFC 3339 time") from None
    if moment.tzinfo is None or "T" not in text.upper():
        raise ValueError(f"{text!r} is not an RFC 3339 time with an offset")
    return moment.astimezone(UTC)
