"""C2SP signed notes with Ed25519 keys, and the Go sumdb key encodings.

A note is UTF-8 text ending in a newline, then a blank line, then one line per signature:
`— <key name> <base64(4-byte key id || signature)>`. The key id binds the name and algorithm:
SHA-256(name || "\\n" || 0x01 || public key)[:4].
"""

import base64
import binascii
import hashlib
import hmac
from typing import NamedTuple

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from ledger.core.errors import NoteError

__all__ = [
    "ALG_ED25519",
    "PRIVATE_KEY_PREFIX",
    "SIGNATURE_PREFIX",
    "SIGNATURE_SIZE",
    "Note",
    "Signature",
    "Signer",
    "Verifier",
    "key_id",
    "open_note",
    "sign",
]

ALG_ED25519 = b"\x01"
SIGNATURE_PREFIX = "— "
PRIVATE_KEY_PREFIX = "PRIVATE+KEY+"


def _check_name(name: str) -> None:
    if not name or any(c.isspace() or c == "+" for c in name) or not name.isprintable():
        raise NoteError(f"key name {name!r} must be non-empty, printable, without spaces or '+'")


def key_id(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + ALG_ED25519 + public_key).digest()[:4]


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise NoteError("invalid base64") from None


SIGNATURE_SIZE = 64


class Verifier:
    """A public key that checks signatures of one key name."""

    __slots__ = ("id", "key", "name")

    def __init__(self, name: str, public_key: bytes) -> None:
        _check_name(name)
        if len(public_key) != 32:
            raise NoteError("an Ed25519 public key is 32 bytes")
        self.name = name
        self.key = VerifyKey(public_key)
        self.id = key_id(name, public_key)

    @classmethod
    def from_vkey(cls, vkey: str) -> "Verifier":
        """Parse `<name>+<8 hex key id>+<base64(0x01 || public key)>`."""
        name, _, rest = vkey.strip().partition("+")
        hex_id, _, b64 = rest.partition("+")
        raw = _b64decode(b64)
        if len(hex_id) != 8 or raw[:1] != ALG_ED25519:
            raise NoteError("not an Ed25519 verifier key")
        verifier = cls(name, raw[1:])
        if verifier.id.hex() != hex_id.lower():
            raise NoteError("verifier key id does not match its name and key")
        return verifier

    @property
    def vkey(self) -> str:
        raw = ALG_ED25519 + bytes(self.key)
        return f"{self.name}+{self.id.hex()}+{base64.b64encode(raw).decode()}"

    def verify(self, text: bytes, signature: bytes) -> bool:
        # PyNaCl raises ValueError, not BadSignatureError, for a signature of the wrong length.
        if len(signature) != SIGNATURE_SIZE:
            return False
        try:
            self.key.verify(text, signature)
        except BadSignatureError:
            return False
        return True


class Signer:
    """A private key that signs notes under one key name."""

    __slots__ = ("_key", "verifier")

    def __init__(self, name: str, seed: bytes) -> None:
        if len(seed) != 32:
            raise NoteError("an Ed25519 seed is 32 bytes")
        self._key = SigningKey(seed)
        self.verifier = Verifier(name, bytes(self._key.verify_key))

    @classmethod
    def generate(cls, name: str) -> "Signer":
        return cls(name, bytes(SigningKey.generate()))

    @classmethod
    def from_skey(cls, skey: str) -> "Signer":
        """Parse `PRIVATE+KEY+<name>+<8 hex key id>+<base64(0x01 || seed)>`."""
        if not skey.startswith(PRIVATE_KEY_PREFIX):
            raise NoteError("not a signer key")
        name, _, rest = skey.strip()[len(PRIVATE_KEY_PREFIX) :].partition("+")
        hex_id, _, b64 = rest.partition("+")
        raw = _b64decode(b64)
        if raw[:1] != ALG_ED25519:
            raise NoteError("not an Ed25519 signer key")
        signer = cls(name, raw[1:])
        if signer.verifier.id.hex() != hex_id.lower():
            raise NoteError("signer key id does not match its name and key")
        return signer

    @property
    def skey(self) -> str:
        raw = ALG_ED25519 + bytes(self._key)
        v = self.verifier
        return f"{PRIVATE_KEY_PREFIX}{v.name}+{v.id.hex()}+{base64.b64encode(raw).decode()}"

    @property
    def name(self) -> str:
        return self.verifier.name

    def derive(self, label: str) -> SigningKey:
        """Another Ed25519 key for another purpose, derived from this one, so that a signature
        made for that purpose can never pass as one of this key's (domain separation)."""
        return SigningKey(hmac.new(bytes(self._key), label.encode(), hashlib.sha256).digest())

    def signature_line(self, text: str) -> str:
        signature = self._key.sign(text.encode()).signature
        return f"{SIGNATURE_PREFIX}{self.name} {base64.b64encode(self.verifier.id + signature).decode()}\n"


def _check_text(text: str) -> None:
    if not text.endswith("\n") or "\n\n" in text or text.startswith("\n"):
        raise NoteError("note text must be non-empty lines, each ending in a newline")
    if any(not line.isprintable() for line in text[:-1].split("\n")):
        raise NoteError("note text must not contain control characters")


def sign(text: str, *signers: Signer) -> str:
    _check_text(text)
    return text + "\n" + "".join(s.signature_line(text) for s in signers)


class Signature(NamedTuple):
    name: str
    key_id: bytes
    signature: bytes


class Note(NamedTuple):
    text: str
    signatures: list[Signature]
    verified_by: list[Verifier]


def open_note(note: str, verifiers: list[Verifier]) -> Note:
    """Parse a signed note and check it; raise NoteError unless a known key signed it.

    Signatures by unknown keys are kept but ignored, as C2SP requires; a signature that claims a
    known key and does not verify fails the whole note.
    """
    split = note.rfind("\n\n")
    if split < 0 or not note.endswith("\n"):
        raise NoteError("malformed note: no signature block")
    text, block = note[: split + 1], note[split + 2 :]
    _check_text(text)
    known = {(v.name, v.id): v for v in verifiers}
    signatures: list[Signature] = []
    verified: list[Verifier] = []
    for line in block[:-1].split("\n"):
        if not line.startswith(SIGNATURE_PREFIX):
            raise NoteError("malformed signature line")
        name, _, b64 = line[len(SIGNATURE_PREFIX) :].partition(" ")
        raw = _b64decode(b64)
        if len(raw) < 5 or not name:
            raise NoteError("malformed signature line")
        signature = Signature(name, raw[:4], raw[4:])
        signatures.append(signature)
        verifier = known.get((name, signature.key_id))
        if verifier is None:
            continue
        if not verifier.verify(text.encode(), signature.signature):
            raise NoteError(f"invalid signature by {name}")
        verified.append(verifier)
    if not verified:
        by = ", ".join(f"{s.name} (key id {s.key_id.hex()})" for s in signatures)
        raise NoteError(f"no signature by a known key; signed by {by}")
    return Note(text, signatures, verified)
