"""Export and verification throughput, in entries per second.

    python -m benchmarks.export [--log-size 1000000] [--filtered 100000]

On the embedded PostgreSQL: builds a log of --log-size entries with the real appender, then
times, each as the CLI or the API does it: the whole log written as a bundle directory
(`ledger export`), the whole log as the tar stream of GET /v1/export (consumed in memory-less
chunks), a filtered export of --filtered entries with their inclusion proofs, `ledger verify`
of both bundles, and `ledger verify-state` (the whole log refolded, the state table compared).
Prints a table, writes benchmarks/results/export.json and draws export.png.
"""

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.append import build_log, fresh_store
from benchmarks.common import RESULTS, progress, pyplot
from ledger import embedded, export
from ledger.core.note import Verifier
from ledger.core.verify import verify_bundle
from ledger.state_check import verify_state


def lines(path: Path):  # type: ignore[no-untyped-def]
    with open(path, "rb") as f:
        for line in f:
            yield line[:-1]


def verify(directory: Path, verifier: Verifier) -> float:
    proofs = directory / export.PROOFS
    started = time.monotonic()
    report = verify_bundle(
        lines(directory / export.ENTRIES),
        (directory / export.CHECKPOINT).read_text(),
        [verifier],
        lines(proofs) if proofs.exists() else None,
    )
    return report.entries / (time.monotonic() - started)


async def measure(server_url: str, size: int, filtered: int, tmp: Path) -> dict[str, float]:
    store = await fresh_store(server_url)
    await build_log(store, size)
    [key] = list(await store.log.keys())
    verifier = Verifier.from_vkey(key.vkey)
    rates: dict[str, float] = {}

    progress("export: whole log to files")
    full = await export.plan(store.log)
    started = time.monotonic()
    await export.write_directory(store.log, full, tmp / "full")
    rates["export, whole log (files)"] = size / (time.monotonic() - started)

    progress("export: whole log as a tar stream")
    started = time.monotonic()
    streamed = 0
    async for chunk in export.tar_stream(store.log, full):
        streamed += len(chunk)
    rates["export, whole log (tar stream)"] = size / (time.monotonic() - started)

    progress(f"export: {filtered:,} entries with proofs")
    middle = size // 2
    part = await export.plan(store.log, middle, middle + filtered)
    started = time.monotonic()
    await export.write_directory(store.log, part, tmp / "part")
    rates[f"export, {filtered:,} entries with proofs"] = filtered / (time.monotonic() - started)

    progress("verify-state: refold the whole log and compare the state table")
    started = time.monotonic()
    report = await verify_state(store.log, [verifier])
    assert not report.differences
    rates["verify-state, whole log (`ledger verify-state`)"] = size / (time.monotonic() - started)
    await store.pool.close()

    progress("verify: whole log")
    rates["verify, whole log"] = await asyncio.to_thread(verify, tmp / "full", verifier)
    progress("verify: filtered with proofs")
    rates[f"verify, {filtered:,} entries with proofs"] = await asyncio.to_thread(verify, tmp / "part", verifier)
    progress("")
    return rates


def plot(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    names, values = list(results["rates"]), list(results["rates"].values())
    ax.barh(names, values, color=["tab:blue" if n.startswith("export") else "tab:green" for n in names])
    ax.axvline(100_000, color="tab:red", linestyle="--", linewidth=1, label="target: 100,000 entries/s")
    ax.invert_yaxis()
    ax.set_xlabel("entries per second")
    ax.set_title(f"Export and verification, log of {results['log_size']:,} entries")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log-size", type=int, default=1_000_000)
    parser.add_argument("--filtered", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        server, server_url = embedded.start(tmp / "data")
        try:
            rates = asyncio.run(measure(server_url, args.log_size, min(args.filtered, args.log_size // 2), tmp))
        finally:
            server.cleanup()
    results = {"log_size": args.log_size, "rates": rates}
    print("| operation | entries/s |")
    print("|---|---:|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:,.0f} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "export.json").write_text(json.dumps(results, indent=2))
    plot(results, RESULTS / "export.png")
    print(f"wrote {RESULTS / 'export.json'} and {RESULTS / 'export.png'}")


if __name__ == "__main__":
    main()
