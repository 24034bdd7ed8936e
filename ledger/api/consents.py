"""Recording consent: POST /v1/consents."""

from typing import Any

import msgspec
from litestar import Controller, Request, Response, post
from litestar.exceptions import ValidationException

from ledger.api.deps import LedgerDep
from ledger.api.guards import require
from ledger.models import IdempotencyKey, Receipt

MAX_BODY = 16 * 1024


class ConsentsController(Controller):
    path = "/v1/consents"

    @post("/", guards=[require("consent:write")], request_max_body_size=MAX_BODY, status_code=201)
    async def record(self, request: Request[Any, Any, Any], ledger: LedgerDep) -> Response[Receipt]:
        key = request.headers.get("idempotency-key")
        if key is not None and not _valid_key(key):
            raise ValidationException("Idempotency-Key must be 1 to 128 visible ASCII characters")
        receipt, created = await ledger.recording.record(await request.body(), key, request.state.token_name)
        return Response(receipt, status_code=201 if created else 200)


def _valid_key(key: str) -> bool:
    try:
        msgspec.convert(key, IdempotencyKey)
    except msgspec.ValidationError:
        return False
    return True
