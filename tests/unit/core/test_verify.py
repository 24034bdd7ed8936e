"""Offline verification: every kind of tampering is caught, and named."""

import contextlib
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.core.batch import Draft, seal_batch
from ledger.core.checkpoint import Checkpoint, sign_checkpoint
from ledger.core.entry import subject_for
from ledger.core.errors import VerificationError
from ledger.core.note import Signer
from ledger.core.proof import inclusion_proof
from ledger.core.tree import CompactRange, NodeId
from ledger.core.verify import ProofLine, ReceiptFile, verify_bundle, verify_receipt, verify_receipts
from ledger.models import PersonalExport, Receipt

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
    fails("entry on line 6: log entry bytes are not in canonical form", broken, HEAD, KEY)


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


# --- receipt files: typed decoding, every malformed one a VerificationError (issue 11) ---------

DEVICE = "dev-1"
SALT = bytes(range(32))
SUBJECT = subject_for(SALT, DEVICE)
OTHER = subject_for(SALT, "someone-else")
# One batch of six: the device's entries at 0, 2, 3 and 5, another subject's at 1 and 4.
SEALED = seal_batch(
    CompactRange(),
    [draft(i) for i in range(6)],
    [SUBJECT, OTHER, SUBJECT, SUBJECT, OTHER, SUBJECT],
    "2026-11-29T10:00:01.000000Z",
    ORIGIN,
    SIGNER,
).sealed
MINE = [0, 2, 3, 5]


def receipt_of(index: int, device_id: str = DEVICE) -> Receipt:
    """A receipt built with the service's own Struct, as the API encodes it."""
    s = SEALED[index]
    return Receipt(
        device_id, s.entry.index, s.entry, s.leaf.decode(), s.leaf_hash.hex(), s.checkpoint,
        [h.hex() for h in s.inclusion_proof], f"ct1.{s.tree_size}",
    )  # fmt: skip


def receipt_dict(index: int = 2) -> dict[str, Any]:
    return dict(json.loads(msgspec.json.encode(receipt_of(index))))


def export_dict(indexes: list[int] = MINE) -> dict[str, Any]:
    export = PersonalExport(DEVICE, SUBJECT, SALT.hex(), [receipt_of(i) for i in indexes], {})
    return dict(json.loads(msgspec.json.encode(export)))


def refused(data: bytes | dict[str, Any] | list[Any], match: str, single: bool = True) -> None:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    with pytest.raises(VerificationError, match=match):
        verify_receipts(raw, KEY)
    if single:
        with pytest.raises(VerificationError, match=match):
            verify_receipt(raw, KEY)


def test_a_receipt_round_trips_through_the_typed_decoder_and_verifies() -> None:
    encoded = msgspec.json.encode(receipt_of(2))
    decoded = msgspec.json.decode(encoded, type=ReceiptFile)
    assert msgspec.json.decode(msgspec.json.encode(decoded), type=ReceiptFile) == decoded
    assert json.loads(msgspec.json.encode(decoded)) == json.loads(encoded)
    assert verify_receipt(encoded, KEY) == SEALED[2].entry
    got = verify_receipts(encoded, KEY)
    assert (got.entries, got.device_id, got.bound) == ([SEALED[2].entry], DEVICE, False)


def test_a_receipt_needs_only_what_its_proof_needs_and_ignores_unknown_fields() -> None:
    minimal = {k: v for k, v in receipt_dict().items() if k not in ("device_id", "consistency_token")}
    assert verify_receipt(json.dumps(minimal).encode(), KEY).index == 2
    assert verify_receipt(json.dumps({**receipt_dict(), "note": "kept by me"}).encode(), KEY).index == 2
    # The entry object may be written with any key order and spacing: it is compared as an entry.
    spaced = receipt_dict()
    spaced["entry"] = dict(reversed(list(spaced["entry"].items())))
    assert verify_receipt(json.dumps(spaced, indent=2).encode(), KEY).index == 2


def test_a_persons_export_is_verified_whole() -> None:
    got = verify_receipts(json.dumps(export_dict()).encode(), KEY)
    assert [e.index for e in got.entries] == MINE
    assert (got.device_id, got.bound) == (DEVICE, True)
    # A history (GET /v1/devices/{id}/history) has no salt: verified, but not bound to the device.
    history = {"device_id": DEVICE, "entries": export_dict()["entries"]}
    got = verify_receipts(json.dumps(history).encode(), KEY)
    assert ([e.index for e in got.entries], got.bound) == (MINE, False)


def test_one_altered_receipt_in_an_export_is_named() -> None:
    export = export_dict()
    export["entries"][2]["leaf_hash"] = "00" * 32
    refused(export, r"entries\[2\]: leaf_hash is not the hash of the leaf", single=False)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda e: e.update(salt=bytes(32).hex()), "the salt does not turn 'dev-1' into the subject"),
        (lambda e: e.update(salt="zz"), "salt is not hex"),
        (lambda e: e.update(device_id="dev-2"), "a receipt of device 'dev-1', not 'dev-2'"),
        (lambda e: e.update(subject=OTHER), "does not turn 'dev-1' into the subject"),
        (lambda e: e["entries"].append(json.loads(msgspec.json.encode(receipt_of(4)))), r"entries\[4\]: entry 4 is of another subject"),
        (lambda e: e.update(entries=[]), "holds no receipts: nothing to verify"),
        (lambda e: e.update(entries=None), "not a person's export: Expected `array`, got `null` - at `\\$.entries`"),
        (lambda e: e.update(entries={}), "not a person's export: Expected `array`, got `object` - at `\\$.entries`"),
        (lambda e: e.update(entries=[1]), r"Expected `object`, got `int` - at `\$.entries\[0\]`"),
        (lambda e: e["entries"][1].pop("leaf"), r"missing required field `leaf` - at `\$.entries\[1\]`"),
        (lambda e: e["entries"][3].update(index="5"), r"Expected `int`, got `str` - at `\$.entries\[3\].index`"),
        (lambda e: e.pop("device_id"), "missing required field `device_id`"),
        (lambda e: e.update(device_id=7), "Expected `str`, got `int` - at `\\$.device_id`"),
    ],
)  # fmt: skip
def test_a_malformed_or_mismatched_export_is_a_verification_error(change: Callable[[Any], Any], match: str) -> None:
    export = export_dict()
    change(export)
    refused(export, match, single=False)


def test_verify_receipt_on_an_export_says_what_it_is() -> None:
    with pytest.raises(VerificationError, match=r"person's export or a history \(4 receipts\), not one receipt"):
        verify_receipt(json.dumps(export_dict()).encode(), KEY)


def short_signature(note: str) -> str:
    """The same key name and id, but a signature of 10 bytes: PyNaCl raises ValueError on it."""
    import base64

    text, _, line = note.rstrip("\n").rpartition("\n")
    prefix, _, b64 = line.rpartition(" ")
    raw = base64.b64decode(b64)
    return f"{text}\n{prefix} {base64.b64encode(raw[:4] + bytes(10)).decode()}\n"


RECEIPT = receipt_dict()
ENTRY = RECEIPT["entry"]
MALFORMED_RECEIPTS: list[tuple[str, bytes | dict[str, Any] | list[Any], str]] = [
    ("empty file", b"", "not a receipt or a person's export: Input data was truncated"),
    ("not JSON", b"this is not json", "not a receipt or a person's export: JSON is malformed"),
    ("not UTF-8", b'{"leaf": "\xff"}', "not a receipt: Invalid UTF-8"),
    ("cut short", json.dumps(RECEIPT).encode()[:100], "not a receipt or a person's export"),
    ("trailing junk", json.dumps(RECEIPT).encode() + b"]", "not a receipt or a person's export: JSON is malformed"),
    ("a JSON array", [RECEIPT], "Expected `object`, got `array`"),
    ("a number", b"42", "Expected `object`, got `int`"),
    ("null", b"null", "Expected `object`, got `null`"),
    ("a string", b'"receipt"', "Expected `object`, got `str`"),
    ("an empty object", {}, "not a receipt: Object missing required field"),
    *[(f"no {f}", {k: v for k, v in RECEIPT.items() if k != f}, f"missing required field `{f}`")
      for f in ("index", "entry", "leaf", "leaf_hash", "checkpoint", "inclusion_proof")],
    ("index a string", {**RECEIPT, "index": "2"}, "Expected `int`, got `str` - at `\\$.index`"),
    ("index negative", {**RECEIPT, "index": -1}, "Expected `int` >= 0 - at `\\$.index`"),
    ("index a float", {**RECEIPT, "index": 2.0}, "Expected `int`, got `float`"),
    ("index huge", {**RECEIPT, "index": 2**70}, "the receipt says index 1180591620717411303424, its entry 2"),
    ("leaf a number", {**RECEIPT, "leaf": 5}, "Expected `str`, got `int` - at `\\$.leaf`"),
    ("leaf an object", {**RECEIPT, "leaf": ENTRY}, "Expected `str`, got `object` - at `\\$.leaf`"),
    ("leaf not JSON", {**RECEIPT, "leaf": "grant"}, "the receipt's leaf: not a log entry"),
    ("leaf not canonical", {**RECEIPT, "leaf": json.dumps(ENTRY)}, "the receipt's leaf: log entry bytes are not in canonical form"),
    ("leaf_hash a list", {**RECEIPT, "leaf_hash": ["00"]}, "Expected `str`, got `array` - at `\\$.leaf_hash`"),
    ("leaf_hash not hex", {**RECEIPT, "leaf_hash": "xyz"}, "leaf_hash and inclusion_proof must be hex"),
    ("leaf_hash short", {**RECEIPT, "leaf_hash": "00"}, "leaf_hash is not the hash of the leaf"),
    ("proof a string", {**RECEIPT, "inclusion_proof": "00"}, "Expected `array`, got `str` - at `\\$.inclusion_proof`"),
    ("proof of numbers", {**RECEIPT, "inclusion_proof": [1]}, "Expected `str`, got `int` - at `\\$.inclusion_proof\\[0\\]`"),
    ("proof not hex", {**RECEIPT, "inclusion_proof": ["zz"]}, "leaf_hash and inclusion_proof must be hex"),
    ("proof element short", {**RECEIPT, "inclusion_proof": ["00"]}, "inclusion proof: inclusion proof has 1 hashes, the tree needs 3"),
    ("proof too long", {**RECEIPT, "inclusion_proof": RECEIPT["inclusion_proof"] + ["00" * 32]}, "inclusion proof: "),
    ("checkpoint a number", {**RECEIPT, "checkpoint": 7}, "Expected `str`, got `int` - at `\\$.checkpoint`"),
    ("checkpoint empty", {**RECEIPT, "checkpoint": ""}, "the receipt's checkpoint: malformed note"),
    ("checkpoint junk", {**RECEIPT, "checkpoint": "\u2014 \n\n\u2014 x y\n"}, "the receipt's checkpoint"),
    ("checkpoint short signature", {**RECEIPT, "checkpoint": short_signature(RECEIPT["checkpoint"])}, "the receipt's checkpoint: invalid signature"),
    ("entry a string", {**RECEIPT, "entry": "grant"}, "entry object is not a log entry: Expected `object`, got `str`"),
    ("entry an array", {**RECEIPT, "entry": [ENTRY]}, "entry object is not a log entry: Expected `object`, got `array`"),
    ("entry null", {**RECEIPT, "entry": None}, "entry object is not a log entry: Expected `object`, got `null`"),
    ("entry empty", {**RECEIPT, "entry": {}}, "entry object is not a log entry: Object missing required field"),
    ("entry missing a field", {**RECEIPT, "entry": {k: v for k, v in ENTRY.items() if k != "subject"}}, "missing required field `subject`"),
    ("entry index a string", {**RECEIPT, "entry": {**ENTRY, "index": "2"}}, "Expected `int`, got `str` - at `\\$.index`"),
    ("entry action unknown", {**RECEIPT, "entry": {**ENTRY, "action": "maybe"}}, "entry object is not a log entry: Invalid enum value 'maybe'"),
    ("entry version 2", {**RECEIPT, "entry": {**ENTRY, "v": 2}}, "entry object is not a log entry"),
    ("entry extra field", {**RECEIPT, "entry": {**ENTRY, "extra": 1}}, "entry object is not a log entry: Object contains unknown field `extra`"),
    ("entry another one", {**RECEIPT, "entry": json.loads(SEALED[3].leaf)}, "entry object does not match its leaf bytes"),
    ("device_id a number", {**RECEIPT, "device_id": 5}, "Expected `str | null`, got `int` - at `\\$.device_id`"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "match"), [(d, m) for _, d, m in MALFORMED_RECEIPTS], ids=[n for n, _, _ in MALFORMED_RECEIPTS]
)
def test_every_malformed_receipt_is_a_verification_error(data: bytes | dict[str, Any], match: str) -> None:
    refused(data, match)


@pytest.mark.parametrize("data", [d for _, d, _ in MALFORMED_RECEIPTS], ids=[n for n, _, _ in MALFORMED_RECEIPTS])
def test_verify_receipt_on_a_malformed_file_fails_cleanly_in_the_cli(
    data: bytes | dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ledger.cli import main

    path = tmp_path / "receipt.json"
    path.write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())
    assert main(["verify-receipt", str(path), "--key", KEY[0].vkey]) == 1
    err = capsys.readouterr().err
    assert err.startswith("FAILED: ")
    assert "Traceback" not in err


# --- bundle files: each malformed file a VerificationError too ---------------------------------


@pytest.mark.parametrize(
    ("checkpoint", "match"),
    [
        ("", "checkpoint: malformed note"),
        ("garbage", "checkpoint: malformed note"),
        ("\n\n", "checkpoint: "),
        (HEAD.replace("\n\n", "\n"), "checkpoint: "),
        (short_signature(HEAD), "checkpoint: invalid signature"),
        (HEAD.replace("40\n", "4O\n", 1), "checkpoint: "),
    ],
)
def test_a_malformed_bundle_checkpoint_is_a_verification_error(checkpoint: str, match: str) -> None:
    fails(match, LEAVES, checkpoint, KEY)
    fails(match, LEAVES, HEAD, KEY, previous=checkpoint)
    fails(match, LEAVES, checkpoint.encode(), KEY)


def test_checkpoint_files_may_be_given_as_bytes_and_must_be_utf8() -> None:
    assert verify_bundle(LEAVES, HEAD.encode(), KEY, previous=NOTES[2].encode()).previous is not None
    fails("checkpoint: not UTF-8 text", LEAVES, b"\xff\xfe" + HEAD.encode(), KEY)
    fails("held checkpoint: not UTF-8 text", LEAVES, HEAD, KEY, previous=b"\xff")


@pytest.mark.parametrize(
    ("line", "match"),
    [
        (b"", "malformed proof line"),
        (b"not json", "malformed proof line"),
        (b"\xff\xfe", "malformed proof line"),
        (b"[10, 40, []]", "malformed proof line"),
        (b'{"index": 10, "tree_size": 40}', "malformed proof line"),
        (b'{"index": "10", "tree_size": 40, "proof": []}', "malformed proof line"),
        (b'{"index": 10, "tree_size": 40, "proof": [], "extra": 1}', "malformed proof line"),
        (b'{"index": 10, "tree_size": 40, "proof": "aa"}', "malformed proof line"),
        (b'{"index": 10, "tree_size": 40, "proof": [1]}', "malformed proof line"),
        (
            b'{"index": 10, "tree_size": 40, "proof": ["zz"]}',
            "entry 10: inclusion proof has 1 hashes, the tree needs 6",
        ),
        (
            b'{"index": 10, "tree_size": 40, "proof": ["zz", "", "", "", "", ""]}',
            "entry 10: a proof element is not hex",
        ),
        (
            b'{"index": 10, "tree_size": 40, "proof": ["00"]}',
            "entry 10: inclusion proof has 1 hashes, the tree needs 6",
        ),
        (b'{"index": 11, "tree_size": 40, "proof": []}', "entry 10: its proof is for index 11"),
        (b'{"index": 10, "tree_size": 39, "proof": []}', "in a tree of 39"),
    ],
)
def test_a_malformed_proof_line_is_a_verification_error(line: bytes, match: str) -> None:
    fails(match, LEAVES[10:12], HEAD, KEY, proofs=[line, *proof_lines(11, 12)])


@pytest.mark.parametrize(
    ("line", "match"),
    [
        (b"", "entry on line 1: not a log entry"),
        (b"\xff", "entry on line 1: not a log entry"),
        (b"[]", "entry on line 1: not a log entry"),
        (b"{}", "entry on line 1: not a log entry"),
        (b"null", "entry on line 1: not a log entry"),
    ],
)
def test_a_malformed_entries_line_is_a_verification_error(line: bytes, match: str) -> None:
    fails(match, [line, *LEAVES[1:]], HEAD, KEY)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None)
@given(
    field=st.sampled_from([*RECEIPT, "entries", "salt", "subject"]),
    value=JSON_VALUES,
    inside_export=st.booleans(),
    drop=st.booleans(),
)
def test_any_json_in_any_field_verifies_or_is_a_verification_error(
    field: str, value: Any, inside_export: bool, drop: bool
) -> None:
    if inside_export:
        data: dict[str, Any] = export_dict()
        target = data if field in ("entries", "salt", "subject", "device_id") else data["entries"][1]
    else:
        data = target = receipt_dict()
    if drop:
        target.pop(field, None)
    else:
        target[field] = value
    with contextlib.suppress(VerificationError):
        verify_receipts(json.dumps(data).encode(), KEY)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=300)
    | st.builds(lambda b, i: json.dumps(RECEIPT).encode()[:i] + b, st.binary(max_size=8), st.integers(0, 2000))
)
def test_any_bytes_verify_or_are_a_verification_error(data: bytes) -> None:
    with contextlib.suppress(VerificationError):
        verify_receipts(data, KEY)
