"""Reads built from the log cost a bounded number of queries, whatever their size.

    python -m benchmarks.reads [--repeat 30]

One `ledger serve` worker on the embedded PostgreSQL. Times, through HTTP and median of
--repeat requests each (after one warm-up):
  - GET /v1/devices/{id}/history of a device with 1 entry and of one with 300 (target: 300
    entries at most 5x one), every entry proven against the signed checkpoint;
  - POST /v1/check?at=... with 10 pairs and with 1,000 (target: at most 10x), every entry read
    proven the same way.
Prints a table, writes benchmarks/results/reads.json and draws reads.png.
"""

import argparse
import json
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import HEADERS, RESULTS, Served, embedded_database, progress, pyplot

PURPOSES = ("pixverse_sharing", "cross_border_transfer", "telemetry")


def median_ms(http: httpx.Client, repeat: int, method: str, path: str, **kwargs: Any) -> float:
    http.request(method, path, **kwargs).raise_for_status()  # warm-up
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        http.request(method, path, **kwargs).raise_for_status()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def seed(http: httpx.Client) -> None:
    def grant(device: str, n: int) -> None:
        body = {"device_id": device, "purpose": PURPOSES[n % 3], "action": ("grant", "withdraw")[n % 2],
                "policy_version": 1}  # fmt: skip
        http.post("/v1/consents", json=body).raise_for_status()

    grant("reads-one", 0)
    for n in range(300):
        grant("reads-many", n)
    for n in range(1000):
        grant(f"reads-pair-{n}", n)
        if n % 100 == 0:
            progress(f"seeding: {n:,} of 1,000 devices")
    progress("")


def measure(url: str, repeat: int) -> dict[str, float]:
    with httpx.Client(base_url=url, headers=HEADERS, timeout=60) as http:
        seed(http)
        at = datetime.now(UTC).isoformat()
        results = {
            "history, 1 entry": median_ms(http, repeat, "GET", "/v1/devices/reads-one/history"),
            "history, 300 entries": median_ms(http, repeat, "GET", "/v1/devices/reads-many/history"),
        }
        for count in (10, 1000):
            checks = [{"device_id": f"reads-pair-{n}", "purpose": PURPOSES[n % 3]} for n in range(count)]
            results[f"at= batch, {count:,} pairs"] = median_ms(
                http, repeat, "POST", "/v1/check", params={"at": at}, json={"checks": checks}
            )
    return results


def plot(results: dict[str, float], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.barh(list(results), list(results.values()), color=["tab:blue", "tab:blue", "tab:green", "tab:green"])
    ax.invert_yaxis()
    ax.set_xlabel("median ms per request (HTTP, one worker)")
    ax.set_title("Reads proven against the signed tree")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    with embedded_database() as db:
        served = Served("granian", "ledger.app:create_app", db.env)
        try:
            results = measure(served.url, args.repeat)
        finally:
            served.stop()
        settings = db.postgresql
    history = results["history, 300 entries"] / results["history, 1 entry"]
    batch = results["at= batch, 1,000 pairs"] / results["at= batch, 10 pairs"]
    print("| read | median ms |")
    print("|---|---:|")
    for name, ms in results.items():
        print(f"| {name} | {ms:.2f} |")
    print(f"\nhistory: 300 entries cost {history:.1f}x one (target <= 5x)")
    print(f"at= batch: 1,000 pairs cost {batch:.1f}x 10 (target <= 10x)")
    RESULTS.mkdir(exist_ok=True)
    data = {"postgresql": settings, "repeat": args.repeat, "median_ms": results, "history_ratio": history,
            "batch_ratio": batch}  # fmt: skip
    (RESULTS / "reads.json").write_text(json.dumps(data, indent=2))
    plot(results, RESULTS / "reads.png")
    print(f"wrote {RESULTS / 'reads.json'} and {RESULTS / 'reads.png'}")


if __name__ == "__main__":
    main()
