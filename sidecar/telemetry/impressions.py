"""The sidecar's side of impressions: the hot path's recorder. The modes themselves
(optimized, debug, none; the observer; counts and unique keys) live in `fader.impressions`,
shared with the Python client's in-process mode.
"""

from __future__ import annotations

from collections import deque

from fader.impressions import (
    DAY_MS,
    DEFAULT_OBSERVER_SIZE,
    HOUR_MS,
    Answer,
    Impression,
    ImpressionModes,
    Mode,
    Observer,
    Pending,
    UniqueKeys,
    add_messages,
    hour_start,
    now_ms,
)
from fader.snapshot.snapshot import Snapshot

__all__ = [
    "DAY_MS",
    "DEFAULT_OBSERVER_SIZE",
    "DEFAULT_RECORDER_CAPACITY",
    "HOUR_MS",
    "Answer",
    "Impression",
    "ImpressionModes",
    "Mode",
    "Observer",
    "Pending",
    "Recorder",
    "UniqueKeys",
    "add_messages",
    "hour_start",
    "now_ms",
]

DEFAULT_RECORDER_CAPACITY = 100_000


class Recorder:
    """The hot path's side: a request appends its evaluations, as one list, to a bounded
    deque and goes on (a batch of 100 lookups costs one append, not 100).

    Requests answered in the same millisecond from the same snapshot share one entry: the
    fast lane and GetTreatment answer dozens of one-lookup requests a millisecond, and the
    modes pay a fixed cost per entry (its snapshot, its hour) besides the cost per lookup.
    What the modes compute only depends on each lookup, its snapshot and its time, in order,
    so sharing changes nothing they make. The shared list is the recorder's own copy: a
    request's list is never changed after it is recorded.

    Everything runs on the sidecar's event loop, and the deque is drained there between
    requests, so nothing here needs a lock. When `capacity` lookups are already waiting, the
    request's lookups are not recorded and are counted in `overflow` (the pipeline reports
    and logs them); a lookup is never blocked.
    """

    __slots__ = ("_shared", "capacity", "overflow", "pending", "size")

    def __init__(self, capacity: int = DEFAULT_RECORDER_CAPACITY) -> None:
        self.capacity = capacity
        self.pending: deque[Pending] = deque()
        self.size = 0  # lookups in `pending`
        self.overflow = 0
        self._shared: Pending | None = None  # the last entry, when its list is our own

    def record(self, snap: Snapshot, time_ms: int, lookups: list[Answer]) -> None:
        count = len(lookups)
        if self.size + count > self.capacity:
            self.overflow += count
            return
        self.size += count
        pending = self.pending
        if pending:
            last = pending[-1]
            if last[1] == time_ms and last[0] is snap:
                if last is self._shared:
                    last[2].extend(lookups)
                else:
                    self._shared = pending[-1] = (snap, time_ms, last[2] + lookups)
                return
        pending.append((snap, time_ms, lookups))
