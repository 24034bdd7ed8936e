"""A mirror's figures as a prometheus-client Collector (prometheus-client is needed only here)."""

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ledger.client.mirror import Mirror

__all__ = ["MirrorCollector"]


class MirrorCollector(Collector):
    """Read at each scrape from `Mirror.stats()`; nothing is counted twice."""

    def __init__(self, mirror: "Mirror", prefix: str = "ledger_mirror") -> None:
        self.mirror = mirror
        self.prefix = prefix

    def collect(self) -> Iterator[Metric]:
        s = self.mirror.stats()
        p = self.prefix
        counters = [
            ("hits", "Answers from the mirrored decisions", s.hits),
            ("misses", "Answers that had to be fetched from the ledger", s.misses),
            ("stale_refusals", "Answers refused because the mirror was not fresh", s.stale_refusals),
            ("fetch_failures", "Misses the ledger did not answer within max_staleness", s.fetch_failures),
            ("stream_reconnects", "Times the watch stream was opened again", s.reconnects),
        ]
        for name, text, value in counters:
            yield CounterMetricFamily(f"{p}_{name}", text, value=value)
        yield GaugeMetricFamily(f"{p}_decisions", "Decisions held", value=s.size)
        yield GaugeMetricFamily(
            f"{p}_lag_seconds", "Time since the last heartbeat the stream caught up with", value=s.lag_seconds
        )
        yield GaugeMetricFamily(f"{p}_connected", "1 while the watch stream is open", value=int(s.connected))
        if s.position is not None:
            yield GaugeMetricFamily(f"{p}_position", "Log size the stream has delivered", value=s.position)
