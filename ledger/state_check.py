"""`ledger verify-state`: refold the signed log and compare the projection's state table with it.

Everything is read in one REPEATABLE READ snapshot, so the table is compared with exactly the
log it was written alongside. The entries are checked against the latest signed checkpoint
first (every leaf hashed into the root, the signature checked with the log's key): a fold of
altered entries would prove nothing.
"""

from collections.abc import Callable
from hashlib import sha256
from typing import NamedTuple

from ledger.core.checkpoint import open_checkpoint
from ledger.core.errors import EntryError, NoteError, VerificationError
from ledger.core.fold import Difference, StateFold, differences
from ledger.core.note import Verifier
from ledger.core.rfc6962 import LEAF_PREFIX
from ledger.core.tree import RootAccumulator
from ledger.storage.log import LogStore

__all__ = ["PAGE", "StateReport", "verify_state"]

PAGE = 20_000


class StateReport(NamedTuple):
    entries: int
    rows: int
    differences: list[Difference]


async def verify_state(
    log: LogStore, verifiers: list[Verifier], progress: Callable[[int, int], None] | None = None
) -> StateReport:
    """Raise VerificationError if the log does not match its signed checkpoint; otherwise
    return every state row that differs from the fold of the log."""
    async with log.snapshot() as snapshot:
        head = await snapshot.head()
        if head is None:
            raise VerificationError("the log has no checkpoint yet")
        try:
            checkpoint = open_checkpoint(head.note, verifiers)
        except NoteError as exc:
            raise VerificationError(f"the latest checkpoint does not verify with the log's key: {exc}") from None
        fold, tree = StateFold(), RootAccumulator()
        add, append = fold.add, tree.append
        for start in range(0, checkpoint.size, PAGE):
            for position, data in enumerate(await snapshot.entries(start, min(start + PAGE, checkpoint.size)), start):
                append(sha256(LEAF_PREFIX + data).digest())  # leaf_hash, inlined: the hot loop
                try:
                    index = add(data)
                except EntryError as exc:
                    raise VerificationError(f"entry {position}: {exc}") from None
                if index != position:
                    raise VerificationError(f"the entry stored at index {position} names another index")
            if progress is not None:
                progress(tree.size, checkpoint.size)
        if tree.size != checkpoint.size or tree.root() != checkpoint.root:
            raise VerificationError(
                f"the stored entries do not hash to the signed root of size {checkpoint.size}: the log was altered"
            )
        rows = await snapshot.state_rows()
    return StateReport(checkpoint.size, len(rows), differences(fold.rows, rows))
