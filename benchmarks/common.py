"""What the benchmarks share: progress lines, percentiles, and a server process on a free port."""

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import httpx

RESULTS = Path(__file__).parent / "results"
ADMIN = "bench-admin-token-0123456789abcdef0123456789"
HEADERS = {"Authorization": f"Bearer {ADMIN}"}


def progress(text: str) -> None:
    sys.stderr.write(f"\r\x1b[K{text}")
    sys.stderr.flush()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """A server process (granian or uvicorn) for an app factory, on a free port."""

    def __init__(self, server: str, target: str, env: dict[str, str], workers: int = 1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ledger.server", server, target, str(self.port), str(workers)],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        probe = "/health/ready" if target.startswith("ledger") else "/v1/check"
        while True:
            try:
                if httpx.get(self.url + probe, timeout=1).status_code in (200, 401):
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{server} serving {target} did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def pyplot():  # type: ignore[no-untyped-def]
    """matplotlib's pyplot drawing to files (no screen here)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


async def durability(url: str) -> dict[str, str]:
    """What a durable append means on this server: `SHOW fsync, synchronous_commit` (the append
    transaction sets synchronous_commit = on for itself whatever the default)."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return {name: await conn.fetchval(f"SHOW {name}") for name in ("fsync", "synchronous_commit")}
    finally:
        await conn.close()


class Embedded(NamedTuple):
    """A migrated database on a fresh embedded PostgreSQL, and the settings a server needs for it."""

    tmp: Path
    server_url: str
    url: str
    env: dict[str, str]
    postgresql: dict[str, str]


@contextlib.contextmanager
def embedded_database() -> Iterator[Embedded]:
    """Start PostgreSQL in a temporary directory, migrate its `postgres` database, stop it after."""
    from ledger import embedded
    from ledger.storage.migrations import migrate

    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        server, server_url = embedded.start(tmp / "data")
        try:
            url = embedded.with_database(server_url, "postgres")
            asyncio.run(migrate(url))
            settings = asyncio.run(durability(url))
            print("PostgreSQL:", ", ".join(f"{k}={v}" for k, v in settings.items()), flush=True)
            env = {"LEDGER_DATABASE_URL": url, "LEDGER_DATA_DIR": str(tmp / "data"), "LEDGER_ADMIN_TOKEN": ADMIN}
            yield Embedded(tmp, server_url, url, env, settings)
        finally:
            server.cleanup()
