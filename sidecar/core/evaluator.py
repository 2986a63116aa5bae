"""The one evaluation path of every lane: a snapshot taken once, a list of lookups evaluated
on it, each counted, the whole request recorded for impressions and timed.

Every front door (fader.v1, flagd, the fast lane, and each one added later) decodes its wire
form into `Lookup`s, calls `Evaluator.evaluate`, and encodes the results. What must happen
for every evaluation happens here and only here, so the lanes cannot drift apart.

Why the snapshot is a parameter: a lane takes it with `snapshot()` before decoding (a request
for "every flag" or a flag set needs it to know the flags), and every result of the request
then comes from that one object. An answer never mixes two versions, however a swap lands.

This is the hot path: no logging, no locking. Metrics go to the calling thread's own shard;
impressions cost one list append per request (the recorder works off the request path).
"""

from __future__ import annotations

from collections.abc import Iterable
from time import perf_counter

from fader.rules.result import LABEL_NOT_FOUND, Decision
from fader.snapshot.snapshot import Snapshot

from sidecar.core.refusals import NOT_READY_MESSAGE, NotReady
from sidecar.delivery.store import Store
from sidecar.telemetry.impressions import Answer, Recorder, now_ms
from sidecar.telemetry.metrics import Metrics

# One lookup as a lane decodes it: (key, bucketing key, flag, attributes).
Lookup = tuple[str, str | None, str, dict[str, object] | None]


class Evaluator:
    """Evaluates lookups against the store's active snapshot for every lane."""

    __slots__ = ("_metrics", "_record", "_record_one", "store")

    def __init__(self, store: Store, metrics: Metrics, recorder: Recorder | None = None) -> None:
        self.store = store
        self._metrics = metrics
        self._record = recorder.record if recorder is not None else None
        self._record_one = recorder.record_one if recorder is not None else None

    def snapshot(self) -> Snapshot:
        """The one snapshot a request reads; NotReady before the first one."""
        snap = self.store.current
        if snap is None:
            raise NotReady(NOT_READY_MESSAGE)
        return snap

    def evaluate(
        self,
        snap: Snapshot,
        lookups: Iterable[Lookup],
        operation: str,
        started: float,
        *,
        record: bool = True,
    ) -> list[Answer]:
        """Evaluates every lookup on `snap`, counts each evaluation, records the request's
        impressions, and observes the request's latency since `started` (a perf_counter
        reading taken when the lane began the request) under `operation`. `record` False
        is for prefetches (OFREP's bulk call): every flag is evaluated, none is exposed."""
        evaluate = snap.evaluate
        answers = [
            (key, bucketing_key, flag, evaluate(key, flag, bucketing_key, attributes))
            for key, bucketing_key, flag, attributes in lookups
        ]
        shard = self._metrics.shard()
        shard.count_answers(answers)  # one C loop for the request, not a dict update per lookup
        if self._record is not None and record:
            self._record(snap, now_ms(), answers)
        shard.lookup(operation).observe(perf_counter() - started)
        return answers

    def evaluate_one(
        self,
        snap: Snapshot,
        lookup: Lookup,
        operation: str,
        started: float,
    ) -> Decision:
        """`evaluate` for a request of exactly one lookup, the commonest request of all: the
        same counting, recording and timing, without building and unpacking the lists."""
        key, bucketing_key, flag, attributes = lookup
        result = snap.evaluate(key, flag, bucketing_key, attributes)
        shard = self._metrics.shard()
        shard.count_evaluation(flag, result.treatment, result.label != LABEL_NOT_FOUND)
        if self._record_one is not None:
            self._record_one(snap, key, bucketing_key, flag, result)
        shard.lookup(operation).observe(perf_counter() - started)
        return result
