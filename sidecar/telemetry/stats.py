"""Counters of the telemetry pipeline and their Prometheus families.

The pipeline runs on the sidecar's event loop and is the only writer; /metrics reads these
plain ints from the management thread (whole values under the GIL, never torn).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from sidecar.telemetry.metrics import Histogram

UPLOAD_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class Stats:
    def __init__(self) -> None:
        self.queued: dict[str, int] = {}
        self.sent: dict[str, int] = {}
        self.spooled: dict[str, int] = {}
        self.replayed: dict[str, int] = {}
        self.dropped: dict[tuple[str, str], int] = {}
        self.deduplicated = 0
        self.uploads: dict[str, Histogram] = {}

    def add(self, counter: dict[str, int], records: dict[str, int]) -> None:
        for kind, count in records.items():
            if count:
                counter[kind] = counter.get(kind, 0) + count

    def drop(self, records: dict[str, int], reason: str) -> int:
        total = 0
        for kind, count in records.items():
            if count:
                key = (kind, reason)
                self.dropped[key] = self.dropped.get(key, 0) + count
                total += count
        return total

    def upload(self, outcome: str, seconds: float) -> None:
        histogram = self.uploads.get(outcome)
        if histogram is None:
            histogram = self.uploads[outcome] = Histogram(UPLOAD_BUCKETS)
        histogram.observe(seconds)


class TelemetryCollector(Collector):
    """Exports `Stats` plus the gauges read from the pipeline at scrape time."""

    def __init__(self, stats: Stats, gauges: Callable[[], dict[str, float]]) -> None:
        self._stats = stats
        self._gauges = gauges

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        for name, counter, text in (
            ("queued", stats.queued, "Telemetry records accepted for upload, by kind."),
            ("sent", stats.sent, "Telemetry records the collector stored, by kind."),
            ("spooled", stats.spooled, "Telemetry records written to the disk spool, by kind."),
            ("replayed", stats.replayed, "Telemetry records sent from the disk spool, by kind."),
        ):
            family = CounterMetricFamily(f"fader_telemetry_{name}", text, labels=("kind",))
            for kind, count in sorted(dict(counter).items()):
                family.add_metric((kind,), count)
            yield family
        dropped = CounterMetricFamily(
            "fader_telemetry_dropped",
            "Telemetry records dropped, by kind and reason (never silently).",
            labels=("kind", "reason"),
        )
        for (kind, reason), count in sorted(dict(stats.dropped).items()):
            dropped.add_metric((kind, reason), count)
        yield dropped
        yield CounterMetricFamily(
            "fader_impressions_deduplicated",
            "Impressions counted instead of sent (optimized mode: seen before in the hour).",
            value=stats.deduplicated,
        )
        latency = HistogramMetricFamily(
            "fader_telemetry_upload_duration_seconds",
            "Upload calls to the collector, by outcome (stored, retry, refused).",
            labels=("outcome",),
        )
        for outcome, histogram in sorted(dict(stats.uploads).items()):
            latency.add_metric((outcome,), histogram.cumulative(), histogram.total)
        yield latency
        for name, value in sorted(self._gauges().items()):
            yield GaugeMetricFamily(f"fader_telemetry_{name}", _GAUGE_HELP[name], value=value)


_GAUGE_HELP = {
    "memory_bytes": "Estimated bytes of sealed batches held in memory.",
    "spool_bytes": "Bytes of batches in the disk spool.",
    "spool_batches": "Batches in the disk spool.",
    "pending_lookups": "Lookups recorded but not yet turned into impressions.",
    "upstream_up": "1 while the collector takes uploads, 0 after a failed one or while it refuses "
    "every upload (no collector there) until it takes one again.",
}
