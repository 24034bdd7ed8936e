"""What the clients send and how they read the answers, with no I/O of its own.

Each API call is a flow: a generator that yields an `httpx.Request` to send or a float (seconds)
to sleep, and is sent the response back (or thrown the transport error). `LedgerClient` drives
flows with blocking calls and `AsyncLedgerClient` with awaits, so the rules (idempotency keys,
what is retried and how long to wait, what a problem becomes) exist once.
"""

import random
import uuid
from collections.abc import Generator, Iterable, Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from itertools import islice
from typing import Any, Generic, NamedTuple, TypeVar

import httpx
import msgspec

from ledger.client.decision import Decision
from ledger.client.errors import LedgerUnavailable, RequestRejected

__all__ = ["MAX_BATCH", "Answers", "Calls", "Done", "Flow", "Retry", "chunks", "exchange", "resume", "start"]

T = TypeVar("T")
Flow = Generator[httpx.Request | float, httpx.Response | None, T]
MAX_BATCH = 1000  # the most checks one POST /v1/check takes
# Worth another try, after a while: the ledger is overloaded, restarting or behind.
TRANSIENT_STATUS = frozenset({429, 502, 503, 504})


class Retry(msgspec.Struct, frozen=True):
    """How often and how patiently a call is repeated after a transient failure: exponential
    backoff with full jitter from `base` up to `cap` seconds, or the server's Retry-After (up
    to `cap`), `attempts` tries in all."""

    attempts: int = 5
    base: float = 0.05
    cap: float = 2.0

    def backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap, self.base * 2**attempt))  # noqa: S311 (jitter, not secrecy)

    def after(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            seconds = _retry_after_seconds(retry_after)
            if seconds is not None:
                return min(self.cap, seconds)
        return self.backoff(attempt)


def _retry_after_seconds(value: str) -> float | None:
    """Retry-After is delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class Done(NamedTuple, Generic[T]):
    """A flow that has finished, with what it returned."""

    value: T


def start(flow: Flow[T]) -> "httpx.Request | float | Done[T]":
    """The flow's first step."""
    return resume(flow, None)


def resume(flow: Flow[T], outcome: "httpx.Response | httpx.TransportError | None") -> "httpx.Request | float | Done[T]":
    """Hand the flow what its last step came to (a response, a transport error, or nothing after
    a pause, or at the start); its next step."""
    try:
        if isinstance(outcome, httpx.TransportError):
            return flow.throw(outcome)
        return flow.send(outcome)
    except StopIteration as done:
        return Done(done.value)


def exchange(request: httpx.Request, retry: Retry) -> Flow[httpx.Response]:
    """Send `request` until it gets an answer that is not transient, at most `retry.attempts`
    times; the final response, read. Raises LedgerUnavailable if every try failed in transit.
    Only requests that are safe to repeat go through here: reads, and writes that carry an
    Idempotency-Key (the same on every try)."""
    for attempt in range(retry.attempts):
        last = attempt + 1 == retry.attempts
        try:
            response = yield request
        except httpx.TransportError as exc:
            if last:
                raise LedgerUnavailable(f"{request.method} {request.url.path}: {exc!r}") from exc
            yield retry.backoff(attempt)
            continue
        assert response is not None
        if response.status_code in TRANSIENT_STATUS and not last:
            yield retry.after(attempt, response.headers.get("retry-after"))
            continue
        return response
    raise AssertionError("unreachable: the last attempt returns or raises")


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        body = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        body = None
    if isinstance(body, dict):
        return body
    return {"status": response.status_code, "title": response.reason_phrase, "detail": response.text[:200]}


def _ok(response: httpx.Response) -> httpx.Response:
    """The response if it is a success; else the error it means."""
    if response.is_success:
        return response
    if 400 <= response.status_code < 500:
        raise RequestRejected(response.status_code, _problem(response))
    problem = _problem(response)
    raise LedgerUnavailable(
        f"{response.request.method} {response.request.url.path}: {response.status_code} {problem.get('detail', '')}",
        response.status_code,
        problem,
    )


class _Results(msgspec.Struct):
    results: list[Decision]


_decision = msgspec.json.Decoder(Decision)
_results = msgspec.json.Decoder(_Results)
_encode = msgspec.json.Encoder().encode


class Answers(NamedTuple):
    """Decisions, and the Consistency-Token of the (last) response that carried them."""

    decisions: list[Decision]
    consistency_token: str | None


def chunks(pairs: Iterable[tuple[str, str]]) -> Iterator[list[tuple[str, str]]]:
    it = iter(pairs)
    while chunk := list(islice(it, MAX_BATCH)):
        yield chunk


class Calls:
    """The ledger's API as flows, for one base URL and token."""

    def __init__(self, base_url: str, token: str | None, retry: Retry) -> None:
        self.base = base_url.rstrip("/")
        self.headers = {"Accept": "application/json"}
        if token is not None:
            self.headers["Authorization"] = f"Bearer {token}"
        self.retry = retry

    def request(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        body: object = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Request:
        extra = {"Content-Type": "application/json"} if body is not None else {}
        request = httpx.Request(
            method,
            self.base + path,
            params=params,
            content=None if body is None else _encode(body),
            headers={**self.headers, **extra, **(headers or {})},
        )
        if timeout is not None:
            request.extensions["timeout"] = httpx.Timeout(timeout).as_dict()
        return request

    def record(self, fields: dict[str, Any]) -> Flow[dict[str, Any]]:
        """POST /v1/consents with a fresh Idempotency-Key, the same on every retry, so a retry
        after a lost answer returns the first receipt and appends nothing."""
        key = f"client-{uuid.uuid4()}"
        request = self.request("POST", "/v1/consents", body=fields, headers={"Idempotency-Key": key})
        response = _ok((yield from exchange(request, self.retry)))
        receipt: dict[str, Any] = msgspec.json.decode(response.content)
        return receipt

    def check(self, device_id: str, purpose: str, consistency: str | None) -> Flow[Decision]:
        params = {"device_id": device_id, "purpose": purpose}
        if consistency is not None:
            params["consistency"] = consistency
        response = _ok((yield from exchange(self.request("GET", "/v1/check", params), self.retry)))
        return _decision.decode(response.content)

    def check_many(
        self,
        pairs: Iterable[tuple[str, str]],
        consistency: str | None = None,
        timeout: float | None = None,
        retry: Retry | None = None,
    ) -> Flow[Answers]:
        """POST /v1/check, 1,000 pairs a request; the decisions in the order asked."""
        params = None if consistency is None else {"consistency": consistency}
        decisions: list[Decision] = []
        token = None
        for chunk in chunks(pairs):
            body = {"checks": [{"device_id": d, "purpose": p} for d, p in chunk]}
            request = self.request("POST", "/v1/check", params, body, timeout=timeout)
            response = _ok((yield from exchange(request, retry or self.retry)))
            decisions.extend(_results.decode(response.content).results)
            token = response.headers.get("consistency-token")
        return Answers(decisions, token)
