"""API tokens: how they are made, stored and matched to scopes."""

import hashlib
import hmac
import secrets
from typing import Literal, get_args

Scope = Literal["consent:check", "consent:write", "audit:read", "admin"]
SCOPES: tuple[str, ...] = get_args(Scope)
TOKEN_PREFIX = "cl_"


def new_token() -> str:
    """256 random bits; the prefix lets secret scanners recognise a leaked token."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def same_hash(stored: bytes, presented: bytes) -> bool:
    return hmac.compare_digest(stored, presented)


def grants(held: list[str], needed: str) -> bool:
    """`admin` implies every scope."""
    return "admin" in held or needed in held
