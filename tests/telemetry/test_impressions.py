"""Split's impression modes: hour boundaries, the LRU observer, counts, unique keys,
impressionsDisabled, and what the hot-path recorder keeps."""

from __future__ import annotations

import random
from collections import Counter

from fader.rules.result import NOT_FOUND, Decision
from fader.snapshot.loader import build_snapshot
from fader.snapshot.snapshot import Snapshot

from sidecar.telemetry.impressions import (
    DAY_MS,
    HOUR_MS,
    Answer,
    Impression,
    ImpressionModes,
    Mode,
    Observer,
    Recorder,
    hour_start,
)
from tests.fader.rules.builders import flag, snapshot_doc

T0 = 1_700_000_000_000 // DAY_MS * DAY_MS + 3 * HOUR_MS  # 03:00 UTC, start of an hour
ON = Decision("on", "rule", None, 7)


def snapshot() -> Snapshot:
    return build_snapshot(
        snapshot_doc(flag("f"), flag("g"), flag("quiet", impressionsDisabled=True), version=3)
    )


class Sink:
    def __init__(self, mode: Mode, observer_size: int = 100) -> None:
        self.sent: list[Impression] = []
        self.modes = ImpressionModes(mode, observer_size)
        self.snap = snapshot()

    def lookup(self, key: str, at: int, flag: str = "f", result: Decision = ON) -> None:
        self.sent += self.modes.process(self.snap, at, [(key, None, flag, result)])


def test_hour_start() -> None:
    assert hour_start(T0) == T0
    assert hour_start(T0 + HOUR_MS - 1) == T0
    assert hour_start(T0 + HOUR_MS) == T0 + HOUR_MS


def test_optimized_sends_the_first_per_hour_and_counts_the_repeats() -> None:
    sink = Sink(Mode.OPTIMIZED)
    sink.lookup("u1", T0 + 10)
    sink.lookup("u1", T0 + 20)
    sink.lookup("u1", T0 + HOUR_MS - 1)
    sink.lookup("u1", T0 + HOUR_MS)  # a new hour: sent again, and counted (it had a pt)
    sink.lookup("u1", T0 + HOUR_MS + 5)
    assert [(i.time_ms, i.previous_time_ms) for i in sink.sent] == [
        (T0 + 10, None),
        (T0 + HOUR_MS, T0 + HOUR_MS - 1),
    ]
    assert sink.modes.take_counts() == [("f", T0, 2), ("f", T0 + HOUR_MS, 2)]
    assert sink.modes.take_counts() == []
    assert sink.modes.deduplicated == 3


def test_optimized_hash_covers_treatment_label_and_change_number() -> None:
    sink = Sink(Mode.OPTIMIZED)
    sink.lookup("u1", T0)
    sink.lookup("u1", T0 + 1, result=Decision("off", "rule", None, 7))
    sink.lookup("u1", T0 + 2, result=Decision("on", "default rule", None, 7))
    sink.lookup("u1", T0 + 3, result=Decision("on", "rule", None, 8))
    sink.lookup("u2", T0 + 4)
    sink.lookup("u1", T0 + 5, flag="g")
    assert len(sink.sent) == 6
    assert sink.modes.take_counts() == []


def test_impression_fields() -> None:
    sink = Sink(Mode.DEBUG)
    sink.sent += sink.modes.process(sink.snap, T0 + 1, [("u1", "acct-9", "f", ON)])
    assert sink.sent == [Impression("u1", "acct-9", "f", "on", "rule", 7, T0 + 1, None, 3)]


def test_the_observer_remembers_at_least_its_capacity_and_forgets_beyond_twice() -> None:
    capacity = 50
    observer = Observer(capacity)
    assert observer.test_and_set(-1, 1) is None
    for at, digest in enumerate(range(capacity - 1), start=2):  # fewer than capacity since
        assert observer.test_and_set(digest, at) is None
    assert observer.test_and_set(-1, 100) == 1  # remembered, and seen again: kept longer
    for digest in range(1_000, 1_000 + 2 * capacity):  # 2 x capacity others since
        observer.test_and_set(digest, 200)
    assert observer.test_and_set(-1, 300) is None  # forgotten
    assert len(observer) <= 2 * capacity


def test_optimized_lru_like_eviction() -> None:
    sink = Sink(Mode.OPTIMIZED, observer_size=2)
    for key in ("a", "b", "a", "c", "b", "a"):
        sink.lookup(key, T0 + len(sink.sent))
    # a, b sent; a seen; c sent; b, seen 2 others ago (the capacity), forgotten and sent
    # again; a, seen again after b, still remembered (a strict LRU of 2 would forget it)
    assert [i.key for i in sink.sent] == ["a", "b", "c", "b"]


def test_observer_returns_previous_time_and_keeps_the_latest() -> None:
    observer = Observer(10)
    assert observer.test_and_set(1, 100) is None
    assert observer.test_and_set(1, 200) == 100
    assert observer.test_and_set(1, 150) == 150  # out of order: never after the impression
    assert observer.test_and_set(1, 300) == 200
    assert len(observer) == 1


def test_debug_sends_everything_with_previous_time_and_counts_nothing() -> None:
    sink = Sink(Mode.DEBUG)
    sink.lookup("u1", T0)
    sink.lookup("u1", T0 + 1)
    sink.lookup("u1", T0 + 2)
    assert [i.previous_time_ms for i in sink.sent] == [None, T0, T0 + 1]
    assert sink.modes.take_counts() == []
    assert sink.modes.unique_keys.take() == []


def test_none_counts_everything_and_tracks_unique_keys_once_a_day() -> None:
    sink = Sink(Mode.NONE)
    for key, at in (("u1", T0), ("u1", T0 + 1), ("u2", T0 + 2), ("u1", T0 + HOUR_MS)):
        sink.lookup(key, at)
    sink.lookup("u1", T0 + 3, flag="g")
    assert sink.sent == []
    assert sorted(sink.modes.take_counts()) == [("f", T0, 3), ("f", T0 + HOUR_MS, 1), ("g", T0, 1)]
    assert sorted(sink.modes.unique_keys.take()) == [("f", ["u1", "u2"]), ("g", ["u1"])]
    sink.lookup("u1", T0 + 2 * HOUR_MS)  # same day: already reported
    assert sink.modes.unique_keys.take() == []
    next_day = (T0 // DAY_MS + 1) * DAY_MS
    sink.lookup("u1", next_day)
    assert sink.modes.unique_keys.take() == [("f", ["u1"])]


def test_impressions_disabled_flags_follow_none_in_every_mode() -> None:
    for mode in (Mode.OPTIMIZED, Mode.DEBUG):
        sink = Sink(mode)
        sink.lookup("u1", T0, flag="quiet")
        sink.lookup("u1", T0 + 1, flag="quiet")
        sink.lookup("u1", T0 + 2)
        assert [i.flag for i in sink.sent] == ["f"]
        assert sink.modes.take_counts() == [("quiet", T0, 2)]
        assert sink.modes.unique_keys.take() == [("quiet", ["u1"])]


def test_definition_not_found_makes_no_impression_in_any_mode() -> None:
    for mode in Mode:
        sink = Sink(mode)
        sink.lookup("u1", T0, flag="missing", result=NOT_FOUND)
        assert (sink.sent, sink.modes.take_counts(), sink.modes.unique_keys.take()) == ([], [], [])


def test_recorder_keeps_requests_whole_and_counts_overflow() -> None:
    snap = snapshot()
    recorder = Recorder(capacity=3)
    recorder.record(snap, T0, [("u0", None, "f", ON), ("u1", None, "f", ON)])
    recorder.record(snap, T0 + 1, [("u2", None, "f", ON), ("u3", None, "f", ON)])  # would be 4
    recorder.record(snap, T0 + 2, [("u4", None, "f", ON)])
    recorder.record(snap, T0 + 3, [])  # nothing to record: no entry
    assert (recorder.size, recorder.overflow) == (3, 2)
    assert [[lookup[0] for lookup in item[2]] for item in recorder.take(None)] == [
        ["u0", "u1"],
        ["u4"],
    ]
    assert (recorder.size, recorder.overflow, recorder.take(None)) == (0, 2, [])


def test_recorder_shares_an_entry_per_snapshot_and_millisecond_without_changing_requests() -> None:
    """Requests of the same millisecond and snapshot share one entry, in order, in a list of
    the recorder's own: the requests' lists stay as they were, and an entry already taken by
    the pipeline is never added to."""
    snap, other = snapshot(), snapshot()
    recorder = Recorder(1_000)
    requests: list[list[Answer]] = [[(f"u{i}", None, "f", ON)] for i in range(6)]
    recorder.record(snap, T0, requests[0])
    recorder.record(snap, T0, requests[1])
    recorder.record(snap, T0, requests[2])
    recorder.record(other, T0, requests[3])  # another snapshot: an entry of its own
    [taken] = recorder.take(1)
    recorder.record(other, T0 + 1, requests[4])
    recorder.record(other, T0 + 1, requests[5])
    pending = recorder.take(None)
    assert [[lookup[0] for lookup in lookups] for _, _, lookups in (taken, *pending)] == [
        ["u0", "u1", "u2"],
        ["u3"],
        ["u4", "u5"],
    ]
    assert [len(request) for request in requests] == [1] * 6
    assert pending[0][0] is other and recorder.size == 0
    recorder.record(other, T0 + 1, requests[0])  # the shared entry is gone: a new one
    assert recorder.take(None) == [(other, T0 + 1, requests[0])]
    assert [len(request) for request in requests] == [1] * 6


def reference(
    mode: Mode, requests: list[tuple[int, list[tuple[str, str | None, str, Decision]]]]
) -> tuple[list[Impression], dict[tuple[str, int], int], list[tuple[str, list[str]]]]:
    """Split's rules one lookup at a time, with an observer that never forgets."""
    seen: dict[tuple[object, ...], int] = {}
    days: dict[tuple[str, str], int] = {}
    sent: list[Impression] = []
    counts = Counter[tuple[str, int]]()
    unique: dict[str, dict[str, None]] = {}
    for at, lookups in requests:
        hour = hour_start(at)
        for key, bucketing, name, result in lookups:
            if result.label == "definition not found":
                continue
            if mode is Mode.NONE or name == "quiet":
                counts[(name, hour)] += 1
                if days.get((key, name)) != at // DAY_MS:
                    unique.setdefault(name, {})[key] = None
                days[(key, name)] = at // DAY_MS
                continue
            digest = (key, name, result.treatment, result.label, result.change_number or 0)
            previous = seen.get(digest)
            seen[digest] = max(at, previous or at)
            if previous is not None:
                previous = min(previous, at)
                if mode is Mode.OPTIMIZED:
                    counts[(name, hour)] += 1
                    if previous >= hour:
                        continue
            change = result.change_number or 0
            sent.append(
                Impression(key, bucketing, name, result.treatment, result.label, change, at,
                           previous, 3)
            )  # fmt: skip
    return sent, dict(counts), [(name, list(keys)) for name, keys in unique.items()]


def test_bulk_processing_equals_one_lookup_at_a_time() -> None:
    """Random chunks (repeats inside a chunk, unknown and impressionsDisabled flags, times out
    of order, hours crossed) give what the rules applied one lookup at a time give."""
    pick = random.Random(7)
    results = [ON, Decision("off", "rule", None, 7), NOT_FOUND, Decision("on", None, None, None)]
    for _ in range(200):
        mode = pick.choice(list(Mode))
        requests = [
            (
                T0 + pick.choice((0, 5, 3, HOUR_MS - 1, HOUR_MS, 2 * DAY_MS)),
                [
                    (f"u{pick.randrange(6)}", pick.choice((None, "b")),
                     pick.choice(("f", "g", "quiet", "missing")), pick.choice(results))
                    for _ in range(pick.randrange(1, 8))
                ],
            )
            for _ in range(pick.randrange(1, 12))
        ]  # fmt: skip
        sink = Sink(mode, observer_size=1_000)
        chunks = pick.randrange(1, 4)
        for start in range(chunks):
            sink.sent += sink.modes.process_all(
                (sink.snap, at, lookups) for at, lookups in requests[start::chunks]
            )
        expected_sent, expected_counts, expected_unique = reference(
            mode, [r for start in range(chunks) for r in requests[start::chunks]]
        )
        assert sink.sent == expected_sent
        assert dict(((f, h), c) for f, h, c in sink.modes.take_counts()) == expected_counts
        assert sorted(sink.modes.unique_keys.take()) == sorted(expected_unique)
