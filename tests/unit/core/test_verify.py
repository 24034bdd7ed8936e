"""Offline verification: every kind of tampering is caught, and named."""

import json
import uuid

import pytest

from ledger.core.batch import Draft, seal_batch
from ledger.core.checkpoint import Checkpoint, sign_checkpoint
from ledger.core.errors import VerificationError
from ledger.core.note import Signer
from ledger.core.proof import inclusion_proof
from ledger.core.tree import CompactRange, NodeId
from ledger.core.verify import ProofLine, verify_bundle, verify_receipt

ORIGIN = "verify.test/log"
SIGNER = Signer.generate(ORIGIN)
KEY = [SIGNER.verifier]


def draft(i: int) -> Draft:
    return Draft(
        id=str(uuid.UUID(int=i)),
        device_id=f"d{i}",
        purpose="telemetry",
        action="grant" if i % 2 else "withdraw",
        policy_version=1,
        occurred_at="2026-11-29T10:00:00.000000Z",
        actor="user",
        method="settings",
        evidence={},
    )


def build(count: int, batch: int = 7) -> tuple[list[bytes], list[str], dict[NodeId, bytes]]:
    """A log of `count` entries sealed in batches; its leaves, every batch's checkpoint, its nodes."""
    tree, leaves, notes, nodes = CompactRange(), [], [], {}
    for begin in range(0, count, batch):
        drafts = [draft(i) for i in range(begin, min(begin + batch, count))]
        sealed = seal_batch(tree, drafts, ["ab" * 32] * len(drafts), "2026-11-29T10:00:01.000000Z", ORIGIN, SIGNER)
        tree = sealed.tree
        leaves += [s.leaf for s in sealed.sealed]
        notes.append(sealed.note)
        nodes.update(sealed.nodes)
    return leaves, notes, nodes


LEAVES, NOTES, NODES = build(40)
HEAD = NOTES[-1]


def fails(match: str, *args: object, **kwargs: object) -> None:
    with pytest.raises(VerificationError, match=match):
        verify_bundle(*args, **kwargs)  # type: ignore[arg-type]


def test_a_whole_log_verifies_and_so_does_consistency_with_every_held_checkpoint() -> None:
    report = verify_bundle(LEAVES, HEAD, KEY)
    assert (report.entries, report.first_index, report.full) == (40, 0, True)
    for held in NOTES:
        assert verify_bundle(LEAVES, HEAD, KEY, previous=held).previous is not None


def test_a_changed_byte_is_caught() -> None:
    altered = list(LEAVES)
    altered[4] = altered[4].replace(b'"withdraw"', b'"grant"')  # still canonical JSON
    assert altered[4] != LEAVES[4]
    fails("do not hash to the signed root", altered, HEAD, KEY)
    broken = list(LEAVES)
    broken[5] = broken[5].replace(b'"index":5', b'"index": 5')
    fails("entry on line 6: entry bytes are not in canonical form", broken, HEAD, KEY)


def test_a_deleted_entry_is_named() -> None:
    fails("line 13 has index 13, expected 12", LEAVES[:12] + LEAVES[13:], HEAD, KEY)


def test_swapped_entries_are_named() -> None:
    swapped = list(LEAVES)
    swapped[20], swapped[21] = swapped[21], swapped[20]
    fails("line 21 has index 21, expected 20", swapped, HEAD, KEY)


def test_a_truncated_export_is_caught() -> None:
    fails("39 entries, but the checkpoint signs a tree of 40", LEAVES[:-1], HEAD, KEY)


def test_a_truncated_log_is_caught_against_a_held_checkpoint() -> None:
    # The operator dropped the last batches and serves an older checkpoint: only a held one shows it.
    older = NOTES[3]
    assert verify_bundle(LEAVES[:28], older, KEY).entries == 28
    fails("the held checkpoint covers 40 entries but the export's only 28", LEAVES[:28], older, KEY, previous=HEAD)


def test_rewritten_history_is_caught_against_a_held_checkpoint() -> None:
    # Someone with the key rewrote entry 3 and re-signed: the new export verifies on its own...
    rewritten = list(LEAVES)
    rewritten[3] = rewritten[3].replace(b'"grant"', b'"withdraw"')
    tree = CompactRange()
    for leaf in rewritten:
        from ledger.core.rfc6962 import leaf_hash

        tree.append(leaf_hash(leaf))
    resigned = sign_checkpoint(Checkpoint(ORIGIN, tree.size, tree.root()), SIGNER)
    assert verify_bundle(rewritten, resigned, KEY).entries == 40
    # ...but not against a checkpoint held from before.
    fails("history was rewritten", rewritten, resigned, KEY, previous=NOTES[1])


def test_a_forged_signature_or_the_wrong_key_is_caught() -> None:
    forged = HEAD.replace(HEAD.split(" ")[-1], "A" * 88 + "\n")
    fails("forged signature, or not the key you trust", LEAVES, forged, KEY)
    fails("forged signature, or not the key you trust", LEAVES, HEAD, [Signer.generate(ORIGIN).verifier])
    impostor = Signer.generate(ORIGIN)
    fails("forged signature", LEAVES, sign_checkpoint(Checkpoint(ORIGIN, 40, bytes(32)), impostor), KEY)


def test_a_checkpoint_that_does_not_match_its_entries_is_caught() -> None:
    fails("signs a tree of 35", LEAVES, NOTES[4], KEY)
    other = sign_checkpoint(Checkpoint(ORIGIN, 40, bytes(32)), SIGNER)
    fails("do not hash to the signed root", LEAVES, other, KEY)


def proof_lines(start: int, end: int, size: int = 40) -> list[bytes]:
    return [
        json.dumps(
            {"index": i, "tree_size": size, "proof": [h.hex() for h in inclusion_proof(i, size, NODES)]}
        ).encode()
        for i in range(start, end)
    ]


def test_a_filtered_export_verifies_each_entry_by_its_proof() -> None:
    report = verify_bundle(LEAVES[10:20], HEAD, KEY, proofs=proof_lines(10, 20))
    assert (report.entries, report.first_index, report.full) == (10, 10, False)
    altered = list(LEAVES[10:20])
    altered[4] = (
        altered[4].replace(b'"d14"', b'"d99"') if b'"d14"' in altered[4] else altered[4].replace(b"ab", b"ba", 1)
    )
    fails("entry 14: inclusion proof does not lead to the root", altered, HEAD, KEY, proofs=proof_lines(10, 20))
    fails("entry 19 has no inclusion proof", LEAVES[10:20], HEAD, KEY, proofs=proof_lines(10, 19))
    fails("more lines", LEAVES[10:20], HEAD, KEY, proofs=proof_lines(10, 21))
    fails(
        "only be checked against a full export", LEAVES[10:20], HEAD, KEY, proofs=proof_lines(10, 20), previous=NOTES[0]
    )


def test_receipts_verify_and_tampered_ones_do_not() -> None:
    tree = CompactRange()
    sealed = seal_batch(tree, [draft(0), draft(1)], ["cd" * 32] * 2, "2026-11-29T10:00:01.000000Z", ORIGIN, SIGNER)
    s = sealed.sealed[1]
    receipt = {
        "device_id": "d1",
        "index": s.entry.index,
        "entry": json.loads(s.leaf),
        "leaf": s.leaf.decode(),
        "leaf_hash": s.leaf_hash.hex(),
        "checkpoint": s.checkpoint,
        "inclusion_proof": [h.hex() for h in s.inclusion_proof],
        "consistency_token": "ct1.2",
    }
    assert verify_receipt(json.dumps(receipt).encode(), KEY).index == 1
    for field, value, message in [
        ("leaf", s.leaf.decode().replace("grant", "withdraw"), "does not match its leaf|not the hash"),
        ("entry", {**receipt["entry"], "purpose": "pixverse_sharing"}, "does not match its leaf"),
        ("leaf_hash", "00" * 32, "not the hash of the leaf"),
        ("inclusion_proof", ["00" * 32], "inclusion proof"),
        ("checkpoint", s.checkpoint.replace("2\n", "3\n", 1), "forged signature"),
        ("index", 0, "says index 0"),
    ]:
        with pytest.raises(VerificationError, match=message):
            verify_receipt(json.dumps({**receipt, field: value}).encode(), KEY)
    with pytest.raises(VerificationError, match="not a receipt"):
        verify_receipt(b'{"leaf": 1}', KEY)
    with pytest.raises(VerificationError, match="forged signature"):
        verify_receipt(json.dumps(receipt).encode(), [Signer.generate(ORIGIN).verifier])


def test_proof_line_shape() -> None:
    assert ProofLine(3, 40, ["aa"]).index == 3
