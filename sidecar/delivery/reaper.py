"""Frees retired snapshots a little at a time, off the request path, and fast enough to keep
up with any rate of swaps.

Dropping the last reference to a large snapshot frees millions of objects in one
cascade that holds the GIL (about 80 ms for 10,000 flags and 1,000,000 segment keys):
every lookup in flight would stall that long, or the request that happened to hold the
last reference would pay it all. The reaper instead waits until nobody but itself
holds a retired snapshot, then takes it apart in slices of about a millisecond, offering
the GIL between slices.

Slices are measured in time, not in objects: offering the GIL after every object cost a
system call per object, and whenever another thread was busy (the next snapshot being
built) the reaper then waited a whole switch interval (5 ms) for each object, so a
2,000-flag snapshot took ~20 s to free while a new one arrived every second, and memory
grew with every swap. A slice of 1 ms stalls a lookup no longer than Python's own thread
switching does. Writers also wait (`wait_idle`) for the snapshots that can be freed to be
freed before building the next one, so retired snapshots never pile up whatever the rate.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

from fader.snapshot.snapshot import Snapshot

log = logging.getLogger(__name__)

# References while checking: the retired list's entry and getrefcount's own argument.
_OWN_REFERENCES = 2
# Work done between two offers of the GIL.
SLICE_SECONDS = 0.001
# Objects freed between two looks at the clock: a segment's keys go in one step.
_STEP = 16


class Reaper:
    """A daemon thread that dismantles snapshots once nothing else references them."""

    def __init__(self, poll_seconds: float = 0.05, slice_seconds: float = SLICE_SECONDS) -> None:
        self.poll_seconds = poll_seconds
        self.slice_seconds = slice_seconds
        self.freed = 0  # snapshots taken apart so far
        self._retired: list[Snapshot] = []
        self._dismantling = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def retired(self) -> int:
        """Snapshots retired and not freed yet (those still in use included)."""
        with self._lock:
            return len(self._retired) + self._dismantling

    def retire(self, snapshot: Snapshot) -> None:
        with self._lock:
            self._retired.append(snapshot)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fader-reaper", daemon=True)
                self._thread.start()
        self._wake.set()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every retired snapshot that nobody uses is freed; False on timeout.

        Snapshots still in use (a request in flight, a stream being written) are not waited
        for: they are freed once released, and waiting for them could last forever.
        """
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._dismantling or self._count_unreferenced():
                self._wake.set()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(min(remaining, self.poll_seconds))
        return True

    def _run(self) -> None:
        while True:
            self._wake.wait(self.poll_seconds)
            self._wake.clear()
            free = self._unreferenced()
            while free:
                snapshot = free.pop()
                try:
                    self._dismantle(snapshot)
                except Exception:
                    log.exception("could not release snapshot version %d", snapshot.version)
                del snapshot  # the last reference: what is left of it goes now
                with self._idle:
                    self._dismantling -= 1
                    self.freed += 1
                    self._idle.notify_all()

    def _dismantle(self, snapshot: Snapshot) -> None:
        """Release ``snapshot`` slice by slice, offering the GIL after each slice."""
        clock = time.perf_counter
        more = True
        while more:
            ends = clock() + self.slice_seconds
            while more and clock() < ends:
                more = snapshot.release_step(_STEP)
            time.sleep(0)

    def _unreferenced(self) -> list[Snapshot]:
        """Take out the retired snapshots that only the list references (no local names
        here on purpose: each would be one more reference)."""
        free: list[Snapshot] = []
        with self._lock:
            index = 0
            while index < len(self._retired):
                if sys.getrefcount(self._retired[index]) <= _OWN_REFERENCES:
                    free.append(self._retired.pop(index))
                else:
                    index += 1
            self._dismantling += len(free)
        return free

    def _count_unreferenced(self) -> int:
        """Retired snapshots the reaper could free now; the caller holds the lock."""
        return sum(
            1
            for index in range(len(self._retired))
            if sys.getrefcount(self._retired[index]) <= _OWN_REFERENCES
        )
