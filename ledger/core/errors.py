"""The one error family of the pure core."""


class LedgerError(Exception):
    """Base of every error the ledger raises on purpose."""


class VerificationError(LedgerError):
    """Something claimed to be part of the log does not verify."""


class ProofError(VerificationError):
    """A Merkle proof does not prove what it claims."""


class NoteError(VerificationError):
    """A signed note is malformed or carries no valid signature from a known key."""


class EntryError(LedgerError):
    """Bytes that are not a valid, canonically encoded log entry."""
