"""What the API takes and returns, as msgspec Structs with typed, bounded fields."""

import json
from collections import Counter
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from ledger.core.decision import Decision
from ledger.core.entry import Actor, DeviceId, Entry, Evidence, Method, PolicyVersion, PurposeKey, whole
from ledger.core.purposes import Controller, PurposeRecord, Registry
from ledger.core.registry import LoggedPurpose, RegistryChanges, RegistryEntry
from ledger.errors import InvalidRequest, UnprocessableRequest

__all__ = [
    "IDEMPOTENCY_KEY_PATTERN",
    "MAX_BATCH_CHECKS",
    "AttemptOut",
    "CheckIn",
    "ChecksIn",
    "ChecksOut",
    "ConsentIn",
    "ConsentRecord",
    "DecisionOut",
    "DeliveriesOut",
    "DeliveryOut",
    "DeviceConsents",
    "DeviceHistory",
    "GrantShown",
    "IdempotencyKey",
    "PersonalExport",
    "Receipt",
    "RecordOfProcessing",
    "RegistryHistory",
    "RegistryInForce",
    "RegistryReceipt",
    "RegistryVersion",
    "SecretRotated",
    "T",
    "TimeText",
    "WebhookCreated",
    "WebhookEvent",
    "WebhookIn",
    "WebhookOut",
    "WebhooksOut",
    "checks_decoder",
    "consent_decoder",
    "decode_body",
    "refuse_duplicate_keys",
    "registry_decoder",
    "webhook_decoder",
]

T = TypeVar("T")
MAX_BATCH_CHECKS = 1000
IDEMPOTENCY_KEY_PATTERN = whole(r"[\x21-\x7e]{1,128}")
IdempotencyKey = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=IDEMPOTENCY_KEY_PATTERN)]
# Given means given: "" is a malformed time (422), not an absent one.
TimeText = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class ConsentIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    device_id: DeviceId
    purpose: PurposeKey
    action: Literal["grant", "withdraw"]
    policy_version: PolicyVersion
    occurred_at: TimeText | None = None
    expires_at: TimeText | None = None
    actor: Actor = "user"
    method: Method = "api"
    evidence: Evidence = msgspec.field(default_factory=dict)


class Receipt(msgspec.Struct, frozen=True):
    device_id: str
    index: int
    entry: Entry
    leaf: str
    leaf_hash: str
    checkpoint: str
    inclusion_proof: list[str]
    consistency_token: str


class CheckIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    device_id: str
    purpose: str


class ChecksIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    checks: Annotated[list[CheckIn], msgspec.Meta(max_length=MAX_BATCH_CHECKS)]


class DecisionOut(msgspec.Struct, frozen=True, gc=False):
    device_id: str
    purpose: str
    allowed: bool
    reason: str
    policy_version: int | None
    since: str | None
    expires_at: str | None
    index: int | None

    @classmethod
    def of(cls, device_id: str, d: Decision) -> "DecisionOut":
        return cls(device_id, d.purpose, d.allowed, d.reason, d.policy_version, d.since, d.expires_at, d.index)


class ChecksOut(msgspec.Struct, frozen=True):
    results: list[DecisionOut]


class DeviceConsents(msgspec.Struct, frozen=True):
    device_id: str
    purposes: dict[str, DecisionOut]


class DeviceHistory(msgspec.Struct, frozen=True):
    device_id: str
    entries: list[Receipt]


class _DuplicateKey(Exception):
    pass


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        repeated = next(key for key, n in Counter(k for k, _ in pairs).items() if n > 1)
        raise _DuplicateKey(repeated[:64])
    return found


def refuse_duplicate_keys(body: bytes) -> None:
    """400 if any JSON object in the body names a key twice.

    msgspec (like most parsers) keeps the last of duplicate keys, so `"action":"grant",
    "action":"withdraw"` would be recorded as a withdrawal while a proxy or log reader that keeps
    the first sees a grant. The standard library's parser hands each object's pairs over before
    building it; a dict of them is shorter exactly when a key repeats. What it cannot parse is
    left to msgspec, which answers for malformed JSON.
    """
    try:
        json.loads(body, object_pairs_hook=_refuse_duplicates)
    except _DuplicateKey as exc:
        raise InvalidRequest(f"the body names the key {exc.args[0]!r} more than once") from None
    except (ValueError, RecursionError):
        return


def decode_body(decoder: "msgspec.json.Decoder[T]", body: bytes) -> T:
    """Decode a request body: 400 if it is not JSON or repeats a key, 422 if it is JSON the
    ledger cannot take."""
    refuse_duplicate_keys(body)
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise UnprocessableRequest(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}") from None


consent_decoder = msgspec.json.Decoder(ConsentIn)
checks_decoder = msgspec.json.Decoder(ChecksIn)


WebhookEvent = Literal["consent.withdrawn", "consent.granted", "log.checkpoint", "subject.erased", "registry.published"]


class WebhookIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
    events: Annotated[list[WebhookEvent], msgspec.Meta(min_length=1, max_length=5)]
    purposes: list[PurposeKey] | None = None
    description: Annotated[str, msgspec.Meta(max_length=500)] | None = None


class WebhookOut(msgspec.Struct, frozen=True):
    id: str
    url: str
    events: list[str]
    purposes: list[str] | None
    description: str | None
    created_at: str
    disabled_at: str | None
    disabled_reason: str | None
    failing_since: str | None


class WebhookCreated(WebhookOut, frozen=True):
    """A new subscription, with its secret: the only time the secret is shown."""

    secret: str


class WebhooksOut(msgspec.Struct, frozen=True):
    webhooks: list[WebhookOut]


class SecretRotated(msgspec.Struct, frozen=True):
    id: str
    secret: str
    previous_secret_valid_until: str


class AttemptOut(msgspec.Struct, frozen=True):
    attempt: int
    started_at: str
    status_code: int | None
    latency_ms: float
    error: str | None


class DeliveryOut(msgspec.Struct, frozen=True):
    id: str
    event_type: str
    index: int
    status: str
    attempts: list[AttemptOut]
    next_attempt_at: str | None
    created_at: str
    completed_at: str | None
    last_error: str | None


class DeliveriesOut(msgspec.Struct, frozen=True):
    deliveries: list[DeliveryOut]


webhook_decoder = msgspec.json.Decoder(WebhookIn)


class ConsentRecord(msgspec.Struct, frozen=True):
    """A purpose's record for one person: what it is, and where their consent stands."""

    record: PurposeRecord
    allowed: bool
    reason: str
    policy_version: int | None
    since: str | None
    expires_at: str | None
    index: int | None
    collection_method: str | None


class GrantShown(msgspec.Struct, frozen=True):
    """What the person was shown when they granted: the purpose as the registry in force at the
    grant's append described it (the latest registry entry before it)."""

    index: int
    purpose: str
    policy_version: int
    registry_index: int | None
    registry_recorded_at: str | None
    record: PurposeRecord | None


class PersonalExport(msgspec.Struct, frozen=True):
    device_id: str
    subject: str
    salt: str
    entries: list[Receipt]
    purposes: dict[str, ConsentRecord]
    grants: list[GrantShown] = msgspec.field(default_factory=list)


class RegistryInForce(msgspec.Struct, frozen=True):
    """The registry decisions are made with now, and the log entry that published it; every value
    of a purpose spelled out, as in the entry."""

    index: int
    recorded_at: str | None
    controller: Controller
    purposes: dict[str, LoggedPurpose]


class RegistryReceipt(msgspec.Struct, frozen=True):
    """A published registry's receipt: it verifies with `ledger verify-receipt` like a consent's."""

    index: int
    entry: RegistryEntry
    leaf: str
    leaf_hash: str
    checkpoint: str
    inclusion_proof: list[str]
    consistency_token: str


class RegistryVersion(msgspec.Struct, frozen=True):
    index: int
    recorded_at: str
    changes: RegistryChanges
    registry: Registry


class RegistryHistory(msgspec.Struct, frozen=True):
    versions: list[RegistryVersion]


registry_decoder = msgspec.json.Decoder(Registry)


class RecordOfProcessing(msgspec.Struct, frozen=True):
    purposes: list[PurposeRecord]
