"""Check throughput and latency through the real server, beside the framework's ceiling.

    python -m benchmarks.check [--seconds 8] [--devices 20000]

Needs wrk (Debian: apt-get install wrk). For each of granian and uvicorn (uvloop, httptools),
one worker, wrk with 1 thread and 32 connections on loopback:
  - the bare Litestar endpoint (benchmarks/bare.py) and GET /v1/check, alternated A B A B;
  - GET /v1/check at half its maximum rate (wrk paced by a Lua delay), with the server-side
    latency taken from the service's own request-duration histogram (/metrics) over that run;
then, on the faster server: POST /v1/check with 1,000 checks a request; the time from an
acknowledged withdrawal on one replica until another replica refuses, without and with the
writer's consistency token; and the memory a cached decision takes.
Every (device, purpose) is looked up once before each measurement, so the figures are those of a
warmed cache (a long-running server whose working set fits LEDGER_CACHE_SIZE); a miss is answered
by the full route and one database query.
Prints tables, writes benchmarks/results/check.json and draws benchmarks/results/check.png.
"""

import argparse
import asyncio
import json
import re
import shutil
import statistics
import subprocess
import time
import tracemalloc
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import ADMIN, HEADERS, RESULTS, Served, embedded_database, percentile, progress, pyplot
from ledger.storage import create_pool, open_stores

PURPOSES = ("pixverse_sharing", "cross_border_transfer", "telemetry")
PACED_CONNECTIONS = 128


def wrk(url: str, seconds: float, script: Path, connections: int = 32) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"wrk saw {errors[1]} error responses:\n{out}")

    def ms(label: str) -> float:
        value, unit = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]

    return {"rps": rate, "client_p50_ms": ms("50%"), "client_p99_ms": ms("99%")}


def lua(
    path: Path, devices: int, per_connection_delay_ms: float | None = None, body: str | None = None, extra: str = ""
) -> Path:
    """A wrk script rotating through the seeded devices (so the check is real, not one hot key)."""
    delay = f"function delay() return {per_connection_delay_ms} end\n" if per_connection_delay_ms else ""
    if body is not None:
        request = f'wrk.method = "POST"\nwrk.body = [[{body}]]\nwrk.headers["Content-Type"] = "application/json"\n'
        path.write_text(f'wrk.headers["Authorization"] = "Bearer {ADMIN}"\n{request}{delay}')
        return path
    path.write_text(
        f"""
wrk.headers["Authorization"] = "Bearer {ADMIN}"
local purposes = {{"pixverse_sharing", "cross_border_transfer", "telemetry"}}
local n = 0
request = function()
  n = n + 1
  local path = "/v1/check?device_id=bench-" .. (n % {devices}) .. "&purpose=" .. purposes[n % 3 + 1] .. "{extra}"
  return wrk.format("GET", path)
end
{delay}"""
    )
    return path


def histogram(text: str, route: str) -> dict[float, float]:
    labels = f'method="GET",route="{re.escape(route)}",status="200"'
    pattern = rf'ledger_http_request_duration_seconds_bucket\{{le="([^"]+)",{labels}\}} (\S+)'
    buckets: dict[float, float] = {}
    for le, value in re.findall(pattern, text):
        buckets[float(le)] = buckets.get(float(le), 0) + float(value)
    return buckets


def quantile(buckets: dict[float, float], q: float) -> float:
    """The upper bound of the bucket that holds the q-th request: the finest figure the histogram
    can resolve (interpolating inside a bucket would invent precision it does not have)."""
    bounds = sorted(buckets)
    target = q * buckets[bounds[-1]]
    return next(bound for bound in bounds if buckets[bound] >= target)


async def seed(url: str, devices: int) -> None:
    """Grants for a third of the checks' (device, purpose) pairs; the rest answer no_consent."""
    async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=30) as client:
        semaphore = asyncio.Semaphore(64)

        async def grant(i: int) -> None:
            body = {"device_id": f"bench-{i}", "purpose": PURPOSES[i % 3], "action": "grant", "policy_version": 1}
            async with semaphore:
                response = await client.post("/v1/consents", json=body)
                response.raise_for_status()
            if i % 500 == 0:
                progress(f"seeding {devices:,} grants: {i:,}")

        await asyncio.gather(*(grant(i) for i in range(devices)))
    progress("")


def warm(url: str, devices: int) -> None:
    """Look every (device, purpose) up once, so the measurement sees a steady-state cache."""
    pairs = [{"device_id": f"bench-{i}", "purpose": p} for i in range(devices) for p in PURPOSES]
    with httpx.Client(base_url=url, headers=HEADERS, timeout=60) as client:
        for begin in range(0, len(pairs), 1000):
            client.post("/v1/check", json={"checks": pairs[begin : begin + 1000]}).raise_for_status()


def server_comparison(server: str, env: dict[str, str], seconds: float, devices: int, tmp: Path) -> dict[str, Any]:
    check_script = lua(tmp / "check.lua", devices)
    bare_script = tmp / "bare.lua"
    bare_script.write_text("")
    # consistency=ct1.0 is always satisfied, and sends every request through the Litestar route.
    full_route_script = lua(tmp / "full.lua", devices, extra="&consistency=ct1.0")
    runs: dict[str, list[dict[str, float]]] = {"bare": [], "check": [], "full route": []}
    for round_ in range(2):
        for kind, target, script in (
            ("bare", "benchmarks.bare:create_app", bare_script),
            ("check", "ledger.app:create_app", check_script),
            ("full route", "ledger.app:create_app", full_route_script),
        ):
            served = Served(server, target, env)
            try:
                if kind != "bare":
                    warm(served.url, devices)
                    wrk(served.url + "/v1/check", 2, script)  # warm the token cache and the connections
                progress(f"{server}: {kind} endpoint, round {round_ + 1}")
                runs[kind].append(wrk(served.url + "/v1/check", seconds, script))
            finally:
                served.stop()
    progress("")
    bare = statistics.mean(r["rps"] for r in runs["bare"])
    check = statistics.mean(r["rps"] for r in runs["check"])
    full_route = statistics.mean(r["rps"] for r in runs["full route"])

    # Half the maximum rate, paced by a per-connection delay between requests.
    half = check / 2
    served = Served(server, "ledger.app:create_app", env)
    try:
        warm(served.url, devices)
        wrk(served.url + "/v1/check", 2, check_script)
        # Achieved rate is C / (delay + latency): adjust the delay until a short run is within 5%.
        # 128 connections keep each delay several milliseconds long, where wrk's timer is accurate.
        delay_ms = PACED_CONNECTIONS * 1000 / half
        paced_script = tmp / "paced.lua"
        for _ in range(6):
            trial = wrk(served.url + "/v1/check", 2, lua(paced_script, devices, delay_ms), PACED_CONNECTIONS)
            if abs(trial["rps"] - half) / half < 0.05:
                break
            delay_ms *= trial["rps"] / half
        before = histogram(httpx.get(served.url + "/metrics").text, "/v1/check")
        progress(f"{server}: fixed load at {half:,.0f} requests/s")
        paced = wrk(served.url + "/v1/check", seconds, lua(paced_script, devices, delay_ms), PACED_CONNECTIONS)
        after = histogram(httpx.get(served.url + "/metrics").text, "/v1/check")
    finally:
        served.stop()
    progress("")
    delta = {le: after[le] - before.get(le, 0) for le in after}
    within_1ms = delta[0.001] / delta[float("inf")]
    return {
        "server": server,
        "bare_rps": bare,
        "check_rps": check,
        "ratio": check / bare,
        "full_route_rps": full_route,
        "runs": runs,
        "half_rate_offered": half,
        "half_rate_achieved": paced["rps"],
        "server_p50_ms": quantile(delta, 0.50) * 1000,
        "server_p99_ms": quantile(delta, 0.99) * 1000,
        "share_within_1ms": within_1ms,
        "client_p50_ms": paced["client_p50_ms"],
        "client_p99_ms": paced["client_p99_ms"],
    }


def batch_rate(server: str, env: dict[str, str], seconds: float, devices: int, tmp: Path) -> float:
    checks = [{"device_id": f"bench-{i * 7 % devices}", "purpose": PURPOSES[i % 3]} for i in range(1000)]
    script = lua(tmp / "batch.lua", devices, body=json.dumps({"checks": checks}))
    served = Served(server, "ledger.app:create_app", env)
    try:
        warm(served.url, devices)
        wrk(served.url + "/v1/check", 2, script, connections=4)
        progress("batch checks")
        result = wrk(served.url + "/v1/check", seconds, script, connections=4)
    finally:
        served.stop()
    progress("")
    return result["rps"] * 1000


def propagation(server: str, env: dict[str, str], rounds: int) -> dict[str, Any]:
    """Withdraw on replica A; time until replica B refuses, asking without the token and with it."""
    a = Served(server, "ledger.app:create_app", env)
    b = Served(server, "ledger.app:create_app", env)
    without, with_token, refused_at_once = [], [], 0
    try:
        with httpx.Client(headers=HEADERS, timeout=10) as http:
            for i in range(rounds):
                device = f"propagation-{i}"
                body = {"device_id": device, "purpose": "pixverse_sharing", "policy_version": 1}
                granted = http.post(f"{a.url}/v1/consents", json={**body, "action": "grant"}).json()
                params = {"device_id": device, "purpose": "pixverse_sharing"}
                http.get(f"{b.url}/v1/check", params={**params, "consistency": granted["consistency_token"]})
                withdrawn = http.post(f"{a.url}/v1/consents", json={**body, "action": "withdraw"})
                acknowledged = time.perf_counter()
                if i % 2:
                    token = withdrawn.json()["consistency_token"]
                    answer = http.get(f"{b.url}/v1/check", params={**params, "consistency": token}).json()
                    with_token.append((time.perf_counter() - acknowledged) * 1000)
                    refused_at_once += not answer["allowed"]
                else:
                    while http.get(f"{b.url}/v1/check", params=params).json()["allowed"]:
                        pass
                    without.append((time.perf_counter() - acknowledged) * 1000)
                if i % 20 == 0:
                    progress(f"withdrawal propagation: {i}/{rounds}")
    finally:
        a.stop()
        b.stop()
    progress("")
    return {
        "without_token_ms": without,
        "with_token_ms": with_token,
        "refused_at_once_with_token": f"{refused_at_once}/{len(with_token)}",
    }


async def memory_per_decision(url: str, devices: int) -> float:
    """Bytes the projection's caches hold per cached decision (keys, subject strings and entries)."""
    from ledger.projection import Projection

    store = open_stores(await create_pool(url, max_size=2))
    projection = Projection(store.log, store.subjects, url, cache_size=devices * 3, max_staleness_ms=60_000)
    await projection.start()
    pairs = [(f"bench-{i}", purpose) for i in range(devices) for purpose in PURPOSES]
    await store.subjects.states(pairs[:10])  # warm asyncpg's statement cache outside the measurement
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for begin in range(0, len(pairs), 1000):
        await projection.lookup(pairs[begin : begin + 1000])
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    await projection.stop()
    await store.pool.close()
    return grown / len(pairs)


def plot(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(14, 4.2))
    servers = [r["server"] for r in results["servers"]]
    x = range(len(servers))
    rows = results["servers"]
    left.bar([i - 0.27 for i in x], [r["bare_rps"] for r in rows], width=0.27, label="bare Litestar")
    left.bar(list(x), [r["check_rps"] for r in rows], width=0.27, label="GET /v1/check")
    left.bar([i + 0.27 for i in x], [r["full_route_rps"] for r in rows], width=0.27, label="full Litestar route")
    for i, r in enumerate(rows):
        left.text(i, r["check_rps"], f"{r['ratio']:.0%}", ha="center", va="bottom", fontsize=8)
    left.set_xticks(list(x), servers)
    left.set_ylabel("requests per second (1 worker)")
    left.set_title("Check throughput vs the framework's ceiling")
    left.legend(fontsize=8)
    for r in results["servers"]:
        middle.bar(f"{r['server']}\np50", r["server_p50_ms"], color="tab:blue")
        middle.bar(f"{r['server']}\np99", r["server_p99_ms"], color="tab:orange")
    middle.axhline(1, color="tab:red", linestyle="--", linewidth=1, label="target p99: 1 ms")
    for r in results["servers"]:
        middle.bar(f"{r['server']}\nclient", r["client_p99_ms"], color="tab:grey")
    middle.set_ylabel("milliseconds")
    middle.set_title("Latency at half the maximum rate\n(server side; wrk's client-side p99 in grey)")
    middle.legend(fontsize=8)
    prop = results["propagation"]
    without, with_token = prop["without_token_ms"], prop["with_token_ms"]
    right.hist(without, bins=40, color="tab:grey", label="without token (polling B)")
    right.hist(with_token, bins=40, color="tab:green", alpha=0.7, label="with the writer's token")
    for values, colour in ((without, "tab:grey"), (with_token, "tab:green")):
        right.axvline(percentile(values, 99), color=colour, linestyle=":", linewidth=1)
    right.set_xlabel("ms from acknowledged withdrawal to refusal on replica B\n(dotted: p99; target p99: 50 ms)")
    right.set_title("Withdrawal across replicas")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--devices", type=int, default=20_000)
    parser.add_argument("--propagation-rounds", type=int, default=200)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("benchmarks/check.py needs wrk: apt-get install wrk")
    with embedded_database() as db:
        env = {**db.env, "LEDGER_CACHE_SIZE": str(args.devices * 4)}
        seeding = Served("granian", "ledger.app:create_app", env)
        try:
            asyncio.run(seed(seeding.url, args.devices))
        finally:
            seeding.stop()
        results: dict[str, Any] = {
            "seconds": args.seconds,
            "devices": args.devices,
            "postgresql": db.postgresql,
            "servers": [],
        }
        for name in ("granian", "uvicorn"):
            row = server_comparison(name, env, args.seconds, args.devices, db.tmp)
            results["servers"].append(row)
            print(
                f"{name:<8} bare {row['bare_rps']:>8,.0f}/s  check {row['check_rps']:>8,.0f}/s "
                f"({row['ratio']:.0%})  at {row['half_rate_achieved']:,.0f}/s: server p50 "
                f"<= {row['server_p50_ms']:.2f} ms p99 <= {row['server_p99_ms']:.2f} ms",
                flush=True,
            )
        fastest = max(results["servers"], key=lambda r: r["check_rps"])["server"]
        results["fastest"] = fastest
        results["batch_decisions_per_second"] = batch_rate(fastest, env, args.seconds, args.devices, db.tmp)
        print(f"batch: {results['batch_decisions_per_second']:,.0f} decisions/s", flush=True)
        results["propagation"] = propagation(fastest, env, args.propagation_rounds)
        results["bytes_per_cached_decision"] = asyncio.run(memory_per_decision(db.url, min(args.devices, 20_000)))

    prop = results["propagation"]
    print()
    print(
        "| server (1 worker) | bare Litestar (req/s) | GET /v1/check (req/s) | ratio "
        "| full Litestar route (req/s) | server p50 / p99 at half the maximum (histogram bucket bounds) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for r in results["servers"]:
        print(
            f"| {r['server']} | {r['bare_rps']:,.0f} | {r['check_rps']:,.0f} | {r['ratio']:.0%} | "
            f"{r['full_route_rps']:,.0f} | "
            f"<= {r['server_p50_ms']:.2f} / <= {r['server_p99_ms']:.2f} ms at {r['half_rate_achieved']:,.0f}/s "
            f"({r['share_within_1ms']:.2%} within 1 ms) |"
        )
    print()
    print(f"faster on the check endpoint: {results['fastest']}")
    print(f"batch (POST /v1/check, 1,000 a request): {results['batch_decisions_per_second']:,.0f} decisions/s")
    print(
        "withdrawal to refusal on another replica: without token p50 "
        f"{statistics.median(prop['without_token_ms']):.1f} ms, "
        f"p99 {percentile(prop['without_token_ms'], 99):.1f} ms; "
        f"with token p50 {statistics.median(prop['with_token_ms']):.1f} ms, "
        f"p99 {percentile(prop['with_token_ms'], 99):.1f} ms, "
        f"refused on the first ask {prop['refused_at_once_with_token']}"
    )
    print(f"memory per cached decision: {results['bytes_per_cached_decision']:.0f} bytes")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "check.json").write_text(json.dumps(results, indent=2))
    plot(results, RESULTS / "check.png")
    print(f"wrote {RESULTS / 'check.json'} and {RESULTS / 'check.png'}")


if __name__ == "__main__":
    main()
