"""Errors the service's edges raise and translate: configuration, storage, requests."""

from ledger.core.errors import LedgerError

__all__ = [
    "AppendOnlyViolation",
    "ConfigError",
    "ConsistencyTimeout",
    "IdempotencyConflict",
    "ImpossibleState",
    "InvalidRequest",
    "LogCorrupted",
    "MigrationError",
    "NameTaken",
    "NotFound",
    "Stale",
    "StorageError",
    "UnknownDevice",
    "UnprocessableRequest",
]


class ConfigError(LedgerError):
    """A configuration value is wrong; the message names the variable."""


class StorageError(LedgerError):
    """The database refused or lost an operation."""


class AppendOnlyViolation(StorageError):
    """PostgreSQL refused to change or remove a row of the log."""


class LogCorrupted(StorageError):
    """The stored tree does not match the latest signed checkpoint: the service stops appending."""


class MigrationError(StorageError):
    """A migration file is malformed or an applied one was edited."""


class InvalidRequest(LedgerError):
    """The caller asked for something that cannot be: answered with a 4xx, nothing changes."""


class IdempotencyConflict(LedgerError):
    """An Idempotency-Key was reused with a different request body."""


class UnprocessableRequest(LedgerError):
    """Well-formed, but not something the ledger can record or answer (unknown purpose, bad value)."""


class NotFound(LedgerError):
    """The thing asked for is not in the ledger."""


class Stale(StorageError):
    """The projection cannot show it is within LEDGER_MAX_STALENESS_MS of the database."""


class ConsistencyTimeout(StorageError):
    """This replica could not apply what a consistency token covers within the allowed wait."""


class ImpossibleState(LogCorrupted):
    """A state row that no sequence of log entries could have produced."""


class UnknownDevice(LedgerError):
    """An erase for a device that has no subject (never recorded, or already erased)."""


class NameTaken(LedgerError):
    """Something that must be unique by name (an active token) already exists."""
