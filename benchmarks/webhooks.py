"""Withdrawal webhooks: time to a live receiver, and how fast a queue drains.

    python -m benchmarks.webhooks [--rounds 300] [--queued 1000]

On the embedded PostgreSQL, one `ledger serve` worker (granian) with LEDGER_WEBHOOK_ALLOW_PRIVATE
so it may call a receiver on loopback (a threaded http.server in this process, answering 200):
  - latency: withdrawals recorded one after another through the API; for each, the time from the
    201 (acknowledged) to the receiver holding the delivery;
  - drain: --queued withdrawals appended while no dispatcher runs, then the server is started and
    the time until the receiver holds them all gives deliveries per second (one subscription, so
    one at a time and in index order, as the ordering guarantee requires).
Prints a table, writes benchmarks/results/webhooks.json and draws benchmarks/results/webhooks.png.
"""

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import HEADERS, RESULTS, Served, embedded_database, percentile, progress, pyplot
from ledger.appender import Appender
from ledger.core.batch import Draft
from ledger.core.entry import format_time
from ledger.keys import read_key_file, write_key_file
from ledger.storage import create_pool, open_stores
from tests.integration.receiver import Receiver


def arrival_by_index(receiver: Receiver) -> dict[int, float]:
    return {json.loads(r.body)["data"]["index"]: r.at for r in list(receiver.received)}


def latency(env: dict[str, str], receiver: Receiver, rounds: int) -> list[float]:
    served = Served("granian", "ledger.app:create_app", env)
    try:
        with httpx.Client(base_url=served.url, headers=HEADERS, timeout=10) as http:
            hook = http.post("/v1/webhooks", json={"url": receiver.url, "events": ["consent.withdrawn"]})
            hook.raise_for_status()
            acknowledged: dict[int, float] = {}
            for i in range(rounds):
                body = {
                    "device_id": f"lat-{i}",
                    "purpose": "pixverse_sharing",
                    "action": "withdraw",
                    "policy_version": 1,
                }
                response = http.post("/v1/consents", json=body)
                acknowledged[response.json()["index"]] = time.monotonic()
                if i % 50 == 0:
                    progress(f"latency: {i}/{rounds}")
            receiver.wait_for(rounds, 60)
            http.delete(f"/v1/webhooks/{hook.json()['id']}")
    finally:
        served.stop()
    progress("")
    arrived = arrival_by_index(receiver)
    return [(arrived[i] - t) * 1000 for i, t in acknowledged.items()]


async def queue_withdrawals(url: str, key_file: Path, count: int) -> None:
    store = open_stores(await create_pool(url, max_size=4))
    signer = read_key_file(key_file)
    appender = Appender(store.log, signer, signer.name)
    await appender.start()
    now = format_time(datetime.now(UTC))
    drafts = [
        Draft(id=str(uuid.uuid4()), device_id=f"queued-{i}", purpose="telemetry", action="withdraw",
              policy_version=1, occurred_at=now, actor="user", method="settings", evidence={})
        for i in range(count)
    ]  # fmt: skip
    await asyncio.gather(*(appender.append(d) for d in drafts))
    await appender.stop()
    await store.pool.close()


def drain(env: dict[str, str], url: str, key_file: Path, receiver: Receiver, queued: int) -> float:
    served = Served("granian", "ledger.app:create_app", env)
    try:
        with httpx.Client(base_url=served.url, headers=HEADERS, timeout=10) as http:
            hook = http.post("/v1/webhooks", json={"url": receiver.url, "events": ["consent.withdrawn"]}).json()
    finally:
        served.stop()  # no dispatcher runs while the queue fills
    asyncio.run(queue_withdrawals(url, key_file, queued))
    before = len(receiver.received)
    # The dispatcher starts before the server reports ready, so the clock is the receiver's own:
    # from the first queued delivery's arrival to the last one's.
    served = Served("granian", "ledger.app:create_app", env)
    try:
        while len(receiver.received) - before < queued:
            progress(f"drain: {len(receiver.received) - before}/{queued}")
            time.sleep(0.1)
        with httpx.Client(base_url=served.url, headers=HEADERS) as http:
            http.delete(f"/v1/webhooks/{hook['id']}")
    finally:
        served.stop()
    arrivals = [r.at for r in receiver.received[before:]]
    elapsed = max(arrivals) - min(arrivals)
    progress("")
    return (queued - 1) / elapsed


def plot(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    values = results["latency_ms"]
    ax.hist(values, bins=40, color="tab:green")
    for p, style in ((50, "-"), (99, ":")):
        ax.axvline(percentile(values, p), color="black", linestyle=style, linewidth=1, label=f"p{p}")
    ax.set_xlabel("ms from acknowledged withdrawal to the receiver holding it (target p99: 1,000 ms)")
    ax.set_ylabel("withdrawals")
    ax.set_title(f"Webhook latency; a queue of {results['queued']:,} drains at {results['drain_per_second']:,.0f}/s")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--queued", type=int, default=1000)
    args = parser.parse_args()
    receiver = Receiver().start()
    try:
        with embedded_database() as db:
            key_file = db.tmp / "signing.key"
            write_key_file(key_file, "bench.example/log")
            env = {
                **db.env,
                "LEDGER_SIGNING_KEY": str(key_file),
                "LEDGER_LOG_ORIGIN": "bench.example/log",
                "LEDGER_WEBHOOK_ALLOW_PRIVATE": "true",
            }
            latencies = latency(env, receiver, args.rounds)
            rate = drain(env, db.url, key_file, receiver, args.queued)
    finally:
        receiver.stop()
    results = {
        "rounds": args.rounds,
        "latency_ms": latencies,
        "p50_ms": statistics.median(latencies),
        "p99_ms": percentile(latencies, 99),
        "queued": args.queued,
        "drain_per_second": rate,
    }
    print("| measure | value |")
    print("|---|---:|")
    print(f"| acknowledged withdrawal to receiver, p50 ({args.rounds} rounds) | {results['p50_ms']:.1f} ms |")
    print(f"| acknowledged withdrawal to receiver, p99 | {results['p99_ms']:.1f} ms |")
    print(f"| {args.queued:,} queued withdrawals, one subscription | {rate:,.0f} deliveries/s |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "webhooks.json").write_text(json.dumps(results, indent=2))
    plot(results, RESULTS / "webhooks.png")
    print(f"wrote {RESULTS / 'webhooks.json'} and {RESULTS / 'webhooks.png'}", file=sys.stderr)


if __name__ == "__main__":
    main()
