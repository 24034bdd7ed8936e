"""Every metric, in one place, correct with several worker processes.

`ledger serve` sets PROMETHEUS_MULTIPROC_DIR before any worker imports prometheus_client, so
counters and histograms from all workers are summed at scrape time; gauges say how they combine.
Without it (a single process, the tests) the default registry is used.

The hot paths do not touch prometheus_client: in multiprocess mode every increment takes a lock
and checks the pid (measured: a sixth of a check request's time). They add to plain counters in
this process instead, and `flush` hands the totals over every FLUSH_SECONDS, before every
scrape this worker answers, and at shutdown. Other workers' figures can be that much behind.
"""

import asyncio
import bisect
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
FLUSH_SECONDS = 0.25
# Fine below a millisecond: that is where a check's answer time lives.
DURATION_BUCKETS = (
    0.00005, 0.0001, 0.00015, 0.0002, 0.0003, 0.0005, 0.00075, 0.001,
    0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
)  # fmt: skip

REQUEST_SECONDS = Histogram(
    "ledger_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template, method and status.",
    ["route", "method", "status"],
    buckets=DURATION_BUCKETS,
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
LOG_CORRUPTION = Counter(
    "ledger_log_corruption_detected_total",
    "Reads where the database contradicted the signed log (entry, nodes, checkpoint or state row).",
    ["where"],
)
IMPOSSIBLE_STATE_ROWS = Counter(
    "ledger_projection_impossible_rows_total",
    "State rows refused because the log entry they name does not say what they say.",
)
REGISTRY_INDEX = Gauge(
    "ledger_registry_index", "Index of the registry entry each worker decides with.", multiprocess_mode="liveall"
)
REGISTRY_DRIFT = Gauge(
    "ledger_registry_drift",
    "1 if LEDGER_PURPOSES differs from the registry in force in the log (which is kept), else 0.",
    multiprocess_mode="livemax",
)
CACHE_ENTRIES = Gauge("ledger_cache_entries", "Entries held in the decision caches.", multiprocess_mode="livesum")
CACHE_LOOKUPS = Counter("ledger_cache_lookups_total", "Cache lookups, by result (hit or miss).", ["result"])
for _result in ("hit", "miss"):
    CACHE_LOOKUPS.labels(_result)  # exported from the start, at 0
CHECK_ANSWERS = Counter(
    "ledger_check_answers_total",
    "GET /v1/check answers by path: `memory` (cached token and decision, before the handler) or `route`.",
    ["path"],
)
for _path in ("memory", "route"):
    CHECK_ANSWERS.labels(_path)
WATCHERS = Gauge("ledger_watchers", "Open GET /v1/watch streams.", multiprocess_mode="livesum")
WATCH_EVENTS = Counter("ledger_watch_events_total", "Events the watch hubs built (each sent to every watcher).")
WATCH_RESYNCS = Counter(
    "ledger_watch_resyncs_total",
    "Resync events sent instead of a gap, by reason (`retention`: resumed too far back; `slow consumer`).",
    ["reason"],
)


DELIVERIES = Counter(
    "ledger_webhook_deliveries_total",
    "Webhook delivery attempts by outcome (delivered, retry, dead, disabled).",
    ["outcome"],
)
OUTBOX_PENDING = Gauge(
    "ledger_webhook_pending_deliveries", "Deliveries waiting in the outbox.", multiprocess_mode="livemax"
)
OUTBOX_OLDEST_SECONDS = Gauge(
    "ledger_webhook_oldest_pending_seconds", "Age of the oldest pending delivery.", multiprocess_mode="livemax"
)
for _outcome in ("delivered", "retry", "dead", "disabled"):
    DELIVERIES.labels(_outcome)


def count_delivery(outcome: str) -> None:
    DELIVERIES.labels(outcome).inc()


def observe_outbox(pending: int, oldest_seconds: float) -> None:
    OUTBOX_PENDING.set(pending)
    OUTBOX_OLDEST_SECONDS.set(oldest_seconds)


_BOUNDS = (*DURATION_BUCKETS, float("inf"))
# (route, method, status) -> [count per bucket..., sum of seconds]
_requests: dict[tuple[str, str, str], list[float]] = {}
_decisions: Tally[tuple[str, str]] = Tally()
_lookups = {"hit": 0, "miss": 0}
_check_answers = {"memory": 0, "route": 0}


def observe_request(route: str, method: str, status: str, seconds: float) -> None:
    key = (route, method, status)
    acc = _requests.get(key)
    if acc is None:
        acc = _requests[key] = [0.0] * (len(_BOUNDS) + 1)
    acc[bisect.bisect_left(_BOUNDS, seconds)] += 1
    acc[-1] += seconds


def count_decision(purpose: str, reason: str) -> None:
    _decisions[(purpose, reason)] += 1


def count_decisions(decisions: Iterable[Any]) -> None:
    _decisions.update((d.purpose, d.reason) for d in decisions)


def count_lookups(hits: int, misses: int) -> None:
    _lookups["hit"] += hits
    _lookups["miss"] += misses


def count_check_answer(path: str) -> None:
    _check_answers[path] += 1


def count_watch_events(count: int) -> None:
    if count:
        WATCH_EVENTS.inc(count)


def count_watch_resync(reason: str) -> None:
    WATCH_RESYNCS.labels(reason).inc()


def flush() -> None:
    """Hand this process's pending counts to prometheus_client."""
    for key, acc in list(_requests.items()):
        child = REQUEST_SECONDS.labels(*key)
        # Histogram keeps per-bucket (not cumulative) counts in _buckets and the total in _sum;
        # adding to them is what observe() does, once per bucket instead of once per request.
        for i, count in enumerate(acc[:-1]):
            if count:
                child._buckets[i].inc(count)
        child._sum.inc(acc[-1])
    _requests.clear()
    for (purpose, reason), count in list(_decisions.items()):
        DECISIONS.labels(purpose, reason).inc(count)
    _decisions.clear()
    for result, count in list(_lookups.items()):
        if count:
            CACHE_LOOKUPS.labels(result).inc(count)
            _lookups[result] = 0
    for path, count in list(_check_answers.items()):
        if count:
            CHECK_ANSWERS.labels(path).inc(count)
            _check_answers[path] = 0


async def flush_periodically() -> None:
    try:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            flush()
    finally:
        flush()


def observe_projection(applied: int, head: int, staleness: float, cache_entries: int) -> None:
    APPLIED_INDEX.set(applied)
    LAG_ENTRIES.set(max(0, head - applied))
    STALENESS_SECONDS.set(staleness)
    CACHE_ENTRIES.set(cache_entries)


def exposition() -> tuple[bytes, str]:
    flush()
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
            observe_request(route, scope["method"], str(status), time.perf_counter() - started)
