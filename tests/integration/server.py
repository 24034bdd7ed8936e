"""A real `ledger serve` process on a free port, for tests that go through HTTP."""

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ADMIN_TOKEN = "test-admin-token-0123456789abcdef0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Base(str):
    """The server's base URL, which also knows the server's process id and its output."""

    pid: int
    output_path: Path

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")


@contextmanager
def running_server(
    env: dict[str, str], workers: int = 1, timeout: float = 60, port: int | None = None
) -> Iterator[Base]:
    port = port or free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    full_env.update({"LEDGER_ADMIN_TOKEN": ADMIN_TOKEN, **env})
    output = Path(tempfile.mkstemp(prefix="ledger-serve-", suffix=".log")[1])
    with open(output, "w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ledger", "serve", "--port", str(port), "--workers", str(workers)],
            env=full_env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
        )
    base = Base(f"http://127.0.0.1:{port}")
    base.pid = proc.pid
    base.output_path = output
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"ledger serve exited with {proc.returncode}:\n{proc.stdout.read() if proc.stdout else ''}"
                )
            try:
                if httpx.get(f"{base}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("ledger serve did not become ready")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def server_env(database_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    return {"LEDGER_DATABASE_URL": database_url, "LEDGER_DATA_DIR": str(data_dir), **extra}
