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
from ledger.core.registry import RegistryChanges, RegistryEntry

__all__ = [
    "EVENT_TYPES",
    "FAILING_LIMIT",
    "JITTER",
    "MAX_ATTEMPTS",
    "MAX_RETRY_AFTER",
    "REDACTED_ERASURE",
    "RETRY_DELAYS",
    "SECRET_PREFIX",
    "CheckpointEventData",
    "ConsentEventData",
    "Delivery",
    "DestinationRefused",
    "Embedded",
    "ErasureEventData",
    "Event",
    "EventType",
    "RegistryEventData",
    "Step",
    "Subscription",
    "build_deliveries",
    "check_destination",
    "consent_event_type",
    "destination_refusal",
    "embedded_ipv4",
    "erasure_deliveries",
    "event_body",
    "ipv4_refusal",
    "ipv6_refusal",
    "new_secret",
    "next_step",
    "parse_retry_after",
    "registry_deliveries",
    "retry_delay",
    "rfc6052_ipv4",
    "secret_bytes",
    "signature_header",
    "signed_content",
    "subscribed",
]

EventType = Literal["consent.withdrawn", "consent.granted", "log.checkpoint", "subject.erased", "registry.published"]
EVENT_TYPES: tuple[str, ...] = (
    "consent.withdrawn",
    "consent.granted",
    "log.checkpoint",
    "subject.erased",
    "registry.published",
)
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


class RegistryEventData(msgspec.Struct, frozen=True):
    """A new purpose registry is in force from `index`: what changed, and the token to read it with."""

    index: int
    recorded_at: str
    changes: RegistryChanges
    consistency_token: str


class Event(msgspec.Struct, frozen=True):
    type: str
    timestamp: str
    data: ConsentEventData | CheckpointEventData | ErasureEventData | RegistryEventData


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


def registry_deliveries(
    entry: RegistryEntry,
    changes: RegistryChanges,
    subscriptions: Sequence[Subscription],
    checkpoint: Checkpoint,
    note: str,
) -> list[Delivery]:
    """The outbox rows for a publish: `registry.published` for every subscriber of it (a
    subscription's purpose filter does not apply: a new registry concerns every purpose), then
    the batch's checkpoint."""
    payload = event_body(
        Event(
            "registry.published",
            entry.recorded_at,
            RegistryEventData(entry.index, entry.recorded_at, changes, consistency_token(checkpoint.size)),
        )
    )
    published = [
        Delivery(_msg_id(), s.id, entry.index, "registry.published", payload)
        for s in subscriptions
        if "registry.published" in s.events
    ]
    return published + build_deliveries([], {}, subscriptions, checkpoint, note, entry.recorded_at)


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


# Why an IPv4 address is not a destination (IANA's special-purpose registry, the entries that are
# not globally reachable). Checked in this order, so an address gets its most specific name.
_IPV4_REFUSED: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(network), why)
    for network, why in (
        ("0.0.0.0/8", "unspecified or 'this network'"),
        ("127.0.0.0/8", "loopback"),
        ("10.0.0.0/8", "private"),
        ("172.16.0.0/12", "private"),
        ("192.168.0.0/16", "private"),
        ("100.64.0.0/10", "shared address space (CGNAT)"),
        ("169.254.0.0/16", "link-local"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.0.2.0/24", "documentation"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("192.88.99.0/24", "deprecated 6to4 relay anycast"),
        ("198.18.0.0/15", "benchmarking"),
        ("224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "broadcast"),
        ("240.0.0.0/4", "reserved"),
    )
)
# Named IPv6 ranges that reach nothing public: the common ones outside global unicast (anything
# else outside 2000::/3 is refused too), then those inside it. Python's own `is_global` is asked
# as well, but its tables differ between patch releases.
_IPV6_REFUSED: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(network), why)
    for network, why in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::/96", "IPv4-compatible, deprecated by RFC 4291"),
        ("::ffff:0:0:0/96", "IPv4-translated (SIIT)"),
        ("64:ff9b:1::/48", "NAT64 local-use prefix, not globally reachable"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("fc00::/7", "unique local (private)"),
        ("ff00::/8", "multicast"),
        ("100::/64", "discard-only"),
        ("2001::/32", "Teredo"),
        ("2001::/23", "IETF protocol assignments"),
        ("2001:db8::/32", "documentation"),
        # IANA lists 6to4 as neither reachable nor not; its relays are deprecated (RFC 7526) and
        # Python >= 3.11.10 no longer calls it global. Refused, so no Python version decides.
        ("2002::/16", "6to4, deprecated by RFC 7526"),
        ("3fff::/20", "documentation"),
        ("5f00::/16", "SRv6 segment identifiers"),
    )
)
_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # SIIT, RFC 2765
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated by RFC 4291
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052
_NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215
# The prefix lengths RFC 6052 defines that fit inside the local-use /48: the operator picks one.
_LOCAL_USE_LENGTHS = (96, 64, 56, 48)


class Embedded(NamedTuple):
    """An IPv4 address that an IPv6 address carries, and the form that carries it."""

    form: str
    ipv4: ipaddress.IPv4Address


def rfc6052_ipv4(address: ipaddress.IPv6Address, prefix_length: int) -> ipaddress.IPv4Address:
    """The IPv4 address in an IPv4-embedded IPv6 address whose prefix is `prefix_length` bits
    (RFC 6052 section 2.2; one of 32, 40, 48, 56, 64, 96).

    Bits 64-71 (the "u" octet) never carry address bits, so for prefixes shorter than /96 the
    IPv4 address runs on across them: a /48 prefix puts its first 16 bits at 48-63 and the other
    16 at 72-87. Dropping the u octet leaves 120 bits in which the IPv4 address simply follows
    the prefix.
    """
    if prefix_length not in (32, 40, 48, 56, 64, 96):
        raise ValueError(f"RFC 6052 defines no /{prefix_length} prefix")
    bits = int(address)
    if prefix_length == 96:
        return ipaddress.IPv4Address(bits & 0xFFFFFFFF)
    without_u = (bits >> 64 << 56) | (bits & ((1 << 56) - 1))  # the top 64 bits, then the low 56
    return ipaddress.IPv4Address((without_u >> (120 - prefix_length - 32)) & 0xFFFFFFFF)


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[Embedded]:
    """Every IPv4 address `address` carries: a gateway, tunnel or dual stack might deliver to it."""
    found: list[Embedded] = []
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _IPV4_MAPPED:
        found.append(Embedded("IPv4-mapped", low32))
    elif address in _IPV4_TRANSLATED:
        found.append(Embedded("IPv4-translated (SIIT)", low32))
    elif address in _IPV4_COMPATIBLE and int(address) > 1:  # :: and ::1 are themselves, not IPv4
        found.append(Embedded("IPv4-compatible", low32))
    elif address in _NAT64_WELL_KNOWN:
        found.append(Embedded("NAT64 64:ff9b::/96", low32))
    elif address in _NAT64_LOCAL_USE:
        found += [
            Embedded(f"NAT64 local-use /{length}", rfc6052_ipv4(address, length)) for length in _LOCAL_USE_LENGTHS
        ]
    if address.sixtofour is not None:
        found.append(Embedded("6to4", address.sixtofour))
    if address.teredo is not None:
        server, client = address.teredo  # the client's address is stored inverted; ipaddress undoes it
        found += [Embedded("Teredo server", server), Embedded("Teredo client", client)]
    return found


def ipv4_refusal(address: ipaddress.IPv4Address) -> str | None:
    """Why `address` is not a public destination, or None if it is."""
    for network, why in _IPV4_REFUSED:
        if address in network:
            return why
    return None if address.is_global else "not globally reachable"


def ipv6_refusal(address: ipaddress.IPv6Address) -> str | None:
    """Why the IPv6 address itself (whatever it embeds) reaches nothing public, or None."""
    for network, why in _IPV6_REFUSED:
        if address in network:
            return why
    if address not in _GLOBAL_UNICAST:
        return "outside global unicast 2000::/3"
    return None if address.is_global else "not globally reachable"


def destination_refusal(text: str) -> str | None:
    """Why a resolved address must not be called, or None if it may.

    An IPv6 address is refused if it embeds any IPv4 address that is not public (a NAT64 gateway,
    a 6to4 or Teredo tunnel, the kernel's dual stack or an old automatic tunnel could deliver to
    it), and also if the IPv6 address itself is not global. Two forms only carry an IPv4 address
    and are judged by it alone: IPv4-mapped (the socket connects over IPv4) and the NAT64
    well-known prefix (RFC 6052 allows it only for public IPv4 addresses, and its gateway then
    reaches the public address). Every other form is refused whatever it embeds: IPv4-compatible
    and SIIT's translated form route nowhere, the NAT64 local-use prefix is not globally reachable
    (and which of RFC 6052's placements the operator uses is unknowable here), 6to4 is deprecated
    and Teredo is a client tunnel through a NAT.
    """
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    if isinstance(address, ipaddress.IPv4Address):
        return ipv4_refusal(address)
    if address in _NAT64_LOCAL_USE:
        # Refused as a whole: which reading is meant depends on the operator's prefix length.
        readings = ", ".join(f"{rfc6052_ipv4(address, n)} at /{n}" for n in _LOCAL_USE_LENGTHS)
        return f"NAT64 local-use prefix 64:ff9b:1::/48, not globally reachable (it reads as {readings})"
    for form, ipv4 in embedded_ipv4(address):
        why = ipv4_refusal(ipv4)
        if why is not None:
            return f"it embeds {ipv4} ({why}) as {form}"
    if address in _IPV4_MAPPED or address in _NAT64_WELL_KNOWN:
        return None
    return ipv6_refusal(address)


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
        why = destination_refusal(text)
        if why is not None:
            raise DestinationRefused(f"{text} is not a public address: {why}")


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
