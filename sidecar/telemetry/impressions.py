"""Impressions: who saw which treatment, under which rule and snapshot version, in Split's
three modes.

The lookup path only appends a tuple to `Recorder.pending` (no hashing, no locking, no
logging); `ImpressionModes.process` applies the mode later, in bulk, off the request path:

- optimized: an impression is sent the first time its hash (key, flag, treatment, label,
  change number) is seen in an hour, through a bounded LRU "observer"; every impression that
  had been seen before is counted per flag and hour instead.
- debug: every impression is sent, with the time it was last seen.
- none: nothing is sent; every impression is counted, and each (key, flag) is reported once
  per day as a unique key.

Flags with `impressionsDisabled` always follow none. `definition not found` makes no
impression at all (Split's SDKs skip it too).

One deliberate difference from splitio-client (Python): its observer keeps the *first* time
a hash was seen, so after the first hour every repeat looks new and is sent again. Here, as
in Split's Java SDK, the observer stores the latest time, so "first per hour" holds.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import NamedTuple

from sidecar.rules.model import CompiledFlag
from sidecar.rules.result import LABEL_NOT_FOUND, Result
from sidecar.snapshot.snapshot import Snapshot

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
# Split's SDKs keep 500,000 hashes (~75 MB here); a sidecar shares its pod, so less by default.
DEFAULT_OBSERVER_SIZE = 100_000
DEFAULT_RECORDER_CAPACITY = 100_000


class Mode(StrEnum):
    OPTIMIZED = "optimized"
    DEBUG = "debug"
    NONE = "none"


class Impression(NamedTuple):
    key: str
    bucketing_key: str | None
    flag: str
    treatment: str
    label: str | None
    change_number: int
    time_ms: int
    previous_time_ms: int | None
    snapshot_version: int


# One lookup as the hot path leaves it: (snapshot, key, bucketing key, flag, result, time ms).
Pending = tuple[Snapshot, str, str | None, str, Result, int]


# Builds a NamedTuple from a tuple without its keyword-parsing __new__ (4x cheaper).
_make_impression = tuple.__new__


def hour_start(time_ms: int) -> int:
    return time_ms - time_ms % HOUR_MS


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Recorder:
    """The hot path's side: `record` appends one tuple to a bounded deque and returns.

    Everything runs on the sidecar's event loop, and the deque is drained there between
    requests, so nothing here needs a lock. A full deque drops the lookup's impression and
    counts it in `overflow` (the pipeline reports and logs it); it never blocks a lookup.
    """

    __slots__ = ("capacity", "overflow", "pending")

    def __init__(self, capacity: int = DEFAULT_RECORDER_CAPACITY) -> None:
        self.capacity = capacity
        self.pending: deque[Pending] = deque()
        self.overflow = 0

    def record(
        self,
        snap: Snapshot,
        key: str,
        bucketing_key: str | None,
        flag: str,
        result: Result,
        time_ms: int,
    ) -> None:
        if result.label == LABEL_NOT_FOUND:
            return
        pending = self.pending
        if len(pending) < self.capacity:
            pending.append((snap, key, bucketing_key, flag, result, time_ms))
        else:
            self.overflow += 1


class Observer:
    """Split's impression observer: a bounded LRU from impression hash to the last time seen."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[int, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def test_and_set(self, digest: int, time_ms: int) -> int | None:
        """The previous time `digest` was seen (None: not within the LRU), storing `time_ms`.

        Like Split's Java SDK, an out-of-order older time is returned as the earlier of the
        two, so the caller never sees a previous time after the impression itself.
        """
        seen = self._seen
        previous = seen.get(digest)
        if previous is None:
            seen[digest] = time_ms
            if len(seen) > self.capacity:
                seen.popitem(last=False)
            return None
        seen.move_to_end(digest)
        if time_ms > previous:
            seen[digest] = time_ms
            return previous
        return time_ms


class UniqueKeys:
    """Mode none: which keys saw each flag, each (key, flag) reported at most once per UTC day
    while it stays in the bounded LRU (Split uses a bloom filter cleared every 24 h)."""

    def __init__(self, capacity: int) -> None:
        self._observer = Observer(capacity)
        self._keys: dict[str, dict[str, None]] = {}
        self.size = 0

    def add(self, flag: str, key: str, time_ms: int) -> None:
        previous = self._observer.test_and_set(hash((key, flag)), time_ms)
        if previous is not None and previous // DAY_MS == time_ms // DAY_MS:
            return
        keys = self._keys.get(flag)
        if keys is None:
            keys = self._keys[flag] = {}
        if key not in keys:
            keys[key] = None
            self.size += 1

    def take(self) -> list[tuple[str, list[str]]]:
        """The keys gathered since the last take, per flag, and forget them."""
        taken = [(flag, list(keys)) for flag, keys in self._keys.items()]
        self._keys = {}
        self.size = 0
        return taken


class ImpressionModes:
    """Applies the configured mode to recorded lookups: impressions to send go to `emit`;
    counts and unique keys accumulate until taken."""

    def __init__(
        self,
        mode: Mode,
        emit: Callable[[Impression], None],
        observer_size: int = DEFAULT_OBSERVER_SIZE,
    ) -> None:
        self.mode = mode
        self._emit = emit
        self._observer = Observer(observer_size)
        self.unique_keys = UniqueKeys(observer_size)
        self.counts: dict[tuple[str, int], int] = {}
        self.deduplicated = 0
        self.emitted = 0

    def process(self, item: Pending) -> None:
        self.process_many(deque((item,)), 1)

    def process_many(self, pending: deque[Pending], count: int) -> None:
        """Takes `count` lookups off the left of `pending`. Written for speed (about 1 µs a
        lookup): this runs once per recorded evaluation, on the loop that serves requests."""
        observer = self._observer.test_and_set
        emit, make = self._emit, _make_impression
        popleft, mode = pending.popleft, self.mode
        optimized = mode is Mode.OPTIMIZED
        last_snap: Snapshot | None = None
        flags: Mapping[str, CompiledFlag] = {}
        emitted = deduplicated = 0
        for _ in range(count):
            snap, key, bucketing_key, flag, result, time_ms = popleft()
            if snap is not last_snap:
                last_snap, flags = snap, snap.flags
            compiled = flags.get(flag)
            if mode is Mode.NONE or (compiled is not None and compiled.impressions_disabled):
                self._count(flag, time_ms)
                self.unique_keys.add(flag, key, time_ms)
                continue
            treatment, label, change = result.treatment, result.label, result.change_number or 0
            # Split hashes "key:flag:treatment:label:changeNumber" with murmur3-128; the value
            # never leaves the observer, so Python's 64-bit tuple hash (5x cheaper) will do.
            previous = observer(hash((key, flag, treatment, label, change)), time_ms)
            if optimized and previous is not None:
                self._count(flag, time_ms)
                if previous >= time_ms - time_ms % HOUR_MS:
                    deduplicated += 1
                    continue
            emitted += 1
            emit(
                make(
                    Impression,
                    (
                        key,
                        bucketing_key,
                        flag,
                        treatment,
                        label,
                        change,
                        time_ms,
                        previous,
                        snap.version,
                    ),
                )
            )
        self.emitted += emitted
        self.deduplicated += deduplicated

    def _count(self, flag: str, time_ms: int) -> None:
        bucket = (flag, hour_start(time_ms))
        self.counts[bucket] = self.counts.get(bucket, 0) + 1

    def take_counts(self) -> list[tuple[str, int, int]]:
        """(flag, hour start, count) gathered since the last take, and forget them."""
        taken = [(flag, hour, count) for (flag, hour), count in self.counts.items()]
        self.counts = {}
        return taken
