"""C2SP tlog-checkpoint: the signed statement of a tree's size and root."""

import base64
import binascii
from typing import NamedTuple

from ledger.core import note
from ledger.core.errors import NoteError
from ledger.core.rfc6962 import HASH_SIZE

__all__ = ["Checkpoint", "open_checkpoint", "parse_body", "sign_checkpoint"]


class Checkpoint(NamedTuple):
    origin: str
    size: int
    root: bytes

    def body(self) -> str:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"


def parse_body(text: str) -> Checkpoint:
    """Read origin, size and root; extension lines after the root are allowed and ignored."""
    lines = text.split("\n")
    if len(lines) < 4 or lines[-1] != "":
        raise NoteError("a checkpoint has an origin, a size and a root, each on its own line")
    origin, size_text, root_text = lines[:3]
    if not origin or not size_text.isdigit() or (size_text != "0" and size_text.startswith("0")):
        raise NoteError("malformed checkpoint origin or size")
    try:
        root = base64.b64decode(root_text, validate=True)
    except binascii.Error:
        raise NoteError("malformed checkpoint root") from None
    if len(root) != HASH_SIZE:
        raise NoteError("checkpoint root is not a SHA-256 hash")
    return Checkpoint(origin, int(size_text), root)


def sign_checkpoint(checkpoint: Checkpoint, signer: note.Signer) -> str:
    return note.sign(checkpoint.body(), signer)


def open_checkpoint(signed: str, verifiers: list[note.Verifier], origin: str | None = None) -> Checkpoint:
    """Verify the note's signature and return its checkpoint; optionally insist on the origin."""
    checkpoint = parse_body(note.open_note(signed, verifiers).text)
    if origin is not None and checkpoint.origin != origin:
        raise NoteError(f"checkpoint is for origin {checkpoint.origin!r}, not {origin!r}")
    return checkpoint
