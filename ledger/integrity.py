"""Entries read back from the database are proven against the signed tree before they are served.

The database is not trusted with the log's meaning: a superuser can switch the append-only
triggers off and rewrite an entry or a stored node. What such a change cannot do is produce a
checkpoint signed by the log's key. So every answer built from stored entries (a decision `at=`
a past time, a device's history, a person's export, a replayed receipt) first checks each entry
against a checkpoint whose signature this process verifies itself: the entry's leaf hash, and an
inclusion proof built from the stored nodes, must lead to the signed root.

The process accepts checkpoints signed by any log key it trusts (ledger/keys.py: the key it
signs with and LEDGER_TRUSTED_KEYS), so entries covered by a checkpoint signed before a key
rotation are proven against the old key's signature. Which keys those are comes from its
configuration, never from the database's own list of keys; `keys.check_signers` refuses to start
on a log that a key it does not trust has signed.

A mismatch is reported once as a LogCorrupted error (RFC 9457 `log-corrupted`), counted in a
metric, and makes this process unready for good: an operator must look before it serves again.
"""

import logging
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from ledger import metrics
from ledger.core.batch import Sealed
from ledger.core.checkpoint import Checkpoint, open_checkpoint
from ledger.core.entry import Entry, parse_entry
from ledger.core.errors import EntryError, NoteError, ProofError
from ledger.core.note import Verifier
from ledger.core.proof import InclusionVerifier, ManyProofs, leaves_nodes, verify_leaves
from ledger.core.registry import RegistryEntry, parse_registry_entry
from ledger.core.rfc6962 import leaf_hash
from ledger.errors import LogCorrupted, StorageError
from ledger.services.stores import LogReads

__all__ = [
    "OPENED_NOTES",
    "Integrity",
    "Proven",
    "ProvenLog",
    "ProvenRegistry",
    "SignedTree",
    "log",
]

log = logging.getLogger("ledger.integrity")
OPENED_NOTES = 256


class Integrity:
    """Whether this process has caught the database contradicting the signed log."""

    def __init__(self) -> None:
        self.problem: str | None = None

    def corrupted(self, exc: LogCorrupted, where: str) -> LogCorrupted:
        """Record the finding (the first one is logged) and hand the error back for raising."""
        metrics.LOG_CORRUPTION.labels(where).inc()
        if self.problem is None:
            log.error("the database contradicts the signed log (%s): %s; this process stays unready", where, exc)
            self.problem = str(exc)
        return exc

    @property
    def intact(self) -> bool:
        return self.problem is None


class SignedTree(NamedTuple):
    checkpoint: Checkpoint
    note: str


class Proven(NamedTuple):
    """An entry shown to be at its index in a signed tree, with the proof that shows it."""

    entry: Entry
    leaf: bytes
    leaf_hash: bytes
    proof: list[bytes]

    def sealed(self, tree: SignedTree) -> Sealed:
        """The entry as a receipt carries it: proven in `tree`, under its signed note."""
        return Sealed(self.entry, self.leaf, self.leaf_hash, self.proof, tree.note, tree.checkpoint.size)


class ProvenRegistry(NamedTuple):
    """A registry entry shown to be at its index in a signed tree."""

    entry: RegistryEntry
    leaf: bytes
    leaf_hash: bytes
    proof: list[bytes]


class ProvenLog:
    def __init__(self, log: LogReads, verifiers: list[Verifier], integrity: Integrity) -> None:
        self.store = log
        self.verifiers = verifiers
        self.integrity = integrity
        self._opened: dict[str, Checkpoint] = {}

    def _corrupted(self, detail: str, where: str) -> LogCorrupted:
        return self.integrity.corrupted(LogCorrupted(detail), where)

    def open(self, note: str, size: int | None = None) -> SignedTree:
        """The checkpoint in `note`, its signature checked with one of the log keys this process trusts."""
        checkpoint = self._opened.get(note)
        if checkpoint is None:
            try:
                checkpoint = open_checkpoint(note, self.verifiers)
            except NoteError as exc:
                raise self._corrupted(f"a stored checkpoint does not verify: {exc}", "checkpoint") from None
            if len(self._opened) >= OPENED_NOTES:
                self._opened.clear()
            self._opened[note] = checkpoint
        if size is not None and checkpoint.size != size:
            raise self._corrupted(f"the checkpoint stored for size {size} is of size {checkpoint.size}", "checkpoint")
        return SignedTree(checkpoint, note)

    async def head(self) -> SignedTree:
        head = await self.store.head()
        if head is None:
            raise StorageError("the log has no checkpoint yet")
        return self.open(head.note, head.size)

    async def at_size(self, size: int) -> SignedTree:
        note = await self.store.checkpoint_note(size)
        if note is None:
            raise self._corrupted(f"no checkpoint of size {size} is stored", "checkpoint")
        return self.open(note, size)

    async def prove(self, tree: SignedTree, entries: Mapping[int, bytes]) -> dict[int, Proven]:
        """Each consent entry (index -> stored bytes) proven in `tree`, from one fetch of stored nodes."""
        proven: dict[int, Proven] = {}
        for index, (data, hashed, proof) in (await self._proofs(tree, entries)).items():
            try:
                entry = parse_entry(data)
            except EntryError:
                raise self._corrupted(f"entry {index} as stored is not a consent entry", "entry") from None
            if entry.index != index:
                raise self._corrupted(f"the entry stored at index {index} says it is {entry.index}", "entry")
            proven[index] = Proven(entry, data, hashed, proof)
        return proven

    async def prove_registries(self, tree: SignedTree, entries: Mapping[int, bytes]) -> dict[int, ProvenRegistry]:
        """Each registry entry (index -> stored bytes) proven in `tree`."""
        proven: dict[int, ProvenRegistry] = {}
        for index, (data, hashed, proof) in (await self._proofs(tree, entries)).items():
            try:
                entry = parse_registry_entry(data)
            except EntryError:
                raise self._corrupted(f"entry {index} as stored is not a registry entry", "entry") from None
            if entry.index != index:
                raise self._corrupted(f"the entry stored at index {index} says it is {entry.index}", "entry")
            proven[index] = ProvenRegistry(entry, data, hashed, proof)
        return proven

    async def _proofs(
        self, tree: SignedTree, entries: Mapping[int, bytes]
    ) -> dict[int, tuple[bytes, bytes, list[bytes]]]:
        """Each entry's bytes, leaf hash and inclusion proof, the proof checked against the signed root."""
        indexes = sorted(entries)
        if not indexes:
            return {}
        size, root = tree.checkpoint.size, tree.checkpoint.root
        if indexes[-1] >= size:
            raise StorageError(f"entry {indexes[-1]} is not in the tree of size {size}")
        many = ManyProofs(indexes, size)
        try:
            nodes = await self.store.nodes(many.nodes())
        except LogCorrupted as exc:
            raise self._corrupted(str(exc), "nodes") from None
        verifier = InclusionVerifier(size, root)
        found: dict[int, tuple[bytes, bytes, list[bytes]]] = {}
        for index, proof in zip(indexes, many.proofs(nodes), strict=True):
            data = entries[index]
            hashed = leaf_hash(data)
            try:
                verifier.verify(index, hashed, proof)
            except ProofError:
                raise self._corrupted(
                    f"entry {index} as stored does not match the signed tree of size {size}", "entry"
                ) from None
            found[index] = (data, hashed, proof)
        return found

    async def verify(self, tree: SignedTree, entries: Mapping[int, bytes]) -> dict[int, Entry]:
        """Each entry (index -> stored bytes) shown to be in `tree`, without building a proof per
        entry: the leaves and the stored nodes they need are hashed up to the signed root once."""
        if not entries:
            return {}
        size, root = tree.checkpoint.size, tree.checkpoint.root
        if max(entries) >= size:
            raise StorageError(f"entry {max(entries)} is not in the tree of size {size}")
        try:
            nodes = await self.store.nodes(leaves_nodes(list(entries), size))
        except LogCorrupted as exc:
            raise self._corrupted(str(exc), "nodes") from None
        try:
            verify_leaves(size, root, {i: leaf_hash(data) for i, data in entries.items()}, nodes)
            parsed = {i: parse_entry(data) for i, data in entries.items()}
        except (ProofError, EntryError):
            raise self._corrupted(
                f"an entry as stored does not match the signed tree of size {size}", "entry"
            ) from None
        for index, entry in parsed.items():
            if entry.index != index:
                raise self._corrupted(f"the entry stored at index {index} says it is {entry.index}", "entry")
        return parsed

    async def read(self, indexes: Sequence[int], tree: SignedTree) -> dict[int, Proven]:
        """The entries at `indexes`, read and proven in `tree`."""
        wanted = sorted(set(indexes))
        found = await self.store.entries_at(wanted)
        missing = [i for i in wanted if i not in found]
        if missing:
            raise self._corrupted(f"entry {missing[0]} is missing from the log table", "entry")
        return await self.prove(tree, found)
