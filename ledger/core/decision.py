"""How the history of one (subject, purpose) folds into a decision at a given time.

The deciding entry is the person's latest action: the greatest (occurred_at, index), so a grant
synchronised late from an offline device cannot override a withdrawal the person made after it.
Entries recorded after the time asked about are not part of the history at that time.
"""

from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Literal

import msgspec

from ledger.core.entry import Entry, format_time, parse_time
from ledger.core.purposes import Purpose

__all__ = ["ERASED", "Basis", "Decision", "Reason", "decide", "deciding", "effective_expiry"]

Reason = Literal["granted", "no_consent", "withdrawn", "expired", "reconsent_required", "erased"]


class Basis(msgspec.Struct, frozen=True, gc=False):
    """What a decision needs of its deciding entry; small, because the cache holds many."""

    index: int
    action: str
    policy_version: int
    occurred_at: str
    expires_at: str | None

    @classmethod
    def of(cls, entry: Entry) -> "Basis":
        return cls(entry.index, entry.action, entry.policy_version, entry.occurred_at, entry.expires_at)

    def supersedes(self, other: "Basis | None") -> bool:
        return other is None or (self.occurred_at, self.index) > (other.occurred_at, other.index)


# The deciding entry for a device that was erased. Its answer names no entry, time or version:
# any of them would point at the erase entry, and so at the device's old subject.
ERASED = Basis(-1, "erase", 0, "", None)


class Decision(msgspec.Struct, frozen=True, gc=False):
    purpose: str
    allowed: bool
    reason: Reason
    policy_version: int | None
    since: str | None
    expires_at: str | None
    index: int | None


def deciding(history: Iterable[Entry], as_of: str | None = None) -> Basis | None:
    """The latest action in `history`, counting only entries recorded by `as_of` when given."""
    best: Basis | None = None
    for entry in history:
        if as_of is not None and entry.recorded_at > as_of:
            continue
        candidate = Basis.of(entry)
        if candidate.supersedes(best):
            best = candidate
    return best


def effective_expiry(basis: Basis, purpose: Purpose) -> str | None:
    """The earlier of the grant's own expiry and the purpose's maximum age."""
    limits = [basis.expires_at] if basis.expires_at else []
    if purpose.max_age_days is not None:
        limits.append(format_time(parse_time(basis.occurred_at) + timedelta(days=purpose.max_age_days)))
    return min(limits) if limits else None


def decide(purpose_key: str, purpose: Purpose, basis: Basis | None, now: str | Callable[[], str]) -> Decision:
    """The decision at `now` (a log timestamp, or a function giving one) given the deciding entry.

    Only a grant with an expiry needs the time, so a function is called only then.
    """
    if basis is None:
        return Decision(purpose_key, False, "no_consent", None, None, None, None)

    def refuse(reason: Reason, expires_at: str | None = None) -> Decision:
        return Decision(purpose_key, False, reason, basis.policy_version, basis.occurred_at, expires_at, basis.index)

    if basis.action == "erase":
        return Decision(purpose_key, False, "erased", None, None, None, None)
    if basis.action != "grant":
        return refuse("withdrawn")
    if basis.policy_version < purpose.min_policy_version:
        return refuse("reconsent_required")
    expiry = effective_expiry(basis, purpose)
    if expiry is not None and (now if isinstance(now, str) else now()) >= expiry:
        return refuse("expired", expiry)
    return Decision(purpose_key, True, "granted", basis.policy_version, basis.occurred_at, expiry, basis.index)
