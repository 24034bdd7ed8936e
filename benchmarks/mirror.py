"""The client's mirror: answers from memory, their memory, and how fast a withdrawal reaches them.

    python -m benchmarks.mirror [--devices 50000] [--seconds 3] [--rounds 200] [--writers 0 12 24]
    python -m benchmarks.mirror --smoke      # a few seconds' worth, to see that it runs

On the embedded PostgreSQL (fsync on): two `ledger serve`-equivalent servers on one database, A
with one worker and B with two, as benchmarks/propagation.py runs them.
1. Seeds `--devices` grants of pixverse_sharing (device ids of 36 characters) through the API.
2. A Mirror on B fetches all of them (`Mirror.warm`, 1,000 a request); tracemalloc measures
   what the mirror holds afterwards, per decision (the device id strings included: only the
   mirror keeps them), after a first batch of 1,000 other devices has set up the connection.
3. `mirror.allowed` on those keys in one thread for `--seconds`: answers per second; then the
   latency of single calls (perf_counter_ns around each, so the timer's own cost, printed, is
   in it). For comparison, `LedgerClient.check` (GET /v1/check over HTTP) in one thread.
4. At each writer level (wrk writers recording grants for other devices on both servers, half
   each, as propagation.py), `--rounds` rounds: grant a probe device on one replica (alternating),
   let a mirror on A and one on B hold it, withdraw it on that replica, and time from the 201 to
   each mirror having applied it (`Mirror.wait_for` on the withdrawal's token, in a thread per
   mirror started before the withdrawal); then each mirror is asked and any `allowed: true` is
   counted as stale (target 0).
Prints tables, writes benchmarks/results/mirror.json and draws mirror.png. Watchers per worker
are measured by the watch stream's own benchmark, not here.
"""

import argparse
import asyncio
import gc
import json
import statistics
import threading
import time
import tracemalloc
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import ADMIN, RESULTS, Served, embedded_database, percentile, progress, pyplot
from benchmarks.propagation import log_size, start_writers
from ledger.client import LedgerClient, Mirror

PURPOSE = "pixverse_sharing"


def device(n: int) -> str:
    return f"mirror-device-{n:022d}"  # 36 characters, the length of a UUID


async def seed(url: str, devices: int, connections: int = 32) -> None:
    """One grant per device through POST /v1/consents, `connections` at a time."""
    done = 0
    queue = iter(range(devices))
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60) as http:

        async def worker() -> None:
            nonlocal done
            for n in queue:
                body = {"device_id": device(n), "purpose": PURPOSE, "action": "grant", "policy_version": 1}
                response = await http.post("/v1/consents", json=body)
                assert response.status_code == 201, response.text
                done += 1
                if done % 500 == 0:
                    progress(f"seeding: {done}/{devices}")

        await asyncio.gather(*(worker() for _ in range(connections)))
    progress("")


def memory_per_decision(mirror: Mirror, devices: int) -> float:
    # Connections, buffers and decoders are made by a first batch, outside the measurement.
    mirror.warm((f"never-granted-{n}", PURPOSE) for n in range(1000))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = mirror.warm((device(n), PURPOSE) for n in range(devices))
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert kept == devices, f"kept {kept} of {devices}"
    return (after - before) / devices


def hits(mirror: Mirror, devices: int, seconds: float) -> dict[str, Any]:
    keys = [device(n) for n in range(0, devices, max(1, devices // 10_000))]
    allowed = mirror.allowed
    assert all(allowed(k, PURPOSE) for k in keys), "every seeded grant is allowed"
    misses = mirror.stats().misses
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for k in keys:
            allowed(k, PURPOSE)
        calls += len(keys)
    rate = calls / (time.perf_counter() - started)
    clock = time.perf_counter_ns
    timer = []
    for _ in range(100_000):
        t = clock()
        timer.append(clock() - t)
    latencies = []
    for _ in range(max(1, 300_000 // len(keys))):
        for k in keys:
            t = clock()
            allowed(k, PURPOSE)
            latencies.append(clock() - t)
    assert mirror.stats().misses == misses, "every call was a hit"
    return {
        "hits_per_second": rate,
        "latency_ns_p50": percentile(latencies, 50),
        "latency_ns_p99": percentile(latencies, 99),
        "latency_ns_p999": percentile(latencies, 99.9),
        "timer_ns_p50": percentile(timer, 50),
        "calls_timed": len(latencies),
        "latencies_ns_sample": latencies[:: max(1, len(latencies) // 20_000)],
    }


def http_checks(url: str, devices: int, seconds: float) -> float:
    with LedgerClient(url, token=ADMIN) as ledger:
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            ledger.check(device(calls % devices), PURPOSE)
            calls += 1
        return calls / (time.perf_counter() - started)


def applied_at(mirror: Mirror, token: Future[str], result: list[float]) -> None:
    """Wait for the withdrawal's token, then for the mirror to have applied it; note when."""
    if mirror.wait_for(token.result(timeout=30), 10):
        result.append(time.perf_counter())


def probe(a: str, b: str, rounds: int, level: int) -> dict[str, Any]:
    delays: dict[str, list[float]] = {"same replica": [], "other replica": []}
    stale = asks = 0
    with (
        LedgerClient(a, token=ADMIN) as on_a,
        LedgerClient(b, token=ADMIN) as on_b,
        Mirror(a, token=ADMIN) as mirror_a,
        Mirror(b, token=ADMIN) as mirror_b,
    ):
        mirrors = {a: mirror_a, b: mirror_b}
        for i in range(rounds):
            url, ledger = (a, on_a) if i % 2 == 0 else (b, on_b)
            probe_device = f"probe-{level}-{i}"
            granted = ledger.record(device_id=probe_device, purpose=PURPOSE, action="grant", policy_version=1)
            for m in mirrors.values():
                assert m.wait_for(granted["consistency_token"], 10), "the mirror is fresh"
                assert m.allowed(probe_device, PURPOSE)  # a miss: now held, and only the stream can change it
            token: Future[str] = Future()
            results: dict[str, list[float]] = {u: [] for u in mirrors}
            waiters = [threading.Thread(target=applied_at, args=(m, token, results[u])) for u, m in mirrors.items()]
            for w in waiters:
                w.start()
            withdrawn = ledger.record(device_id=probe_device, purpose=PURPOSE, action="withdraw", policy_version=1)
            acknowledged = time.perf_counter()
            token.set_result(withdrawn["consistency_token"])
            for w in waiters:
                w.join()
            for u, m in mirrors.items():
                asks += 1
                stale += m.allowed(probe_device, PURPOSE)
                if results[u]:
                    where = "same replica" if u == url else "other replica"
                    delays[where].append(max(0.0, results[u][0] - acknowledged) * 1000)
            if i % 10 == 0:
                progress(f"{level} writers: round {i}/{rounds}")
    progress("")
    both = delays["same replica"] + delays["other replica"]
    return {"writers": level, "rounds": rounds, "delays_ms": delays, "all_ms": both, "stale": stale, "asks": asks}


def level_run(a: str, b: str, rounds: int, writers: int, tmp: Path) -> dict[str, Any]:
    load = start_writers([a, b], writers, tmp)
    try:
        if writers:
            time.sleep(2)  # let the load settle
        before, started = log_size(a), time.monotonic()
        result = probe(a, b, rounds, writers)
        result["appends_per_second"] = (log_size(a) - before) / (time.monotonic() - started)
    finally:
        for proc in load:
            proc.terminate()
            proc.wait(10)
    return result


def level_line(r: dict[str, Any]) -> str:
    d = r["all_ms"]
    return (
        f"| {r['writers']} | {r['appends_per_second']:,.0f} | {statistics.median(d):.1f} / {percentile(d, 99):.1f} / "
        f"{max(d):.1f} | {percentile(r['delays_ms']['same replica'], 99):.1f} | "
        f"{percentile(r['delays_ms']['other replica'], 99):.1f} | {r['stale']}/{r['asks']} |"
    )


def plot(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))

    def cdf(axes: Any, values: list[float], target: float, **style: Any) -> None:
        ordered = sorted(max(v, 0.01) for v in values)
        axes.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], **style)
        axes.set_xscale("log")
        axes.xaxis.set_major_formatter(ScalarFormatter())
        axes.xaxis.set_minor_formatter(NullFormatter())
        axes.axvline(target, color="grey", linestyle=":", linewidth=1)

    for r in results["levels"]:
        cdf(left, r["all_ms"], 20, label=f"{r['writers']} writers")
    left.set_xlabel("201 of the withdrawal to the mirror having it (ms, log; both mirrors)")
    left.set_ylabel("share of withdrawals")
    left.set_title("Withdrawal reaching the mirrors (target p99 20 ms)")
    left.legend()
    h = results["hits"]
    cdf(right, [x / 1000 for x in h["latencies_ns_sample"]], 5)
    right.set_xlabel("one mirror.allowed call on a hit (µs, log; timer included)")
    right.set_ylabel("share of calls")
    right.set_title(f"Hits: {h['hits_per_second']:,.0f}/s in one thread (target 500,000)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=50_000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--writers", type=int, nargs="+", default=[0, 12, 24])
    parser.add_argument("--smoke", action="store_true", help="2,000 devices, 1 s, 20 rounds at 0 and 12 writers")
    parser.add_argument("--out", default="mirror", help="name of the results files")
    args = parser.parse_args()
    if args.smoke:
        args.devices, args.seconds, args.rounds, args.writers = 2000, 1.0, 20, [0, 12]
    results: dict[str, Any] = {"devices": args.devices}
    with embedded_database() as db:
        a = Served("granian", "ledger.app:create_app", db.env, workers=1)
        b = Served("granian", "ledger.app:create_app", db.env, workers=2)
        try:
            asyncio.run(seed(a.url, args.devices))
            with Mirror(b.url, token=ADMIN) as mirror:
                results["bytes_per_decision"] = memory_per_decision(mirror, args.devices)
                print(f"memory: {results['bytes_per_decision']:.0f} bytes per mirrored decision", flush=True)
                results["hits"] = hits(mirror, args.devices, args.seconds)
            h = results["hits"]
            print(
                f"hits: {h['hits_per_second']:,.0f}/s in one thread; one call p50 {h['latency_ns_p50'] / 1000:.2f} µs, "
                f"p99 {h['latency_ns_p99'] / 1000:.2f} µs, p99.9 {h['latency_ns_p999'] / 1000:.2f} µs "
                f"(timer alone {h['timer_ns_p50']} ns)",
                flush=True,
            )
            results["http_checks_per_second"] = http_checks(b.url, args.devices, args.seconds)
            print(f"GET /v1/check through LedgerClient, one thread: {results['http_checks_per_second']:,.0f}/s")
            results["levels"] = []
            for writers in args.writers:
                results["levels"].append(level_run(a.url, b.url, args.rounds, writers, db.tmp))
                print(level_line(results["levels"][-1]), flush=True)
        finally:
            a.stop()
            b.stop()
        results["postgresql"] = db.postgresql
    print()
    print(
        "| writers | appends/s | withdrawal to mirror p50 / p99 / max (ms) | p99 mirror on the acknowledging "
        "replica | p99 mirror on the other replica | stale answers after |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for r in results["levels"]:
        print(level_line(r))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(results, indent=2))
    plot(results, RESULTS / f"{args.out}.png")
    print(f"wrote {RESULTS / (args.out + '.json')} and {RESULTS / (args.out + '.png')}")


if __name__ == "__main__":
    main()
