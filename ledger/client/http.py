"""LedgerClient and AsyncLedgerClient: the ledger's recording and checking API for callers.

Both run the flows of `exchange.py`; only how a request is sent and how a pause is taken differ.
"""

import asyncio
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import httpx

from ledger.client.decision import Decision
from ledger.client.exchange import Calls, Done, Flow, Retry, resume, start

__all__ = ["AsyncLedgerClient", "LedgerClient"]

T = TypeVar("T")


def _consent(device_id: str, purpose: str, action: str, policy_version: int, fields: dict[str, Any]) -> dict[str, Any]:
    return {"device_id": device_id, "purpose": purpose, "action": action, "policy_version": policy_version, **fields}


H = TypeVar("H", httpx.Client, httpx.AsyncClient)


class _Client(Generic[H]):
    """What both clients are made of: the flows for one ledger, and an httpx client to run them
    with (`http`, or one of their own with `timeout`)."""

    _http_type: type[H]

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        retry: Retry | None = None,
        http: H | None = None,
    ) -> None:
        self.calls = Calls(base_url, token, retry or Retry())
        self._http: H = self._http_type(timeout=timeout) if http is None else http


class LedgerClient(_Client[httpx.Client]):
    """A blocking client; thread-safe (one connection pool shared by all threads).

    `record` returns the receipt as a dict; `check` and `check_many` return `Decision`s. A 4xx
    raises `RequestRejected` (with the ledger's problem), a ledger that stays unreachable or
    failing after `retry.attempts` tries raises `LedgerUnavailable`.
    """

    _http_type = httpx.Client

    def run(self, flow: Flow[T]) -> T:
        """Drive a flow with blocking I/O."""
        step = start(flow)
        while not isinstance(step, Done):
            if isinstance(step, float):
                time.sleep(step)
                step = resume(flow, None)
                continue
            try:
                step = resume(flow, self._http.send(step))
            except httpx.TransportError as exc:
                step = resume(flow, exc)
        result: T = step.value
        return result

    def record(
        self, *, device_id: str, purpose: str, action: str, policy_version: int, **fields: Any
    ) -> dict[str, Any]:
        """Record one consent action (POST /v1/consents); the receipt."""
        return self.run(self.calls.record(_consent(device_id, purpose, action, policy_version, fields)))

    def check(self, device_id: str, purpose: str, consistency: str | None = None) -> Decision:
        """The decision now (GET /v1/check), after `consistency` if given."""
        return self.run(self.calls.check(device_id, purpose, consistency))

    def check_many(self, pairs: Iterable[tuple[str, str]], consistency: str | None = None) -> list[Decision]:
        """Decisions for (device_id, purpose) pairs, in order, 1,000 per request."""
        return self.run(self.calls.check_many(pairs, consistency)).decisions

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class AsyncLedgerClient(_Client[httpx.AsyncClient]):
    """The same API for asyncio callers: every method is a coroutine."""

    _http_type = httpx.AsyncClient

    async def run(self, flow: Flow[T]) -> T:
        """Drive a flow with asyncio."""
        step = start(flow)
        while not isinstance(step, Done):
            if isinstance(step, float):
                await asyncio.sleep(step)
                outcome: httpx.Response | httpx.TransportError | None = None
            else:
                try:
                    outcome = await self._http.send(step)
                except httpx.TransportError as exc:
                    outcome = exc
            step = resume(flow, outcome)
        result: T = step.value
        return result

    async def record(
        self, *, device_id: str, purpose: str, action: str, policy_version: int, **fields: Any
    ) -> dict[str, Any]:
        """Record one consent action (POST /v1/consents); the receipt."""
        return await self.run(self.calls.record(_consent(device_id, purpose, action, policy_version, fields)))

    async def check(self, device_id: str, purpose: str, consistency: str | None = None) -> Decision:
        """The decision now (GET /v1/check), after `consistency` if given."""
        return await self.run(self.calls.check(device_id, purpose, consistency))

    async def check_many(self, pairs: Iterable[tuple[str, str]], consistency: str | None = None) -> list[Decision]:
        """Decisions for (device_id, purpose) pairs, in order, 1,000 per request."""
        return (await self.run(self.calls.check_many(pairs, consistency))).decisions

    async def aclose(self) -> None:
        await self._http.aclose()

    async def close(self) -> None:
        await self.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
