"""Change numbers for Split's SDKs: every snapshot the sidecar applies becomes one step of a
change log, and `splitChanges`, `segmentChanges` and `memberships` answer from it.

Why a log of its own: Split's SDKs poll with `since=<the last till they saw>` and apply the
answer as a diff. A flag left out of an answer is kept, not removed; so the sidecar must say
what changed after any change number it handed out, send a removed flag once more as
`ARCHIVED` (a tombstone), and list a segment's removed keys in `removed`.

Why not the snapshot version as the change number: a forced rollback moves the version
backwards, and a restarted sidecar would hand out numbers an SDK has already seen. Each
applied snapshot gets `max(previous + 1, now in ms)` instead (Split's own change numbers are
millisecond timestamps), which only moves forward, across restarts too while the clock does.
An SDK that asks with a number this process never handed out (from before a restart, or
from the future) is sent every definition and every tombstone it knows, and ends up
current.

Definitions are served with the fields Split's SDKs require filled in the way Fader's engine
reads their absence (`served_flag`), and each flag carries the change number the sidecar's
own impressions carry, so both kinds of impression name the same definition.

Threads: the `Store.subscribe` listener only queues the snapshot; one worker thread decodes
its document (`Snapshot.document`), diffs it with the previous one and publishes an
immutable `Changes` with one reference write. HTTP threads read `ChangeLog.current` without
locks. Bursts of swaps collapse to the newest: no SDK can have seen the ones in between.
"""

from __future__ import annotations

import gzip
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from fader.snapshot.snapshot import Snapshot

from sidecar.delivery.store import Store

log = logging.getLogger(__name__)

# Tombstones kept for removed flags and rule-based segments; the oldest go first. An SDK
# further behind than the evicted ones keeps those flags until it restarts.
MAX_TOMBSTONES = 10_000
# A segment's change log holds at least this many keys, or as many as the segment has; older
# changes are dropped and a client behind them is sent the whole segment again.
MIN_LOG_KEYS = 10_000
GZIP_LEVEL = 6
# Served JSON starts with the status, so a tombstone is the same bytes with another prefix.
ACTIVE = b'{"status":"ACTIVE"'
ARCHIVED = b'{"status":"ARCHIVED"'
DEFAULT_TRAFFIC_TYPE = "user"
SPEC_1_1 = "1.1"
SPEC_1_2 = "1.2"  # the 1.1 shape; Split's JS SDK falls back to it from 1.3 on a 400
SPEC_1_3 = "1.3"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class Definition(NamedTuple):
    """A flag or rule-based segment as SDKs are served it."""

    cn: int  # change number of its last change (a tombstone: of its removal)
    body: bytes  # JSON, starting with `{"status":"ACTIVE"`
    active: bool
    sets: frozenset[str]

    def served(self) -> bytes:
        return self.body if self.active else self.archived()

    def archived(self) -> bytes:
        return ARCHIVED + self.body[len(ACTIVE) :]


# One step of a segment's log: (change number, keys added, keys removed).
SegmentStep = tuple[int, tuple[str, ...], tuple[str, ...]]


class SegmentEntry(NamedTuple):
    cn: int  # change number of its last change
    horizon: int  # a `since` below this (but -1) predates the log: the whole list is sent
    steps: tuple[SegmentStep, ...]


class Page:
    """One encoded answer, gzipped on first demand (and then kept with it)."""

    __slots__ = ("_gzipped", "body")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self._gzipped: bytes | None = None

    def gzipped(self) -> bytes:
        if self._gzipped is None:
            self._gzipped = gzip.compress(self.body, GZIP_LEVEL, mtime=0)
        return self._gzipped


@dataclass(frozen=True)
class Changes:
    """Everything the Split SDK API serves, as of change number `cn`; never modified."""

    cn: int
    version: int
    first_cn: int  # the first change number this process handed out
    snapshot: Snapshot
    flags: Mapping[str, Definition]
    rule_based: Mapping[str, Definition]
    segments: Mapping[str, SegmentEntry]
    tombstones: int
    _full_pages: dict[tuple[str, frozenset[str] | None], Page] = field(
        default_factory=dict, compare=False, repr=False
    )

    # -- splitChanges --------------------------------------------------------------------

    def split_changes(
        self, spec: str, since: int, rb_since: int, sets: frozenset[str] | None
    ) -> Page:
        """The answer to `splitChanges?s=spec&since=&rbSince=&sets=`."""
        if since == -1 and rb_since == -1:
            key = (spec, sets)
            page = self._full_pages.get(key)
            if page is None:  # the big one every SDK asks for at start: built once
                page = self._full_pages[key] = self._split_page(spec, since, rb_since, sets)
            return page
        return self._split_page(spec, since, rb_since, sets)

    def _split_page(
        self, spec: str, since: int, rb_since: int, sets: frozenset[str] | None
    ) -> Page:
        flags, till = self._changed(self.flags, since, sets)
        if spec != SPEC_1_3:
            return Page(b'{"splits":[%s],"since":%d,"till":%d}' % (flags, since, till))
        rule_based, rb_till = self._changed(self.rule_based, rb_since, None)
        return Page(
            b'{"ff":{"d":[%s],"s":%d,"t":%d},"rbs":{"d":[%s],"s":%d,"t":%d}}'
            % (flags, since, till, rule_based, rb_since, rb_till)
        )

    def _changed(
        self, table: Mapping[str, Definition], since: int, sets: frozenset[str] | None
    ) -> tuple[bytes, int]:
        """The definitions changed after `since`, joined, and the `till` to answer with.

        `since == -1`: every active definition (no tombstones: the SDK holds nothing).
        Up to date: nothing, with till == since, which ends the SDK's fetch loop. Otherwise
        everything changed after `since`; with a flag-set filter, a changed flag outside
        the sets goes out as ARCHIVED, since the SDK may hold it from before it moved.
        """
        if since == self.cn:
            return b"", since
        parts: list[bytes] = []
        if since == -1:
            for item in table.values():
                if item.active and (sets is None or not sets.isdisjoint(item.sets)):
                    parts.append(item.body)
            return b",".join(parts), self.cn
        unknown = since > self.cn  # never handed out here: everything, tombstones too
        for item in table.values():
            if item.cn > since or unknown:
                wanted = item.active and (sets is None or not sets.isdisjoint(item.sets))
                parts.append(item.body if wanted else item.archived())
        return b",".join(parts), self.cn

    # -- segmentChanges ------------------------------------------------------------------

    def segment_changes(self, name: str, since: int) -> Page:
        """The answer to `segmentChanges/{name}?since=`. A segment the sidecar never had is
        an empty one, as the engine reads it (Split's proxy would answer 404, and an SDK
        would then fail to sync a segment Fader evaluates as empty)."""
        members = self.snapshot.segments.get(name, {})
        entry = self.segments.get(name) or SegmentEntry(self.first_cn, self.first_cn, ())
        added: Iterable[str]
        removed: Iterable[str] = ()
        till = entry.cn
        if since == -1:
            added = members
        elif entry.cn <= since <= self.cn:
            added, till = (), since
        elif entry.horizon <= since < entry.cn:
            added, removed = _net(entry.steps, since)
        else:  # older than the log, or a number this process never handed out
            added = members
            removed = [key for _, _, gone in entry.steps for key in gone if key not in members]
        body = {
            "name": name,
            "added": list(added),
            "removed": list(removed),
            "since": since,
            "till": till,
        }
        return Page(_dumps(body))

    # -- client-side SDKs ----------------------------------------------------------------

    def segments_of(self, key: str) -> list[str]:
        return sorted(name for name, members in self.snapshot.segments.items() if key in members)

    def memberships(self, key: str) -> Page:
        names = [{"n": name} for name in self.segments_of(key)]
        return Page(_dumps({"ms": {"cn": self.cn, "k": names}, "ls": {"cn": self.cn, "k": []}}))

    def my_segments(self, key: str) -> Page:
        names = [{"id": name, "name": name} for name in self.segments_of(key)]
        return Page(_dumps({"mySegments": names}))


def _net(steps: Iterable[SegmentStep], since: int) -> tuple[list[str], list[str]]:
    """Keys added and removed after `since`, the later step winning for each key."""
    state: dict[str, bool] = {}
    for cn, added, removed in steps:
        if cn > since:
            state.update(dict.fromkeys(added, True))
            state.update(dict.fromkeys(removed, False))
    return [k for k, v in state.items() if v], [k for k, v in state.items() if not v]


# -- building one step ---------------------------------------------------------------------


def served_flag(raw: Mapping[str, Any], change_number: int) -> dict[str, Any]:
    """A flag as SDKs are served it: the fields Split's SDKs require, filled the way Fader's
    engine reads their absence (Python's `from_raw` needs killed, status, trafficTypeName,
    changeNumber and each matcher's negate; Go reads a missing trafficAllocation as 0)."""
    served: dict[str, Any] = {"status": "ACTIVE"}
    served.update(raw)
    served["status"] = "ACTIVE"
    served["changeNumber"] = change_number
    served["killed"] = bool(raw.get("killed", False))
    served.setdefault("trafficTypeName", DEFAULT_TRAFFIC_TYPE)
    if served.get("trafficAllocation") is None:
        served["trafficAllocation"] = 100
    if served.get("trafficAllocationSeed") is None:
        served["trafficAllocationSeed"] = 0
    served["conditions"] = _served_conditions(raw.get("conditions"))
    return served


def served_rule_based(raw: Mapping[str, Any], change_number: int) -> dict[str, Any]:
    served: dict[str, Any] = {"status": "ACTIVE"}
    served.update(raw)
    served["status"] = "ACTIVE"
    served.setdefault("changeNumber", change_number)
    served.setdefault("trafficTypeName", DEFAULT_TRAFFIC_TYPE)
    excluded = dict(raw.get("excluded") or {})
    excluded["keys"] = excluded.get("keys") or []
    excluded["segments"] = excluded.get("segments") or []
    served["excluded"] = excluded
    served["conditions"] = _served_conditions(raw.get("conditions"))
    return served


def _served_conditions(conditions: Any) -> list[Any]:
    served = []
    for condition in conditions or ():
        group = dict(condition["matcherGroup"])
        group["matchers"] = [
            {"negate": False, **matcher} if matcher.get("negate") is None else matcher
            for matcher in group["matchers"]
        ]
        served.append({**condition, "matcherGroup": group})
    return served


def _definition(
    body: bytes, sets: frozenset[str], cn: int, before: Definition | None
) -> Definition:
    if before is not None and before.active and before.body == body:
        return before
    return Definition(cn, body, True, sets)


def _with_tombstones(
    current: dict[str, Definition], before: Mapping[str, Definition], cn: int
) -> dict[str, Definition]:
    """`current` plus a tombstone for each definition of `before` it no longer has."""
    for name, old in before.items():
        if name not in current:
            current[name] = old if not old.active else Definition(cn, old.body, False, old.sets)
    return current


def _evict(tables: tuple[dict[str, Definition], ...], limit: int) -> int:
    """Drops the oldest tombstones beyond `limit`; returns how many are left."""
    dead = sorted(
        (item.cn, index, name)
        for index, table in enumerate(tables)
        for name, item in table.items()
        if not item.active
    )
    for _, index, name in dead[: max(0, len(dead) - limit)]:
        del tables[index][name]
    return min(len(dead), limit)


def _segment_entries(before: Changes | None, snap: Snapshot, cn: int) -> dict[str, SegmentEntry]:
    """Each segment's log after `snap`: a step for each segment whose keys changed.

    The key comparisons are Python loops on purpose: a one-call set difference over a
    million keys would hold the GIL for its whole length and stall the lookups."""
    if before is None:
        return {name: SegmentEntry(cn, cn, ()) for name in snap.segments}
    old_segments = before.snapshot.segments
    entries = dict(before.segments)
    for name in set(old_segments) | set(snap.segments):
        old, new = old_segments.get(name, {}), snap.segments.get(name, {})
        added = tuple([key for key in new if key not in old])
        removed = tuple([key for key in old if key not in new])
        entry = entries.get(name) or SegmentEntry(before.first_cn, before.first_cn, ())
        if added or removed:
            entries[name] = _trimmed(entry, (cn, added, removed), len(new))
        else:
            entries[name] = entry
    return entries


def _trimmed(entry: SegmentEntry, step: SegmentStep, size: int) -> SegmentEntry:
    steps = [*entry.steps, step]
    budget = max(MIN_LOG_KEYS, size)
    logged = sum(len(a) + len(r) for _, a, r in steps)
    horizon = entry.horizon
    while len(steps) > 1 and logged > budget:
        dropped = steps.pop(0)
        logged -= len(dropped[1]) + len(dropped[2])
        horizon = dropped[0]
    return SegmentEntry(step[0], horizon, tuple(steps))


def next_changes(
    before: Changes | None, snap: Snapshot, cn: int, max_tombstones: int = MAX_TOMBSTONES
) -> Changes:
    """The step that `snap` makes after `before`, at change number `cn`."""
    if snap.document is None:
        raise ValueError(
            f"snapshot version {snap.version} was built without its document, which the "
            "Split SDK API serves"
        )
    document = snap.document.decode()
    old_flags = before.flags if before is not None else {}
    old_rbs = before.rule_based if before is not None else {}
    flags: dict[str, Definition] = {}
    compiled = snap.flags
    for raw in document.flags:
        name = raw.get("name")
        if name in compiled:  # active ones only: the engine's view of the document
            flag = compiled[name]
            body = _dumps(served_flag(raw, flag.change_number))
            flags[name] = _definition(body, flag.sets, cn, old_flags.get(name))
    rule_based: dict[str, Definition] = {}
    for raw in document.rule_based_segments:
        if raw.get("status", "ACTIVE") == "ACTIVE":
            body = _dumps(served_rule_based(raw, document.version))
            rule_based[raw["name"]] = _definition(body, frozenset(), cn, old_rbs.get(raw["name"]))
    _with_tombstones(flags, old_flags, cn)
    _with_tombstones(rule_based, old_rbs, cn)
    tombstones = _evict((flags, rule_based), max_tombstones)
    return Changes(
        cn=cn,
        version=snap.version,
        first_cn=before.first_cn if before is not None else cn,
        snapshot=snap,
        flags=flags,
        rule_based=rule_based,
        segments=_segment_entries(before, snap, cn),
        tombstones=tombstones,
    )


# -- the worker ----------------------------------------------------------------------------


class ChangeLog:
    """Follows the store and publishes one `Changes` per applied snapshot in `current`."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], int] = now_ms,
        max_tombstones: int = MAX_TOMBSTONES,
    ) -> None:
        self.current: Changes | None = None
        self.failures = 0
        self._store = store
        self._clock = clock
        self._max_tombstones = max_tombstones
        self._queue: queue.SimpleQueue[Snapshot | None] = queue.SimpleQueue()
        self._published = threading.Condition()
        self._unsubscribe: Callable[[], None] | None = None
        self._thread = threading.Thread(target=self._run, name="fader-split-changes", daemon=True)

    def start(self) -> None:
        self._unsubscribe = self._store.subscribe(lambda _old, new: self._queue.put(new))
        if self._store.current is not None:
            self._queue.put(self._store.current)
        self._thread.start()

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def wait_for(self, version: int, timeout: float) -> bool:
        """True once the snapshot of `version` is published (for tests and start-up)."""
        with self._published:
            return self._published.wait_for(
                lambda: self.current is not None and self.current.version == version, timeout
            )

    def _run(self) -> None:
        while True:
            taken = [self._queue.get()]
            while not self._queue.empty():  # a burst: only the newest matters
                taken.append(self._queue.get())
            if any(snap is None for snap in taken):
                return
            snap = taken[-1]
            del taken
            if snap is not None and (self.current is None or snap is not self.current.snapshot):
                self._publish(snap)

    def _publish(self, snap: Snapshot) -> None:
        before = self.current
        cn = max(self._clock(), before.cn + 1 if before is not None else 0)
        try:
            changes = next_changes(before, snap, cn, self._max_tombstones)
        except Exception:  # a bug must not stop the log: SDKs stay on the last good step
            self.failures += 1
            log.exception(
                "split api: cannot serve snapshot version %d; still serving version %s",
                snap.version,
                before.version if before is not None else "none",
            )
            return
        with self._published:
            self.current = changes
            self._published.notify_all()
        log.info(
            "split api: snapshot version %d is change number %d (%d flags, %d tombstones)",
            snap.version,
            cn,
            snap.flag_count,
            changes.tombstones,
        )
