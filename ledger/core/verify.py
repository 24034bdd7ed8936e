"""Offline verification: a run of entries against a signed checkpoint, a bundle, a receipt.

Needs only the verifier key and the files: no database, no network. Each check names the first
thing that fails. What a single export cannot show on its own: that the log was not truncated or
rewritten *before* this checkpoint was signed. Only a checkpoint held from earlier can show that
(`previous`), which is why auditors and witnesses should keep the checkpoints they see.
"""

from collections.abc import Callable, Iterable
from typing import NamedTuple

import msgspec

from ledger.core.checkpoint import Checkpoint, open_checkpoint
from ledger.core.entry import Entry, entry_bytes, parse_entry
from ledger.core.errors import EntryError, NoteError, ProofError, VerificationError
from ledger.core.note import Verifier
from ledger.core.proof import InclusionVerifier, verify_inclusion
from ledger.core.rfc6962 import leaf_hash
from ledger.core.tree import CompactRange


class ProofLine(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One line of proofs.ndjson: the inclusion proof of entry `index` in the checkpoint's tree."""

    index: int
    tree_size: int
    proof: list[str]


class Report(NamedTuple):
    checkpoint: Checkpoint
    entries: int
    first_index: int | None
    full: bool
    previous: Checkpoint | None


_proof_line = msgspec.json.Decoder(ProofLine)
_receipt = msgspec.json.Decoder()


def _signed(text: str, verifiers: list[Verifier], what: str) -> Checkpoint:
    try:
        return open_checkpoint(text, verifiers)
    except NoteError as exc:
        raise VerificationError(f"{what}: {exc} (a forged signature, or not the key you trust)") from None


def _entry(position: int, data: bytes) -> Entry:
    try:
        return parse_entry(data)
    except EntryError as exc:
        raise VerificationError(f"entry on line {position + 1}: {exc}") from None


def verify_log(entries: Iterable[bytes], signed_checkpoint: str, verifiers: list[Verifier]) -> Checkpoint:
    """The whole log from index 0, against the checkpoint; raise VerificationError on any fault."""
    return verify_bundle(entries, signed_checkpoint, verifiers).checkpoint


def verify_bundle(
    entries: Iterable[bytes],
    signed_checkpoint: str,
    verifiers: list[Verifier],
    proofs: Iterable[bytes] | None = None,
    previous: str | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> Report:
    """Verify an export: the whole log (no `proofs`) or a filtered run of it (with `proofs`).

    A full export must hold entries 0 .. size-1 in order and hash to the signed root; a filtered
    one must hold consecutive entries, each with an inclusion proof into the signed tree. With
    `previous` (a checkpoint held from earlier), a full export must also reproduce that
    checkpoint's root at its size, which is what catches a truncated tail or rewritten history.
    """
    checkpoint = _signed(signed_checkpoint, verifiers, "checkpoint")
    held = None if previous is None else _signed(previous, verifiers, "held checkpoint")
    if held is not None and held.origin != checkpoint.origin:
        raise VerificationError(f"the held checkpoint is for {held.origin!r}, the export for {checkpoint.origin!r}")
    if held is not None and proofs is not None:
        raise VerificationError("a held checkpoint can only be checked against a full export, not a filtered one")
    if held is not None and held.size > checkpoint.size:
        raise VerificationError(
            f"the held checkpoint covers {held.size} entries but the export's only {checkpoint.size}: "
            "the log was truncated or this is an older checkpoint"
        )
    tree = CompactRange()
    proof_lines = iter(proofs) if proofs is not None else None
    inclusion = InclusionVerifier(checkpoint.size, checkpoint.root)
    count, first, expected = 0, None, None
    for position, data in enumerate(entries):
        entry = _entry(position, data)
        if first is None:
            first = expected = entry.index
            if proofs is None and first != 0:
                raise VerificationError(f"a full export starts at index 0, this one at {first}")
        if entry.index != expected:
            raise VerificationError(
                f"entry on line {position + 1} has index {entry.index}, expected {expected}: "
                "an entry is missing, added or out of order"
            )
        hashed = leaf_hash(data)
        if proof_lines is None:
            tree.append(hashed)
            if held is not None and tree.size == held.size and tree.root() != held.root:
                raise VerificationError(
                    f"the entries up to index {held.size - 1} do not match the held checkpoint: history was rewritten"
                )
        else:
            _check_proof(entry, hashed, next(proof_lines, None), checkpoint, inclusion)
        count += 1
        expected = entry.index + 1
        if on_progress is not None:
            on_progress(count)
    if proof_lines is None:
        if tree.size != checkpoint.size:
            raise VerificationError(f"{tree.size} entries, but the checkpoint signs a tree of {checkpoint.size}")
        if tree.root() != checkpoint.root:
            raise VerificationError("the entries do not hash to the signed root: the log was altered")
    elif next(proof_lines, None) is not None:
        raise VerificationError("proofs.ndjson has more lines than entries.ndjson")
    return Report(checkpoint, count, first, proof_lines is None, held)


def _check_proof(
    entry: Entry, hashed: bytes, line: bytes | None, checkpoint: Checkpoint, inclusion: InclusionVerifier
) -> None:
    where = f"entry {entry.index}"
    if line is None:
        raise VerificationError(f"{where} has no inclusion proof")
    try:
        proof = _proof_line.decode(line)
    except msgspec.DecodeError:
        raise VerificationError(f"{where}: malformed proof line") from None
    if proof.index != entry.index or proof.tree_size != checkpoint.size:
        raise VerificationError(f"{where}: its proof is for index {proof.index} in a tree of {proof.tree_size}")
    try:
        inclusion.verify(entry.index, hashed, proof.proof)
    except ProofError as exc:
        raise VerificationError(f"{where}: {exc}: the entry or the proof was altered") from None


def verify_receipt(receipt_json: bytes, verifiers: list[Verifier]) -> Entry:
    """A receipt alone proves its entry is in the log the key signs; return the entry."""
    try:
        receipt = _receipt.decode(receipt_json)
        leaf = receipt["leaf"].encode()
        claimed = bytes.fromhex(receipt["leaf_hash"])
        path = [bytes.fromhex(h) for h in receipt["inclusion_proof"]]
        note, index, entry_object = receipt["checkpoint"], receipt["index"], receipt["entry"]
    except (msgspec.DecodeError, KeyError, TypeError, ValueError, AttributeError):
        raise VerificationError(
            "not a receipt: it needs leaf, leaf_hash, inclusion_proof, checkpoint, index, entry"
        ) from None
    entry = _entry(0, leaf)
    if entry_bytes(msgspec.convert(entry_object, Entry)) != leaf:
        raise VerificationError("the receipt's entry object does not match its leaf bytes")
    if entry.index != index:
        raise VerificationError(f"the receipt says index {index}, its entry {entry.index}")
    if leaf_hash(leaf) != claimed:
        raise VerificationError("leaf_hash is not the hash of the leaf")
    checkpoint = _signed(note, verifiers, "the receipt's checkpoint")
    try:
        verify_inclusion(entry.index, checkpoint.size, claimed, path, checkpoint.root)
    except ProofError as exc:
        raise VerificationError(f"inclusion proof: {exc}") from None
    return entry
