"""Offline verification: a run of entries against a signed checkpoint, a bundle, a receipt.

Needs only the verifier key and the files: no database, no network. Each check names the first
thing that fails. What a single export cannot show on its own: that the log was not truncated or
rewritten *before* this checkpoint was signed. Only a checkpoint held from earlier can show that
(`previous`), which is why auditors and witnesses should keep the checkpoints they see.
"""

from collections.abc import Callable, Iterable
from typing import Annotated, NamedTuple

import msgspec

from ledger.core.checkpoint import Checkpoint, open_checkpoint
from ledger.core.entry import Entry, entry_bytes, subject_for
from ledger.core.errors import EntryError, NoteError, ProofError, VerificationError
from ledger.core.note import Verifier
from ledger.core.proof import InclusionVerifier, verify_inclusion
from ledger.core.registry import LogEntry, RegistryEntry, parse_log_entry, registry_entry_bytes
from ledger.core.rfc6962 import leaf_hash
from ledger.core.tree import CompactRange

__all__ = [
    "ProofLine",
    "ReceiptFile",
    "Receipts",
    "ReceiptsFile",
    "Report",
    "verify_bundle",
    "verify_log",
    "verify_receipt",
    "verify_receipts",
]


class ProofLine(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One line of proofs.ndjson: the inclusion proof of entry `index` in the checkpoint's tree."""

    index: int
    tree_size: int
    proof: list[str]


class ReceiptFile(msgspec.Struct, frozen=True):
    """A receipt as the service gives it (CONTRACT section 3), read from a file.

    What the proof needs is required. `device_id` and `consistency_token` are covered by no
    signature, so they may be absent. `entry` is kept raw and must re-encode to exactly `leaf`,
    the bytes that are hashed. Unknown fields are allowed and ignored: a newer service may add
    some, and nothing outside the proof is ever reported as verified.
    """

    index: Annotated[int, msgspec.Meta(ge=0)]
    entry: msgspec.Raw
    leaf: str
    leaf_hash: str
    checkpoint: str
    inclusion_proof: list[str]
    device_id: str | None = None
    consistency_token: str | None = None


class ReceiptsFile(msgspec.Struct, frozen=True):
    """A person's export (`GET /v1/devices/{device_id}/export`) or a device's history: receipts
    under one device_id. The export's `subject` and `salt` tie the entries to the device (the
    subject is HMAC-SHA256 of the device_id under the salt); its `purposes` is derived state, not
    part of any proof, and is ignored like any other unknown field."""

    device_id: str
    entries: list[ReceiptFile]
    subject: str | None = None
    salt: str | None = None


class Receipts(NamedTuple):
    """What a receipt file showed: its entries are in the signed log; `bound` when the salt also
    showed that they are the entries of `device_id`."""

    entries: list[LogEntry]
    device_id: str | None
    bound: bool


class Report(NamedTuple):
    checkpoint: Checkpoint
    entries: int
    first_index: int | None
    full: bool
    previous: Checkpoint | None


_proof_line = msgspec.json.Decoder(ProofLine)
# Enough to tell the two files apart: only an export or a history has `entries`.
_shape = msgspec.json.Decoder(dict[str, msgspec.Raw])
_receipt = msgspec.json.Decoder(ReceiptFile)
_receipts = msgspec.json.Decoder(ReceiptsFile)
_entry_object = msgspec.json.Decoder(Entry)
_registry_object = msgspec.json.Decoder(RegistryEntry)


def _signed(text: str | bytes, verifiers: list[Verifier], what: str) -> Checkpoint:
    """The checkpoint of a signed note, as text or as the bytes of a file."""
    if isinstance(text, bytes):
        try:
            text = text.decode()
        except UnicodeDecodeError:
            raise VerificationError(f"{what}: not UTF-8 text, so not a signed note") from None
    try:
        return open_checkpoint(text, verifiers)
    except NoteError as exc:
        raise VerificationError(f"{what}: {exc} (a forged signature, or not the key you trust)") from None
    except ValueError:
        # PyNaCl raises ValueError, not BadSignatureError, for a signature of the wrong length
        # under a known key name and id.
        raise VerificationError(f"{what}: a malformed signature (a forged signature)") from None


def _entry(position: int, data: bytes) -> LogEntry:
    try:
        return parse_log_entry(data)
    except EntryError as exc:
        raise VerificationError(f"entry on line {position + 1}: {exc}") from None


def verify_log(entries: Iterable[bytes], signed_checkpoint: str | bytes, verifiers: list[Verifier]) -> Checkpoint:
    """The whole log from index 0, against the checkpoint; raise VerificationError on any fault."""
    return verify_bundle(entries, signed_checkpoint, verifiers).checkpoint


def verify_bundle(
    entries: Iterable[bytes],
    signed_checkpoint: str | bytes,
    verifiers: list[Verifier],
    proofs: Iterable[bytes] | None = None,
    previous: str | bytes | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> Report:
    """Verify an export: the whole log (no `proofs`) or a filtered run of it (with `proofs`).

    A full export must hold entries 0 .. size-1 in order and hash to the signed root; a filtered
    one must hold consecutive entries, each with an inclusion proof into the signed tree. With
    `previous` (a checkpoint held from earlier), a full export must also reproduce that
    checkpoint's root at its size, which is what catches a truncated tail or rewritten history.
    Checkpoints may be given as the bytes of their files: bytes that are not UTF-8 fail as such.
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
    entry: LogEntry, hashed: bytes, line: bytes | None, checkpoint: Checkpoint, inclusion: InclusionVerifier
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


def verify_receipt(receipt_json: bytes, verifiers: list[Verifier]) -> LogEntry:
    """One receipt alone proves its entry is in the log the key signs; return the entry."""
    if _is_many(receipt_json):
        count = len(_decode_receipts(receipt_json).entries)
        raise VerificationError(
            f"this is a person's export or a history ({count} receipts), not one receipt: verify each of them"
        )
    return _verify_receipt(_decode_receipt(receipt_json), verifiers, "")


def verify_receipts(data: bytes, verifiers: list[Verifier]) -> Receipts:
    """A file of one receipt, or a person's export or history (every receipt in it is verified).

    An export's receipts must all be of its device_id and of one subject; with the salt, that
    subject must be the device_id's pseudonym, which shows the entries are this device's.
    """
    if not _is_many(data):
        receipt = _decode_receipt(data)
        return Receipts([_verify_receipt(receipt, verifiers, "")], receipt.device_id, False)
    export = _decode_receipts(data)
    if not export.entries:
        raise VerificationError("the export holds no receipts: nothing to verify")
    entries = []
    for position, receipt in enumerate(export.entries):
        where = f"entries[{position}]: "
        if receipt.device_id is not None and receipt.device_id != export.device_id:
            raise VerificationError(f"{where}a receipt of device {receipt.device_id!r}, not {export.device_id!r}")
        entries.append(_verify_receipt(receipt, verifiers, where))
    first = entries[0]
    subject = export.subject or (first.subject if isinstance(first, Entry) else "")
    if export.salt is not None:
        try:
            salt = bytes.fromhex(export.salt)
        except ValueError:
            raise VerificationError("salt is not hex") from None
        if subject_for(salt, export.device_id) != subject:
            raise VerificationError(
                f"the salt does not turn {export.device_id!r} into the subject {subject}: "
                "the entries are not shown to be this device's"
            )
    for position, entry in enumerate(entries):
        if not isinstance(entry, Entry) or entry.subject != subject:
            raise VerificationError(f"entries[{position}]: entry {entry.index} is of another subject")
    return Receipts(entries, export.device_id, export.salt is not None)


def _is_many(data: bytes) -> bool:
    try:
        return "entries" in _shape.decode(data)
    except msgspec.DecodeError as exc:
        raise VerificationError(f"not a receipt or a person's export: {exc}") from None


def _decode_receipt(data: bytes) -> ReceiptFile:
    try:
        return _receipt.decode(data)
    except msgspec.DecodeError as exc:
        raise VerificationError(f"not a receipt: {exc}") from None


def _decode_receipts(data: bytes) -> ReceiptsFile:
    try:
        return _receipts.decode(data)
    except msgspec.DecodeError as exc:
        raise VerificationError(f"not a person's export: {exc}") from None


def _verify_receipt(receipt: ReceiptFile, verifiers: list[Verifier], where: str) -> LogEntry:
    """A receipt of either kind of entry: a consent or a published registry."""
    leaf = receipt.leaf.encode()
    try:
        entry = parse_log_entry(leaf)
    except EntryError as exc:
        raise VerificationError(f"{where}the receipt's leaf: {exc}") from None
    try:
        if isinstance(entry, RegistryEntry):
            restated = registry_entry_bytes(_registry_object.decode(receipt.entry))
        else:
            restated = entry_bytes(_entry_object.decode(receipt.entry))
    except msgspec.DecodeError as exc:
        raise VerificationError(f"{where}the receipt's entry object is not a log entry: {exc}") from None
    if restated != leaf:
        raise VerificationError(f"{where}the receipt's entry object does not match its leaf bytes")
    if entry.index != receipt.index:
        raise VerificationError(f"{where}the receipt says index {receipt.index}, its entry {entry.index}")
    try:
        claimed = bytes.fromhex(receipt.leaf_hash)
        path = [bytes.fromhex(h) for h in receipt.inclusion_proof]
    except ValueError:
        raise VerificationError(f"{where}leaf_hash and inclusion_proof must be hex") from None
    if leaf_hash(leaf) != claimed:
        raise VerificationError(f"{where}leaf_hash is not the hash of the leaf")
    checkpoint = _signed(receipt.checkpoint, verifiers, f"{where}the receipt's checkpoint")
    try:
        verify_inclusion(entry.index, checkpoint.size, claimed, path, checkpoint.root)
    except ProofError as exc:
        raise VerificationError(f"{where}inclusion proof: {exc}") from None
    return entry
