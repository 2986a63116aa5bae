"""Request limits of the sidecar, and a counter of every refusal by limit (requests and
snapshots; the snapshot limits themselves are `fader.snapshot.limits`).

A snapshot or a request far larger than any real one is either a mistake or an attack on the
sidecar's memory and CPU; either way it is refused early, with an error that names the limit
and its value, and counted in ``fader_limit_refusals_total{limit}`` so that an operator sees
it even when the caller swallows the error.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from fader.snapshot.limits import SNAPSHOT_LIMITS
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

# Request limits.
ATTRIBUTES: Final = "attributes"
ATTRIBUTE_SIZE: Final = "attribute_size"
WATCH_STREAMS: Final = "watch_streams"
REQUEST_LIMITS: Final = (ATTRIBUTES, ATTRIBUTE_SIZE, WATCH_STREAMS)
DEFAULT_MAX_ATTRIBUTE_SIZE: Final = 65_536


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """What one request may carry, in one shape for every lane (fader.v1, flagd, the fast lane
    and every later one): the settings of the same names."""

    max_attributes: int = 256
    max_attribute_size: int = DEFAULT_MAX_ATTRIBUTE_SIZE
    max_batch_items: int = 10_000
    max_watch_streams: int = 1024
    max_message_bytes: int = 4 * 1024 * 1024


class RefusalCounter:
    """Process-wide refusal counts by limit name; incremented only on the refusal path."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def count(self, limit: str) -> None:
        with self._lock:
            self._counts[limit] += 1

    def get(self, limit: str) -> int:
        with self._lock:
            return self._counts[limit]


REFUSALS: Final = RefusalCounter()


class LimitsCollector(Collector):
    """``fader_limit_refusals_total{limit}`` for the request and snapshot limits."""

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "fader_limit_refusals",
            "Requests and snapshots refused for exceeding a configured limit, by limit.",
            labels=("limit",),
        )
        for limit in REQUEST_LIMITS + SNAPSHOT_LIMITS:
            family.add_metric((limit,), REFUSALS.get(limit))
        yield family
