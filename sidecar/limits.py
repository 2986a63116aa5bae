"""Size limits on what the sidecar accepts, and a counter of every refusal by limit.

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
from typing import Any, Final

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from sidecar.snapshot.issues import Issue, SnapshotError

# Refusal reasons of snapshots (also counted in fader_snapshot_refusals{reason}).
SNAPSHOT_BYTES: Final = "too_large"
FLAGS: Final = "too_many_flags"
SEGMENT_KEYS: Final = "too_many_segment_keys"
SNAPSHOT_LIMITS: Final = (SNAPSHOT_BYTES, FLAGS, SEGMENT_KEYS)
# Request limits.
ATTRIBUTES: Final = "attributes"
ATTRIBUTE_SIZE: Final = "attribute_size"
WATCH_STREAMS: Final = "watch_streams"
REQUEST_LIMITS: Final = (ATTRIBUTES, ATTRIBUTE_SIZE, WATCH_STREAMS)
DEFAULT_MAX_ATTRIBUTE_SIZE: Final = 65_536


@dataclass(frozen=True, slots=True)
class SnapshotLimits:
    """Upper bounds on one snapshot; the defaults are far above any real flag set."""

    max_snapshot_bytes: int = 256 * 1024 * 1024
    max_flags: int = 50_000
    max_segment_keys: int = 5_000_000

    def check_bytes(self, size: int) -> None:
        if size > self.max_snapshot_bytes:
            raise LimitError(
                SNAPSHOT_BYTES,
                f"snapshot is {size} bytes, more than --max-snapshot-bytes "
                f"{self.max_snapshot_bytes}",
            )

    def check_document(self, flags: list[Any], segments: Any) -> None:
        """Counts checked right after decoding, before validation walks the document."""
        if len(flags) > self.max_flags:
            raise LimitError(
                FLAGS, f"snapshot has {len(flags)} flags, more than --max-flags {self.max_flags}"
            )
        if isinstance(segments, dict):
            keys = sum(len(v) for v in segments.values() if isinstance(v, list))
            if keys > self.max_segment_keys:
                raise LimitError(
                    SEGMENT_KEYS,
                    f"snapshot has {keys} segment keys, more than --max-segment-keys "
                    f"{self.max_segment_keys}",
                )


class LimitError(SnapshotError):
    """A snapshot refused for its size; ``reason`` is one of ``SNAPSHOT_LIMITS``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__([Issue(None, "$", message)])
        self.reason = reason


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
