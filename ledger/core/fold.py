"""The decision state a log folds into, row for row as the projection's state table holds it.

`ledger verify-state` refolds the whole log with this and compares every row: the state table
is written by the service in the append transaction, but nothing in the signed log vouches for
it, so this is how an operator shows that the table (and so every cached answer built from it)
is exactly what the log implies.
"""

from collections.abc import Iterable, Mapping
from typing import NamedTuple

import msgspec

from ledger.core.entry import ALL_PURPOSES
from ledger.core.errors import EntryError
from ledger.core.registry import is_registry_entry, parse_registry_entry

__all__ = ["Difference", "Row", "StateFold", "StateOf", "differences"]


class StateOf(NamedTuple):
    """One (subject, purpose)'s row: its deciding entry and how many entries it has."""

    index: int  # type: ignore[assignment]  # the entry's index; shadowing tuple.index is intended
    action: str
    policy_version: int
    occurred_at: str
    expires_at: str | None
    entries: int

    def describe(self) -> str:
        expiry = f", expires {self.expires_at}" if self.expires_at else ""
        return (
            f"{self.action} at index {self.index} (policy {self.policy_version}, occurred {self.occurred_at}"
            f"{expiry}; {self.entries} entries)"
        )


# A row as plain values in StateOf's field order: a log has millions of entries and a state
# table as many rows, and building a NamedTuple for each costs more than everything else done.
Row = tuple[int, str, int, str, str | None, int]


class _Fields(msgspec.Struct, frozen=True, gc=False):
    """What folding needs of an entry; the rest of its bytes is the tree's business."""

    index: int
    subject: str
    purpose: str
    action: str
    policy_version: int
    occurred_at: str
    expires_at: str | None = None


_fields = msgspec.json.Decoder(_Fields)


class StateFold:
    """Feed entries in index order; `rows` is then the state table the log implies."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], Row] = {}
        self._purposes: dict[str, set[str]] = {}

    def add(self, data: bytes) -> int:
        """Fold one entry's bytes in; return its index. Raise EntryError if they are not an entry."""
        if is_registry_entry(data):
            # A registry entry changes no row: decisions read it when they are made. Parsed in
            # full (they are rare) so that a malformed one fails here like any other entry.
            return parse_registry_entry(data).index
        try:
            e = _fields.decode(data)
        except msgspec.MsgspecError as exc:
            raise EntryError(f"not a log entry: {exc}") from None
        if e.purpose == ALL_PURPOSES:
            # Erasure removes the subject's rows; its entries stay in the log, unlinkable.
            for purpose in self._purposes.pop(e.subject, ()):
                del self.rows[(e.subject, purpose)]
            return e.index
        key = (e.subject, e.purpose)
        current = self.rows.get(key)
        if current is None:
            self._purposes.setdefault(e.subject, set()).add(e.purpose)
            self.rows[key] = (e.index, e.action, e.policy_version, e.occurred_at, e.expires_at, 1)
        elif (e.occurred_at, e.index) > (current[3], current[0]):
            self.rows[key] = (e.index, e.action, e.policy_version, e.occurred_at, e.expires_at, current[5] + 1)
        else:
            self.rows[key] = (*current[:5], current[5] + 1)
        return e.index


class Difference(NamedTuple):
    subject: str
    purpose: str
    log: StateOf | None
    table: StateOf | None

    def describe(self) -> str:
        said = "no row" if self.log is None else self.log.describe()
        held = "no row" if self.table is None else self.table.describe()
        return f"subject {self.subject} purpose {self.purpose}: the log says {said}; the table says {held}"


def differences(
    expected: Mapping[tuple[str, str], Row], actual: Iterable[tuple[tuple[str, str], Row]]
) -> list[Difference]:
    """Every row where the table differs from the fold, in (subject, purpose) order."""
    found: list[Difference] = []
    seen: set[tuple[str, str]] = set()
    for key, row in actual:
        seen.add(key)
        want = expected.get(key)
        if want != row:
            found.append(Difference(key[0], key[1], _state(want), _state(row)))
    found.extend(Difference(k[0], k[1], StateOf(*v), None) for k, v in expected.items() if k not in seen)
    return sorted(found)


def _state(row: Row | None) -> StateOf | None:
    return None if row is None else StateOf(*row)
