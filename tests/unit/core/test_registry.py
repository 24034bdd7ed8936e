"""Registry entries: their exact bytes, telling them from consent entries, diffs, verification."""

import json
import uuid

import msgspec
import pytest

from ledger.core.batch import Draft, seal_batch, seal_registry
from ledger.core.entry import Entry, entry_bytes, parse_entry
from ledger.core.errors import EntryError, VerificationError
from ledger.core.fold import StateFold
from ledger.core.note import Signer
from ledger.core.notice import REGISTRY_KEY, decode_notice, encode_notices, is_erasure, is_registry
from ledger.core.purposes import BUILT_IN, Purpose, Registry, parse_registry
from ledger.core.registry import (
    RegistryEntry,
    Version,
    grant_refusal,
    in_force_at,
    is_registry_entry,
    logged,
    parse_log_entry,
    parse_registry_entry,
    registry_changes,
    registry_entry,
    registry_entry_bytes,
    same_registry,
    unlogged,
)
from ledger.core.tree import CompactRange
from ledger.core.verify import verify_bundle, verify_receipt
from ledger.core.webhooks import Subscription, registry_deliveries
from ledger.models import RegistryReceipt

ORIGIN = "registry.test/log"
SIGNER = Signer.generate(ORIGIN)
ID = str(uuid.UUID(int=7))
AT = "2026-11-29T10:00:00.000000Z"


def raised(registry: Registry, purpose: str, version: int) -> Registry:
    purposes = dict(registry.purposes)
    purposes[purpose] = msgspec.structs.replace(purposes[purpose], min_policy_version=version)
    return Registry(purposes=purposes, controller=registry.controller)


def test_registry_entry_bytes_are_canonical_and_round_trip() -> None:
    entry = registry_entry(ID, 3, AT, BUILT_IN)
    data = registry_entry_bytes(entry)
    # Sorted keys, no whitespace, defaults written out, no null (no max_age_days in the built-ins).
    assert data.startswith(b'{"id":"00000000-0000-0000-0000-000000000007","index":3,"kind":"registry",')
    assert b"null" not in data
    decoded = json.loads(data)
    assert list(decoded) == sorted(decoded)
    assert decoded["registry"]["purposes"]["telemetry"]["legal_basis"] == "consent"
    assert decoded["registry"]["purposes"]["telemetry"]["min_policy_version"] == 1
    assert decoded["registry"]["controller"] == {"contact": "support@ssjtech.xyz", "name": "Kuku AI"}
    assert json.dumps(decoded, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() == data
    assert parse_registry_entry(data) == entry
    assert parse_log_entry(data) == entry
    assert unlogged(entry.registry) == BUILT_IN


def test_a_max_age_is_written_and_an_absent_one_omitted() -> None:
    with_age = Registry(
        purposes={"telemetry": Purpose("T", "D", ["r"], ["c"], max_age_days=30, min_policy_version=4)},
    )
    data = registry_entry_bytes(registry_entry(ID, 0, AT, with_age))
    assert b'"max_age_days":30' in data
    assert b'"min_policy_version":4' in data
    assert unlogged(parse_registry_entry(data).registry) == with_age


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.replace(b'"index":3', b'"index": 3'),  # whitespace
        lambda d: d.replace(b'"index":3', b'"index":3.0'),  # a float
        lambda d: d.replace(b'"v":1}', b'"v":1,"extra":1}'),  # an unknown field
        lambda d: d.replace(b'"kind":"registry"', b'"kind":"consent"'),  # another kind
        lambda d: d.replace(b'"legal_basis":"consent",', b""),  # a default left out
    ],
)
def test_anything_but_the_canonical_bytes_is_refused(change) -> None:  # type: ignore[no-untyped-def]
    data = change(registry_entry_bytes(registry_entry(ID, 3, AT, BUILT_IN)))
    with pytest.raises(EntryError):
        parse_log_entry(data)


def test_consent_entry_bytes_do_not_change_and_are_told_apart() -> None:
    consent = Entry(
        v=1, id=ID, index=0, subject="ab" * 32, purpose="telemetry", action="grant", policy_version=1,
        occurred_at=AT, recorded_at=AT, actor="user", method="api", evidence={"kind": "registry"},
    )  # fmt: skip
    data = entry_bytes(consent)
    assert data.startswith(b'{"action":"grant"')
    assert not is_registry_entry(data)
    assert parse_log_entry(data) == consent == parse_entry(data)
    registry = registry_entry_bytes(registry_entry(ID, 1, AT, BUILT_IN))
    assert is_registry_entry(registry)
    with pytest.raises(EntryError):
        parse_entry(registry)


def test_equal_registries_are_the_same_whatever_defaults_the_file_spelled_out() -> None:
    spelled = parse_registry(
        b'[purposes.telemetry]\ntitle = "T"\ndescription = "D"\nrecipients = ["r"]\ndata_categories = ["c"]\n'
        b'legal_basis = "consent"\nmin_policy_version = 1\n'
    )
    implied = parse_registry(
        b'[purposes.telemetry]\ntitle = "T"\ndescription = "D"\nrecipients = ["r"]\ndata_categories = ["c"]\n'
    )
    assert same_registry(spelled, implied)
    assert not same_registry(implied, raised(implied, "telemetry", 2))
    assert logged(spelled) == logged(implied)


def test_changes_name_added_removed_and_changed_fields() -> None:
    first = registry_changes(None, BUILT_IN)
    assert first.added == sorted(BUILT_IN.purposes)
    assert not first.removed
    assert not first.changed
    purposes = dict(raised(BUILT_IN, "telemetry", 3).purposes)
    del purposes["cross_border_transfer"]
    purposes["ads"] = Purpose("Ads", "Ads.", ["ad network"], ["app usage"])
    purposes["pixverse_sharing"] = msgspec.structs.replace(purposes["pixverse_sharing"], title="New title")
    after = Registry(purposes=purposes)
    changes = registry_changes(BUILT_IN, after)
    assert changes.added == ["ads"]
    assert changes.removed == ["cross_border_transfer"]
    assert [(c.purpose, c.fields, c.min_policy_version) for c in changes.changed] == [
        ("pixverse_sharing", ["title"], None),
        ("telemetry", ["min_policy_version"], [1, 3]),
    ]
    assert not changes.controller_changed
    unchanged = registry_changes(after, after)
    assert not (unchanged.added)
    assert not (unchanged.removed)
    assert not (unchanged.changed)
    assert not (unchanged.controller_changed)


def test_grant_refusal_follows_the_registry() -> None:
    registry = raised(BUILT_IN, "telemetry", 2)
    assert grant_refusal(registry, "telemetry", "grant", 2) is None
    assert "below telemetry's min_policy_version 2" in (grant_refusal(registry, "telemetry", "grant", 1) or "")
    assert grant_refusal(registry, "telemetry", "withdraw", 1) is None  # withdrawing is always possible
    assert "unknown purpose 'ads'" in (grant_refusal(registry, "ads", "withdraw", 1) or "")


def test_the_version_in_force_is_the_latest_before_an_index_or_by_a_time() -> None:
    v0 = Version(0, "2026-11-29T10:00:00.000000Z", BUILT_IN)
    v5 = Version(5, "2026-11-29T11:00:00.000000Z", raised(BUILT_IN, "telemetry", 2))
    versions = [v0, v5]
    assert in_force_at(versions, before=0) is None
    assert in_force_at(versions, before=5) == v0
    assert in_force_at(versions, before=6) == v5
    assert in_force_at(versions, at="2026-11-29T10:59:59.999999Z") == v0
    assert in_force_at(versions, at="2026-11-29T11:00:00.000000Z") == v5
    assert in_force_at(versions, at="2026-11-29T09:00:00.000000Z") is None


def sealed_log() -> tuple[list[bytes], str, RegistryReceipt]:
    """A registry entry, two consents, and a new registry: the leaves, the head note, a receipt."""
    first = seal_registry(CompactRange(), ID, BUILT_IN, AT, ORIGIN, SIGNER)
    drafts = [
        Draft(
            id=str(uuid.UUID(int=i)),
            device_id=f"d{i}",
            purpose="telemetry",
            action="grant",
            policy_version=1,
            occurred_at=AT,
            actor="user",
            method="api",
            evidence={},
        )
        for i in range(2)
    ]
    consents = seal_batch(first.tree, drafts, ["ab" * 32] * 2, AT, ORIGIN, SIGNER)
    second = seal_registry(consents.tree, str(uuid.uuid4()), raised(BUILT_IN, "telemetry", 2), AT, ORIGIN, SIGNER)
    receipt = RegistryReceipt(
        second.entry.index, second.entry, second.leaf.decode(), second.leaf_hash.hex(), second.checkpoint,
        [h.hex() for h in second.inclusion_proof], "t",
    )  # fmt: skip
    leaves = [first.leaf, *(s.leaf for s in consents.sealed), second.leaf]
    return leaves, second.checkpoint, receipt


def test_a_log_with_registry_entries_verifies_and_folds() -> None:
    leaves, note, _ = sealed_log()
    report = verify_bundle(leaves, note, [SIGNER.verifier])
    assert report.entries == 4
    assert report.checkpoint.size == 4
    fold = StateFold()
    assert [fold.add(leaf) for leaf in leaves] == [0, 1, 2, 3]
    assert len(fold.rows) == 1  # the registry entries hold no state
    tampered = [*leaves[:3], leaves[3].replace(b'"min_policy_version":2', b'"min_policy_version":1')]
    with pytest.raises(VerificationError):
        verify_bundle(tampered, note, [SIGNER.verifier])


def test_a_registry_receipt_verifies_offline_and_tampering_is_caught() -> None:
    _, _, receipt = sealed_log()
    data = msgspec.json.encode(receipt)
    entry = verify_receipt(data, [SIGNER.verifier])
    assert isinstance(entry, RegistryEntry)
    assert entry.index == 3
    as_object = json.loads(data)
    as_object["entry"]["registry"]["purposes"]["telemetry"]["min_policy_version"] = 1
    with pytest.raises(VerificationError, match="does not match its leaf"):
        verify_receipt(json.dumps(as_object).encode(), [SIGNER.verifier])
    as_object = json.loads(data)
    as_object["leaf"] = as_object["leaf"].replace('"min_policy_version":2', '"min_policy_version":1')
    as_object["entry"]["registry"]["purposes"]["telemetry"]["min_policy_version"] = 1
    with pytest.raises(VerificationError):
        verify_receipt(json.dumps(as_object).encode(), [SIGNER.verifier])


def test_the_registry_notice_is_neither_a_decision_nor_an_erasure() -> None:
    [payload] = encode_notices(4, 5, [REGISTRY_KEY])
    notice = decode_notice(payload)
    assert notice is not None
    assert notice.keys == [REGISTRY_KEY]
    assert is_registry(notice.keys[0])
    assert not is_erasure(notice.keys[0])


def test_registry_published_goes_to_its_subscribers_whatever_their_purposes() -> None:
    sealed = seal_registry(CompactRange(), ID, BUILT_IN, AT, ORIGIN, SIGNER)
    subscriptions = [
        Subscription("s1", ["registry.published"], ["telemetry"]),
        Subscription("s2", ["consent.withdrawn", "log.checkpoint"], None),
    ]
    deliveries = registry_deliveries(sealed.entry, registry_changes(None, BUILT_IN), subscriptions, sealed.signed,
                                     sealed.checkpoint)  # fmt: skip
    assert [(d.subscription_id, d.event_type, d.idx) for d in deliveries] == [
        ("s1", "registry.published", 0),
        ("s2", "log.checkpoint", 0),
    ]
    body = json.loads(deliveries[0].payload)
    assert body["type"] == "registry.published"
    assert body["data"]["index"] == 0
    assert body["data"]["consistency_token"]
    assert body["data"]["changes"]["added"] == sorted(BUILT_IN.purposes)
