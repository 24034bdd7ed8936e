"""create_app(): the Litestar application, its lifespan and its layers."""

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.types import Message, Scope

from ledger import embedded, keys, metrics
from ledger.api import openapi
from ledger.api.access_log import AccessLog
from ledger.api.checks import ChecksController, DevicesController, PurposesController
from ledger.api.consents import ConsentsController
from ledger.api.health import HealthController, prometheus
from ledger.api.log import ExportController, KeysController, LogController
from ledger.api.problems import EXCEPTION_HANDLERS
from ledger.api.strict import StrictRequests
from ledger.api.watch import WatchController
from ledger.api.webhooks import WebhooksController
from ledger.composition import Services, open_patiently
from ledger.server import on_termination
from ledger.settings import Settings

# Nothing else sets it, so it is appended as raw bytes (lower case, as ASGI headers are).
CONSISTENCY_TOKEN = b"consistency-token"


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        url, server = await embedded.resolve_database(settings)
        ledger = await open_patiently(settings, url, keys.load_signer(settings))
        app.state.ledger = ledger
        flusher = asyncio.create_task(metrics.flush_periodically())
        # Watch streams end when the process is told to stop, or the server would wait for them.
        restore_signals = on_termination(ledger.watch.end_streams)
        try:
            yield
        finally:
            restore_signals()
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            await ledger.close()
            metrics.worker_exited(os.getpid())
            if server is not None:
                server.cleanup()

    def ledger_of(state: State) -> Services:
        ledger: Services = state.ledger
        return ledger

    async def add_consistency_token(message: Message, _: Scope) -> None:
        # At the ASGI edge, so error responses, streams and the check hot path carry it too.
        ledger: Services | None = getattr(app.state, "ledger", None)
        if message["type"] == "http.response.start" and ledger is not None:
            token = (CONSISTENCY_TOKEN, ledger.consistency_token().encode())
            message["headers"] = [*message.get("headers", ()), token]

    app = Litestar(
        middleware=[metrics.RequestTimer, StrictRequests],
        route_handlers=[
            HealthController,
            prometheus,
            KeysController,
            LogController,
            ExportController,
            ConsentsController,
            ChecksController,
            DevicesController,
            PurposesController,
            WatchController,
            WebhooksController,
        ],
        lifespan=[lifespan],
        dependencies={"ledger": Provide(ledger_of, sync_to_thread=False)},
        exception_handlers=EXCEPTION_HANDLERS,
        before_send=[add_consistency_token],
        openapi_config=openapi.config(),
        # The process's logging is ledger.logs' (set up by `ledger serve` for granian and its
        # workers); Litestar's own configuration would give the root logger a second format.
        logging_config=None,
        debug=os.environ.get("LEDGER_DEBUG") == "1",
    )
    # Around Litestar's whole handler, router included, so a 404 or 405 has a request id and a
    # line too: route middleware (the `middleware=` above) only runs once a route matched.
    app.asgi_handler = AccessLog(app.asgi_handler)
    app.state.settings = settings
    return app
