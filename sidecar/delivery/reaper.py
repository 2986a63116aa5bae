"""Frees retired snapshots a little at a time, off the request path.

Dropping the last reference to a large snapshot frees millions of objects in one
cascade that holds the GIL (about 80 ms for 10,000 flags and 1,000,000 segment keys):
every lookup in flight would stall that long, or the request that happened to hold the
last reference would pay it all. The reaper instead waits until nobody but itself
holds a retired snapshot, then takes it apart in small steps, yielding the GIL between
steps.
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


class Reaper:
    """A daemon thread that dismantles snapshots once nothing else references them."""

    def __init__(self, poll_seconds: float = 0.05) -> None:
        self.poll_seconds = poll_seconds
        self._retired: list[Snapshot] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def retire(self, snapshot: Snapshot) -> None:
        with self._lock:
            self._retired.append(snapshot)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fader-reaper", daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.poll_seconds)
            self._wake.clear()
            for snapshot in self._unreferenced():
                try:
                    # One object per step, then the GIL is offered: freeing the last flag
                    # that uses a segment frees that segment's keys, the longest single step.
                    while snapshot.release_step(1):
                        time.sleep(0)
                except Exception:
                    log.exception("could not release snapshot version %d", snapshot.version)

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
        return free
