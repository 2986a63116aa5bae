"""WatchChanges and WatchSnapshots fan-out: wakes every open stream when the store swaps a
snapshot.

Each swap is diffed once, in the thread that swapped, never per stream: with hundreds of
streams open, diffing on the event loop for each of them (~7 ms for 2,000 flags) held the
loop for seconds at every swap, and most lookups on the sidecar then missed their deadline.
The feed keeps, for every flag name it has seen, the sequence number of the swap that last
changed it (removed flags included until every stream has heard of the removal). A stream
remembers only the sequence number it last reported: when woken it asks for the flags changed
since then, a question answered once per swap for all the streams at the same place. So a
slow reader coalesces several swaps into one message that still names every flag that
changed, memory stays bounded however many swaps it misses, and a stream that is not read
holds no snapshot. The number of open streams is bounded too (`--max-watch-streams`): each
one holds a coroutine and a wakeup for as long as it lasts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Hashable, Iterable
from contextlib import aclosing
from dataclasses import dataclass
from functools import partial
from typing import TypeVar, cast

from fader.snapshot.snapshot import Snapshot

from sidecar import limits
from sidecar.core.refusals import TooManyStreams
from sidecar.delivery.store import Store

Message = TypeVar("Message")
Value = TypeVar("Value")
_MISSING = object()
# Streams woken per turn of the event loop after a swap.
WAKE_BATCH = 4


@dataclass(frozen=True, slots=True)
class Change:
    """One WatchChanges message: the version served now and the flags changed since the
    stream last heard (every flag in the first message)."""

    version: int
    source: str
    flags: tuple[str, ...]


class ChangeFeed:
    """Created on the event loop; `Store.swap` may notify it from any thread (writers are
    serialised by the Applier, so swaps are recorded in the order they happened)."""

    def __init__(self, store: Store, max_streams: int = 1024) -> None:
        self._max_streams = max_streams
        self._loop = asyncio.get_running_loop()
        self._positions: dict[asyncio.Event, int] = {}  # stream -> swap it last reported
        self._closed = False
        self._latest = store.current
        self._seq = 0
        self._changed_at: dict[str, int] = dict.fromkeys(
            self._latest.flag_names() if self._latest is not None else (), 0
        )
        # for the current swap only: (place, watched) -> flags; anything streams share
        self._since: dict[tuple[int | None, frozenset[str]], tuple[str, ...]] = {}
        self._shared: dict[Hashable, object] = {}
        self._unsubscribe = store.subscribe(self._on_swap)

    def close(self) -> None:
        """Ends every stream with OK, so that shutdown does not wait out its drain budget."""
        self._closed = True
        self._unsubscribe()
        self._wake_all()

    async def changes(
        self, watched: frozenset[str], *, every_swap: bool = False
    ) -> AsyncGenerator[tuple[Snapshot, tuple[str, ...]], None]:
        """Yields (snapshot, changed flags): first the active snapshot with all its flags,
        then each change that touches a watched flag (all flags when `watched` is empty),
        or each newer snapshot with `every_swap`.

        Raises TooManyStreams at the first step when ``max_streams`` are already open. Holds
        no snapshot between messages: a caller that keeps the one it got keeps it alive.
        """
        async with aclosing(self._follow(watched, every_swap)) as follow:
            async for heard in follow:
                assert self._latest is not None
                yield self._latest, self._flags_since(heard, watched)

    async def updates(
        self, watched: frozenset[str], encode: Callable[[Change], Message]
    ) -> AsyncGenerator[Message, None]:
        """`changes` as messages made by `encode`, once per swap for all the streams at the
        same place watching the same flags (the streams share it). Holds no snapshot: all a
        stream that is not read holds is its last message."""
        async with aclosing(self._follow(watched, False)) as follow:
            async for heard in follow:
                yield self._message(encode, heard, watched)

    async def snapshots(self) -> AsyncGenerator[Snapshot, None]:
        """Yields the active snapshot, then every newer one (a slow reader skips to the
        latest). Raises TooManyStreams at the first step when ``max_streams`` are already
        open."""
        async with aclosing(self._follow(frozenset(), True)) as follow:
            async for _heard in follow:
                assert self._latest is not None
                yield self._latest

    async def _follow(
        self, watched: frozenset[str], every_swap: bool
    ) -> AsyncGenerator[int | None, None]:
        """One stream's place in the feed: yields, whenever it has something to hear, the
        swap it heard of last (None at first). `_latest` is the one to report, until the
        caller's next await."""
        wakeup = self._open()
        position: int | None = None
        try:
            while not self._closed:
                if self._latest is not None and position != self._seq:
                    heard, position = position, self._seq
                    self._positions[wakeup] = position
                    if every_swap or heard is None or self._flags_since(heard, watched):
                        yield heard
                await wakeup.wait()
                wakeup.clear()
        finally:
            del self._positions[wakeup]

    def _message(
        self, encode: Callable[[Change], Message], heard: int | None, watched: frozenset[str]
    ) -> Message:
        return self.shared((encode, heard, watched), lambda: encode(self._change(heard, watched)))

    def shared(self, key: Hashable, make: Callable[[], Value]) -> Value:
        """What `make()` returns, made once per swap for all the streams asking with the same
        `key` (forgotten at the next swap): what a swap means for a stream depends on where it
        was and what it watches, rarely on which stream it is."""
        found = self._shared.get(key, _MISSING)
        if found is _MISSING:
            found = self._shared[key] = make()
        return cast(Value, found)

    def shared_for(self, subject: object, key: Hashable, make: Callable[[], Value]) -> Value:
        """`shared` for what is made from `subject` (a snapshot, a message): keyed by its
        identity, and held with the result so that no other object takes its id meanwhile."""
        held, value = self.shared((id(subject), key), partial(_held, subject, make))
        return value if held is subject else make()

    def _change(self, heard: int | None, watched: frozenset[str]) -> Change:
        latest = self._latest
        assert latest is not None
        return Change(latest.version, latest.source, self._flags_since(heard, watched))

    def _open(self) -> asyncio.Event:
        if len(self._positions) >= self._max_streams:
            limits.REFUSALS.count(limits.WATCH_STREAMS)
            raise TooManyStreams(
                f"{len(self._positions)} watch streams are open, the most this sidecar "
                "serves (--max-watch-streams)"
            )
        wakeup = asyncio.Event()
        self._positions[wakeup] = self._seq
        return wakeup

    def _flags_since(self, heard: int | None, watched: frozenset[str]) -> tuple[str, ...]:
        """Flags changed after swap ``heard`` (all the active flags for None) among the
        watched ones, sorted; worked out once per swap for each place and set of flags."""
        key = (heard, watched)
        flags = self._since.get(key)
        if flags is None:
            if watched:
                every = self._flags_since(heard, frozenset())
                flags = tuple(name for name in every if name in watched)
            elif heard is None:
                assert self._latest is not None
                flags = self._latest.flag_names()
            else:
                changed_at = self._changed_at
                flags = tuple(sorted(name for name, seq in changed_at.items() if seq > heard))
            self._since[key] = flags
        return flags

    def _on_swap(self, previous: Snapshot | None, current: Snapshot) -> None:
        """In the swapping thread: the one diff of this swap, then the loop records it."""
        changed = current.changed_flags(previous)
        self._loop.call_soon_threadsafe(self._record, current, changed)

    def _record(self, current: Snapshot, changed: Iterable[str]) -> None:
        self._seq += 1
        for name in changed:
            self._changed_at[name] = self._seq
        self._latest = current
        self._since.clear()
        self._shared.clear()
        self._forget_removed(current)
        self._wake_all()

    def _forget_removed(self, current: Snapshot) -> None:
        """Drop removed flags every open stream has heard of (all, with no stream open)."""
        if len(self._changed_at) == current.flag_count:
            return
        heard = min(self._positions.values(), default=self._seq)
        flags = current.flags
        for name in [n for n, seq in self._changed_at.items() if seq <= heard and n not in flags]:
            del self._changed_at[name]

    def _wake_all(self) -> None:
        self._wake(list(self._positions), 0)

    def _wake(self, wakeups: list[asyncio.Event], start: int) -> None:
        """Wake streams a few at a time, one batch per turn of the loop: lookups that arrive
        meanwhile are served between batches instead of after every stream has written."""
        end = start + WAKE_BATCH
        for wakeup in wakeups[start:end]:
            wakeup.set()
        if end < len(wakeups):
            self._loop.call_soon(self._wake, wakeups, end)


def _held(subject: object, make: Callable[[], Value]) -> tuple[object, Value]:
    return subject, make()
