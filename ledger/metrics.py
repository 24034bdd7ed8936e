"""Every metric, in one place, correct with several worker processes.

`ledger serve` sets PROMETHEUS_MULTIPROC_DIR before any worker imports prometheus_client, so
counters and histograms from all workers are summed at scrape time; gauges say how they combine.
Without it (a single process, the tests) the default registry is used.
"""

import os
import time
from collections import Counter as Tally
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

REQUEST_SECONDS = Histogram(
    "ledger_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template, method and status.",
    ["route", "method", "status"],
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
DECISIONS = Counter("ledger_decisions_total", "Decisions answered, by purpose and reason.", ["purpose", "reason"])
APPENDS = Counter("ledger_appends_total", "Entries appended to the log by this service.")
BATCH_SIZE = Histogram(
    "ledger_append_batch_size",
    "Entries per group-commit batch.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
)
APPLIED_INDEX = Gauge(
    "ledger_projection_applied_index", "Log size each worker's projection has applied.", multiprocess_mode="liveall"
)
LAG_ENTRIES = Gauge(
    "ledger_projection_lag_entries",
    "Entries the slowest worker's projection is behind the log.",
    multiprocess_mode="livemax",
)
STALENESS_SECONDS = Gauge(
    "ledger_projection_staleness_seconds",
    "Time since the slowest worker last confirmed its projection was current.",
    multiprocess_mode="livemax",
)
CACHE_ENTRIES = Gauge("ledger_cache_entries", "Entries held in the decision caches.", multiprocess_mode="livesum")
CACHE_LOOKUPS = Counter("ledger_cache_lookups_total", "Cache lookups, by result (hit or miss).", ["result"])


def count_decisions(decisions: Iterable[Any]) -> None:
    # Tallied first: one increment per (purpose, reason) in a batch, not one per decision.
    for (purpose, reason), n in Tally((d.purpose, d.reason) for d in decisions).items():
        DECISIONS.labels(purpose, reason).inc(n)


def observe_projection(applied: int, head: int, staleness: float, cache_entries: int) -> None:
    APPLIED_INDEX.set(applied)
    LAG_ENTRIES.set(max(0, head - applied))
    STALENESS_SECONDS.set(staleness)
    CACHE_ENTRIES.set(cache_entries)


def exposition() -> tuple[bytes, str]:
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def worker_exited(pid: int) -> None:
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


class RequestTimer:
    """ASGI middleware: request duration by route template and status, errors included."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def timed_send(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            route = scope.get("path_template") or "unmatched"
            REQUEST_SECONDS.labels(route, scope["method"], str(status)).observe(time.perf_counter() - started)
