"""Request ids and the access line: one log line for every HTTP request, once it is answered.

It wraps Litestar's whole ASGI handler (see create_app), not a route: route middleware never sees
the requests the router refuses itself (an unknown path, a method the path does not have), and
those get a line and a request id too.

The line names the route template (`/v1/devices/{device_id}/history`), never the path or the
query string: both carry device_ids, and a query string carries whatever a caller put in it.
"""

import logging
import os
import re
import time
from typing import Any

from ledger.logs import REQUEST_ID, log_fields

__all__ = ["HEADER", "AccessLog"]

HEADER = b"x-request-id"
# A caller's own id is kept when it is one plain token (UUIDs, ULIDs, hex, base64, trace ids);
# anything else is replaced, so a line can neither be split nor made to carry arbitrary text.
SANE_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")
UNMATCHED = "unmatched"  # as the metrics label it
VARIANT = {digit: "89ab"[int(digit, 16) % 4] for digit in "0123456789abcdef"}
log = logging.getLogger("ledger.access")


class AccessLog:
    """ASGI middleware: takes or makes the request id, echoes it in `X-Request-Id`, keeps it in
    ledger.logs.REQUEST_ID for every line logged while answering, and logs the access line."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._routes: dict[str, str] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_of(scope["headers"])
        header = (HEADER, request_id.encode())
        status = 500  # what the caller gets if the app fails before it answers

        async def send_with_id(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        reset = REQUEST_ID.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(reset)
            if log.isEnabledFor(logging.INFO):
                latency_ms = round((time.perf_counter() - started) * 1000, 3)
                self._log(request_id, self._route(scope.get("path_template")), scope["method"], status, latency_ms)

    @staticmethod
    def _log(request_id: str, route: str, method: str, status: int, latency_ms: float) -> None:
        fields = {
            "request_id": request_id,
            "route": route,
            "method": method,
            "status": status,
            "latency_ms": latency_ms,
        }
        log_fields(log, logging.INFO, f"{method} {route} {status}", fields)

    def _route(self, template: str | None) -> str:
        if template is None:
            return UNMATCHED
        route = self._routes.get(template)
        if route is None:
            # Litestar's template keeps the parameter types ("{device_id:str}"); the route as
            # documented does not.
            route = self._routes[template] = re.sub(r"{(\w+):\w+}", r"{\1}", template)
        return route


def request_id_of(headers: list[tuple[bytes, bytes]]) -> str:
    """The caller's X-Request-Id if it sent exactly one sane one, else a new one."""
    given = [value for name, value in headers if name == HEADER]
    if len(given) == 1 and SANE_ID.fullmatch(given[0]):
        return given[0].decode("ascii")
    return new_request_id()


def new_request_id() -> str:
    """A random UUID (version 4) in its usual form; str(uuid.uuid4()) costs three times as much."""
    digits = os.urandom(16).hex()
    # The version nibble becomes 4, and the variant's two top bits 10 (8, 9, a or b).
    return f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-{VARIANT[digits[16]]}{digits[17:20]}-{digits[20:]}"
