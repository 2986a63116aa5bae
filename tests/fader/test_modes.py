"""fader._modes (C) against the Python loop it replaced: random requests in all three modes
give the same impressions, counts, unique keys, observer state and counters; wrong types
raise TypeError and never crash; nothing the requests hold is leaked or freed early."""

from __future__ import annotations

import contextlib
import gc
import random
import sys
from collections.abc import Iterable
from typing import Any

import pytest
from fader import _modes
from fader.impressions import HOUR_MS, Answer, Impression, ImpressionModes, Mode, Pending
from fader.rules.result import LABEL_NOT_FOUND, NOT_FOUND, Decision
from fader.snapshot.loader import build_snapshot
from fader.snapshot.snapshot import Snapshot

from tests.fader.rules.builders import flag, snapshot_doc

DAY_MS = 24 * HOUR_MS
T0 = 1_700_000_000_000 // DAY_MS * DAY_MS + 3 * HOUR_MS  # 03:00 UTC, start of an hour


def oracle_process_all(modes: ImpressionModes, requests: Iterable[Pending]) -> None:
    """`ImpressionModes.process_all` as it was in Python before fader._modes (8ac0782), on
    the same state: the rules the C loop must follow step for step."""
    observer = modes._observer
    counts, counts_get = modes.counts, modes.counts.get
    made: list[Impression] = []
    keep, add_key = made.append, modes.unique_keys.add
    optimized, none = modes.mode is Mode.OPTIMIZED, modes.mode is Mode.NONE
    emitted = deduplicated = 0
    young, old, capacity = observer.young, observer.old, observer.capacity
    for snap, time_ms, lookups in requests:
        version, disabled = snap.version, modes._disabled_in(snap)
        hour = time_ms - time_ms % HOUR_MS
        for key, bucketing_key, name, result in lookups:
            treatment, label, _, change = result
            if label == LABEL_NOT_FOUND:
                continue
            if none or (disabled and name in disabled):
                bucket = (name, hour)
                counts[bucket] = counts_get(bucket, 0) + 1
                add_key(name, key, time_ms)
                continue
            change = change or 0
            digest = hash((key, name, treatment, label, change))
            previous = young.get(digest)
            if previous is None:
                previous = old.get(digest)
            if previous is None or time_ms > previous:
                young[digest] = time_ms
            elif digest not in young:
                young[digest] = previous
            if len(young) >= capacity:
                observer.old, observer.young = young, {}
                young, old = observer.young, observer.old
            if previous is not None:
                if previous > time_ms:
                    previous = time_ms
                if optimized:
                    bucket = (name, hour)
                    counts[bucket] = counts_get(bucket, 0) + 1
                    if previous >= hour:
                        deduplicated += 1
                        continue
            emitted += 1
            imp = (key, bucketing_key, name, treatment, label, change, time_ms, previous, version)
            keep(tuple.__new__(Impression, imp))
    if made:
        modes._emit(made)
    modes.emitted += emitted
    modes.deduplicated += deduplicated


def snapshots() -> list[Snapshot]:
    return [
        build_snapshot(
            snapshot_doc(flag("f"), flag("g"), flag("quiet", impressionsDisabled=True), version=3)
        ),
        build_snapshot(snapshot_doc(flag("f"), flag("g", impressionsDisabled=True), version=4)),
    ]


RESULTS = [
    Decision("on", "rule", None, 7),
    Decision("off", "rule", None, 7),
    Decision("on", "default rule", "{}", 8),
    Decision("on", None, None, None),
    Decision("off", "killed", None, 0),
    NOT_FOUND,
]


def random_requests(pick: random.Random, snaps: list[Snapshot]) -> list[Pending]:
    """Repeats (few keys), both snapshots, disabled and unknown flags, times out of order
    and across hours and days, empty lookups, fresh string objects for equal keys."""
    times = (0, 1, 5, 3, HOUR_MS - 1, HOUR_MS, HOUR_MS + 2, DAY_MS, 2 * DAY_MS - 1, -7)
    requests: list[Pending] = []
    for _ in range(pick.randrange(1, 15)):
        lookups = [
            (
                "".join(("u", str(pick.randrange(8)))),  # equal keys, distinct objects
                pick.choice((None, "b", "")),
                pick.choice(("f", "g", "quiet", "missing")),
                pick.choice(RESULTS),
            )
            for _ in range(pick.randrange(0, 9))
        ]
        requests.append((pick.choice(snaps), T0 + pick.choice(times), lookups))
    return requests


def state(modes: ImpressionModes, sent: list[Impression]) -> dict[str, Any]:
    observer = modes._observer
    return {
        "sent": [(type(i), tuple(i)) for i in sent],
        "counts": list(modes.counts.items()),  # insertion order too
        "young": list(observer.young.items()),
        "old": list(observer.old.items()),
        "unique": modes.unique_keys.take(),
        "unique_size": modes.unique_keys.size,
        "emitted": modes.emitted,
        "deduplicated": modes.deduplicated,
    }


def twins(
    mode: Mode, observer_size: int
) -> tuple[ImpressionModes, list[Impression], ImpressionModes, list[Impression]]:
    native_sent: list[Impression] = []
    oracle_sent: list[Impression] = []
    return (
        ImpressionModes(mode, native_sent.extend, observer_size),
        native_sent,
        ImpressionModes(mode, oracle_sent.extend, observer_size),
        oracle_sent,
    )


@pytest.mark.parametrize("seed", range(6))
def test_the_c_loop_matches_the_python_loop(seed: int) -> None:
    pick = random.Random(seed)
    snaps = snapshots()
    for _ in range(60):
        mode = pick.choice(list(Mode))
        # small observers roll over often: the young and old generations are compared too
        native, native_sent, oracle, oracle_sent = twins(mode, pick.choice((1, 2, 3, 7, 1_000)))
        for _ in range(pick.randrange(1, 5)):  # calls on the same state
            requests = random_requests(pick, snaps)
            native.process_all(iter(requests))
            oracle_process_all(oracle, requests)
            assert state(native, native_sent) == state(oracle, oracle_sent)
            assert native.take_counts() == oracle.take_counts()


def test_the_observer_keys_are_pythons_hash_and_impressions_are_whole_namedtuples() -> None:
    sent: list[Impression] = []
    modes = ImpressionModes(Mode.DEBUG, sent.extend)
    snap = snapshots()[0]
    lookups: list[Answer] = [("u1", "acct", "f", Decision("on", "rule", None, 7))]
    modes.process_all([(snap, T0 + 1, lookups), (snap, T0 + 2, lookups)])
    assert list(modes._observer.young) == [hash(("u1", "f", "on", "rule", 7))]
    assert sent == [
        Impression("u1", "acct", "f", "on", "rule", 7, T0 + 1, None, 3),
        Impression("u1", "acct", "f", "on", "rule", 7, T0 + 2, T0 + 1, 3),
    ]
    made = sent[1]
    assert type(made) is Impression and made.previous_time_ms == T0 + 1
    assert hash(made) == hash(tuple(made)) and made == tuple(made)
    assert made._replace(key="u2").key == "u2"


def test_an_error_midway_leaves_what_the_python_loop_leaves() -> None:
    """The counts made before a bad lookup are kept, as the Python loop kept them; the
    impressions of the failed call are not emitted, nor the counters moved."""
    snap = snapshots()[0]
    good = [("u1", None, "f", RESULTS[0])] * 3 + [("u2", None, "quiet", RESULTS[0])]
    for mode in Mode:
        native, native_sent, oracle, oracle_sent = twins(mode, 100)
        requests: list[Any] = [(snap, T0, good), (snap, T0 + 1, [*good, ("short", None, "f")])]
        with pytest.raises(TypeError):
            native.process_all(requests)
        with pytest.raises(ValueError):  # Python's unpacking: not enough values
            oracle_process_all(oracle, requests)
        assert state(native, native_sent) == state(oracle, oracle_sent)


GOOD: tuple[Any, ...] = ("u1", None, "f", Decision("on", "rule", None, 7))


def bad_requests(snap: Snapshot) -> list[Any]:
    """Requests with one thing of a wrong type each."""
    result = GOOD[3]
    answers = [
        ("u1", None, "f"),
        ("u1", None, "f", result, "extra"),
        ["u1", None, "f", result],
        (1, None, "f", result),
        ("u1", 2, "f", result),
        ("u1", None, None, result),
        ("u1", None, b"f", result),
        ("u1", None, "f", None),
        ("u1", None, "f", ("on", "rule", None)),
        ("u1", None, "f", (None, "rule", None, 7)),
        ("u1", None, "f", ("on", 5, None, 7)),
        ("u1", None, "f", ("on", "rule", None, "7")),
        ("u1", None, "f", ("on", "rule", None, 7.0)),
        ("u1", None, "f", ("on", "rule", None, [7])),
        ("u1", None, "quiet", ("on", "rule", None, "x")),
    ]
    requests: list[Any] = [[(snap, T0, [answer])] for answer in answers]
    requests += [
        [(snap, "now", [GOOD])],
        [(snap, float(T0), [GOOD])],
        [(snap, None, [GOOD])],
        [(snap, T0, iter([GOOD]))],
        [(snap, T0, None)],
        [(snap, T0, "lookups")],
        [(snap, T0)],
        [(snap, T0, [GOOD], 1)],
        [[snap, T0, [GOOD]]],
        [None],
        None,
        5,
    ]
    return requests


@pytest.mark.parametrize("mode", list(Mode))
def test_wrong_types_raise_type_error_never_crash(mode: Mode) -> None:
    snap = snapshots()[0]
    for requests in bad_requests(snap):
        modes = ImpressionModes(mode, lambda made: None, 3)
        with pytest.raises(TypeError):
            modes.process_all(requests)
        modes.process_all([(snap, T0, [GOOD])])  # still usable afterwards
    with pytest.raises(AttributeError):  # not a snapshot: Python's own error for .version
        not_a_snapshot: Any = object()
        ImpressionModes(mode, lambda made: None).process_all([(not_a_snapshot, T0, [GOOD])])


def test_times_out_of_64_bits_raise_overflow_error() -> None:
    snap = snapshots()[0]
    modes = ImpressionModes(Mode.OPTIMIZED, lambda made: None)
    for at in (2**63, -(2**63), 10**30):
        with pytest.raises(OverflowError):
            modes.process_all([(snap, at, [GOOD])])


def test_wrong_arguments_raise() -> None:
    snap = snapshots()[0]
    modes = ImpressionModes(Mode.DEBUG, lambda made: None)
    observer, counts, add = modes._observer, modes.counts, modes.unique_keys.add
    request = [(snap, T0, [GOOD])]
    good: list[Any] = [
        request, "debug", observer, counts, add, modes._disabled_in, Impression, []
    ]  # fmt: skip
    assert _modes.process_all(*good) == (1, 0)
    for index, wrong in (
        (1, "sometimes"),
        (1, 3),
        (2, object()),
        (3, []),
        (4, None),
        (5, 1),
        (6, int),
        (6, "Impression"),
        (7, ()),
    ):
        arguments = list(good)
        arguments[index] = wrong
        with pytest.raises((TypeError, ValueError, AttributeError)):
            _modes.process_all(*arguments)
    with pytest.raises(TypeError):
        _modes.process_all(*good[:7])
    observer.young = []  # type: ignore[assignment]
    with pytest.raises(TypeError):
        _modes.process_all(*good)


def test_a_callback_that_shrinks_the_lookups_does_not_crash() -> None:
    """add_key runs Python code in the middle of a request: emptying the list being read
    ends it early, as it would end the Python loop's `for`."""
    snap = snapshots()[0]
    lookups: list[Any] = [("u1", None, "quiet", GOOD[3]), ("u2", None, "f", GOOD[3])] * 50
    seen: list[str] = []

    def add_key(name: str, key: str, time_ms: int) -> None:
        seen.append(key)
        lookups.clear()
        gc.collect()

    made: list[Impression] = []
    modes = ImpressionModes(Mode.DEBUG, made.extend)
    result = _modes.process_all(
        [(snap, T0, lookups)], "debug", modes._observer, modes.counts, add_key,
        modes._disabled_in, Impression, made,
    )  # fmt: skip
    assert (result, seen, made) == ((0, 0), ["u1"], [])


def test_nothing_the_requests_hold_is_leaked() -> None:
    """Every reference the loop takes is given back: after the state is dropped, the
    objects of the requests have the reference counts they had before."""
    snap = snapshots()[0]
    key, name, at = "".join(("leak", "-key")), "".join(("f",)), T0 + 12345
    result = Decision("on", "rule", None, 10**20)  # an int that is not shared
    objects = (key, name, at, result, result.change_number, snap)

    def run() -> None:
        for mode in Mode:
            modes = ImpressionModes(mode, lambda made: None, 2)
            for offset in (0, HOUR_MS, -1):
                modes.process_all([(snap, at + offset, [(key, None, name, result)] * 3)])
            modes.process_all([(snap, at, [(key, None, "quiet", result)])])
            with pytest.raises(TypeError):
                short: Any = (key,)
                modes.process_all([(snap, at, [(key, None, name, result), short])])

    run()  # caches warmed (the snapshot's disabled flags, interned names)
    gc.collect()
    before = [sys.getrefcount(o) for o in objects]
    for _ in range(20):
        run()
    gc.collect()
    assert [sys.getrefcount(o) for o in objects] == before


def test_fuzz_random_structures_never_crash() -> None:
    """Random nestings of plausible and implausible values: an answer or an exception of
    the documented kinds, whatever they are."""
    pick = random.Random(11)
    snap = snapshots()[0]
    atoms: list[Any] = [
        None, "", "u1", "f", "quiet", LABEL_NOT_FOUND, 0, 7, -1, 2**70, 1.5, b"x", (), [],
        {}, snap, T0, GOOD, GOOD[3], object(),
    ]  # fmt: skip

    def value(depth: int) -> Any:
        if depth > 2 or pick.random() < 0.5:
            return pick.choice(atoms)
        size = pick.choice((0, 1, 2, 3, 4, 4, 4, 5))
        items = [value(depth + 1) for _ in range(size)]
        return tuple(items) if pick.random() < 0.8 else items

    for _ in range(3_000):
        lookups = [value(1) if pick.random() < 0.3 else GOOD for _ in range(pick.randrange(3))]
        request = (
            pick.choice((snap, snap, value(2))),
            pick.choice((T0, T0, value(2))),
            lookups if pick.random() < 0.9 else value(1),
        )
        modes = ImpressionModes(pick.choice(list(Mode)), lambda made: None, 2)
        with contextlib.suppress(TypeError, AttributeError, OverflowError):
            modes.process_all([request if pick.random() < 0.9 else value(1)])
