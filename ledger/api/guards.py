"""Bearer tokens and scopes, checked before any handler runs."""

from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from ledger.auth import grants
from ledger.composition import Services

Guard = Any
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="consent-ledger"'}


def require(scope: str) -> Guard:
    async def guard(connection: ASGIConnection[Any, Any, Any, Any], __: BaseRouteHandler) -> None:
        scheme, _, token = connection.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise NotAuthorizedException("a bearer token is required", headers=CHALLENGE)
        ledger: Services = connection.app.state.ledger
        record = await ledger.access.authenticate(token.strip())
        if record is None:
            raise NotAuthorizedException("the token is not valid", headers=CHALLENGE)
        if not grants(record.scopes, scope):
            raise PermissionDeniedException(f"the token lacks the {scope} scope")
        connection.state.token_name = record.name

    return guard
