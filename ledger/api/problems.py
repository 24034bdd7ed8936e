"""RFC 9457 problem details: every error the API returns, shaped in one place."""

import logging
import re
from http import HTTPStatus
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from ledger.errors import (
    ConsistencyTimeout,
    IdempotencyConflict,
    InvalidRequest,
    LogCorrupted,
    NotFound,
    Stale,
    StorageError,
    UnprocessableRequest,
)

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://consent-ledger.dev/problems/"
log = logging.getLogger("ledger.api")


class Problem(msgspec.Struct, omit_defaults=True):
    type: str
    title: str
    status: int
    detail: str
    errors: list[dict[str, Any]] | None = None


def problem(status: int, slug: str, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> Response[Any]:
    body = Problem(type=TYPE_BASE + slug, title=HTTPStatus(status).phrase, status=status, detail=detail, **extra)
    return Response(
        content=msgspec.json.encode(body),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def _invalid(_: Request[Any, Any, Any], exc: InvalidRequest) -> Response[Any]:
    return problem(400, "invalid-request", str(exc))


def _unprocessable(_: Request[Any, Any, Any], exc: UnprocessableRequest) -> Response[Any]:
    return problem(422, "unprocessable", str(exc))


def _not_found(_: Request[Any, Any, Any], exc: NotFound) -> Response[Any]:
    return problem(404, "not-found", str(exc))


def _conflict(_: Request[Any, Any, Any], exc: IdempotencyConflict) -> Response[Any]:
    return problem(409, "idempotency-conflict", str(exc))


def _stale(_: Request[Any, Any, Any], exc: Stale) -> Response[Any]:
    log.warning("failing closed: %s", exc)
    return problem(503, "stale-projection", f"{exc}; failing closed", {"Retry-After": "1"})


def _consistency(_: Request[Any, Any, Any], exc: ConsistencyTimeout) -> Response[Any]:
    return problem(503, "consistency-timeout", str(exc), {"Retry-After": "1"})


def _validation(_: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    # Litestar's detail may repeat the whole URL: the query string (device_ids) stays out of it.
    errors = exc.extra if isinstance(exc.extra, list) else None
    detail = re.sub(r"\?\S*", "", exc.detail)
    names = [_parameter(e) for e in errors or [] if isinstance(e, dict)]
    if names:
        detail = f"{detail}: {', '.join(names)}"
    return problem(400, "invalid-request", detail, errors=errors)


def _parameter(error: dict[str, Any]) -> str:
    source = error.get("source")
    return f"{getattr(source, 'value', source) or ''} parameter {error.get('key')!r}".strip()


def _http(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    slug = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "-")
    return problem(exc.status_code, slug, exc.detail, headers=exc.headers)


def _unavailable(_: Request[Any, Any, Any], exc: StorageError) -> Response[Any]:
    log.error("storage unavailable: %s", exc)
    return problem(503, "unavailable", "the ledger's database is unavailable; retry later", {"Retry-After": "1"})


def _corrupted(_: Request[Any, Any, Any], exc: LogCorrupted) -> Response[Any]:
    # Never an answer built from what the signed log does not back; the finding is logged where
    # it was made (ledger/integrity.py), and this process reports itself unready.
    return problem(500, "log-corrupted", f"the stored log contradicts its signed checkpoints: {exc}")


def _internal(_: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unhandled error", exc_info=exc)
    return problem(500, "internal-error", "an internal error occurred; nothing was changed by it")


EXCEPTION_HANDLERS: dict[type[Exception] | int, Any] = {
    InvalidRequest: _invalid,
    UnprocessableRequest: _unprocessable,
    IdempotencyConflict: _conflict,
    NotFound: _not_found,
    Stale: _stale,
    ConsistencyTimeout: _consistency,
    ValidationException: _validation,
    HTTPException: _http,
    LogCorrupted: _corrupted,
    StorageError: _unavailable,
    Exception: _internal,
}
