"""Recording consent: POST /v1/consents."""

from typing import Annotated, Any

from litestar import Controller, Request, Response, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import HeaderParameter

from ledger.api.deps import LedgerDep
from ledger.api.guards import require
from ledger.api.openapi import scope
from ledger.api.strict import json_only
from ledger.models import IDEMPOTENCY_KEY_PATTERN, ConsentIn, Receipt

MAX_BODY = 16 * 1024

IdempotencyKeyHeader = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        min_length=1,
        max_length=128,
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="A retry with the same key and body returns the first receipt (200) and appends nothing; "
        "the same key with another body is 409.",
    ),
]


class ConsentsController(Controller):
    path = "/v1/consents"

    @post(
        "/",
        guards=[require("consent:write"), json_only],
        security=scope("consent:write"),
        request_max_body_size=MAX_BODY,
        status_code=201,
        opt={"body": ConsentIn, "problems": (409, 422)},
        responses={200: ResponseSpec(Receipt, description="A retry with the same Idempotency-Key: the first receipt")},
    )
    async def record(
        self, request: Request[Any, Any, Any], ledger: LedgerDep, idempotency_key: IdempotencyKeyHeader = None
    ) -> Response[Receipt]:
        """Record one consent action; the receipt proves it is in the log."""
        receipt, created = await ledger.recording.record(
            await request.body(), idempotency_key, request.state.token_name
        )
        return Response(receipt, status_code=201 if created else 200)
