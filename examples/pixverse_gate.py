"""The consent gate in front of the PixVerse call, as plain ASGI middleware (Litestar, FastAPI,
Starlette, or any ASGI app): a request goes through only if the ledger allows
`pixverse_sharing` for its device and, when the request comes from outside the home region,
`cross_border_transfer` too.

    app = ConsentGate(app, mirror, home_region="eu")

The request names its device in `X-Device-Id` and the person's region in `X-Region` (set by the
app's own gateway, never trusted from elsewhere). Answers, each RFC 9457 problem+json:
- 451 `consent-required`: a purpose is not allowed (the detail names it and the reason: no
  consent, withdrawn, expired, re-consent required, erased);
- 503 `consent-unknown` with Retry-After: the mirror cannot answer from fresh state (the ledger
  unreachable or its stream behind); refused all the same, but the person is not told to consent;
- 400 `device-id-required`: no or a malformed `X-Device-Id`.
A missing `X-Region` counts as foreign: the gate fails closed. Answers from memory cost a few
microseconds; a device seen for the first time costs one batch check, run off the event loop.
"""

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec

from ledger.client import Decision, Mirror, RequestRejected, Stale

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
# Loose on purpose: every framework types its own scopes and messages.
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

SHARING = "pixverse_sharing"
CROSS_BORDER = "cross_border_transfer"
PROBLEM_BASE = "https://consent-ledger.dev/problems/"
TITLES = {400: "Bad Request", 451: "Unavailable For Legal Reasons", 503: "Service Unavailable"}


class ConsentGate:
    def __init__(
        self,
        app: ASGIApp,
        mirror: Mirror,
        *,
        home_region: str,
        device_header: str = "x-device-id",
        region_header: str = "x-region",
    ) -> None:
        self.app = app
        self.mirror = mirror
        self.home_region = home_region.lower()
        self.device_header = device_header.lower().encode("latin-1")
        self.region_header = region_header.lower().encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan and websockets pass untouched
            await self.app(scope, receive, send)
            return
        device_id = region = None
        for name, value in scope["headers"]:
            if name == self.device_header:
                device_id = value.decode("latin-1")
            elif name == self.region_header:
                region = value.decode("latin-1").lower()
        if not device_id:
            await _problem(send, 400, "device-id-required", "the request names no device (X-Device-Id)")
            return
        needed = [SHARING] if region == self.home_region else [SHARING, CROSS_BORDER]
        for purpose in needed:
            try:
                decision = await self._decision(device_id, purpose)
            except Stale:
                detail = "the consent ledger cannot be asked right now; try again shortly"
                await _problem(send, 503, "consent-unknown", detail, headers=[(b"retry-after", b"1")])
                return
            except RequestRejected:
                await _problem(send, 400, "device-id-required", "X-Device-Id is not a valid device id")
                return
            if not decision.allowed:
                detail = f"{purpose} is not allowed for this device ({decision.reason})"
                await _problem(send, 451, "consent-required", detail, purpose=purpose, reason=decision.reason)
                return
        await self.app(scope, receive, send)

    async def _decision(self, device_id: str, purpose: str) -> Decision:
        found = self.mirror.held(device_id, purpose)
        if found is not None:
            return found
        return await asyncio.to_thread(self.mirror.decision, device_id, purpose)


async def _problem(
    send: Send, status: int, slug: str, detail: str, headers: list[tuple[bytes, bytes]] | None = None, **extra: str
) -> None:
    body = msgspec.json.encode(
        {"type": PROBLEM_BASE + slug, "title": TITLES[status], "status": status, "detail": detail, **extra}
    )
    start_headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
        *(headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": start_headers})
    await send({"type": "http.response.body", "body": body})
