"""Standard Webhooks: secrets, signatures, event bodies, the retry schedule and destination rules.

Pure functions; the dispatcher (ledger/webhooks.py) does the I/O. Signed content is
`<webhook-id>.<webhook-timestamp>.<body>`; `v1` is base64 HMAC-SHA256 under the subscription's
secret (the bytes after `whsec_`), `v1a` is base64 Ed25519 under the service's webhook key.
"""

import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
import uuid
from collections import Counter as Tally
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Literal, NamedTuple

import msgspec
from nacl.signing import SigningKey

from ledger.core.checkpoint import Checkpoint
from ledger.core.consistency import consistency_token
from ledger.core.entry import Entry
from ledger.core.errors import LedgerError

EventType = Literal["consent.withdrawn", "consent.granted", "log.checkpoint", "subject.erased"]
EVENT_TYPES: tuple[str, ...] = ("consent.withdrawn", "consent.granted", "log.checkpoint", "subject.erased")
# What an erasure event's stored payload becomes once delivered or given up: the device_id goes.
REDACTED_ERASURE = b'{"type":"subject.erased","redacted":true}'
SECRET_PREFIX = "whsec_"
# Standard Webhooks' schedule: the first attempt at once, then after each failure.
RETRY_DELAYS = (
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=14),
    timedelta(hours=20),
    timedelta(hours=24),
)
MAX_ATTEMPTS = len(RETRY_DELAYS) + 1
JITTER = 0.1


class DestinationRefused(LedgerError):
    """A webhook URL that must not be called: not https, or an internal address."""


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_bytes(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error:
        raise LedgerError("malformed webhook secret") from None


def signed_content(msg_id: str, timestamp: int, body: bytes) -> bytes:
    return f"{msg_id}.{timestamp}.".encode() + body


def signature_header(msg_id: str, timestamp: int, body: bytes, secrets_: Sequence[str], ed25519: SigningKey) -> str:
    """`v1,<hmac>` for each live secret (two during a rotation), then `v1a,<ed25519>`."""
    content = signed_content(msg_id, timestamp, body)
    parts = [
        "v1," + base64.b64encode(hmac.new(secret_bytes(s), content, hashlib.sha256).digest()).decode() for s in secrets_
    ]
    parts.append("v1a," + base64.b64encode(ed25519.sign(content).signature).decode())
    return " ".join(parts)


class ConsentEventData(msgspec.Struct, frozen=True):
    device_id: str
    subject: str
    purpose: str
    action: str
    index: int
    policy_version: int
    occurred_at: str
    recorded_at: str
    sequence: int
    # Ask any replica `GET /v1/check?consistency=<this>` to read at least this far.
    consistency_token: str


class CheckpointEventData(msgspec.Struct, frozen=True):
    origin: str
    tree_size: int
    root: str
    checkpoint: str
    consistency_token: str


class ErasureEventData(msgspec.Struct, frozen=True):
    """Only the device: no subject, index, entry or consistency token (which names the log size
    just after the erase entry), any of which would tie the device to its old entries."""

    device_id: str


class Event(msgspec.Struct, frozen=True):
    type: str
    timestamp: str
    data: ConsentEventData | CheckpointEventData | ErasureEventData


_encode = msgspec.json.Encoder().encode


def event_body(event: Event) -> bytes:
    return _encode(event)


def consent_event_type(action: str) -> EventType | None:
    return {"withdraw": "consent.withdrawn", "grant": "consent.granted"}.get(action)  # type: ignore[return-value]


def subscribed(events: Iterable[str], purposes: Iterable[str] | None, event_type: str, purpose: str | None) -> bool:
    """Whether a subscription wants this event; `purposes` None means every purpose."""
    if event_type not in events:
        return False
    return purpose is None or purposes is None or purpose in purposes


class Subscription(NamedTuple):
    """What the append transaction needs to know of a live subscription."""

    id: str
    events: list[str]
    purposes: list[str] | None


class Delivery(NamedTuple):
    """One outbox row: an event for one subscription."""

    id: str
    subscription_id: str
    idx: int
    event_type: str
    payload: bytes
    subject: str | None = None  # set for consent events, so erasure can find them


def build_deliveries(
    entries: Sequence[tuple[Entry, str]],
    sequences: Mapping[tuple[str, str], int],
    subscriptions: Sequence[Subscription],
    checkpoint: Checkpoint,
    note: str,
    recorded_at: str,
) -> list[Delivery]:
    """The outbox rows for one batch: each consent event for each subscription that wants it, then
    the batch's checkpoint. `entries` are (entry, device_id) in index order; `sequences` is each
    (subject, purpose)'s entry count after the batch."""
    if not subscriptions:
        return []
    in_batch = Tally((e.subject, e.purpose) for e, _ in entries)
    seen: Tally[tuple[str, str]] = Tally()
    deliveries: list[Delivery] = []
    for entry, device_id in entries:
        key = (entry.subject, entry.purpose)
        seen[key] += 1
        event_type = consent_event_type(entry.action)
        if event_type is None:
            continue
        wanting = [s for s in subscriptions if subscribed(s.events, s.purposes, event_type, entry.purpose)]
        if not wanting:
            continue
        data = ConsentEventData(
            device_id=device_id,
            subject=entry.subject,
            purpose=entry.purpose,
            action=entry.action,
            index=entry.index,
            policy_version=entry.policy_version,
            occurred_at=entry.occurred_at,
            recorded_at=entry.recorded_at,
            sequence=sequences[key] - in_batch[key] + seen[key],
            consistency_token=consistency_token(checkpoint.size),
        )
        payload = event_body(Event(event_type, entry.recorded_at, data))
        deliveries += [Delivery(_msg_id(), s.id, entry.index, event_type, payload, entry.subject) for s in wanting]
    checkpoint_payload = event_body(
        Event(
            "log.checkpoint",
            recorded_at,
            CheckpointEventData(
                checkpoint.origin,
                checkpoint.size,
                base64.b64encode(checkpoint.root).decode(),
                note,
                consistency_token(checkpoint.size),
            ),
        )
    )
    deliveries += [
        Delivery(_msg_id(), s.id, checkpoint.size - 1, "log.checkpoint", checkpoint_payload)
        for s in subscriptions
        if "log.checkpoint" in s.events
    ]
    return deliveries


def erasure_deliveries(device_id: str, subscriptions: Sequence[Subscription], erased_at: str) -> list[Delivery]:
    """`subject.erased` for every subscriber: stop processing and delete what you hold for the device.

    Its log position is left out (-1): the erase entry's index would name the old subject."""
    payload = event_body(Event("subject.erased", erased_at, ErasureEventData(device_id)))
    return [
        Delivery(_msg_id(), s.id, -1, "subject.erased", payload) for s in subscriptions if "subject.erased" in s.events
    ]


def _msg_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def retry_delay(attempts: int, jitter: float) -> timedelta | None:
    """Delay before the next attempt after `attempts` failed ones; None when they are exhausted.

    `jitter` in [-1, 1] spreads retries by up to JITTER of the delay, so that a receiver coming
    back is not hit by every queued delivery in the same second.
    """
    if attempts >= MAX_ATTEMPTS:
        return None
    delay = RETRY_DELAYS[attempts - 1]
    return delay * (1 + JITTER * max(-1.0, min(1.0, jitter)))


def check_destination(scheme: str, addresses: Iterable[str], allow_private: bool) -> None:
    """Refuse anything but https to public addresses, unless the operator allowed private ones.

    Every resolved address is checked: a name that resolves to one public and one internal
    address is refused, since the connection could go to either.
    """
    if allow_private:
        if scheme not in ("https", "http"):
            raise DestinationRefused(f"{scheme}: only http and https")
        return
    if scheme != "https":
        raise DestinationRefused("webhook URLs must use https")
    resolved = list(addresses)
    if not resolved:
        raise DestinationRefused("the host does not resolve")
    for text in resolved:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if not address.is_global or address.is_multicast:
            raise DestinationRefused(f"{text} is not a public address")


class Step(NamedTuple):
    """What to do with a delivery after an attempt."""

    outcome: Literal["delivered", "retry", "dead", "disabled"]
    next_attempt_in: timedelta | None = None
    reason: str | None = None


FAILING_LIMIT = timedelta(days=5)
MAX_RETRY_AFTER = timedelta(hours=24)


def parse_retry_after(value: str | None, now: datetime) -> timedelta | None:
    """Retry-After as seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(timedelta(seconds=int(value)), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(when - now, timedelta(0)), MAX_RETRY_AFTER)


def next_step(
    status: int | None,
    retry_after: timedelta | None,
    attempts: int,
    failing_for: timedelta | None,
    jitter: float,
) -> Step:
    """Decide after attempt number `attempts`: `status` None means no HTTP answer at all.

    Only 2xx succeeds (a redirect is a failure: it is never followed); 410 disables the
    subscription; 429 and 503 wait at least their Retry-After; a subscription failing for
    FAILING_LIMIT is disabled; a delivery out of attempts is dead.
    """
    if status is not None and 200 <= status < 300:
        return Step("delivered")
    if status == 410:
        return Step("disabled", reason="the receiver answered 410 Gone")
    if failing_for is not None and failing_for >= FAILING_LIMIT:
        return Step("disabled", reason=f"failing for more than {FAILING_LIMIT.days} days")
    delay = retry_delay(attempts, jitter)
    if delay is None:
        return Step("dead", reason=f"no success in {MAX_ATTEMPTS} attempts")
    if status in (429, 503) and retry_after is not None:
        delay = max(delay, retry_after)
    return Step("retry", delay)
