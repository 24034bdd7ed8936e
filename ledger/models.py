"""What the API takes and returns, as msgspec Structs with typed, bounded fields."""

from typing import Annotated, Literal

import msgspec

from ledger.core.decision import Decision
from ledger.core.entry import Actor, DeviceId, Entry, Evidence, Method, PolicyVersion, PurposeKey

MAX_BATCH_CHECKS = 1000
IdempotencyKey = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]


class ConsentIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    device_id: DeviceId
    purpose: PurposeKey
    action: Literal["grant", "withdraw"]
    policy_version: PolicyVersion
    occurred_at: str | None = None
    expires_at: str | None = None
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


consent_decoder = msgspec.json.Decoder(ConsentIn)
checks_decoder = msgspec.json.Decoder(ChecksIn)
