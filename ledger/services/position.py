"""How far this process knows the log is committed: what its Consistency-Token header names."""

from collections.abc import Callable

from ledger.core.batch import Sealed
from ledger.core.consistency import consistency_token
from ledger.models import Receipt

__all__ = ["Position"]


class Position:
    def __init__(self, *known: Callable[[], int]) -> None:
        self._known = known
        self._seen = 0

    def saw(self, size: int) -> None:
        """A size read from the database or sealed by this process."""
        self._seen = max(self._seen, size)

    def token(self) -> str:
        """Names the largest log this process knows is committed; a read elsewhere can wait for it."""
        size = self._seen
        for known in self._known:
            size = max(size, known())
        return consistency_token(size)

    def receipt(self, device_id: str, sealed: Sealed) -> Receipt:
        """The receipt of a sealed entry; the log it names is then known to be committed."""
        self.saw(sealed.tree_size)
        return Receipt(
            device_id=device_id,
            index=sealed.entry.index,
            entry=sealed.entry,
            leaf=sealed.leaf.decode(),
            leaf_hash=sealed.leaf_hash.hex(),
            checkpoint=sealed.checkpoint,
            inclusion_proof=[h.hex() for h in sealed.inclusion_proof],
            consistency_token=consistency_token(sealed.tree_size),
        )
