"""The compact form of a decision: every decision the ledger can give comes back unchanged."""

from datetime import datetime

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.client.decision import EXPIRES, REASONS, Decision, decision_order, order_of, pack, unexpired, unpack
from ledger.models import DecisionOut

NOW = 739_000_000_000_000_000  # microseconds since 0001-01-01, in 2024


def test_the_client_decision_has_the_fields_of_the_api() -> None:
    assert Decision.__struct_fields__ == DecisionOut.__struct_fields__


times = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)).map(
    lambda t: f"{t.year:04d}-{t:%m-%dT%H:%M:%S.%f}Z"
)


@st.composite
def decisions(draw: st.DrawFn) -> Decision:
    reason = draw(st.sampled_from(REASONS))
    if reason in ("no_consent", "erased"):
        return Decision("d", "p", False, reason, None, None, None, None)
    expires = draw(st.none() | times)
    return Decision(
        "d",
        "p",
        reason == "granted",
        reason,
        draw(st.integers(1, 2**31 - 1)),
        draw(times),
        expires,
        draw(st.integers(0, 2**63 - 2)),
    )


@given(decisions(), st.integers(0, 2**63 - 2))
def test_pack_and_unpack_give_back_the_decision(decision: Decision, erased_at: int) -> None:
    order = decision_order(decision, erased_at)
    packed = pack(decision, order)
    assert packed is not None
    assert order_of(packed) == order
    # Read at a time before any expiry, the decision is exactly what was packed.
    assert unpack(packed, "d", "p", now=0) == decision


def test_a_grant_past_its_expiry_reads_as_expired() -> None:
    grant = Decision("d", "p", True, "granted", 1, "2026-01-01T00:00:00.000000Z", "2026-02-01T00:00:00.000000Z", 4)
    packed = pack(grant, 4)
    assert packed is not None
    assert packed & 15 == EXPIRES
    assert not unexpired(packed)  # February 2026 is past on any machine running this
    assert unpack(packed, "d", "p") == msgspec.structs.replace(grant, allowed=False, reason="expired")
    assert unpack(packed, "d", "p", now=0) == grant


def test_the_hit_path_bits() -> None:
    plain = pack(Decision("d", "p", True, "granted", 1, "2026-01-01T00:00:00.000000Z", None, 3), 3)
    far = pack(
        Decision("d", "p", True, "granted", 1, "2026-01-01T00:00:00.000000Z", "9999-01-01T00:00:00.000000Z", 3), 3
    )
    refused = pack(Decision("d", "p", False, "withdrawn", 1, "2026-01-01T00:00:00.000000Z", None, 3), 3)
    assert plain is not None
    assert plain & 15 == 0
    assert far is not None
    assert far & 15 == EXPIRES
    assert unexpired(far)
    assert refused is not None
    assert refused & 15 not in (0, EXPIRES)


@pytest.mark.parametrize(
    "decision",
    [
        Decision("d", "p", True, "withdrawn", 1, None, None, 1),  # allowed contradicts the reason
        Decision("d", "p", True, "granted", 1, "2026-01-01T00:00:00Z", None, 1),  # not the ledger's time format
        Decision("d", "p", False, "new_reason", 1, None, None, 1),
        Decision("d", "p", True, "granted", 2**40, "2026-01-01T00:00:00.000000Z", None, 1),
    ],
)
def test_what_does_not_fit_is_not_packed(decision: Decision) -> None:
    assert pack(decision, 1) is None


def test_an_erased_answer_stands_where_it_is_known_to_be() -> None:
    erased = Decision("d", "p", False, "erased", None, None, None, None)
    assert decision_order(erased, 17) == 17
    assert decision_order(Decision("d", "p", False, "no_consent", None, None, None, None), 17) == -1
