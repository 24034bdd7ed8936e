"""Settling Idempotency-Keys within one batch: which requests append, which replay, which conflict.

Runs under the log lock, so what `prior` says (keys already recorded) cannot change meanwhile; a
key used twice in the same batch is settled against the batch's own first use of it.
"""

from collections.abc import Mapping, Sequence
from typing import NamedTuple

__all__ = ["APPEND", "Claim", "Conflict", "Follows", "Prior", "Replayed", "Settlement", "settle"]


class Claim(NamedTuple):
    """An Idempotency-Key, scoped to the token that sent it, and the hash of the request."""

    token_name: str
    key: str
    request_hash: bytes

    @property
    def scope(self) -> tuple[str, str]:
        return (self.token_name, self.key)


class Prior(NamedTuple):
    """A key already recorded: the request it was used for and where that landed."""

    request_hash: bytes
    index: int  # type: ignore[assignment]  # the entry's index; shadowing tuple.index is intended
    tree_size: int


class Replayed(NamedTuple):
    """The request was already recorded: this is where."""

    entry_index: int
    tree_size: int


class Conflict(NamedTuple):
    """The key was used for another request."""

    key: str


class Follows(NamedTuple):
    """The same request is earlier in this same batch, at position `first`: it gets that receipt."""

    first: int


class _Append(NamedTuple):
    pass


APPEND = _Append()
Settlement = _Append | Replayed | Conflict | Follows


def settle(claims: Sequence[Claim | None], prior: Mapping[tuple[str, str], Prior]) -> list[Settlement]:
    """What becomes of each request of a batch, in order."""
    first_use: dict[tuple[str, str], int] = {}
    settled: list[Settlement] = []
    for position, claim in enumerate(claims):
        if claim is None:
            settled.append(APPEND)
            continue
        recorded = prior.get(claim.scope)
        if recorded is not None:
            same = recorded.request_hash == claim.request_hash
            settled.append(Replayed(recorded.index, recorded.tree_size) if same else Conflict(claim.key))
        elif claim.scope in first_use:
            first = first_use[claim.scope]
            original = claims[first]
            assert original is not None
            settled.append(Follows(first) if original.request_hash == claim.request_hash else Conflict(claim.key))
        else:
            first_use[claim.scope] = position
            settled.append(APPEND)
    return settled
