"""Impressions: who saw which treatment, under which rule and snapshot version, in Split's
three modes. Shared by the sidecar (`sidecar.telemetry`) and the Python client's in-process
mode (`fader._inprocess`), so that a lookup made in either place makes the same impressions.

Lookups are recorded on the request path as plain tuples (no hashing, no locking, no
logging); `ImpressionModes.process_all` applies the mode later, a chunk of requests at a
time, off the request path:

- optimized: an impression is sent the first time its hash (key, flag, treatment, label,
  change number) is seen in an hour, through a bounded "observer" (`Observer`); every
  impression that had been seen before is counted per flag and hour instead.
- debug: every impression is sent, with the time it was last seen.
- none: nothing is sent; every impression is counted, and each (key, flag) is reported once
  per day as a unique key.

Flags with `impressionsDisabled` always follow none. `definition not found` makes no
impression at all (Split's SDKs skip it too).

The observer and the loop that applies the modes are C (`fader._modes`): they run once per
recorded lookup, on the loop that serves requests, and in Python cost more than a batched
lookup itself.

One deliberate difference from splitio-client (Python): its observer keeps the *first* time
a hash was seen, so after the first hour every repeat looks new and is sent again. Here, as
in Split's Java SDK, the observer stores the latest time, so "first per hour" holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import Any, NamedTuple

from fader import _modes
from fader._modes import Observer as Observer  # the observer is C too; its home is here
from fader.rules.result import Decision
from fader.snapshot.snapshot import Snapshot

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
# Split's SDKs keep 500,000 hashes (at most ~45 MB here); a sidecar shares its pod, so less
# by default.
DEFAULT_OBSERVER_SIZE = 100_000


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


# The C loops' callbacks: a key for mode none, and a snapshot's impressionsDisabled flags.
AddKey = Callable[[str, str, int], None]
DisabledIn = Callable[[Snapshot], frozenset[str]]
# One evaluation as the hot path leaves it: (key, bucketing key, flag, result).
Answer = tuple[str, str | None, str, Decision]
# One request's evaluations: (snapshot, time ms, lookups).
Pending = tuple[Snapshot, int, list[Answer]]


def hour_start(time_ms: int) -> int:
    return time_ms - time_ms % HOUR_MS


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class UniqueKeys:
    """Mode none: which keys saw each flag, each (key, flag) reported at most once per UTC day
    while the bounded observer remembers it (Split uses a bloom filter cleared every 24 h)."""

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


class Encoded(NamedTuple):
    """Impressions as wire bytes: `written` entries of a repeated fader.v1.Impression field,
    and how many impressions could not be encoded (a str that is not valid Unicode, an int
    out of its field's range), which are not among them."""

    entries: bytes
    written: int
    unencodable: int


class ImpressionModes:
    """Applies the configured mode to recorded lookups. The impressions to send come back
    from each call, as Impressions (`process_all`) or as wire bytes (`encode_all`); counts
    and unique keys accumulate until taken."""

    def __init__(self, mode: Mode, observer_size: int = DEFAULT_OBSERVER_SIZE) -> None:
        self.mode = mode
        self._observer = Observer(observer_size)
        self.unique_keys = UniqueKeys(observer_size)
        self.counts: dict[tuple[str, int], int] = {}
        self.deduplicated = 0
        self.emitted = 0
        self._disabled_snap: Snapshot | None = None
        self._disabled: frozenset[str] = frozenset()

    def process(self, snap: Snapshot, time_ms: int, lookups: list[Answer]) -> list[Impression]:
        return self.process_all(((snap, time_ms, lookups),))

    def process_all(self, requests: Iterable[Pending]) -> list[Impression]:
        """Applies the mode to recorded requests. It runs once per recorded evaluation, on
        the loop that serves requests, so the loop is C (`fader._modes`, the rules above,
        step for step): in Python it cost more than a batched lookup itself."""
        made: list[Impression] = []
        emitted, deduplicated = _modes.process_all(requests, *self._state(), Impression, made)
        self.emitted += emitted
        self.deduplicated += deduplicated
        return made

    def encode_all(self, requests: Iterable[Pending], field_number: int) -> Encoded:
        """`process_all`, with the impressions written as entries of the repeated
        fader.v1.Impression field `field_number`, byte for byte what encoding the
        Impressions `process_all` makes would give, and no Impression made. Why: the
        sidecar's upload only ever needs the bytes, and in debug mode (an impression per
        lookup) making, batching and freeing the objects cost more than the lookup."""
        entries, emitted, deduplicated, unencodable = _modes.encode_all(
            requests, *self._state(), field_number
        )
        self.emitted += emitted
        self.deduplicated += deduplicated
        return Encoded(entries, emitted, unencodable)

    def _state(self) -> tuple[str, Observer, dict[tuple[str, int], int], AddKey, DisabledIn]:
        """What both C loops take after the requests: the mode, and the state they change."""
        return self.mode, self._observer, self.counts, self.unique_keys.add, self._disabled_in

    def _disabled_in(self, snap: Snapshot) -> frozenset[str]:
        """The flags of `snap` with impressionsDisabled, found once per snapshot."""
        if snap is not self._disabled_snap:
            self._disabled_snap = snap
            self._disabled = frozenset(
                name for name, flag in snap.flags.items() if flag.impressions_disabled
            )
        return self._disabled

    def take_counts(self) -> list[tuple[str, int, int]]:
        """(flag, hour start, count) gathered since the last take, and forget them."""
        taken = [(flag, hour, count) for (flag, hour), count in self.counts.items()]
        self.counts = {}
        return taken


def add_messages(messages: Any, impressions: Iterable[Impression]) -> None:
    """Appends `impressions` to a repeated `fader.v1.Impression` field (an upload, a client's
    exposures batch). Fields are set one by one, defaults left unset: with upb that costs two
    thirds of `add(**fields)`, and an upload makes one message per impression."""
    add = messages.add
    for (
        key,
        bucketing_key,
        flag,
        treatment,
        label,
        change,
        time_ms,
        previous,
        version,
    ) in impressions:
        message = add()
        message.key = key
        message.flag = flag
        message.treatment = treatment
        if bucketing_key:
            message.bucketing_key = bucketing_key
        if label:
            message.label = label
        if change:
            message.change_number = change
        message.time_ms = time_ms
        if previous:
            message.previous_time_ms = previous
        if version:
            message.snapshot_version = version
