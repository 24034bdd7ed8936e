"""How fast an acknowledged withdrawal stops every replica from answering `allowed: true`.

    python -m benchmarks.propagation [--rounds 150] [--writers 0 12 24]

On the embedded PostgreSQL: two `ledger serve`-equivalent servers on one database, A with one
worker and B with two, and writers recording grants for other devices on both (half each; wrk
connections with a Lua script, needs `apt-get install wrk`), at each load level. A probe then,
round after round, on alternating replicas: grants a device, warms both replicas (their next
plain check is a cache hit), withdraws on one (the acknowledging replica), and at once
  - in half the rounds, polls the other replica with plain checks until it refuses: the delay
    from the 201 to the refusing answer (an upper bound: one poll's round trip is in it), and
    how many polls still allowed;
  - in the other half, checks on the same connection, so on the process that acknowledged (any
    `allowed: true` is stale, target 0), then asks the other replica once with the withdrawal's
    consistency token (any `allowed: true` is stale, target 0).
The resolution of a delay is one poll, an HTTP round trip on loopback (its median is printed).
Prints a table, writes benchmarks/results/propagation.json and draws propagation.png.
`--server-path DIR` runs the servers from another checkout (to measure a version before a change).
"""

import argparse
import http.client
import json
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx

from benchmarks.common import ADMIN, HEADERS, RESULTS, Served, embedded_database, percentile, progress, pyplot

PURPOSE = "pixverse_sharing"


LOAD_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
math.randomseed(%d)
local prefix = math.random(1, 1000000000)
local n = 0
request = function()
  n = n + 1
  local body = '{"device_id":"load-' .. prefix .. '-' .. n
    .. '","purpose":"telemetry","action":"grant","policy_version":1}'
  return wrk.format(nil, "/v1/consents", nil, body)
end
"""


def start_writers(urls: list[str], writers: int, tmp: Path) -> list[subprocess.Popen[bytes]]:
    """wrk (C, one thread each) recording grants for devices of their own, split over the replicas:
    a load generator that leaves the two cores to the servers and PostgreSQL."""
    procs = []
    for n, url in enumerate(urls):
        connections = writers // len(urls) + (n < writers % len(urls))
        if not connections:
            continue
        script = tmp / f"load-{n}.lua"
        script.write_text(LOAD_SCRIPT % (ADMIN, n + 1))
        procs.append(
            subprocess.Popen(
                ["wrk", "-t1", f"-c{connections}", "-d600s", "-s", str(script), f"{url}/v1/consents"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    return procs


def log_size(url: str) -> int:
    return int(httpx.get(f"{url}/v1/log/checkpoint").text.split("\n")[1])


class Replica:
    """One keep-alive connection to a server (so one worker), through the standard library's
    http.client: its round trip on loopback is several times shorter than httpx's, and the
    round trip is what a delay is measured in."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = http.client.HTTPConnection(urlsplit(url).netloc, timeout=10)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        headers = {**HEADERS, **({"Content-Type": "application/json"} if body is not None else {})}
        self.conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        response = self.conn.getresponse()
        return response.status, json.loads(response.read())

    def allowed(self, device: str, **extra: str) -> bool:
        status, answer = self.request(
            "GET", "/v1/check?" + urlencode({"device_id": device, "purpose": PURPOSE, **extra})
        )
        assert status == 200, answer
        return bool(answer["allowed"])


def probe(a: str, b: str, rounds: int, level: int) -> dict[str, Any]:
    replicas = {url: Replica(url) for url in (a, b)}
    delays, earliest, stale_polls, polls, stale_here, here_asks, stale_token, token_asks = [], [], 0, 0, 0, 0, 0, 0
    rtts: list[float] = []
    try:
        for i in range(rounds):
            writer, other = (replicas[a], replicas[b]) if i % 2 == 0 else (replicas[b], replicas[a])
            device = f"probe-{level}-{i}"
            body = {"device_id": device, "purpose": PURPOSE, "policy_version": 1}
            status, granted = writer.request("POST", "/v1/consents", {**body, "action": "grant"})
            assert status == 201, granted
            assert other.allowed(device, consistency=granted["consistency_token"])
            assert writer.allowed(device)  # both replicas hold the grant in their caches now
            assert other.allowed(device)
            status, withdrawn = writer.request("POST", "/v1/consents", {**body, "action": "withdraw"})
            acknowledged = time.perf_counter()
            assert status == 201, withdrawn
            if i % 4 < 2:
                # The other replica, asked at once and again until it refuses. The withdrawal
                # became visible there between the sending of the last allowing ask (or the 201)
                # and the answer to the refusing one: both bounds are kept.
                last_allowed_sent = acknowledged
                while True:
                    sent = time.perf_counter()
                    still = other.allowed(device)
                    rtts.append(time.perf_counter() - sent)
                    polls += 1
                    if not still:
                        break
                    stale_polls += 1
                    last_allowed_sent = sent
                delays.append((time.perf_counter() - acknowledged) * 1000)
                earliest.append((last_allowed_sent - acknowledged) * 1000)
            else:
                # The acknowledging process at once (same connection, so the same worker), then
                # the other replica once with the withdrawal's consistency token.
                here_asks += 1
                stale_here += writer.allowed(device)
                token_asks += 1
                stale_token += other.allowed(device, consistency=withdrawn["consistency_token"])
            if i % 10 == 0:
                progress(f"{level} writers: round {i}/{rounds}")
    finally:
        for replica in replicas.values():
            replica.conn.close()
    return {
        "writers": level,
        "rounds": rounds,
        "stale_on_acknowledging_process": stale_here,
        "acknowledging_process_asks": here_asks,
        "other_replica_delay_ms": delays,
        "other_replica_visible_after_ms": earliest,
        "stale_polls": stale_polls,
        "polls": polls,
        "stale_with_token": stale_token,
        "token_asks": token_asks,
        "poll_rtt_ms_p50": statistics.median(rtts) * 1000 if rtts else None,
    }


def level_run(env: dict[str, str], rounds: int, writers: int, tmp: Path) -> dict[str, Any]:
    a = Served("granian", "ledger.app:create_app", env, workers=1)
    b = Served("granian", "ledger.app:create_app", env, workers=2)
    load = start_writers([a.url, b.url], writers, tmp)
    try:
        if writers:
            time.sleep(2)  # let the load settle
        before, started = log_size(a.url), time.monotonic()
        result = probe(a.url, b.url, rounds, writers)
        result["appends_per_second"] = (log_size(a.url) - before) / (time.monotonic() - started)
    finally:
        for proc in load:
            proc.terminate()
            proc.wait(10)
        a.stop()
        b.stop()
    progress("")
    return result


def summary(r: dict[str, Any]) -> str:
    d, e = r["other_replica_delay_ms"], r["other_replica_visible_after_ms"]
    return (
        f"| {r['writers']} | {r['appends_per_second']:,.0f} | "
        f"{r['stale_on_acknowledging_process']}/{r['acknowledging_process_asks']} | "
        f"{statistics.median(d):.1f} / {percentile(d, 99):.1f} / {max(d):.1f} | "
        f"{percentile(e, 99):.1f} / {max(e):.1f} | "
        f"{r['stale_polls']}/{r['polls']} | {r['stale_with_token']}/{r['token_asks']} | {r['poll_rtt_ms_p50']:.2f} |"
    )


def plot(results: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in results:
        d = sorted(r["other_replica_delay_ms"])
        left.plot(d, [(i + 1) / len(d) for i in range(len(d))], label=f"{r['writers']} writers")
    left.set_xscale("log")
    left.xaxis.set_major_formatter(ScalarFormatter())
    left.xaxis.set_minor_formatter(NullFormatter())
    left.set_xlabel("201 on one replica to the refusing answer on the other (ms, log; an upper bound)")
    left.set_ylabel("share of rounds")
    left.set_title("Withdrawal seen by the other replica")
    left.axvline(10, color="grey", linestyle=":", linewidth=1)
    left.legend()
    levels = [str(r["writers"]) for r in results]
    x = range(len(levels))
    stale = [
        ("acknowledging process", "stale_on_acknowledging_process", "acknowledging_process_asks"),
        ("other replica, with the token", "stale_with_token", "token_asks"),
        ("other replica, plain asks", "stale_polls", "polls"),
    ]
    for n, (label, count, asked) in enumerate(stale):
        values = [r[count] for r in results]
        bars = right.bar([i + (n - 1) * 0.27 for i in x], values, width=0.27, label=label)
        right.bar_label(bars, labels=[f"{r[count]}/{r[asked]}" for r in results], fontsize=8)
    right.set_xticks(list(x), levels)
    right.set_ylim(0, max(5, *(r["stale_polls"] for r in results)) * 1.3)
    right.set_xlabel("writers")
    right.set_ylabel("answers that still allowed")
    right.set_title("Stale answers after the 201 (target 0 for the first two)")
    right.legend(fontsize=8, loc="upper left")
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
    with embedded_database() as db:
        env = dict(db.env)
        if args.server_path:
            env["PYTHONPATH"] = str(Path(args.server_path).resolve())
        for writers in args.writers:
            results.append(level_run(env, args.rounds, writers, db.tmp))
            print(summary(results[-1]), flush=True)
        settings = db.postgresql
    print()
    print(
        "| writers | appends/s | stale on the acknowledging process | other replica refuses, upper bound p50 / p99 / "
        "max (ms) | lower bound p99 / max (ms) | stale plain asks | stale with the token | ask round trip p50 (ms) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(summary(r))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps({"postgresql": settings, "levels": results}, indent=2))
    plot(results, RESULTS / f"{args.out}.png")
    print(f"wrote {RESULTS / (args.out + '.json')} and {RESULTS / (args.out + '.png')}")


if __name__ == "__main__":
    main()
