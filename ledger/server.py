"""Running an ASGI app factory under granian or uvicorn, the same way for `ledger serve` and the benchmarks.

`ledger serve` uses DEFAULT, the faster of the two on the check endpoint as measured by
benchmarks/check.py (see README); the other stays available for that comparison.
"""

import asyncio
import errno
import os
import signal
import socket
import sys
from collections.abc import Callable
from types import FrameType
from typing import Literal

from ledger import logs
from ledger.errors import ConfigError
from ledger.settings import Settings

Server = Literal["granian", "uvicorn"]
DEFAULT: Server = "granian"


def check_address(host: str, port: int) -> None:
    """Bind the address once, in this process, and let go: the one way to learn before any
    worker starts (granian logs "Listening" first and binds in the workers) that it is taken.
    SO_REUSEADDR only lets it past connections of an earlier server still closing (TIME_WAIT)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"--host {host}: not an address to listen on ({exc})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"--port {port}: {host}:{port} is already in use (another server?)") from None
            raise ConfigError(f"--host {host} --port {port}: cannot listen there ({exc.strerror})") from None


def on_termination(callback: Callable[[], None]) -> Callable[[], None]:
    """Have the running event loop call `callback` as soon as this process is asked to stop
    (SIGTERM, SIGINT), before the server drains its connections: granian and uvicorn wait for
    every response to finish first, and a watch stream never finishes by itself. Chains to the
    handler already installed (the server's own, which starts the drain). Returns a function that
    puts that handler back. Does nothing outside the main thread, where signals cannot be set."""
    loop = asyncio.get_running_loop()
    previous: dict[int, object] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(callback)
        chained = previous[signum]
        if callable(chained):
            chained(signum, frame)
        elif chained == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def restore() -> None:
        for signum, chained in previous.items():
            if signal.getsignal(signum) is handler:
                signal.signal(signum, chained)  # type: ignore[arg-type]

    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, handler)
    except ValueError:
        restore()
    return restore


def run(
    target: str,
    *,
    host: str,
    port: int,
    workers: int,
    server: Server = DEFAULT,
) -> None:
    """Serve the app factory `target` ("module:function") until SIGINT or SIGTERM. Under
    granian, SIGHUP still replaces the workers one at a time (no downtime); it no longer reloads
    the purpose registry, which is published into the log instead. The server and every worker
    log as this process does (ledger.logs): the server applies the configuration in each of them."""
    log_config = logs.dict_config()
    if server == "granian":
        from granian import Granian
        from granian.constants import Interfaces, Loops

        granian = Granian(
            target,
            factory=True,
            interface=Interfaces.ASGI,
            address=host,
            port=port,
            workers=workers,
            loop=Loops.uvloop,
            log_dictconfig=log_config,
            # Its access line names the raw path and query string: ledger.api.access_log logs instead.
            log_access=False,
        )
        granian.serve()
    else:
        import uvicorn

        uvicorn.run(
            target,
            factory=True,
            host=host,
            port=port,
            workers=workers,
            loop="uvloop",
            http="httptools",
            access_log=False,
            log_level="warning",
            log_config=log_config,
        )


if __name__ == "__main__":
    # For the benchmarks: python -m ledger.server SERVER TARGET PORT WORKERS
    name, target, port, workers = sys.argv[1:5]
    if name not in ("granian", "uvicorn"):
        raise SystemExit("server must be granian or uvicorn")
    logs.configure(Settings.from_env().log_format)
    run(target, host="127.0.0.1", port=int(port), workers=int(workers), server=name)  # type: ignore[arg-type]
