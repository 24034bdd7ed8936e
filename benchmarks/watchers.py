"""How many GET /v1/watch streams one worker holds, and how fast a change reaches all of them.

    python -m benchmarks.watchers [--watchers 100 1000] [--seconds 5] [--writes 20]

On the embedded PostgreSQL, one `ledger serve`-equivalent server with one worker. For each
number of watchers: open that many streams (plain asyncio sockets, so the client stays light),
wait until every one has its first heartbeat, then for `--seconds` record `--writes` grants a
second (one HTTP client) while every watcher reads. Reported per level:
  - streams that got their first heartbeat, and the longest silence any stream saw (the stream
    promises a heartbeat after 0.5 s without events, so a gap above 1 s means overload);
  - delivery: from a grant's 201 to each watcher reading its decision event (p50, p99, max over
    every watcher and grant), and to the first watcher reading it (the pipeline without the
    fan-out); the client's own event loop is in these figures, and with thousands of streams it
    is often the larger part;
  - the worker's CPU share during the window and its resident memory (RSS) with the streams open.
Prints a table, writes benchmarks/results/watchers.json and draws watchers.png.
"""

import argparse
import asyncio
import json
import os
import re
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import ADMIN, HEADERS, RESULTS, Served, embedded_database, percentile, progress, pyplot

DECISION_ID = re.compile(rb"event: decision\nid: ct1\.(\d+)\n")
TICKS = os.sysconf("SC_CLK_TCK")


class Watcher:
    """One stream on a raw socket: chunked body decoded, events recognised by their first lines."""

    def __init__(self) -> None:
        self.first_heartbeat = asyncio.Event()
        self.last_read = 0.0
        self.longest_silence = 0.0
        self.arrivals: dict[int, float] = {}  # position after the entry -> when it was read
        self.task: asyncio.Task[None] | None = None
        self.error: str | None = None

    async def run(self, host: str, port: int) -> None:
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(
                f"GET /v1/watch HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {ADMIN}\r\n"
                "Accept: text/event-stream\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.split(b"\r\n")[0].decode())
            while True:
                size = int((await reader.readline()).strip(), 16)
                chunk = await reader.readexactly(size + 2)
                now = time.perf_counter()
                if self.last_read:
                    self.longest_silence = max(self.longest_silence, now - self.last_read)
                self.last_read = now
                if b"event: heartbeat" in chunk:
                    self.first_heartbeat.set()
                for match in DECISION_ID.finditer(chunk):
                    self.arrivals[int(match[1])] = now
                if size == 0:
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self.first_heartbeat.set()


def worker_pids(parent: int) -> list[int]:
    """The server's worker processes (children of the granian main process)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                found.append(int(entry.name))
    return found


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def level(url: str, worker: int, count: int, seconds: float, writes: float, round_: int) -> dict[str, Any]:
    host, port = url.removeprefix("http://").split(":")
    watchers = [Watcher() for _ in range(count)]
    rss_before = rss_mb(worker)
    for n, w in enumerate(watchers):
        w.task = asyncio.create_task(w.run(host, int(port)))
        if n % 50 == 49:
            progress(f"{count} watchers: {n + 1} connecting")
            await asyncio.sleep(0.01)  # do not flood the listen backlog
    started = time.perf_counter()
    while (ready := sum(w.first_heartbeat.is_set() for w in watchers)) < count:
        progress(f"{count} watchers: {ready} have their first heartbeat")
        if time.perf_counter() - started > 120:
            break
        await asyncio.sleep(0.2)
    connected_in = time.perf_counter() - started
    errors = [w.error for w in watchers if w.error]
    for w in watchers:
        w.longest_silence = 0.0  # from here on: silence while every stream is open
    written: dict[int, float] = {}
    cpu_start, wall_start = cpu_seconds(worker), time.perf_counter()
    async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=10) as http:
        n = 0
        while time.perf_counter() - wall_start < seconds:
            body = {"device_id": f"w-{round_}-{n}", "purpose": "telemetry", "action": "grant", "policy_version": 1}
            response = await http.post("/v1/consents", json=body)
            acknowledged = time.perf_counter()
            assert response.status_code == 201, response.text
            written[int(response.json()["consistency_token"].removeprefix("ct1."))] = acknowledged
            n += 1
            progress(f"{count} watchers: {n} grants recorded")
            await asyncio.sleep(max(0.0, 1 / writes - (time.perf_counter() - acknowledged)))
        await asyncio.sleep(1.0)  # the last events reach everyone
    cpu_share = (cpu_seconds(worker) - cpu_start) / (time.perf_counter() - wall_start)
    rss = rss_mb(worker)
    delays = [
        (w.arrivals[position] - at) * 1000 for w in watchers if not w.error for position, at in written.items()
        if position in w.arrivals
    ]  # fmt: skip
    # The first watcher to read each event: the pipeline alone, without the fan-out to the others.
    firsts = [
        (min(w.arrivals[position] for w in watchers if position in w.arrivals) - at) * 1000
        for position, at in written.items()
        if any(position in w.arrivals for w in watchers)
    ]
    missing = sum(position not in w.arrivals for w in watchers if not w.error for position in written)
    silences = [w.longest_silence for w in watchers if not w.error]
    for w in watchers:
        assert w.task is not None
        w.task.cancel()
    await asyncio.gather(*(w.task for w in watchers if w.task), return_exceptions=True)
    await asyncio.sleep(1.0)  # the server notices the streams are gone
    return {
        "watchers": count,
        "with_first_heartbeat": ready,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "connected_in_s": connected_in,
        "grants": len(written),
        "missing_events": missing,
        "delay_ms_p50": statistics.median(delays) if delays else None,
        "delay_ms_p99": percentile(delays, 99) if delays else None,
        "delay_ms_max": max(delays) if delays else None,
        "first_delay_ms_p50": statistics.median(firsts) if firsts else None,
        "first_delay_ms_p99": percentile(firsts, 99) if firsts else None,
        "longest_silence_s": max(silences) if silences else None,
        "silent_over_1s": sum(s > 1.0 for s in silences),
        "worker_cpu_share": cpu_share,
        "worker_rss_mb": rss,
        "rss_per_watcher_kb": (rss - rss_before) * 1024 / count,
    }


def plot(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    rows = results["levels"]
    x = [r["watchers"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(x, [r["delay_ms_p50"] for r in rows], marker="o", label="p50")
    left.plot(x, [r["delay_ms_p99"] for r in rows], marker="o", label="p99")
    left.set_xscale("log")
    left.set_xlabel("concurrent watchers on one worker")
    left.set_ylabel("ms from 201 to the event read by a watcher")
    left.set_title(f"Delivery at {results['writes_per_second']:g} grants/s")
    left.legend()
    right.plot(x, [r["worker_cpu_share"] * 100 for r in rows], marker="o", label="worker CPU %")
    right.plot(x, [r["worker_rss_mb"] for r in rows], marker="s", label="worker RSS (MB)")
    right.set_xscale("log")
    right.set_xlabel("concurrent watchers on one worker")
    right.set_title("Cost on the worker")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--watchers", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--writes", type=float, default=20.0, help="grants per second while watching")
    args = parser.parse_args()
    results: dict[str, Any] = {"seconds": args.seconds, "writes_per_second": args.writes, "levels": []}
    with embedded_database() as db:
        served = Served("granian", "ledger.app:create_app", db.env)
        try:
            [worker] = worker_pids(served.proc.pid)
            for n, count in enumerate(args.watchers):
                row = asyncio.run(level(served.url, worker, count, args.seconds, args.writes, n))
                results["levels"].append(row)
                progress("")
                print(
                    f"{count:>6} watchers: {row['with_first_heartbeat']} streaming, {row['errors']} errors, "
                    f"delivery p50 {row['delay_ms_p50'] or 0:.1f} ms p99 {row['delay_ms_p99'] or 0:.1f} ms "
                    f"(first watcher p50 {row['first_delay_ms_p50'] or 0:.1f} ms), "
                    f"{row['missing_events']} missed, longest silence {row['longest_silence_s'] or 0:.2f} s, "
                    f"worker CPU {row['worker_cpu_share']:.0%}, RSS {row['worker_rss_mb']:.0f} MB",
                    flush=True,
                )
        finally:
            served.stop()
    print()
    print(
        "| watchers on one worker | streaming | delivery p50 / p99 / max (ms) | first watcher p50 / p99 (ms) "
        "| longest silence (s) | worker CPU | worker RSS |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in results["levels"]:
        print(
            f"| {r['watchers']:,} | {r['with_first_heartbeat']:,} | {r['delay_ms_p50'] or 0:.1f} / "
            f"{r['delay_ms_p99'] or 0:.1f} / {r['delay_ms_max'] or 0:.1f} | {r['first_delay_ms_p50'] or 0:.1f} / "
            f"{r['first_delay_ms_p99'] or 0:.1f} | {r['longest_silence_s'] or 0:.2f} | "
            f"{r['worker_cpu_share']:.0%} | {r['worker_rss_mb']:.0f} MB |"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "watchers.json").write_text(json.dumps(results, indent=2))
    plot(results, RESULTS / "watchers.png")
    print(f"wrote {RESULTS / 'watchers.json'} and {RESULTS / 'watchers.png'}")


if __name__ == "__main__":
    main()
