"""Settling Idempotency-Keys in a batch, against a model that takes the requests one at a time."""

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.core.idempotency import APPEND, Claim, Conflict, Follows, Prior, Replayed, settle

SCOPES = [("app", "k1"), ("app", "k2"), ("other", "k1")]
HASHES = [b"\x01" * 32, b"\x02" * 32]

claims = st.lists(
    st.none() | st.builds(lambda s, h: Claim(s[0], s[1], h), st.sampled_from(SCOPES), st.sampled_from(HASHES)),
    max_size=12,
)
priors = st.dictionaries(
    st.sampled_from(SCOPES), st.builds(Prior, st.sampled_from(HASHES), st.integers(0, 99), st.integers(1, 100))
)


def model(batch: list[Claim | None], prior: dict[tuple[str, str], Prior]) -> list[object]:
    """One request at a time, as if each were its own transaction under the log lock."""
    recorded: dict[tuple[str, str], tuple[bytes, object]] = {
        s: (p.request_hash, ("prior", p)) for s, p in prior.items()
    }
    out: list[object] = []
    for position, claim in enumerate(batch):
        if claim is None:
            out.append(("append", position))
            continue
        found = recorded.get(claim.scope)
        if found is None:
            recorded[claim.scope] = (claim.request_hash, ("batch", position))
            out.append(("append", position))
        elif found[0] != claim.request_hash:
            out.append(("conflict", claim.key))
        else:
            out.append(("replay", found[1]))
    return out


def as_model(settled: list[object], prior: dict[tuple[str, str], Prior], batch: list[Claim | None]) -> list[object]:
    out: list[object] = []
    for position, s in enumerate(settled):
        if s is APPEND:
            out.append(("append", position))
        elif isinstance(s, Conflict):
            out.append(("conflict", s.key))
        elif isinstance(s, Follows):
            out.append(("replay", ("batch", s.first)))
        else:
            assert isinstance(s, Replayed)
            claim = batch[position]
            assert claim is not None
            p = prior[claim.scope]
            assert (s.entry_index, s.tree_size) == (p.index, p.tree_size)
            out.append(("replay", ("prior", p)))
    return out


@settings(max_examples=5000)
@given(claims, priors)
def test_settling_a_batch_is_settling_its_requests_one_by_one(
    batch: list[Claim | None], prior: dict[tuple[str, str], Prior]
) -> None:
    settled = settle(batch, prior)
    assert as_model(settled, prior, batch) == model(batch, prior)
    appended = [batch[i].scope for i, s in enumerate(settled) if s is APPEND and batch[i] is not None]  # type: ignore[union-attr]
    assert len(appended) == len(set(appended)), "a key appended twice"
    assert not set(appended) & set(prior), "a recorded key appended again"


def test_the_cases_by_name() -> None:
    a1, a2 = Claim("app", "k", HASHES[0]), Claim("app", "k", HASHES[1])
    assert settle([None, a1, a1, a2], {}) == [APPEND, APPEND, Follows(1), Conflict("k")]
    prior = {("app", "k"): Prior(HASHES[0], 7, 8)}
    assert settle([a1, a2], prior) == [Replayed(7, 8), Conflict("k")]
