"""GET /v1/check answered without the framework, when the answer is already in hand.

Checks arrive on every request of every other service, and routing, dependency injection and
the response pipeline cost several times what the decision itself does (measured with py-spy:
our own work was under a quarter of a check's time). This ASGI wrapper answers only the plain
case: a bearer token already in this process's token cache with the consent:check scope,
exactly `device_id` and `purpose` in the query, both valid, a fresh projection and a cache hit.
Anything else (no or unknown token, another parameter, a miss, staleness, an error) goes on to
the Litestar route, which stays the one implementation of every other answer. The body is
encoded from the same Struct the route returns; tests compare the two byte for byte.
"""

import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import msgspec

from ledger import metrics
from ledger.auth import grants, token_hash
from ledger.composition import Services
from ledger.core.decision import Basis, decide
from ledger.core.entry import format_time, is_device_id
from ledger.models import DecisionOut
from ledger.projection import MISSING

PATH = "/v1/check"
ROUTE = "/v1/check"
_encode = msgspec.json.Encoder().encode


def _now() -> str:
    return format_time(datetime.now(UTC))


def answer(ledger: Services, query: bytes, authorization: str | None) -> bytes | None:
    """The response body, or None when the full route must answer."""
    if authorization is None or not authorization.startswith("Bearer "):
        return None
    record = ledger.access.cached(token_hash(authorization[7:].strip()))
    if record is None or not grants(record.scopes, "consent:check"):
        return None
    params = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    if len(params) != 2:
        return None
    found = dict(params)
    device_id, purpose = found.get("device_id"), found.get("purpose")
    if device_id is None or purpose is None or not is_device_id(device_id):
        return None
    spec = ledger.registry.purposes.get(purpose)
    projection = ledger.projection
    if spec is None or not projection.fresh():
        return None
    basis = projection.peek(device_id, purpose)
    if basis is MISSING:
        return None
    assert basis is None or isinstance(basis, Basis)
    decision = decide(purpose, spec, basis, _now)
    metrics.count_decision(purpose, decision.reason)
    metrics.count_lookups(1, 0)
    projection.hits += 1
    return _encode(DecisionOut.of(device_id, decision))


class FastCheck:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == PATH and scope["method"] == "GET":
            started = time.perf_counter()
            ledger: Services | None = getattr(self.app.state, "ledger", None)
            body = None
            if ledger is not None:
                authorization = None
                for name, value in scope["headers"]:
                    if name == b"authorization":
                        authorization = value.decode("latin-1")
                        break
                body = answer(ledger, scope["query_string"], authorization)
            if body is not None:
                assert ledger is not None
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"consistency-token", ledger.consistency_token().encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                metrics.observe_request(ROUTE, "GET", "200", time.perf_counter() - started)
                return
        await self.app(scope, receive, send)
