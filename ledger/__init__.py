"""Consent Ledger: a signed, append-only log of consent and the answers drawn from it."""

__version__ = "0.1.0"
