"""Consistency tokens: an opaque name for "the log up to this size", for read-your-writes."""

from ledger.core.errors import LedgerError

__all__ = ["PREFIX", "BadToken", "consistency_token", "parse_consistency_token"]

PREFIX = "ct1."


class BadToken(LedgerError):
    """A string that is not a consistency token from this service."""


def consistency_token(size: int) -> str:
    return f"{PREFIX}{size}"


def parse_consistency_token(token: str) -> int:
    """The log size a token names; raise BadToken for anything else."""
    digits = token[len(PREFIX) :]
    if not token.startswith(PREFIX) or not digits.isascii() or not digits.isdigit() or len(digits) > 19:
        raise BadToken(f"{token!r} is not a consistency token from this service")
    return int(digits)
