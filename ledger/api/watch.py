"""GET /v1/watch: every change to the decisions, as Server-Sent Events (ledger/watch.py)."""

from typing import Annotated, Any

from litestar import Controller, Request, get
from litestar.params import HeaderParameter, QueryParameter
from litestar.response import Stream

from ledger.api.deps import LedgerDep
from ledger.api.guards import bearer, require
from ledger.api.openapi import scope
from ledger.auth import grants
from ledger.core.consistency import BadToken, parse_consistency_token
from ledger.core.entry import whole
from ledger.errors import InvalidRequest

SCOPE = "consent:check"
EVENT_STREAM = "text/event-stream"
From = Annotated[
    str | None,
    QueryParameter(
        name="from",
        pattern=whole(r"[\x21-\x7e]{1,64}"),
        description="A consistency token: send the changes after it (Last-Event-ID wins when both are given).",
    ),
]

LastEventId = Annotated[
    str | None,
    HeaderParameter(
        name="Last-Event-ID",
        description="The id of the last event received (what an EventSource sends when it reconnects).",
    ),
]


class WatchController(Controller):
    path = "/v1/watch"
    guards = [require(SCOPE)]  # noqa: RUF012 (litestar's layer attribute)
    security = scope(SCOPE)

    @get(
        "/",
        media_type=EVENT_STREAM,
        opt={"problems": (422,), "also": {EVENT_STREAM: {"type": "string"}}},
        response_headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
    async def watch(
        self, request: Request[Any, Any, Any], ledger: LedgerDep, from_: From = None, last_event_id: LastEventId = None
    ) -> Stream:
        """Every change committed after the resume point (`Last-Event-ID`, else `from`, else now),
        in log order and without gaps, as Server-Sent Events: `decision`, `erasure` and `registry`
        events whose `id:` is the consistency token just after them, a `heartbeat` with the size
        covered at least every 0.5 s while the stream is caught up and this replica fresh, and
        `resync` instead of a gap. The body is `text/event-stream`; it never ends while the
        server runs."""
        resume = last_event_id or from_
        token = bearer(request.headers.get("authorization", "")) or ""

        async def allowed() -> bool:
            record = await ledger.access.authenticate(token)
            return record is not None and grants(record.scopes, SCOPE)

        watcher = await ledger.watch.watcher(None if resume is None else _position(resume), token, allowed)
        return Stream(watcher.frames(), media_type=EVENT_STREAM)


def _position(token: str) -> int:
    try:
        return parse_consistency_token(token)
    except BadToken as exc:
        raise InvalidRequest(f"resume point: {exc}") from None
