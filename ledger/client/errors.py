"""The client's one error family: what went wrong between a caller and the ledger."""

from typing import Any

__all__ = ["ClientError", "LedgerUnavailable", "RequestRejected", "Stale"]


class ClientError(Exception):
    """Base of every error `ledger.client` raises."""


class RequestRejected(ClientError):
    """The ledger answered 4xx: the request is wrong or not permitted, and sending it again will
    not help. `problem` is the RFC 9457 problem the ledger sent (type, title, status, detail)."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        super().__init__(f"{status} {problem.get('title', '')}: {problem.get('detail', '')}".strip())


class LedgerUnavailable(ClientError):
    """The ledger could not be reached, or kept failing (5xx), after every retry. `status` and
    `problem` are the last answer's, if there was one."""

    def __init__(self, message: str, status: int | None = None, problem: dict[str, Any] | None = None) -> None:
        self.status = status
        self.problem = problem
        super().__init__(message)


class Stale(ClientError):
    """A mirror cannot answer from state younger than its `max_staleness`: the watch stream is
    lost or behind, or a miss could not be fetched in time. The safe reading is "not allowed"."""
