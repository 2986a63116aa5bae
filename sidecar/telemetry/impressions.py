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

    Everything runs on the sidecar's event loop, and the deque is drained there between
    requests, so nothing here needs a lock. When `capacity` lookups are already waiting, the
    request's lookups are not recorded and are counted in `overflow` (the pipeline reports
    and logs them); a lookup is never blocked.
    """

    __slots__ = ("capacity", "overflow", "pending", "size")

    def __init__(self, capacity: int = DEFAULT_RECORDER_CAPACITY) -> None:
        self.capacity = capacity
        self.pending: deque[Pending] = deque()
        self.size = 0  # lookups in `pending`
        self.overflow = 0

    def record(self, snap: Snapshot, time_ms: int, lookups: list[Answer]) -> None:
        count = len(lookups)
        if self.size + count > self.capacity:
            self.overflow += count
            return
        self.size += count
        self.pending.append((snap, time_ms, lookups))
