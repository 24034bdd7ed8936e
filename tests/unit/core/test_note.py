"""Signed notes and checkpoints: known answers from Go and C2SP, round trips, and tampering."""

import json
from pathlib import Path

import pytest

from ledger.core import note
from ledger.core.checkpoint import Checkpoint, open_checkpoint, parse_body, sign_checkpoint
from ledger.core.errors import NoteError

VECTORS = json.loads((Path(__file__).parents[2] / "vectors" / "signed_note.json").read_text())
GO = VECTORS["go"]


def test_go_known_answer_signature_is_reproduced_byte_for_byte() -> None:
    signer = note.Signer.from_skey(GO["skey"])
    assert signer.verifier.vkey == GO["vkey"]
    assert signer.skey == GO["skey"]
    assert note.sign(GO["text"], signer) == GO["note"]


def test_go_and_c2sp_notes_open_with_their_verifier_keys() -> None:
    opened = note.open_note(GO["note"], [note.Verifier.from_vkey(GO["vkey"])])
    assert opened.text == GO["text"]
    c2sp = VECTORS["c2sp"]
    assert note.open_note(c2sp["note"], [note.Verifier.from_vkey(c2sp["vkey"])]).text == (
        "This is an example message.\n"
    )


def test_tampered_text_or_signature_fails() -> None:
    verifier = note.Verifier.from_vkey(GO["vkey"])
    with pytest.raises(NoteError):
        note.open_note(GO["note"].replace("cryptography", "cryptograpHy"), [verifier])
    sig_at = GO["note"].index("x08go")
    tampered = GO["note"][:sig_at] + "y" + GO["note"][sig_at + 1 :]
    with pytest.raises(NoteError):
        note.open_note(tampered, [verifier])


def test_unknown_keys_are_ignored_but_one_known_key_is_required() -> None:
    mine, other = note.Signer.generate("log.example/a"), note.Signer.generate("log.example/b")
    signed = note.sign("hello\n", mine, other)
    assert note.open_note(signed, [mine.verifier]).verified_by == [mine.verifier]
    with pytest.raises(NoteError):
        note.open_note(signed, [note.Signer.generate("log.example/c").verifier])


@pytest.mark.parametrize(
    "malformed",
    ["", "hello\n", "hello\n\n", "hello\n\n— \n", "hello\n\nnot a signature\n", "\n\n— a AAAAAAAA\n"],
)
def test_malformed_notes_are_refused(malformed: str) -> None:
    with pytest.raises(NoteError):
        note.open_note(malformed, [note.Verifier.from_vkey(GO["vkey"])])


@pytest.mark.parametrize("name", ["", "has space", "has+plus", "tab\tname"])
def test_bad_key_names_are_refused(name: str) -> None:
    with pytest.raises(NoteError):
        note.Signer.generate(name)


def test_vkey_with_wrong_id_is_refused() -> None:
    name, _, rest = GO["vkey"].partition("+")
    with pytest.raises(NoteError):
        note.Verifier.from_vkey(f"{name}+00000000+{rest.partition('+')[2]}")


def test_checkpoint_round_trip_and_origin() -> None:
    signer = note.Signer.generate("consent.example/log")
    checkpoint = Checkpoint("consent.example/log", 42, bytes(range(32)))
    signed = sign_checkpoint(checkpoint, signer)
    assert signed.startswith("consent.example/log\n42\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n\n— ")
    assert open_checkpoint(signed, [signer.verifier], origin="consent.example/log") == checkpoint
    with pytest.raises(NoteError):
        open_checkpoint(signed, [signer.verifier], origin="someone.else/log")


@pytest.mark.parametrize(
    "body",
    ["o\n", "o\n01\nAAAA\n", "o\n-1\nAAAA\n", "o\n1\nAAAA\n", "\n1\n" + "A" * 43 + "=\n", "o\n1\n!!\n"],
)
def test_malformed_checkpoint_bodies_are_refused(body: str) -> None:
    with pytest.raises(NoteError):
        parse_body(body)


def test_a_signature_of_the_wrong_length_is_refused_not_raised() -> None:
    signer = note.Signer.generate("length.test/log")
    text = b"length.test/log\n1\n" + b"A" * 44 + b"\n"
    for size in (0, 1, 63, 65, 128):
        assert not signer.verifier.verify(text, b"\x00" * size)
