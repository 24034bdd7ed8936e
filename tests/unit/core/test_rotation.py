"""Key rotation, offline: a log signed by key A up to some size and by key B after it verifies
with the keys the verifier gives, and never with a key it did not give."""

import uuid

import msgspec
import pytest

from ledger.core.batch import Draft, Sealed, seal_batch
from ledger.core.checkpoint import Checkpoint, sign_checkpoint
from ledger.core.errors import VerificationError
from ledger.core.note import Signer
from ledger.core.rfc6962 import leaf_hash
from ledger.core.tree import CompactRange
from ledger.core.verify import verify_bundle, verify_receipt
from ledger.errors import ConfigError
from ledger.keys import key_ring, log_keys
from ledger.models import Receipt
from ledger.settings import parse

ORIGIN = "rotation.test/log"
OLD = Signer.generate(ORIGIN)
NEW = Signer.generate(ORIGIN)  # same name, as a rotation usually keeps it: only the key id differs


def draft(i: int) -> Draft:
    return Draft(
        id=str(uuid.UUID(int=i)),
        device_id=f"d{i}",
        purpose="telemetry",
        action="grant",
        policy_version=1,
        occurred_at="2026-11-29T10:00:00.000000Z",
        actor="user",
        method="settings",
        evidence={},
    )


def build() -> tuple[list[bytes], list[str], list[Sealed]]:
    """Ten batches of three: the first five signed by OLD, the rest by NEW."""
    tree, leaves, notes, receipts = CompactRange(), [], [], []
    for batch in range(10):
        signer = OLD if batch < 5 else NEW
        drafts = [draft(i) for i in range(batch * 3, batch * 3 + 3)]
        sealed = seal_batch(tree, drafts, ["ab" * 32] * 3, "2026-11-29T10:00:01.000000Z", ORIGIN, signer)
        tree = sealed.tree
        leaves += [s.leaf for s in sealed.sealed]
        notes.append(sealed.note)
        receipts += sealed.sealed
    return leaves, notes, receipts


LEAVES, NOTES, SEALED = build()
HELD_OLD, HEAD_NEW = NOTES[2], NOTES[-1]  # sizes 9 (signed by OLD) and 30 (signed by NEW)


def test_a_bundle_across_the_rotation_verifies_with_the_key_of_its_checkpoint() -> None:
    report = verify_bundle(LEAVES, HEAD_NEW, [NEW.verifier])
    assert (report.entries, report.checkpoint.size) == (30, 30)


def test_the_held_checkpoint_of_the_old_key_needs_the_old_key_given_too() -> None:
    with pytest.raises(
        VerificationError, match=rf"held checkpoint: no signature by a known key; .*{OLD.verifier.id.hex()}"
    ):
        verify_bundle(LEAVES, HEAD_NEW, [NEW.verifier], previous=HELD_OLD)
    report = verify_bundle(LEAVES, HEAD_NEW, [NEW.verifier, OLD.verifier], previous=HELD_OLD)
    assert report.previous is not None
    assert report.previous.size == 9


def test_the_old_key_alone_does_not_verify_a_checkpoint_of_the_new_one() -> None:
    with pytest.raises(
        VerificationError, match=rf"^checkpoint: .*signed by {ORIGIN} \(key id {NEW.verifier.id.hex()}\)"
    ):
        verify_bundle(LEAVES, HEAD_NEW, [OLD.verifier], previous=HELD_OLD)


def test_a_key_the_verifier_did_not_give_is_never_trusted() -> None:
    """What a forged bundle would do: sign a checkpoint of altered entries with a key of its own
    (listed in its keys file, with the right name). Only the keys given count."""
    forger = Signer.generate(ORIGIN)
    altered = [*LEAVES[:-1], LEAVES[-1].replace(b'"grant"', b'"withdraw"')]
    tree = CompactRange()
    for leaf in altered:
        tree.append(leaf_hash(leaf))
    forged = sign_checkpoint(Checkpoint(ORIGIN, tree.size, tree.root()), forger)
    with pytest.raises(VerificationError, match="no signature by a known key"):
        verify_bundle(altered, forged, [OLD.verifier, NEW.verifier])
    assert verify_bundle(altered, forged, [forger.verifier]).entries == 30  # what trusting it would mean


def receipt(index: int) -> bytes:
    """The receipt the service gave for entry `index`, proven in its own batch's checkpoint."""
    s = SEALED[index]
    return msgspec.json.encode(
        Receipt(
            "d",
            index,
            s.entry,
            s.leaf.decode(),
            s.leaf_hash.hex(),
            s.checkpoint,
            [h.hex() for h in s.inclusion_proof],
            f"ct1.{s.tree_size}",
        )
    )


def test_receipts_verify_with_the_key_that_signed_them() -> None:
    before, after = receipt(4), receipt(20)
    assert verify_receipt(before, [OLD.verifier]).index == 4
    assert verify_receipt(after, [NEW.verifier]).index == 20
    for held in (before, after):
        verify_receipt(held, [NEW.verifier, OLD.verifier])
    with pytest.raises(VerificationError, match="the receipt's checkpoint: no signature by a known key"):
        verify_receipt(before, [NEW.verifier])
    with pytest.raises(VerificationError, match="the receipt's checkpoint: no signature by a known key"):
        verify_receipt(after, [OLD.verifier])


def test_the_key_ring_puts_the_signer_first_and_each_key_once() -> None:
    trusted = (OLD.verifier.vkey, NEW.verifier.vkey, OLD.verifier.vkey)
    assert [v.id for v in log_keys(NEW, trusted)] == [NEW.verifier.id, OLD.verifier.id]
    ring = key_ring(NEW, trusted, OLD.verifier)
    assert ring.signer.id == NEW.verifier.id
    assert [v.id for v in ring.others] == [OLD.verifier.id]
    assert ring.trusts(OLD.verifier.id.hex())
    assert not ring.trusts(Signer.generate(ORIGIN).verifier.id.hex())


def test_trusted_keys_are_read_from_the_environment_and_checked() -> None:
    both = f"{OLD.verifier.vkey}, {NEW.verifier.vkey}\n"
    assert parse({"LEDGER_TRUSTED_KEYS": both}).trusted_keys == (OLD.verifier.vkey, NEW.verifier.vkey)
    assert parse({}).trusted_keys == ()
    with pytest.raises(ConfigError, match="LEDGER_TRUSTED_KEYS: 'nonsense' is not a verifier key"):
        parse({"LEDGER_TRUSTED_KEYS": f"{OLD.verifier.vkey} nonsense"})
    with pytest.raises(ConfigError, match="LEDGER_TRUSTED_KEYS"):
        parse({"LEDGER_TRUSTED_KEYS": OLD.skey})  # the private key is refused, not taken for its public half
