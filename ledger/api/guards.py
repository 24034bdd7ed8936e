"""Bearer tokens and scopes, checked before any handler runs.

Parsing the header and matching scopes are written once, here: the guards use them with a token
lookup, the cached check path (ledger/api/checks.py) without one.
"""

from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from ledger.auth import grants, token_hash
from ledger.composition import Services
from ledger.storage.tokens import TokenRecord

Guard = Any
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="consent-ledger"'}


def bearer(authorization: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def authorize(services: Services, authorization: str, scope: str) -> TokenRecord:
    """The token's record if it holds `scope`; 401 or 403 otherwise."""
    token = bearer(authorization)
    if token is None:
        raise NotAuthorizedException("a bearer token is required", headers=CHALLENGE)
    record = await services.access.authenticate(token)
    if record is None:
        raise NotAuthorizedException("the token is not valid", headers=CHALLENGE)
    if not grants(record.scopes, scope):
        raise PermissionDeniedException(f"the token lacks the {scope} scope")
    return record


def authorized_in_memory(services: Services, authorization: str, scope: str) -> bool:
    """True only if this process validated the token recently and it holds `scope`; False means
    "not known here", never "refused": the guard decides that."""
    token = bearer(authorization)
    if token is None:
        return False
    record = services.access.cached(token_hash(token))
    return record is not None and grants(record.scopes, scope)


def require(scope: str) -> Guard:
    async def guard(connection: ASGIConnection[Any, Any, Any, Any], __: BaseRouteHandler) -> None:
        record = await authorize(connection.app.state.ledger, connection.headers.get("authorization", ""), scope)
        connection.state.token_name = record.name

    return guard
