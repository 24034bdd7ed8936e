"""Durable appends per second and proof latency, on the embedded PostgreSQL.

    python -m benchmarks.append [--seconds 5] [--log-size 1000000] [--proofs 1000]

Group commit (the service's appender) is compared with one transaction per append (the same
appender with batches of one), for 1, 16 and 64 concurrent writers, each in a fresh database.
Then a log of --log-size entries is built and inclusion and consistency proofs are timed for
random indexes, the way the API builds them: one query for the O(log n) stored nodes, then hashing.
Prints a table, writes benchmarks/results/append.json and draws benchmarks/results/append.png.
"""

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

from benchmarks.common import RESULTS, durability, percentile, progress, pyplot
from ledger import embedded
from ledger.appender import Appender
from ledger.core.batch import Draft
from ledger.core.note import Signer
from ledger.core.proof import consistency_nodes, consistency_proof, inclusion_nodes, inclusion_proof
from ledger.storage import Stores, create_pool, open_stores
from ledger.storage.migrations import migrate

ORIGIN = "bench.example/log"


def draft(n: int) -> Draft:
    return Draft(
        id=str(uuid.uuid4()),
        device_id=f"bench-device-{n % 50_000}",
        purpose=("pixverse_sharing", "cross_border_transfer", "telemetry")[n % 3],
        action="grant" if n % 4 else "withdraw",
        policy_version=1,
        occurred_at="2026-11-28T10:00:00.000000Z",
        actor="user",
        method="explicit_popup",
        evidence={"popup": "pixverse-consent-v1"},
    )


async def fresh_store(server_url: str) -> Stores:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(server_url)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    url = embedded.with_database(server_url, name)
    await migrate(url)
    return open_stores(await create_pool(url, max_size=8))


async def measure_appends(server_url: str, writers: int, group: bool, seconds: float) -> float:
    store = await fresh_store(server_url)
    signer = Signer.generate(ORIGIN)
    await store.log.register_key(signer.verifier)
    appender = Appender(store.log, signer, ORIGIN, max_batch=4096 if group else 1)
    await appender.start()
    done = 0
    stop = time.monotonic() + seconds
    label = f"{writers:>2} writers, {'group commit' if group else 'one transaction per append'}"

    async def writer(w: int) -> None:
        nonlocal done
        n = w
        while time.monotonic() < stop:
            await appender.append(draft(n))
            n += writers
            done += 1
            if done % 500 == 0:
                progress(f"{label}: {done} appends")

    started = time.monotonic()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    elapsed = time.monotonic() - started
    await appender.stop()
    await store.pool.close()
    progress("")
    return done / elapsed


async def build_log(store: Stores, size: int) -> None:
    signer = Signer.generate(ORIGIN)
    await store.log.register_key(signer.verifier)
    appender = Appender(store.log, signer, ORIGIN, max_batch=10_000)
    await appender.start()
    started = time.monotonic()
    chunk = 10_000
    for begin in range(0, size, chunk):
        await asyncio.gather(*(appender.append(draft(n)) for n in range(begin, min(begin + chunk, size))))
        rate = (begin + chunk) / (time.monotonic() - started)
        progress(f"building a log of {size:,} entries: {begin + chunk:,} ({rate:,.0f}/s)")
    await appender.stop()
    progress("")


async def measure_proofs(store: Stores, size: int, count: int) -> dict[str, dict[str, float]]:
    """Steady-state proof latency. The first statement on each new pool connection pays for
    asyncpg's statement preparation and the backend's cold caches (about 13 ms seen here), once
    per connection: that is timed and reported apart, then the pool is warmed untimed."""
    rng = random.Random(6962)
    timings: dict[str, list[float]] = {"inclusion": [], "consistency": []}
    t0 = time.perf_counter()
    await store.log.nodes(inclusion_nodes(0, size))
    cold_ms = (time.perf_counter() - t0) * 1000
    await asyncio.gather(*(store.log.nodes(inclusion_nodes(i, size)) for i in range(store.pool.get_max_size())))
    for i in range(count):
        index = rng.randrange(size)
        t0 = time.perf_counter()
        inclusion_proof(index, size, await store.log.nodes(inclusion_nodes(index, size)))
        timings["inclusion"].append((time.perf_counter() - t0) * 1000)
        old = rng.randrange(1, size)
        t0 = time.perf_counter()
        consistency_proof(old, size, await store.log.nodes(consistency_nodes(old, size)))
        timings["consistency"].append((time.perf_counter() - t0) * 1000)
        if i % 100 == 0:
            progress(f"proofs: {i}/{count}")
    progress("")
    stats = {
        kind: {
            "p50_ms": statistics.median(ms),
            "p99_ms": percentile(ms, 99),
            "max_ms": max(ms),
        }
        for kind, ms in timings.items()
    }
    stats["first query on a new connection"] = {"p50_ms": cold_ms, "p99_ms": cold_ms, "max_ms": cold_ms}
    return stats


def plot(results: dict, path: Path) -> None:  # type: ignore[type-arg]
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    writers = [r["writers"] for r in results["appends"] if r["mode"] == "group commit"]
    for mode, colour in (("group commit", "tab:green"), ("one transaction per append", "tab:grey")):
        rates = [r["per_second"] for r in results["appends"] if r["mode"] == mode]
        left.plot(writers, rates, marker="o", color=colour, label=mode)
    left.axhline(5000, color="tab:red", linestyle="--", linewidth=1, label="target: 5,000/s at 64 writers")
    left.set_xscale("log", base=2)
    left.set_xticks(writers, [str(w) for w in writers])
    left.set_xlabel("concurrent writers")
    left.set_ylabel("durable appends per second")
    left.set_title("Appends (embedded PostgreSQL, fsync on)")
    left.legend(fontsize=8)
    kinds = [k for k in results["proofs"] if k in ("inclusion", "consistency")]
    x = range(len(kinds))
    for offset, stat in ((-0.2, "p50_ms"), (0.0, "p99_ms"), (0.2, "max_ms")):
        right.bar([i + offset for i in x], [results["proofs"][k][stat] for k in kinds], width=0.2, label=stat[:-3])
    right.axhline(5, color="tab:red", linestyle="--", linewidth=1, label="target: 5 ms")
    right.set_xticks(list(x), kinds)
    right.set_ylabel("milliseconds")
    right.set_title(f"Proofs at {results['log_size']:,} entries")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--log-size", type=int, default=1_000_000)
    parser.add_argument("--proofs", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as data_dir:
        server, server_url = embedded.start(Path(data_dir))
        try:
            settings = await durability(server_url)
            print(
                f"PostgreSQL: fsync={settings['fsync']}, synchronous_commit={settings['synchronous_commit']}",
                flush=True,
            )
            appends = []
            for group in (True, False):
                for writers in (1, 16, 64):
                    rate = await measure_appends(server_url, writers, group, args.seconds)
                    mode = "group commit" if group else "one transaction per append"
                    appends.append({"writers": writers, "mode": mode, "per_second": rate})
                    print(f"{writers:>3} writers  {mode:<28} {rate:>10,.0f} appends/s", flush=True)
            store = await fresh_store(server_url)
            await build_log(store, args.log_size)
            proofs = await measure_proofs(store, args.log_size, args.proofs)
            await store.pool.close()
        finally:
            server.cleanup()

    results = {
        "seconds_per_run": args.seconds,
        "log_size": args.log_size,
        "postgresql": settings,
        "appends": appends,
        "proofs": proofs,
    }
    by = {(r["writers"], r["mode"]): r["per_second"] for r in appends}
    speedup = by[(64, "group commit")] / by[(64, "one transaction per append")]
    print()
    print("| writers | group commit (appends/s) | one transaction per append (appends/s) | ratio |")
    print("|---:|---:|---:|---:|")
    for w in (1, 16, 64):
        g, o = by[(w, "group commit")], by[(w, "one transaction per append")]
        print(f"| {w} | {g:,.0f} | {o:,.0f} | {g / o:.1f}x |")
    print()
    print(f"| proof at {args.log_size:,} entries ({args.proofs} random) | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|")
    for kind, stats in proofs.items():
        if kind in ("inclusion", "consistency"):
            print(f"| {kind} | {stats['p50_ms']:.2f} | {stats['p99_ms']:.2f} | {stats['max_ms']:.2f} |")
    cold = proofs["first query on a new connection"]["max_ms"]
    print(f"\nthe first query on a new pool connection (statement preparation, cold caches): {cold:.2f} ms")
    print(f"\ngroup commit is {speedup:.1f}x one transaction per append at 64 writers")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "append.json").write_text(json.dumps(results, indent=2))
    plot(results, RESULTS / "append.png")
    print(f"wrote {RESULTS / 'append.json'} and {RESULTS / 'append.png'}")


if __name__ == "__main__":
    asyncio.run(main())
