"""Strict input at the edge: one reading of every request, or a 4xx before anything runs.

What a lenient parser quietly decides (the last of two `device_id`s, `start=null` read as
"absent", `1.0` read as 1, a form-encoded or text/plain body read as JSON) is a second meaning
that a proxy, an audit log or the caller may not share. Each rule here refuses the ambiguity:
- a query parameter given twice: 400 (no endpoint takes a list in its query);
- an integer query parameter that is not plain decimal digits up to 2^63 - 1: 400;
- a JSON endpoint's body without `Content-Type: application/json` (parameters allowed, a
  charset only if UTF-8): 415, after authentication, so a caller without a token learns nothing;
- OPTIONS answers 204 with every method of the path in `Allow`, without a token (it names only
  what the public OpenAPI document does). Litestar's own OPTIONS handler is built with the first
  handler registered on a path and lists only its methods, and it runs the controller's guards.
"""

import re
from collections import Counter
from typing import Any
from urllib.parse import parse_qsl

import msgspec
from litestar.connection import ASGIConnection
from litestar.enums import ParamType
from litestar.exceptions import HTTPException
from litestar.handlers.base import BaseRouteHandler
from litestar.handlers.http_handlers import HTTPRouteHandler
from litestar.params import ParameterKwarg
from litestar.routes import HTTPRoute

from ledger.api.problems import PROBLEM_JSON, TYPE_BASE, Problem

JSON = "application/json"
QUERY_STATE = "ledger.query"
DIGITS = re.compile(r"[0-9]{1,19}")
MAX_INTEGER = 2**63 - 1  # PostgreSQL's bigint


class UnsupportedMediaType(HTTPException):
    status_code = 415


TOML = "application/toml"


async def json_or_toml(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard of an endpoint that reads its body as JSON or as TOML (UTF-8 both)."""
    values = connection.headers.getall("content-type", [])
    if len(values) != 1 or not (is_json(values[0]) or is_json(values[0], TOML)):
        raise UnsupportedMediaType(f"the body must be sent with Content-Type: {JSON} or {TOML} (UTF-8)")


async def json_only(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard of every endpoint that reads a JSON body."""
    values = connection.headers.getall("content-type", [])
    if len(values) != 1 or not is_json(values[0]):
        raise UnsupportedMediaType(f"the body must be sent with Content-Type: {JSON} (UTF-8)")


def is_json(content_type: str, expected: str = JSON) -> bool:
    """Whether the Content-Type is `expected` (JSON by default), in UTF-8 if a charset is named."""
    media_type, *parameters = content_type.split(";")
    if media_type.strip().lower() != expected:
        return False
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return False
    return True


def integer_query_parameters(handler: HTTPRouteHandler) -> frozenset[str]:
    """The query names of a handler's integer parameters, from its signature."""
    names = set()
    for name, field in handler.parsed_fn_signature.parameters.items():
        types = field.inner_types if field.is_union else (field,)
        if not any(t.annotation is int for t in types):
            continue
        kwarg = field.kwarg_definition
        if isinstance(kwarg, ParameterKwarg):
            if kwarg.param_type is not ParamType.QUERY:
                continue
            name = kwarg.name or name
        names.add(name)
    return frozenset(names)


class StrictRequests:
    """ASGI middleware (inside Litestar's routing): OPTIONS and the query-string rules."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._integers: dict[int, frozenset[str]] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":
            await self._options(scope, send)
            return
        detail = self._query_problem(scope)
        if detail is not None:
            body = msgspec.json.encode(Problem(TYPE_BASE + "invalid-request", "Bad Request", 400, detail))
            await _send(send, 400, body, [(b"content-type", PROBLEM_JSON.encode())])
            return
        await self.app(scope, receive, send)

    def _query_problem(self, scope: Any) -> str | None:
        query = scope.get("query_string", b"")
        if not query:
            return None
        params = query_pairs(scope)
        if len({name for name, _ in params}) != len(params):
            repeated = sorted(name for name, n in Counter(name for name, _ in params).items() if n > 1)
            return f"the query parameter {repeated[0][:64]!r} is given more than once"
        handler = scope.get("route_handler")
        if not isinstance(handler, HTTPRouteHandler):
            return None
        key = id(handler)
        if key not in self._integers:
            self._integers[key] = integer_query_parameters(handler)
        for name, value in params:
            if name in self._integers[key] and not (DIGITS.fullmatch(value) and int(value) <= MAX_INTEGER):
                return f"the query parameter {name!r} must be an integer from 0 to {MAX_INTEGER} in decimal digits"
        return None

    async def _options(self, scope: Any, send: Any) -> None:
        methods: set[str] = {"OPTIONS"}
        template = scope.get("path_template")
        for route in scope["app"].routes:
            if isinstance(route, HTTPRoute) and route.path_format == _format(template):
                methods |= set(route.methods)
        await _send(send, 204, b"", [(b"allow", ", ".join(sorted(methods)).encode())])


def query_pairs(scope: Any) -> list[tuple[str, str]]:
    """The request's query as (name, value) pairs, read once per request and kept in the scope
    for whoever asks next (the check hot path does). Plain ASCII needs no unquoting: the common
    case skips parse_qsl, with the same result."""
    state = scope.setdefault("state", {})
    pairs: list[tuple[str, str]] | None = state.get(QUERY_STATE)
    if pairs is None:
        raw = scope.get("query_string", b"")
        if b"%" in raw or b"+" in raw:
            pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
        else:
            pairs = []
            for part in raw.decode("latin-1").split("&"):
                if part:
                    name, _, value = part.partition("=")
                    pairs.append((name, value))
        state[QUERY_STATE] = pairs
    return pairs


def _format(template: str | None) -> str | None:
    # path_template keeps the parameter types ("{device_id:str}"); path_format drops them.
    return None if template is None else re.sub(r"{(\w+):\w+}", r"{\1}", template)


async def _send(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
