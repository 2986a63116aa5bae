"""WatchChanges and WatchSnapshots fan-out: wakes every open stream when the store swaps a
snapshot.

A watcher does not queue swaps. When woken it reads `store.current` and diffs it against the
snapshot it last reported, so a slow reader coalesces several swaps into one message that still
names every flag that changed, and memory stays bounded however many swaps it misses. The
number of open streams is bounded too (`--max-watch-streams`): each one holds a coroutine and
a wakeup for as long as it lasts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

from fader.snapshot.snapshot import Snapshot

from sidecar import limits
from sidecar.core.refusals import TooManyStreams
from sidecar.delivery.store import Store


class ChangeFeed:
    """Created on the event loop; `Store.swap` may notify it from any thread."""

    def __init__(self, store: Store, max_streams: int = 1024) -> None:
        self._store = store
        self._max_streams = max_streams
        self._loop = asyncio.get_running_loop()
        self._wakeups: set[asyncio.Event] = set()
        self._closed = False
        self._unsubscribe = store.subscribe(self._on_swap)

    def close(self) -> None:
        """Ends every stream with OK, so that shutdown does not wait out its drain budget."""
        self._closed = True
        self._unsubscribe()
        self._wake_all()

    async def snapshots(self) -> AsyncGenerator[Snapshot, None]:
        """Yields the active snapshot, then every newer one (a slow reader skips to the
        latest). Raises TooManyStreams at the first step when ``max_streams`` are already
        open."""
        if len(self._wakeups) >= self._max_streams:
            limits.REFUSALS.count(limits.WATCH_STREAMS)
            raise TooManyStreams(
                f"{len(self._wakeups)} watch streams are open, the most this sidecar "
                "serves (--max-watch-streams)"
            )
        wakeup = asyncio.Event()
        self._wakeups.add(wakeup)
        reported: Snapshot | None = None
        try:
            while not self._closed:
                snap = self._store.current
                if snap is not None and snap is not reported:
                    yield snap
                    reported = snap
                await wakeup.wait()
                wakeup.clear()
        finally:
            self._wakeups.discard(wakeup)

    async def changes(self, watched: frozenset[str]) -> AsyncIterator[tuple[Snapshot, list[str]]]:
        """Yields (snapshot, changed flags): first the active snapshot, then each change
        that touches a watched flag (all flags when `watched` is empty)."""
        reported: Snapshot | None = None
        async with aclosing(self.snapshots()) as snapshots:
            async for snap in snapshots:
                changed = [f for f in snap.changed_flags(reported) if not watched or f in watched]
                if changed or reported is None:
                    yield snap, changed
                reported = snap

    def _on_swap(self, _previous: Snapshot | None, _current: Snapshot) -> None:
        self._loop.call_soon_threadsafe(self._wake_all)

    def _wake_all(self) -> None:
        for wakeup in self._wakeups:
            wakeup.set()
