"""Liveness and readiness for orchestrators: public, cheap, no secrets."""

import msgspec
from litestar import Controller, Response, get
from litestar.openapi.datastructures import ResponseSpec

from ledger import metrics
from ledger.api.deps import LedgerDep


class Health(msgspec.Struct):
    status: str


class HealthController(Controller):
    path = "/health"

    @get("/live", sync_to_thread=False)
    def live(self) -> Health:
        return Health("ok")

    @get("/ready", responses={503: ResponseSpec(Health, description="Not ready: the database is unreachable")})
    async def ready(self, ledger: LedgerDep) -> Response[Health]:
        if await ledger.ready():
            return Response(Health("ready"))
        return Response(Health("unavailable"), status_code=503, headers={"Retry-After": "1"})


@get("/metrics", sync_to_thread=False, include_in_schema=False)
def prometheus() -> Response[bytes]:
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)
