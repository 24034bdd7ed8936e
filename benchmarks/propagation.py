"""How fast an acknowledged withdrawal stops every replica from answering `allowed: true`.

    python -m benchmarks.propagation [--rounds 150] [--writers 0 12 24]

On the embedded PostgreSQL: two `ledger serve`-equivalent servers on one database, A with one
worker and B with two, and writers recording grants for other devices on both (half each, from a
separate process), at each load level. A probe then, round after round, on alternating replicas:
grants a device, warms both replicas (their next plain check is a cache hit), withdraws on one
(the acknowledging replica), and at once
  - checks on the same connection, so on the process that acknowledged: any `allowed: true` is a
    stale answer (target 0);
  - on even rounds, polls the other replica with plain checks until it refuses: the delay from
    the 201 to the first refusal, and how many polls in between still allowed;
  - on odd rounds, asks the other replica once with the withdrawal's consistency token: any
    `allowed: true` is a stale answer (target 0).
The resolution of a delay is one poll, an HTTP round trip on loopback (its median is printed).
Prints a table, writes benchmarks/results/propagation.json and draws propagation.png.
`--server-path DIR` runs the servers from another checkout (to measure a version before a change).
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import ADMIN, HEADERS, RESULTS, Served, durability, percentile, progress, pyplot
from ledger import embedded
from ledger.storage.migrations import migrate

PURPOSE = "pixverse_sharing"


def write_load(urls: list[str], writers: int, stop: Any, counter: Any) -> None:
    """Run in its own process: `writers` loops recording grants for devices of their own."""

    async def writer(n: int, http: httpx.AsyncClient) -> None:
        url, i = urls[n % len(urls)], 0
        while not stop.is_set():
            body = {"device_id": f"load-{os.getpid()}-{n}-{i}", "purpose": "telemetry", "action": "grant",
                    "policy_version": 1}  # fmt: skip
            if (await http.post(f"{url}/v1/consents", json=body)).status_code == 201:
                with counter.get_lock():
                    counter.value += 1
            i += 1

    async def run() -> None:
        limits = httpx.Limits(max_connections=writers, max_keepalive_connections=writers)
        async with httpx.AsyncClient(headers=HEADERS, timeout=30, limits=limits) as http:
            await asyncio.gather(*(writer(n, http) for n in range(writers)))

    asyncio.run(run())


def allowed(http: httpx.Client, url: str, device: str, **extra: str) -> bool:
    answer = http.get(f"{url}/v1/check", params={"device_id": device, "purpose": PURPOSE, **extra})
    answer.raise_for_status()
    return bool(answer.json()["allowed"])


def probe(a: str, b: str, rounds: int, level: int) -> dict[str, Any]:
    one = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = {url: httpx.Client(headers=HEADERS, timeout=10, limits=one) for url in (a, b)}
    delays, stale_polls, polls, stale_here, stale_token, token_asks, rtts = [], 0, 0, 0, 0, 0, []
    try:
        for i in range(rounds):
            here, there = (a, b) if i % 2 == 0 else (b, a)
            writer, other = clients[here], clients[there]
            device = f"probe-{level}-{i}"
            body = {"device_id": device, "purpose": PURPOSE, "policy_version": 1}
            granted = writer.post(f"{here}/v1/consents", json={**body, "action": "grant"}).json()
            assert allowed(other, there, device, consistency=granted["consistency_token"])
            assert allowed(writer, here, device)  # both replicas hold the grant in their caches now
            assert allowed(other, there, device)
            withdrawn = writer.post(f"{here}/v1/consents", json={**body, "action": "withdraw"})
            acknowledged = time.perf_counter()
            assert withdrawn.status_code == 201
            stale_here += allowed(writer, here, device)
            if i % 4 < 2:
                while True:
                    sent = time.perf_counter()
                    still = allowed(other, there, device)
                    rtts.append(time.perf_counter() - sent)
                    polls += 1
                    if not still:
                        break
                    stale_polls += 1
                delays.append((time.perf_counter() - acknowledged) * 1000)
            else:
                token_asks += 1
                stale_token += allowed(other, there, device, consistency=withdrawn.json()["consistency_token"])
            if i % 10 == 0:
                progress(f"{level} writers: round {i}/{rounds}")
    finally:
        for c in clients.values():
            c.close()
    return {
        "writers": level,
        "rounds": rounds,
        "stale_on_acknowledging_process": stale_here,
        "other_replica_delay_ms": delays,
        "stale_polls": stale_polls,
        "polls": polls,
        "stale_with_token": stale_token,
        "token_asks": token_asks,
        "poll_rtt_ms_p50": statistics.median(rtts) * 1000 if rtts else None,
    }


def level_run(env: dict[str, str], rounds: int, writers: int) -> dict[str, Any]:
    a = Served("granian", "ledger.app:create_app", env, workers=1)
    b = Served("granian", "ledger.app:create_app", env, workers=2)
    stop, counter = multiprocessing.Event(), multiprocessing.Value("i", 0)
    load = multiprocessing.Process(target=write_load, args=([a.url, b.url], writers, stop, counter))
    try:
        if writers:
            load.start()
            time.sleep(2)  # let the load settle
        before, started = counter.value, time.monotonic()
        result = probe(a.url, b.url, rounds, writers)
        result["appends_per_second"] = (counter.value - before) / (time.monotonic() - started)
    finally:
        stop.set()
        if writers:
            load.join(30)
        a.stop()
        b.stop()
    progress("")
    return result


def summary(r: dict[str, Any]) -> str:
    d = r["other_replica_delay_ms"]
    return (
        f"| {r['writers']} | {r['appends_per_second']:,.0f} | {r['stale_on_acknowledging_process']}/{r['rounds']} | "
        f"{statistics.median(d):.1f} / {percentile(d, 99):.1f} / {max(d):.1f} | "
        f"{r['stale_polls']}/{r['polls']} | {r['stale_with_token']}/{r['token_asks']} | {r['poll_rtt_ms_p50']:.2f} |"
    )


def plot(results: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in results:
        d = sorted(r["other_replica_delay_ms"])
        left.plot(d, [(i + 1) / len(d) for i in range(len(d))], label=f"{r['writers']} writers")
    left.set_xscale("log")
    left.set_xlabel("201 on one replica to refusal on the other (ms, log)")
    left.set_ylabel("share of rounds")
    left.set_title("Withdrawal seen by the other replica")
    left.axvline(10, color="grey", linestyle=":", linewidth=1)
    left.legend()
    levels = [str(r["writers"]) for r in results]
    right.bar(levels, [r["stale_on_acknowledging_process"] for r in results], label="acknowledging process")
    right.bar(levels, [r["stale_with_token"] for r in results], bottom=[0] * len(results), alpha=0.6,
              label="other replica, with token")  # fmt: skip
    right.set_xlabel("writers")
    right.set_ylabel("stale allowed: true answers")
    right.set_title("Stale answers (target 0)")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=150)
    parser.add_argument("--writers", type=int, nargs="+", default=[0, 12, 24])
    parser.add_argument("--server-path", help="run the servers from this checkout instead")
    parser.add_argument("--out", default="propagation", help="name of the results files")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        server, server_url = embedded.start(tmp / "data")
        try:
            url = embedded.with_database(server_url, "postgres")
            asyncio.run(migrate(url))
            settings = asyncio.run(durability(url))
            print(
                f"PostgreSQL: fsync={settings['fsync']}, synchronous_commit={settings['synchronous_commit']}",
                flush=True,
            )
            env = {"LEDGER_DATABASE_URL": url, "LEDGER_DATA_DIR": str(tmp / "data"), "LEDGER_ADMIN_TOKEN": ADMIN}
            if args.server_path:
                env["PYTHONPATH"] = str(Path(args.server_path).resolve())
            for writers in args.writers:
                results.append(level_run(env, args.rounds, writers))
                print(summary(results[-1]), flush=True)
        finally:
            server.cleanup()
    print()
    print(
        "| writers | appends/s | stale on the acknowledging process | other replica p50 / p99 / max (ms) "
        "| stale plain polls in that window | stale with the token | poll round trip p50 (ms) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(summary(r))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps({"postgresql": settings, "levels": results}, indent=2))
    plot(results, RESULTS / f"{args.out}.png")
    print(f"wrote {RESULTS / (args.out + '.json')} and {RESULTS / (args.out + '.png')}")


if __name__ == "__main__":
    main()
