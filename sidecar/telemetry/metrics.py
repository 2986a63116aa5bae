"""Prometheus metrics of the sidecar, kept off the evaluation hot path's critical costs.

prometheus-client's own Counter/Histogram take a lock on every increment and another to find a
labelled child. Here every thread that records (the gRPC event loop, and any other) owns a
`Shard` of plain ints, dicts and lists that only it writes, so the hot path takes no lock;
/metrics, served from the management thread, sums the shards when it is scraped. A scrape may
see a shard one increment old, never a torn value (under the GIL each `+=` on an int slot is
whole), and counters never go backwards because shards are never dropped.

Names follow go-grpc-prometheus for gRPC (`grpc_server_*`) and `fader_*` for the rest. No label
carries a user key or anything else unbounded: flags come from the snapshot, and a flag that is
not in it is counted under the single name UNKNOWN_FLAG.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol, TypeVar

from fader.rules.result import LABEL_NOT_FOUND, Decision
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from sidecar.plumbing._batchwire import tally

UNKNOWN_FLAG = "_unknown"
# Seconds; from 50 µs (an evaluation) to 1 s (a starved call).
LATENCY_BUCKETS: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip

RpcKey = tuple[str, str]  # (service, method)
K = TypeVar("K")
# Distinct (flag, decision) pairs a shard counts before folding them into (flag, treatment).
MAX_DECISIONS = 10_000


class SnapshotView(Protocol):
    """What the collector reads from the active snapshot."""

    @property
    def version(self) -> int: ...
    @property
    def loaded_at(self) -> float: ...
    @property
    def flag_count(self) -> int: ...


class Histogram:
    """Bucket counts and a sum; `observe` is one bisect and two additions."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def add(self, other: Histogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, list(other.counts), strict=True)]
        self.total += other.total

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus `le` buckets, cumulative, ending with +Inf."""
        buckets, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return buckets


class RpcStats:
    """One method's counters in one shard: started, handled by status code, latency."""

    __slots__ = ("handled", "seconds", "started")

    def __init__(self) -> None:
        self.started = 0
        self.handled: dict[str, int] = {}
        self.seconds = Histogram()

    def finish(self, code: str, elapsed: float) -> None:
        handled = self.handled
        handled[code] = handled.get(code, 0) + 1
        self.seconds.observe(elapsed)


class Shard:
    """The counters one thread writes. Only that thread may call these methods.

    Evaluations are counted two ways, held together in `tallies`: by (flag, treatment), the
    metric's own labels, and by (flag, decision), which `count_answers` counts a whole
    request at a time in C (`tally`, sidecar/plumbing/_batchwire.c: answers grouped by identity,
    one dict update per distinct pair) instead of one Python dict update per evaluation (a
    quarter of a microsecond each). A scrape adds both up
    (`evaluation_counts`). One attribute for both, replaced whole when the second is folded
    into the first, so a scrape from another thread never sees a count twice or not at all.
    """

    __slots__ = ("lookups", "rpcs", "tallies", "track")

    def __init__(self) -> None:
        self.tallies: tuple[dict[tuple[str, str], int], Counter[tuple[str, Decision]]] = (
            {},
            Counter(),
        )
        self.lookups: dict[str, Histogram] = {}
        self.rpcs: dict[RpcKey, RpcStats] = {}
        self.track: dict[str, int] = {}

    @property
    def evaluations(self) -> dict[tuple[str, str], int]:
        """The (flag, treatment) side of the tallies (written by `count_evaluation`)."""
        return self.tallies[0]

    def count_evaluation(self, flag: str, treatment: str, found: bool) -> None:
        key = (flag if found else UNKNOWN_FLAG, treatment)
        counts = self.tallies[0]
        counts[key] = counts.get(key, 0) + 1

    def count_answers(self, answers: Iterable[tuple[str, str | None, str, Decision]]) -> None:
        """Counts every (key, bucketing key, flag, decision) of a request. Decisions are
        built at compile time, so a snapshot has few distinct pairs; past MAX_DECISIONS
        (those of many snapshots: new change numbers) they are folded into the other side."""
        evaluations, decisions = self.tallies
        tally(decisions, answers)  # in C: each distinct (flag, decision) is hashed once
        if len(decisions) > MAX_DECISIONS:
            folded = dict(evaluations)
            _fold(folded, decisions)
            self.tallies = (folded, Counter())

    def evaluation_counts(self) -> dict[tuple[str, str], int]:
        """Evaluations by (flag, treatment); safe from another thread (it copies first)."""
        evaluations, decisions = self.tallies
        counts = dict(evaluations)
        _fold(counts, dict(decisions))
        return counts

    def lookup(self, method: str) -> Histogram:
        histogram = self.lookups.get(method)
        if histogram is None:
            histogram = self.lookups[method] = Histogram()
        return histogram

    def rpc(self, key: RpcKey) -> RpcStats:
        stats = self.rpcs.get(key)
        if stats is None:
            stats = self.rpcs[key] = RpcStats()
        return stats

    def count_track(self, outcome: str) -> None:
        self.track[outcome] = self.track.get(outcome, 0) + 1


class Metrics:
    """All sidecar metrics, in a registry of their own (so tests can run many sidecars)."""

    def __init__(self, snapshot: Callable[[], SnapshotView | None]) -> None:
        self._snapshot = snapshot
        self._local = threading.local()
        self._lock = threading.Lock()
        self._shards: list[Shard] = []
        self._rpc_types: dict[RpcKey, str] = {}
        self._queued_events: Callable[[], int] = lambda: 0
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self))
        ProcessCollector(registry=self.registry)

    def shard(self) -> Shard:
        """The calling thread's shard (created on its first use)."""
        try:
            shard: Shard = self._local.shard
        except AttributeError:
            shard = self._local.shard = Shard()
            with self._lock:
                self._shards.append(shard)
        return shard

    def register_rpc(self, service: str, method: str, rpc_type: str) -> RpcKey:
        """Declares a method so that its series exist (at zero) before its first call."""
        key = (service, method)
        with self._lock:
            self._rpc_types[key] = rpc_type
        return key

    def watch_event_queue(self, queued: Callable[[], int]) -> None:
        """Where the `fader_track_events_queued` gauge reads its value at scrape time."""
        self._queued_events = queued

    def merged(self) -> Shard:
        """The sum of every shard, for a scrape."""
        with self._lock:
            shards = list(self._shards)
        total = Shard()
        for shard in shards:
            _add_counts(total.evaluations, shard.evaluation_counts())
            _add_counts(total.track, shard.track)
            for method, histogram in dict(shard.lookups).items():
                total.lookup(method).add(histogram)
            for key, stats in dict(shard.rpcs).items():
                into = total.rpc(key)
                into.started += stats.started
                _add_counts(into.handled, stats.handled)
                into.seconds.add(stats.seconds)
        return total


def _fold(into: dict[tuple[str, str], int], decisions: dict[tuple[str, Decision], int]) -> None:
    """Adds (flag, decision) counts into (flag, treatment) counts; a flag that is not in the
    snapshot is counted under UNKNOWN_FLAG."""
    for (flag, decision), count in decisions.items():
        treatment, label = decision[0], decision[1]
        bucket = (flag, treatment) if label != LABEL_NOT_FOUND else (UNKNOWN_FLAG, treatment)
        into[bucket] = into.get(bucket, 0) + count


def _add_counts(into: dict[K, int], more: dict[K, int]) -> None:
    for key, count in dict(more).items():
        into[key] = into.get(key, 0) + count


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        total = self._m.merged()
        yield from self._evaluation_families(total)
        yield from self._rpc_families(total)
        yield from self._snapshot_families()
        yield from self._event_families(total)

    def _evaluation_families(self, total: Shard) -> Iterator[Metric]:
        evaluations = CounterMetricFamily(
            "fader_evaluations",
            "Flag evaluations by flag and treatment.",
            labels=("flag", "treatment"),
        )
        for (flag, treatment), count in sorted(total.evaluations.items()):
            evaluations.add_metric((flag, treatment), count)
        yield evaluations
        lookups = HistogramMetricFamily(
            "fader_lookup_duration_seconds",
            "Time spent inside the sidecar on one lookup request, from decoding it to the end "
            "of its evaluations (the answer's encoding is not included).",
            labels=("method",),
        )
        for method, histogram in sorted(total.lookups.items()):
            lookups.add_metric((method,), histogram.cumulative(), histogram.total)
        yield lookups

    def _rpc_families(self, total: Shard) -> Iterator[Metric]:
        labels = ("grpc_type", "grpc_service", "grpc_method")
        started = CounterMetricFamily(
            "grpc_server_started", "RPCs started on the server.", labels=labels
        )
        handled = CounterMetricFamily(
            "grpc_server_handled",
            "RPCs completed on the server, by status code.",
            labels=(*labels, "grpc_code"),
        )
        seconds = HistogramMetricFamily(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its status.",
            labels=labels,
        )
        for (service, method), rpc_type in sorted(self._m._rpc_types.items()):
            stats = total.rpc((service, method))
            names = (rpc_type, service, method)
            started.add_metric(names, stats.started)
            for code, count in sorted(stats.handled.items()):
                handled.add_metric((*names, code), count)
            seconds.add_metric(names, stats.seconds.cumulative(), stats.seconds.total)
        yield from (started, handled, seconds)

    def _snapshot_families(self) -> Iterator[Metric]:
        snap = self._m._snapshot()
        active = GaugeMetricFamily("fader_snapshot_active", "1 when a snapshot is serving.")
        active.add_metric((), 0 if snap is None else 1)
        yield active
        if snap is None:
            return
        yield GaugeMetricFamily(
            "fader_snapshot_version", "Version of the active snapshot.", value=snap.version
        )
        yield GaugeMetricFamily(
            "fader_snapshot_age_seconds",
            "Seconds since the active snapshot was loaded.",
            value=max(0.0, time.time() - snap.loaded_at),
        )
        yield GaugeMetricFamily(
            "fader_snapshot_flags", "Flags in the active snapshot.", value=snap.flag_count
        )

    def _event_families(self, total: Shard) -> Iterator[Metric]:
        events = CounterMetricFamily(
            "fader_track_events",
            "Track calls by outcome: accepted, invalid, queue_full.",
            labels=("outcome",),
        )
        for outcome, count in sorted(total.track.items()):
            events.add_metric((outcome,), count)
        yield events
        yield GaugeMetricFamily(
            "fader_track_events_queued",
            "Track events waiting for upload.",
            value=self._m._queued_events(),
        )
