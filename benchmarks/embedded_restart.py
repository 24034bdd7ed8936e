"""How long the service is unready after its embedded PostgreSQL is killed with SIGKILL.

Starts `ledger serve` on the embedded server in a fresh data directory, records a grant, then
RUNS times: SIGKILL the postmaster, time until /health/ready answers 200 again (the supervisor
in `ledger serve` starts PostgreSQL again; the workers' pools reconnect), and check that every
grant acknowledged before a kill still decides "allowed".

    .venv/bin/python -m benchmarks.embedded_restart [RUNS]
"""

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.common import ADMIN, HEADERS, free_port


def ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def main(runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="ledger-restart-") as tmp:
        data = Path(tmp) / "data"
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
        env.update({"LEDGER_DATA_DIR": str(data), "LEDGER_ADMIN_TOKEN": ADMIN})
        output = open(Path(tmp) / "serve.log", "w")  # noqa: SIM115 (open for the server's life)
        server = subprocess.Popen(
            [sys.executable, "-m", "ledger", "serve", "--port", str(port)], env=env, stdout=output, stderr=output
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while not ready(base):
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit((Path(tmp) / "serve.log").read_text())
                time.sleep(0.1)
            times: list[float] = []
            serving: list[float] = []
            for run in range(runs):
                body = {"device_id": f"d{run}", "purpose": "telemetry", "action": "grant", "policy_version": 1}
                assert httpx.post(f"{base}/v1/consents", json=body, headers=HEADERS).status_code == 201
                pid = int((data / "postgres" / "postmaster.pid").read_text().split()[0])
                os.kill(pid, signal.SIGKILL)
                killed = time.monotonic()
                while ready(base) and time.monotonic() - killed < 5:  # until it notices
                    time.sleep(0.005)
                while not ready(base):
                    if time.monotonic() - killed > 60:
                        raise SystemExit("not ready within 60 s")
                    time.sleep(0.02)
                times.append(time.monotonic() - killed)
                # Ready, and answering checks: a projection that fell behind while the database
                # recovered fails closed (503, Retry-After) until it has caught up.
                for earlier in range(run + 1):
                    params = {"device_id": f"d{earlier}", "purpose": "telemetry"}
                    while (answer := httpx.get(f"{base}/v1/check", params=params, headers=HEADERS)).status_code == 503:
                        time.sleep(0.02)
                    assert answer.status_code == 200, answer.text
                    assert answer.json()["allowed"] is True, f"grant d{earlier} was lost"
                serving.append(time.monotonic() - killed)
                print(
                    f"run {run + 1}: killed postmaster {pid}; ready again after {times[-1]:.2f} s,"
                    f" answering checks after {serving[-1]:.2f} s",
                    flush=True,
                )
                time.sleep(1)
        finally:
            server.terminate()
            server.wait(60)
            if "-v" in sys.argv:
                print((Path(tmp) / "serve.log").read_text())
        for what, figures in (("/health/ready 200", times), ("checks answered", serving)):
            print(
                f"kill to {what} over {runs} runs: min {min(figures):.2f} s,"
                f" median {statistics.median(figures):.2f} s, max {max(figures):.2f} s"
            )
        print("no acknowledged grant lost")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 5)
