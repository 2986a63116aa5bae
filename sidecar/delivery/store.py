"""The Store: one reference to the active Snapshot, swapped atomically.

Readers do ``store.current`` once per request: a single attribute read, atomic under
the GIL, no lock on the hot path. Writers serialise on a lock so that the version check
and the swap cannot interleave. Replaced snapshots go to the Reaper, which frees them in
small steps once no request uses them any more; writers `settle` before building the next
one, so memory holds a bounded number of snapshots however fast they are swapped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from fader.snapshot.snapshot import Snapshot

from sidecar.delivery.reaper import Reaper

log = logging.getLogger(__name__)

Listener = Callable[[Snapshot | None, Snapshot], None]


class StaleVersionError(ValueError):
    """The offered snapshot is not newer than the active one (and the swap was not forced)."""

    def __init__(self, offered: int, active: int) -> None:
        self.offered = offered
        self.active = active
        super().__init__(
            f"snapshot version {offered} is not newer than the active version {active}; "
            "versions only move forward (force to roll back)"
        )


class Store:
    """Holds the active snapshot and notifies listeners after each swap."""

    def __init__(self, reaper: Reaper | None = None) -> None:
        self.current: Snapshot | None = None
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._reaper = reaper or Reaper()

    def swap(self, snapshot: Snapshot, *, force: bool = False) -> Snapshot | None:
        """Make ``snapshot`` active and return the previous one.

        Raises StaleVersionError when ``snapshot.version`` is not greater than the active
        version, unless ``force``; the active snapshot is then untouched. A snapshot without
        a version of its own (a plain flagd file) becomes the active version + 1.
        """
        with self._lock:
            previous = self.current
            if not snapshot.versioned:  # a plain flagd file: numbered as it is applied
                snapshot.version = previous.version + 1 if previous is not None else 1
                snapshot.versioned = True
            if previous is not None and snapshot.version <= previous.version and not force:
                raise StaleVersionError(snapshot.version, previous.version)
            self.current = snapshot
            listeners = tuple(self._listeners)
        for listener in listeners:
            try:
                listener(previous, snapshot)
            except Exception:
                log.exception("snapshot listener failed after swap to version %d", snapshot.version)
        if previous is not None:
            self._reaper.retire(previous)
        return previous

    @property
    def reaper(self) -> Reaper:
        return self._reaper

    def settle(self, timeout: float) -> bool:
        """Wait until the replaced snapshots nobody uses any more are freed (False if that
        took longer than ``timeout``). Writers call it before building the next snapshot, so
        that swaps faster than freeing cannot pile snapshots up in memory."""
        return self._reaper.wait_idle(timeout)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(previous, current)`` after every swap; returns an unsubscribe."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe
