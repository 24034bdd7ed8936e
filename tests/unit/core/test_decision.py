"""The decision rules: every reason, which entry decides, expiry, and the view as of a time."""

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.core.decision import Basis, decide, deciding, effective_expiry
from ledger.core.entry import Entry
from ledger.core.purposes import BUILT_IN, Purpose, parse_registry

PURPOSE = Purpose(title="t", description="d", recipients=["r"], data_categories=["c"], min_policy_version=2)
AGED = Purpose(title="t", description="d", recipients=[], data_categories=[], max_age_days=30)
NOW = "2026-11-28T12:00:00.000000Z"


def entry(index: int, action: str = "grant", occurred: str = "2026-11-28T10:00:00.000000Z", **extra: object) -> Entry:
    fields: dict[str, object] = {
        "v": 1,
        "id": f"00000000-0000-4000-8000-{index:012d}",
        "index": index,
        "subject": "ab" * 32,
        "purpose": "telemetry",
        "action": action,
        "policy_version": 2,
        "occurred_at": occurred,
        "recorded_at": occurred,
        "actor": "user",
        "method": "settings",
        "evidence": {},
    }
    fields.update(extra)
    return msgspec.convert(fields, Entry)


def test_no_history_is_no_consent() -> None:
    decision = decide("telemetry", PURPOSE, deciding([]), NOW)
    assert (decision.allowed, decision.reason) == (False, "no_consent")
    assert decision.since is None
    assert decision.index is None
    assert decision.policy_version is None


def test_grant_is_granted_and_names_its_entry() -> None:
    decision = decide("telemetry", PURPOSE, deciding([entry(4)]), NOW)
    assert (decision.allowed, decision.reason, decision.index) == (True, "granted", 4)
    assert decision.since == "2026-11-28T10:00:00.000000Z"
    assert decision.policy_version == 2
    assert decision.expires_at is None


def test_withdrawal_after_grant_is_withdrawn() -> None:
    history = [entry(0), entry(1, "withdraw", "2026-11-28T11:00:00.000000Z")]
    decision = decide("telemetry", PURPOSE, deciding(history), NOW)
    assert (decision.allowed, decision.reason, decision.index) == (False, "withdrawn", 1)


def test_a_late_synced_older_grant_does_not_override_a_newer_withdrawal() -> None:
    history = [entry(0, "withdraw", "2026-11-28T11:00:00.000000Z"), entry(1, "grant", "2026-11-28T10:30:00.000000Z")]
    decision = decide("telemetry", PURPOSE, deciding(history), NOW)
    assert (decision.reason, decision.index) == ("withdrawn", 0)


def test_same_instant_the_later_index_decides() -> None:
    history = [entry(0, "grant"), entry(1, "withdraw")]
    assert deciding(history) == Basis.of(history[1])
    assert deciding(list(reversed(history))) == Basis.of(history[1])


def test_grant_under_an_old_policy_needs_reconsent() -> None:
    decision = decide("telemetry", PURPOSE, deciding([entry(0, policy_version=1)]), NOW)
    assert (decision.allowed, decision.reason, decision.policy_version) == (False, "reconsent_required", 1)


def test_expiry_of_the_grant_itself() -> None:
    grant = entry(0, expires_at="2026-11-28T12:00:00.000000Z")
    assert decide("telemetry", PURPOSE, deciding([grant]), "2026-11-28T11:59:59.999999Z").reason == "granted"
    expired = decide("telemetry", PURPOSE, deciding([grant]), NOW)
    assert (expired.allowed, expired.reason, expired.expires_at) == (False, "expired", NOW)


def test_max_age_of_the_purpose_bounds_every_grant() -> None:
    grant = entry(0, policy_version=1)
    assert effective_expiry(Basis.of(grant), AGED) == "2026-12-28T10:00:00.000000Z"
    assert decide("telemetry", AGED, deciding([grant]), "2026-12-28T09:59:59.000000Z").allowed
    assert decide("telemetry", AGED, deciding([grant]), "2026-12-28T10:00:00.000000Z").reason == "expired"
    sooner = entry(0, policy_version=1, expires_at="2026-12-01T00:00:00.000000Z")
    assert effective_expiry(Basis.of(sooner), AGED) == "2026-12-01T00:00:00.000000Z"


def test_as_of_ignores_entries_recorded_later() -> None:
    history = [
        entry(0, "grant", "2026-11-28T10:00:00.000000Z"),
        entry(1, "withdraw", "2026-11-28T11:00:00.000000Z"),
    ]
    assert decide("telemetry", PURPOSE, deciding(history, as_of="2026-11-28T10:30:00.000000Z"), NOW).allowed
    assert not decide("telemetry", PURPOSE, deciding(history, as_of="2026-11-28T11:00:00.000000Z"), NOW).allowed
    assert deciding(history, as_of="2026-11-28T09:00:00.000000Z") is None


def test_erase_is_erased() -> None:
    basis = Basis(3, "erase", 1, "2026-11-28T10:00:00.000000Z", None)
    assert decide("telemetry", PURPOSE, basis, NOW).reason == "erased"


actions = st.sampled_from(["grant", "withdraw"])
times = st.integers(0, 50).map(lambda m: f"2026-11-28T10:{m:02d}:00.000000Z")


@given(st.lists(st.tuples(actions, times), max_size=12), st.randoms())
def test_only_granted_allows_and_order_of_arrival_does_not_matter(events, rnd) -> None:  # type: ignore[no-untyped-def]
    history = [entry(i, a, t) for i, (a, t) in enumerate(events)]
    decision = decide("telemetry", PURPOSE, deciding(history), NOW)
    assert decision.allowed == (decision.reason == "granted")
    shuffled = list(history)
    rnd.shuffle(shuffled)
    assert deciding(shuffled) == deciding(history)
    if history:
        latest = max(history, key=lambda e: (e.occurred_at, e.index))
        assert decision.allowed == (latest.action == "grant")


def test_built_in_registry_comes_from_the_privacy_statement() -> None:
    assert set(BUILT_IN.purposes) == {"pixverse_sharing", "cross_border_transfer", "telemetry"}
    assert "PixVerse" in BUILT_IN.purposes["pixverse_sharing"].description
    assert BUILT_IN.purposes["telemetry"].title == "Third-party statistics and performance SDKs"


def test_registry_file_round_trip_and_errors() -> None:
    registry = parse_registry(
        b"""
[purposes.telemetry]
title = "Third-party statistics and performance SDKs"
description = "..."
recipients = ["Example Analytics"]
data_categories = ["device identifiers", "app usage"]
legal_basis = "consent"
min_policy_version = 3
max_age_days = 365
"""
    )
    assert registry.purposes["telemetry"].min_policy_version == 3
    assert registry.purposes["telemetry"].max_age_days == 365
    with pytest.raises(msgspec.ValidationError, match="purposes"):
        parse_registry(b'[purposes.Bad-Key]\ntitle = "x"\ndescription = "x"\nrecipients = []\ndata_categories = []\n')
    with pytest.raises(msgspec.ValidationError, match="colour"):
        parse_registry(
            b'[purposes.x]\ntitle = "x"\ndescription = "x"\nrecipients = []\ndata_categories = []\ncolour = 1\n'
        )
