"""Offline verification of a run of entries against a signed checkpoint."""

from collections.abc import Iterable

from ledger.core.checkpoint import Checkpoint, open_checkpoint
from ledger.core.entry import parse_entry
from ledger.core.errors import EntryError, VerificationError
from ledger.core.note import Verifier
from ledger.core.rfc6962 import leaf_hash
from ledger.core.tree import CompactRange


def verify_log(entries: Iterable[bytes], signed_checkpoint: str, verifiers: list[Verifier]) -> Checkpoint:
    """Check that `entries` are the whole log the checkpoint signs: each canonical, at its index,
    and together hashing to the signed root. Raise VerificationError naming the first problem."""
    checkpoint = open_checkpoint(signed_checkpoint, verifiers)
    tree = CompactRange()
    for position, data in enumerate(entries):
        try:
            entry = parse_entry(data)
        except EntryError as exc:
            raise VerificationError(f"entry {position}: {exc}") from None
        if entry.index != position:
            raise VerificationError(f"entry {position} claims index {entry.index}")
        tree.append(leaf_hash(data))
    if tree.size != checkpoint.size:
        raise VerificationError(f"{tree.size} entries, but the checkpoint signs a tree of {checkpoint.size}")
    if tree.root() != checkpoint.root:
        raise VerificationError("the entries do not hash to the signed root: the log was altered")
    return checkpoint
