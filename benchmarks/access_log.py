"""What the access line adds to every request, in the process, without a server in the way.

    python -m benchmarks.access_log [--calls 20000] 2>/dev/null

Calls ledger.api.access_log.AccessLog around an ASGI app that answers at once, and prints the
best of five mean microseconds per request: the app alone, then with the access line, with
logging off (the request id and its header only), in text and in JSON. The lines go to stderr:
send it to /dev/null (or a file) to time the formatting and the write, not a terminal.
"""

import argparse
import asyncio
import logging
import sys
import time
from typing import Any

from ledger import logs
from ledger.api.access_log import AccessLog
from ledger.settings import LOG_FORMATS


async def answer(scope: Any, receive: Any, send: Any) -> None:
    scope["path_template"] = "/v1/check"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def ignore(message: Any) -> None:
    pass


async def per_call_us(app: Any, calls: int) -> float:
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(calls):
            await app({"type": "http", "method": "GET", "path": "/v1/check", "headers": []}, None, ignore)
        best = min(best, (time.perf_counter() - started) / calls * 1e6)
    return best


async def main(calls: int) -> None:
    print(f"{'the app alone':<34} {await per_call_us(answer, calls):6.1f} µs", flush=True)
    logging.getLogger().setLevel(logging.WARNING)  # nothing configured: INFO lines are dropped
    print(f"{'with the access line, logging off':<34} {await per_call_us(AccessLog(answer), calls):6.1f} µs")
    for log_format in LOG_FORMATS:
        logs.configure(log_format)
        print(f"{'with the access line, ' + log_format:<34} {await per_call_us(AccessLog(answer), calls):6.1f} µs")
    if sys.stderr.isatty():
        print("(stderr is a terminal: these include drawing the lines)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000)
    asyncio.run(main(parser.parse_args().calls))
