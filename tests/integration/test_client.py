"""ledger.client against a real server: recording, checking, batches, errors, and retries that
append once."""

import socket
from collections.abc import Iterator

import httpx
import pytest

from ledger.client import AsyncLedgerClient, LedgerClient, LedgerUnavailable, RequestRejected, Retry

from .server import ADMIN_TOKEN

GRANT = {"purpose": "pixverse_sharing", "action": "grant", "policy_version": 1}


def log_size(base_url: str) -> int:
    return int(httpx.get(f"{base_url}/v1/log/checkpoint").text.split("\n")[1])


class LoseAnswers(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """A network (for either client) that delivers each request but loses the answer to the
    first `lose` of them (the server did the work; the client sees a broken connection), and
    remembers what was sent."""

    def __init__(self, lose: int) -> None:
        self.lose = lose
        self.sent: list[httpx.Request] = []

    def _deliver(self, request: httpx.Request, response: httpx.Response) -> httpx.Response:
        if len(self.sent) <= self.lose:
            raise httpx.ReadError("connection reset after the request was delivered", request=request)
        return response

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        with httpx.HTTPTransport() as inner:
            response = inner.handle_request(request)
            response.read()
        return self._deliver(request, response)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        async with httpx.AsyncHTTPTransport() as inner:
            response = await inner.handle_async_request(request)
            await response.aread()
        return self._deliver(request, response)


class Overloaded(httpx.BaseTransport):
    """A proxy that answers the first request 503 with Retry-After, then lets requests through."""

    def __init__(self, retry_after: str) -> None:
        self.inner = httpx.HTTPTransport()
        self.retry_after = retry_after
        self.sent: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        if len(self.sent) == 1:
            return httpx.Response(503, headers={"Retry-After": self.retry_after}, request=request)
        return self.inner.handle_request(request)


@pytest.fixture
def ledger(base_url: str) -> Iterator[LedgerClient]:
    with LedgerClient(base_url, token=ADMIN_TOKEN) as client:
        yield client


def test_record_check_and_check_many(ledger: LedgerClient, base_url: str) -> None:
    receipt = ledger.record(device_id="dev-1", method="explicit_popup", evidence={"popup": "v1"}, **GRANT)
    assert receipt["device_id"] == "dev-1"
    assert receipt["entry"]["method"] == "explicit_popup"
    assert receipt["consistency_token"].startswith("ct1.")
    decision = ledger.check("dev-1", "pixverse_sharing", consistency=receipt["consistency_token"])
    assert (decision.allowed, decision.reason, decision.index) == (True, "granted", receipt["index"])
    ledger.record(device_id="dev-2", purpose="telemetry", action="withdraw", policy_version=1)
    # 2,500 pairs: three requests of at most 1,000, answered in the order asked.
    pairs = [(f"dev-{n % 4}", ("pixverse_sharing", "telemetry")[n // 4 % 2]) for n in range(2500)]
    decisions = ledger.check_many(pairs)
    assert [(d.device_id, d.purpose) for d in decisions] == pairs
    reasons = {(d.device_id, d.purpose): d.reason for d in decisions}
    assert reasons.pop(("dev-1", "pixverse_sharing")) == "granted"
    assert reasons.pop(("dev-2", "telemetry")) == "withdrawn"
    assert set(reasons.values()) == {"no_consent"}
    assert len(reasons) == 6


async def test_the_async_client_records_and_checks(base_url: str) -> None:
    async with AsyncLedgerClient(base_url, token=ADMIN_TOKEN) as ledger:
        receipt = await ledger.record(device_id="dev-a", **GRANT)
        decision = await ledger.check("dev-a", "pixverse_sharing", consistency=receipt["consistency_token"])
        assert decision.allowed
        [one, other] = await ledger.check_many([("dev-a", "pixverse_sharing"), ("dev-b", "pixverse_sharing")])
        assert (one.reason, other.reason) == ("granted", "no_consent")
        with pytest.raises(RequestRejected) as refused:
            await ledger.check("dev-a", "no_such_purpose")
        assert refused.value.status == 422


def test_a_problem_raises_with_the_problem_and_appends_nothing(ledger: LedgerClient, base_url: str) -> None:
    before = log_size(base_url)
    with pytest.raises(RequestRejected) as refused:
        ledger.record(device_id="dev-1", purpose="no_such_purpose", action="grant", policy_version=1)
    assert refused.value.status == 422
    assert refused.value.problem["status"] == 422
    assert refused.value.problem["type"].endswith("/unprocessable")
    with pytest.raises(RequestRejected) as unauthorized:
        LedgerClient(base_url, token="cl_wrong").check("dev-1", "pixverse_sharing")
    assert unauthorized.value.status == 401
    assert log_size(base_url) == before


def test_a_lost_answer_is_retried_with_the_same_key_and_appends_once(base_url: str) -> None:
    network = LoseAnswers(lose=2)
    before = log_size(base_url)
    with LedgerClient(base_url, token=ADMIN_TOKEN, http=httpx.Client(transport=network)) as ledger:
        receipt = ledger.record(device_id="dev-retry", **GRANT)
    assert len(network.sent) == 3
    keys = {r.headers["idempotency-key"] for r in network.sent}
    assert len(keys) == 1
    assert log_size(base_url) == before + 1
    assert receipt["index"] == before


async def test_the_async_client_retries_with_the_same_key(base_url: str) -> None:
    network = LoseAnswers(lose=1)
    before = log_size(base_url)
    async with AsyncLedgerClient(base_url, token=ADMIN_TOKEN, http=httpx.AsyncClient(transport=network)) as ledger:
        receipt = await ledger.record(device_id="dev-retry", **GRANT)
    assert len({r.headers["idempotency-key"] for r in network.sent}) == 1
    assert len(network.sent) == 2
    assert log_size(base_url) == before + 1 == receipt["index"] + 1


def test_two_records_use_two_keys(ledger: LedgerClient, base_url: str) -> None:
    before = log_size(base_url)
    ledger.record(device_id="dev-twice", **GRANT)
    ledger.record(device_id="dev-twice", **GRANT)
    assert log_size(base_url) == before + 2


def test_retry_after_is_honoured(base_url: str) -> None:
    network = Overloaded(retry_after="0")
    with LedgerClient(base_url, token=ADMIN_TOKEN, http=httpx.Client(transport=network)) as ledger:
        assert ledger.check("dev-x", "pixverse_sharing").reason == "no_consent"
    assert len(network.sent) == 2
    assert Retry().after(0, "3") == 2.0  # capped
    assert Retry(cap=10).after(0, "3") == 3.0
    assert Retry().after(0, "Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past


def test_an_unreachable_ledger_raises_after_the_retries() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        client = LedgerClient(f"http://127.0.0.1:{port}", token="t", retry=Retry(attempts=3, base=0.001))
        with pytest.raises(LedgerUnavailable):
            client.record(device_id="dev-1", **GRANT)
        client.close()
