"""The framework's ceiling: a bare Litestar endpoint returning a constant, served exactly like the ledger."""

from litestar import Litestar, get


@get("/v1/check", sync_to_thread=False)
def constant() -> dict[str, object]:
    return {"device_id": "d", "purpose": "p", "allowed": False, "reason": "no_consent"}


def create_app() -> Litestar:
    return Litestar(route_handlers=[constant], openapi_config=None)
