"""Sealing a batch: drafts in, entries with indexes, new tree nodes, one checkpoint and receipts out.

Pure, so the appender's only jobs are locking, I/O and waking callers.
"""

from collections.abc import Sequence
from typing import NamedTuple

import msgspec

from ledger.core.checkpoint import Checkpoint, sign_checkpoint
from ledger.core.entry import Action, Actor, Entry, Evidence, Method, entry_bytes
from ledger.core.note import Signer
from ledger.core.proof import inclusion_proof
from ledger.core.purposes import Registry
from ledger.core.registry import RegistryEntry, registry_entry, registry_entry_bytes
from ledger.core.rfc6962 import leaf_hash
from ledger.core.tree import CompactRange, NodeId

__all__ = [
    "Committed",
    "Draft",
    "Sealed",
    "SealedBatch",
    "SealedRegistry",
    "latest_per_key",
    "seal_batch",
    "seal_registry",
]


class Draft(msgspec.Struct, frozen=True, kw_only=True):
    """An entry before the log gives it an index, a subject and a recording time."""

    id: str
    device_id: str
    purpose: str
    action: Action
    policy_version: int
    occurred_at: str
    actor: Actor
    method: Method
    evidence: Evidence
    expires_at: str | None = None


class Sealed(NamedTuple):
    """One entry as recorded: everything a receipt is made of."""

    entry: Entry
    leaf: bytes
    leaf_hash: bytes
    inclusion_proof: list[bytes]
    checkpoint: str
    tree_size: int


class SealedBatch(NamedTuple):
    sealed: list[Sealed]
    nodes: list[tuple[NodeId, bytes]]
    checkpoint: Checkpoint
    note: str
    tree: CompactRange


class SealedRegistry(NamedTuple):
    """A registry entry as recorded, alone in its batch: everything its receipt is made of."""

    entry: RegistryEntry
    leaf: bytes
    leaf_hash: bytes
    inclusion_proof: list[bytes]
    checkpoint: str
    tree_size: int
    nodes: list[tuple[NodeId, bytes]]
    signed: Checkpoint
    tree: CompactRange


class Committed(NamedTuple):
    """A batch once COMMIT returned: entries [start, size) with the device each was recorded for,
    or the one registry entry it published."""

    start: int
    size: int
    entries: list[tuple[Entry, str]]
    registry: RegistryEntry | None = None


def latest_per_key(entries: Sequence[Entry]) -> list[Entry]:
    """For each (subject, purpose), the entry that decides it among `entries`."""
    best: dict[tuple[str, str], Entry] = {}
    for entry in entries:
        key = (entry.subject, entry.purpose)
        current = best.get(key)
        if current is None or (entry.occurred_at, entry.index) > (current.occurred_at, current.index):
            best[key] = entry
    return list(best.values())


def seal_batch(
    tree: CompactRange,
    drafts: Sequence[Draft],
    subjects: Sequence[str],
    recorded_at: str,
    origin: str,
    signer: Signer,
) -> SealedBatch:
    """Append `drafts` to a copy of `tree`; `tree` itself is left as it was."""
    grown = tree.copy()
    known: dict[NodeId, bytes] = dict(tree.nodes)
    created: list[tuple[NodeId, bytes]] = []
    entries, leaves, hashes = [], [], []
    for draft, subject in zip(drafts, subjects, strict=True):
        entry = Entry(
            v=1,
            id=draft.id,
            index=grown.size,
            subject=subject,
            purpose=draft.purpose,
            action=draft.action,
            policy_version=draft.policy_version,
            occurred_at=draft.occurred_at,
            recorded_at=recorded_at,
            actor=draft.actor,
            method=draft.method,
            evidence=draft.evidence,
            expires_at=draft.expires_at,
        )
        leaf = entry_bytes(entry)
        hashed = leaf_hash(leaf)
        created.extend(grown.append(hashed))
        entries.append(entry)
        leaves.append(leaf)
        hashes.append(hashed)
    known.update(created)
    checkpoint = Checkpoint(origin, grown.size, grown.root())
    note = sign_checkpoint(checkpoint, signer)
    # Every node an inclusion proof into the new tree needs is either on the old tree's right
    # edge or was completed by this batch, so receipts need no reads from storage.
    sealed = [
        Sealed(e, leaf, h, inclusion_proof(e.index, grown.size, known), note, grown.size)
        for e, leaf, h in zip(entries, leaves, hashes, strict=True)
    ]
    return SealedBatch(sealed, created, checkpoint, note, grown)


def seal_registry(
    tree: CompactRange, entry_id: str, registry: Registry, recorded_at: str, origin: str, signer: Signer
) -> SealedRegistry:
    """Append one registry entry to a copy of `tree` and sign the grown tree."""
    grown = tree.copy()
    entry = registry_entry(entry_id, grown.size, recorded_at, registry)
    leaf = registry_entry_bytes(entry)
    hashed = leaf_hash(leaf)
    created = grown.append(hashed)
    known: dict[NodeId, bytes] = dict(tree.nodes)
    known.update(created)
    checkpoint = Checkpoint(origin, grown.size, grown.root())
    note = sign_checkpoint(checkpoint, signer)
    proof = inclusion_proof(entry.index, grown.size, known)
    return SealedRegistry(entry, leaf, hashed, proof, note, grown.size, list(created), checkpoint, grown)
