"""What the access line adds to every request: in the process, and through a real server.

    python -m benchmarks.access_log [--calls 20000] [--to file|pipe|null]
    python -m benchmarks.access_log --server [--seconds 8]

Calls ledger.api.access_log.AccessLog around an ASGI app that answers at once and prints, for
each way of running it, the best of three mean microseconds per request, in CPU time of this
process (the machine is shared: wall time would count the other jobs' turns): the app alone;
the request id and its header with logging off; then the access line in JSON and in text; the
JSON line made as a LogRecord (the way every other line goes, and the access line's too when
another handler or a filter is on its way); and a write per line instead of per event-loop
iteration. Requests run 16 to an event-loop iteration, as under load (ledger.logs.Stderr writes
the lines of an iteration at once), except in the rows that say otherwise.

The lines go to a temporary file (`--to file`, as with `2>file`), to a pipe that `cat` empties
(`--to pipe`, as a container's log collector reads them), or to /dev/null.

`--server` needs wrk (see benchmarks/check.py): GET /v1/check from a warmed cache for `--seconds`,
granian with one worker, LEDGER_LOG_FORMAT=json and stderr to a file, wrk with 1 thread and 32
connections; the worker turns its access logger on and off every quarter second (see Phases) and
the requests a second and CPU time a request of each state are printed.
"""

import argparse
import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import msgspec
import uvloop

from ledger import logs
from ledger.api.access_log import AccessLog, log

PER_ITERATION = 16


async def answer(scope: Any, receive: Any, send: Any) -> None:
    scope["path_template"] = "/v1/check"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def ignore(message: Any) -> None:
    pass


async def per_call_us(app: Any, calls: int, per_iteration: int = PER_ITERATION) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for n in range(calls):
            await app({"type": "http", "method": "GET", "path": "/v1/check", "headers": []}, None, ignore)
            if n % per_iteration == per_iteration - 1:
                await asyncio.sleep(0)  # the end of an event-loop iteration
        best = min(best, (time.process_time() - started) / calls * 1e6)
    return best


@contextlib.contextmanager
def lines_to(where: str) -> Iterator[TextIO]:
    """A text stream for the log lines, and the end of whatever reads it."""
    if where == "pipe":
        reader = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        assert reader.stdin is not None
        with open(reader.stdin.fileno(), "w", buffering=1, closefd=False) as stream:
            yield stream
        reader.stdin.close()
        reader.wait()
    elif where == "file":
        with tempfile.TemporaryFile("w", buffering=1, prefix="access-log-") as stream:
            yield stream
    else:
        with open(os.devnull, "w", buffering=1) as stream:
            yield stream


async def main(calls: int, where: str) -> None:
    def row(label: str, us: float, off: float | None = None) -> None:
        added = f"  (+{us - off:.1f} µs)" if off is not None else ""
        print(f"{label:<58} {us:6.1f} µs{added}", flush=True)

    row("the app alone", await per_call_us(answer, calls))
    with lines_to(where) as stream:
        stderr, sys.stderr = sys.stderr, stream  # the handler writes to the stderr it finds
        try:
            logging.getLogger().setLevel(logging.WARNING)  # nothing configured: INFO lines are dropped
            off = await per_call_us(AccessLog(answer), calls)
            row("request id and header, logging off", off)
            for log_format in ("json", "text"):
                logs.configure(log_format)
                row(f"with the access line, {log_format}", await per_call_us(AccessLog(answer), calls), off)
            logs.configure("json")
            log.addFilter(lambda record: True)  # anything on the way: the line is made as a LogRecord
            row("with the access line, json, as a LogRecord", await per_call_us(AccessLog(answer), calls), off)
            log.filters.clear()
            alone = "one request an event-loop iteration:"
            logging.getLogger().setLevel(logging.WARNING)
            off = await per_call_us(AccessLog(answer), calls, per_iteration=1)
            row(f"{alone} request id and header, logging off", off)
            logging.getLogger().setLevel(logging.INFO)
            row(f"{alone} json, a write per line", await per_call_us(AccessLog(answer), calls, 1), off)
        finally:
            sys.stderr = stderr
            for handler in logging.getLogger().handlers:
                handler.close()  # writes what waits, before the stream closes
            logging.getLogger().handlers.clear()


PHASE_SECONDS = 0.25


class Phases:
    """ledger's app, its access logger turned on and off every PHASE_SECONDS, counting the requests
    and the process's CPU time (every thread's: granian's too) spent in each state. GET /phases
    answers the totals. Alternating within one process cancels what drifts on a shared machine
    (other jobs' load, a warmer cache), which separate runs of a few seconds do not."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.on = True
        self.started: tuple[float, float] | None = None  # wall and CPU time the phase began
        self.requests = 0
        self.totals = {state: {"requests": 0, "seconds": 0.0, "cpu_seconds": 0.0} for state in ("on", "off")}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            if scope["path"] == "/phases":
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": msgspec.json.encode(self.totals)})
                return
            self._count()
        await self.app(scope, receive, send)

    def _count(self) -> None:
        now = (time.perf_counter(), time.process_time())
        if self.started is None:
            self.started = now
        elif now[0] - self.started[0] >= PHASE_SECONDS:
            total = self.totals["on" if self.on else "off"]
            total["requests"] += self.requests
            total["seconds"] += now[0] - self.started[0]
            total["cpu_seconds"] += now[1] - self.started[1]
            self.on = not self.on
            log.setLevel(logging.INFO if self.on else logging.WARNING)
            self.started, self.requests = now, 0
        self.requests += 1


def app_in_phases() -> Any:
    import ledger.app

    return Phases(ledger.app.create_app())


def served(target: str, env: dict[str, str], lines: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`python -m ledger.server` as benchmarks.common.Served starts it, with stderr to `lines`."""
    import httpx

    from benchmarks.common import free_port

    port = free_port()
    with lines.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "ledger.server", "granian", target, str(port), "1"],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/health/ready", timeout=1).status_code == 200:
                return process, url
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start:\n{lines.read_text()[-2000:]}")
        time.sleep(0.1)


def server(seconds: float, devices: int = 1000) -> None:
    import httpx

    from benchmarks.check import lua, seed, warm, wrk
    from benchmarks.common import embedded_database

    with embedded_database() as db:
        env = {**db.env, "LEDGER_LOG_FORMAT": "json", "LEDGER_CACHE_SIZE": str(devices * 4)}
        script = lua(db.tmp / "check.lua", devices)
        lines = db.tmp / "stderr.txt"
        process, url = served("benchmarks.access_log:app_in_phases", env, lines)
        try:
            asyncio.run(seed(url, devices))
            warm(url, devices)
            wrk(url + "/v1/check", 1, script)  # warm the token cache and the connections
            before = httpx.get(url + "/phases").json()
            wrk(url + "/v1/check", seconds, script)
            after = httpx.get(url + "/phases").json()
        finally:
            process.terminate()
            process.wait(20)
    cpu_us = {}
    for state in ("on", "off"):
        requests, wall, cpu = (after[state][key] - before[state][key] for key in ("requests", "seconds", "cpu_seconds"))
        cpu_us[state] = cpu / requests * 1e6
        print(f"access line {state:<3}: {requests / wall:8,.0f} requests/s, {cpu_us[state]:5.1f} µs of CPU a request")
    print(f"the access line: {cpu_us['on'] - cpu_us['off']:+.1f} µs of CPU a request")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--to", choices=("file", "pipe", "null"), default="file")
    parser.add_argument("--server", action="store_true")
    parser.add_argument("--seconds", type=float, default=8.0)
    arguments = parser.parse_args()
    if arguments.server:
        server(arguments.seconds)
    else:
        uvloop.run(main(arguments.calls, arguments.to))  # the servers' loop (ledger.server)
