"""Folding the log into the state table: against a naive model, and the differences it reports."""

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.core.entry import Entry, entry_bytes
from ledger.core.fold import Difference, StateFold, StateOf, differences
from ledger.core.tree import CompactRange, RootAccumulator

SUBJECTS = ["a" * 64, "b" * 64, "c" * 64]
PURPOSES = ["telemetry", "pixverse_sharing"]

actions = st.tuples(
    st.sampled_from(SUBJECTS),
    st.sampled_from([*PURPOSES, "*"]),
    st.sampled_from(["grant", "withdraw"]),
    st.integers(0, 5),  # minute of occurrence: ties and late-synced entries happen
    st.integers(1, 3),
    st.booleans(),
)


def make(index: int, subject: str, purpose: str, action: str, minute: int, version: int, expires: bool) -> Entry:
    erase = purpose == "*"
    return msgspec.convert(
        {
            "v": 1, "id": f"00000000-0000-4000-8000-{index:012d}", "index": index, "subject": subject,
            "purpose": purpose, "action": "erase" if erase else action, "policy_version": 1 if erase else version,
            "occurred_at": f"2026-11-28T10:0{minute}:00.000000Z", "recorded_at": "2026-11-28T11:00:00.000000Z",
            "actor": "user", "method": "api", "evidence": {},
            "expires_at": "2027-01-01T00:00:00.000000Z" if expires and action == "grant" and not erase else None,
        },
        Entry,
    )  # fmt: skip


def naive(entries: list[Entry]) -> dict[tuple[str, str], StateOf]:
    """Straight from the rules: per key, the entries since the subject's last erasure; the
    deciding one has the greatest (occurred_at, index)."""
    rows = {}
    for subject in SUBJECTS:
        erased = [e.index for e in entries if e.subject == subject and e.purpose == "*"]
        since = erased[-1] if erased else -1
        for purpose in PURPOSES:
            mine = [e for e in entries if (e.subject, e.purpose) == (subject, purpose) and e.index > since]
            if mine:
                d = max(mine, key=lambda e: (e.occurred_at, e.index))
                rows[(subject, purpose)] = StateOf(
                    d.index, d.action, d.policy_version, d.occurred_at, d.expires_at, len(mine)
                )
    return rows


@settings(max_examples=2000)
@given(st.lists(actions, max_size=40))
def test_the_fold_is_the_naive_model(steps: list[tuple[str, str, str, int, int, bool]]) -> None:
    entries = [make(i, *step) for i, step in enumerate(steps)]
    fold = StateFold()
    assert [fold.add(entry_bytes(e)) for e in entries] == list(range(len(entries)))
    assert {k: StateOf(*v) for k, v in fold.rows.items()} == naive(entries)
    assert differences(fold.rows, naive(entries).items()) == []


def test_differences_name_rows_changed_missing_and_extra() -> None:
    a, b, c = (("a" * 64, "telemetry"), ("b" * 64, "telemetry"), ("c" * 64, "telemetry"))
    grant = StateOf(3, "grant", 1, "2026-11-28T10:00:00.000000Z", None, 2)
    withdraw = grant._replace(action="withdraw")
    found = differences({a: withdraw, b: grant}, [(a, grant), (c, grant)])
    assert found == [
        Difference(*a, withdraw, grant),
        Difference(*b, grant, None),
        Difference(*c, None, grant),
    ]
    text = found[0].describe()
    assert "the log says withdraw at index 3" in text
    assert "the table says grant at index 3" in text


@settings(max_examples=300)
@given(st.lists(st.binary(min_size=32, max_size=32), max_size=70))
def test_the_root_accumulator_agrees_with_the_compact_range(leaves: list[bytes]) -> None:
    acc, compact = RootAccumulator(), CompactRange()
    for leaf in leaves:
        acc.append(leaf)
        compact.append(leaf)
        assert acc.root() == compact.root()
