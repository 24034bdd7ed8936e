"""What a GET /v1/check costs inside the process, without a server or a network in the way.

    python -m benchmarks.route_cost [--calls 20000]

Calls the ASGI applications directly (a fixed request, a warmed cache, the embedded PostgreSQL
behind the ledger's) and prints the mean microseconds per request of: the bare Litestar constant
endpoint (benchmarks/bare.py), the ledger's GET /v1/check answered by its hot path, and the same
with the app's middleware or its before_send hook left out, to show what each layer costs.
"""

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import ledger.app
from benchmarks.bare import create_app as bare_app
from benchmarks.common import ADMIN
from ledger import embedded
from ledger.settings import Settings
from ledger.storage.migrations import migrate

QUERY = b"device_id=route-cost&purpose=telemetry"
HEADERS = [(b"authorization", f"Bearer {ADMIN}".encode())]


async def call(app: Any) -> list[dict[str, Any]]:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": "/v1/check", "raw_path": b"/v1/check", "root_path": "", "query_string": QUERY, "headers": HEADERS,
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": {},
    }  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def per_call_us(app: Any, calls: int) -> float:
    for _ in range(500):
        await call(app)
    started = time.perf_counter()
    for n in range(calls):
        await call(app)
        if n % 200 == 0:
            await asyncio.sleep(0.001)  # let the projection's tailer confirm it is current
    return (time.perf_counter() - started) / calls * 1e6


def ledger_app(settings: Settings, middleware: bool, before_send: bool) -> Any:
    original = ledger.app.Litestar

    def built(*args: Any, **kwargs: Any) -> Any:
        if not middleware:
            kwargs["middleware"] = []
        if not before_send:
            kwargs["before_send"] = []
        return original(*args, **kwargs)

    ledger.app.Litestar = built  # type: ignore[misc]
    try:
        return ledger.app.create_app(settings)
    finally:
        ledger.app.Litestar = original  # type: ignore[misc]


async def main(calls: int) -> None:
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
        server, server_url = embedded.start(Path(tmp) / "data")
        try:
            url = embedded.with_database(server_url, "postgres")
            await migrate(url)
            settings = Settings(database_url=url, data_dir=Path(tmp), admin_token=ADMIN)
            bare = bare_app()
            async with bare.lifespan():
                print(f"bare Litestar constant endpoint: {await per_call_us(bare, calls):6.1f} µs", flush=True)
            for label, middleware, before_send in [
                ("GET /v1/check (hot path)", True, True),
                ("  without the app's middleware", False, True),
                ("  without the before_send hook", True, False),
                ("  without either", False, False),
            ]:
                app = ledger_app(settings, middleware, before_send)
                async with app.lifespan():
                    sent = await call(app)
                    assert sent[0]["status"] == 200, sent
                    print(f"{label:<32} {await per_call_us(app, calls):6.1f} µs", flush=True)
        finally:
            server.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000)
    asyncio.run(main(parser.parse_args().calls))
