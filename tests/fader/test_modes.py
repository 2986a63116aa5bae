"""fader._modes (C) against the Python loop it replaced: random requests in all three modes
give the same impressions, counts, unique keys, observer state and counters; wrong types
raise TypeError and never crash; nothing the requests hold is leaked or freed early."""

from __future__ import annotations

import contextlib
import gc
import random
import subprocess
import sys
import time
import weakref
from collections.abc import Iterable
from typing import Any

import pytest
from fader import _modes
from fader._modes import Observer
from fader.impressions import (
    HOUR_MS,
    Answer,
    Impression,
    ImpressionModes,
    Mode,
    Pending,
    add_messages,
)
from fader.pb.fader.v1.telemetry_pb2 import UploadRequest
from fader.rules.result import LABEL_NOT_FOUND, NOT_FOUND, Decision
from fader.snapshot.loader import build_snapshot
from fader.snapshot.snapshot import Snapshot

from tests.fader.rules.builders import flag, snapshot_doc

DAY_MS = 24 * HOUR_MS
T0 = 1_700_000_000_000 // DAY_MS * DAY_MS + 3 * HOUR_MS  # 03:00 UTC, start of an hour


class OracleObserver:
    """The observer as it was in Python (8ac0782): two generations of dicts."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self.young: dict[int, int] = {}
        self.old: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.young.keys() | self.old.keys())

    def test_and_set(self, digest: int, time_ms: int) -> int | None:
        young = self.young
        previous = young.get(digest)
        if previous is None:
            previous = self.old.get(digest)
        if previous is None or time_ms > previous:
            young[digest] = time_ms
        elif digest not in young:
            young[digest] = previous
        if len(young) >= self.capacity:
            self.old, self.young = young, {}
        if previous is not None and previous > time_ms:
            return time_ms
        return previous


def oracle_process_all(
    modes: ImpressionModes, observer: OracleObserver, requests: Iterable[Pending]
) -> list[Impression]:
    """`ImpressionModes.process_all` as it was in Python before fader._modes (8ac0782), with
    its observer: the rules the C loop must follow step for step."""
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
    modes.emitted += emitted
    modes.deduplicated += deduplicated
    return made


def snapshots() -> list[Snapshot]:
    return [
        build_snapshot(
            snapshot_doc(
                flag("f"),
                flag("g"),
                flag("quiet", impressionsDisabled=True),
                flag("alpha"),
                flag("beta"),
                version=3,
            )
        ),
        build_snapshot(
            snapshot_doc(
                flag("f"),
                flag("g", impressionsDisabled=True),
                flag("alpha"),
                flag("beta", impressionsDisabled=True),
                version=4,
            )
        ),
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
    and across hours and days, empty lookups, fresh string objects for equal keys and flag
    names (as requests decode them)."""
    times = (0, 1, 5, 3, HOUR_MS - 1, HOUR_MS, HOUR_MS + 2, DAY_MS, 2 * DAY_MS - 1, -7)
    requests: list[Pending] = []
    for _ in range(pick.randrange(1, 15)):
        lookups = [
            (
                "".join(("u", str(pick.randrange(8)))),  # equal keys, distinct objects
                pick.choice((None, "b", "")),
                "".join(list(pick.choice(("f", "g", "quiet", "alpha", "beta", "missing")))),
                pick.choice(RESULTS),
            )
            for _ in range(pick.randrange(0, 9))
        ]
        requests.append((pick.choice(snaps), T0 + pick.choice(times), lookups))
    return requests


def state(
    modes: ImpressionModes,
    generations: tuple[dict[int, int], dict[int, int]],
    sent: list[Impression],
) -> dict[str, Any]:
    return {
        "sent": [(type(i), tuple(i)) for i in sent],
        "counts": list(modes.counts.items()),  # insertion order too
        "generations": generations,
        "unique": modes.unique_keys.take(),
        "unique_size": modes.unique_keys.size,
        "emitted": modes.emitted,
        "deduplicated": modes.deduplicated,
    }


class Twins:
    """The same modes twice: one run by fader._modes, one by the oracle (Python observers)."""

    def __init__(self, mode: Mode, observer_size: int) -> None:
        self.native_sent: list[Impression] = []
        self.oracle_sent: list[Impression] = []
        self.native = ImpressionModes(mode, observer_size)
        self.oracle = ImpressionModes(mode, observer_size)
        self.observer = OracleObserver(observer_size)
        unique: Any = self.oracle.unique_keys
        unique._observer = OracleObserver(observer_size)

    def process_all(self, requests: list[Any], error: type[Exception] | None = None) -> None:
        if error is None:
            self.native_sent += self.native.process_all(iter(requests))
            self.oracle_sent += oracle_process_all(self.oracle, self.observer, requests)
            return
        with pytest.raises(TypeError):
            self.native.process_all(iter(requests))
        with pytest.raises(error):
            oracle_process_all(self.oracle, self.observer, requests)

    def assert_same(self) -> None:
        native = state(self.native, self.native._observer.generations(), self.native_sent)
        oracle = state(self.oracle, (self.observer.young, self.observer.old), self.oracle_sent)
        assert native == oracle
        assert self.native.take_counts() == self.oracle.take_counts()


@pytest.mark.parametrize("seed", range(6))
def test_the_c_loop_matches_the_python_loop(seed: int) -> None:
    pick = random.Random(seed)
    snaps = snapshots()
    for _ in range(60):
        mode = pick.choice(list(Mode))
        # small observers roll over often: the young and old generations are compared too
        twins = Twins(mode, pick.choice((1, 2, 3, 7, 1_000)))
        for _ in range(pick.randrange(1, 5)):  # calls on the same state
            twins.process_all(random_requests(pick, snaps))
            twins.assert_same()


def test_the_observer_keys_are_pythons_hash_and_impressions_are_whole_namedtuples() -> None:
    sent: list[Impression] = []
    modes = ImpressionModes(Mode.DEBUG)
    snap = snapshots()[0]
    lookups: list[Answer] = [("u1", "acct", "f", Decision("on", "rule", None, 7))]
    sent += modes.process_all([(snap, T0 + 1, lookups), (snap, T0 + 2, lookups)])
    assert modes._observer.generations() == ({hash(("u1", "f", "on", "rule", 7)): T0 + 2}, {})
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
        twins = Twins(mode, 100)
        requests: list[Any] = [(snap, T0, good), (snap, T0 + 1, [*good, ("short", None, "f")])]
        twins.process_all(requests, error=ValueError)  # Python's: not enough values to unpack
        twins.assert_same()


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
        modes = ImpressionModes(mode, 3)
        with pytest.raises(TypeError):
            modes.process_all(requests)
        modes.process_all([(snap, T0, [GOOD])])  # still usable afterwards
    with pytest.raises(AttributeError):  # not a snapshot: Python's own error for .version
        not_a_snapshot: Any = object()
        ImpressionModes(mode).process_all([(not_a_snapshot, T0, [GOOD])])


def test_times_out_of_64_bits_raise_overflow_error() -> None:
    snap = snapshots()[0]
    modes = ImpressionModes(Mode.OPTIMIZED)
    for at in (2**63, -(2**63), 10**30):
        with pytest.raises(OverflowError):
            modes.process_all([(snap, at, [GOOD])])


def test_wrong_arguments_raise() -> None:
    snap = snapshots()[0]
    modes = ImpressionModes(Mode.DEBUG)
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
        (2, OracleObserver(5)),
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
    modes = ImpressionModes(Mode.DEBUG)
    result = _modes.process_all(
        [(snap, T0, lookups)], "debug", modes._observer, modes.counts, add_key,
        modes._disabled_in, Impression, made,
    )  # fmt: skip
    assert (result, seen, made) == ((0, 0), ["u1"], [])


def test_lookups_a_callback_replaces_are_read_as_they_are_now() -> None:
    """The loop looks a few lookups ahead (their keys' hashes, their observer slots): when
    add_key replaces the lookups after the one it was called for, the loop applies the new
    ones, as the Python loop's `for` does. Each replaced lookup's key differs, so a hash
    found ahead for the old one would file it under the wrong observer key."""
    snap = snapshots()[0]
    result = Decision("on", "rule", None, 7)

    def requests() -> tuple[list[Any], Any]:
        lookups: list[Any] = [("u1", None, "quiet", result)]  # quiet: impressions disabled
        lookups += [(f"k{i}", None, "f", result) for i in range(40)]
        lookups += [("u2", None, "quiet", result)]
        lookups += [(f"k{i}", None, "f", result) for i in range(9)]

        def add_key(name: str, key: str, time_ms: int) -> None:
            for i, (old, *rest) in enumerate(lookups):
                if old.startswith("k"):
                    lookups[i] = (old.replace("k", "n"), *rest)
            gc.collect()  # the replaced lookups are freed: their addresses may come back

        return [(snap, T0, lookups)], add_key

    for mode in (Mode.DEBUG, Mode.OPTIMIZED):
        native = ImpressionModes(mode, 1_000)
        native_requests, add_key = requests()
        made: list[Impression] = []
        _modes.process_all(
            native_requests, mode.value, native._observer, native.counts, add_key,
            native._disabled_in, Impression, made,
        )  # fmt: skip
        oracle = ImpressionModes(mode, 1_000)
        oracle_requests, add_key = requests()
        oracle.unique_keys.add = add_key  # type: ignore[method-assign]
        observer = OracleObserver(1_000)
        expected = oracle_process_all(oracle, observer, oracle_requests)
        assert made == expected and {i.key for i in made} == {f"n{i}" for i in range(40)}
        assert native._observer.generations() == (observer.young, observer.old)


def test_a_lookup_let_go_between_look_aheads_may_empty_the_list() -> None:
    """Lookups looked at ahead are held until the loop is past them; letting them go may run
    Python code (here a key's __del__ that empties the list being read): the loop reads the
    list's size again after that, and stops. In a subprocess: the suite survives a crash."""
    code = """if True:
        from fader import _modes
        from fader._modes import Observer

        class Snap:
            version = 3
            flags = {}

        lookups = []

        class Dying(str):
            def __del__(self):
                lookups.clear()

        result = ("on", "rule", None, 7)

        def add_key(name, key, time_ms):
            lookups[5] = ("u5", None, "f", result)  # the ahead holds the last Dying lookup

        lookups += [("u0", None, "quiet", result)]
        lookups += [(Dying("u") if i == 5 else f"u{i}", None, "f", result) for i in range(1, 40)]
        made = []
        _modes.process_all(
            [(Snap(), 0, lookups)], "debug", Observer(100), {}, add_key,
            lambda snap: frozenset({"quiet"}), tuple, made,
        )
        assert lookups == [] and len(made) == 15, (len(lookups), len(made))
        print("stopped")
    """
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr) == (0, "stopped\n", "")


def test_nothing_the_requests_hold_is_leaked() -> None:
    """Every reference the loop takes is given back: after the state is dropped, the
    objects of the requests have the reference counts they had before."""
    snap = snapshots()[0]
    key, name, at = "".join(("leak", "-key")), "".join(("f",)), T0 + 12345
    result = Decision("on", "rule", None, 10**20)  # an int that is not shared
    objects = (key, name, at, result, result.change_number, snap)

    def run() -> None:
        for mode in Mode:
            modes = ImpressionModes(mode, 2)
            for offset in (0, HOUR_MS, -1):
                modes.process_all([(snap, at + offset, [(key, None, name, result)] * 3)])
            modes.process_all([(snap, at, [(key, None, "quiet", result)])])
            modes.encode_all([(snap, at, [(key, None, name, result)] * 3)], 4)
            with pytest.raises(TypeError):
                short: Any = (key,)
                modes.process_all([(snap, at, [(key, None, name, result), short])])
            with pytest.raises(TypeError):
                modes.encode_all([(snap, at, [(key, None, name, result), short])], 4)

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
        modes = ImpressionModes(pick.choice(list(Mode)), 2)
        with contextlib.suppress(TypeError, AttributeError, OverflowError):
            modes.process_all([request if pick.random() < 0.9 else value(1)])
        with contextlib.suppress(TypeError, AttributeError, OverflowError):
            modes.encode_all([request if pick.random() < 0.9 else value(1)], 4)


def test_the_c_observer_matches_the_python_one() -> None:
    """Random hashes (few, so repeats and rollovers are common; extreme values too) and times
    (out of order included): the same answers, lengths and generations."""
    pick = random.Random(3)
    digests = [0, -1, 1, 2**63 - 1, -(2**63), *(pick.getrandbits(64) - 2**63 for _ in range(40))]
    for capacity in (0, 1, 2, 5, 17, 1_000):
        native, oracle = Observer(capacity), OracleObserver(capacity)
        assert native.capacity == oracle.capacity
        for _ in range(3_000):
            digest = pick.choice(digests[: pick.choice((3, 10, len(digests)))])
            at = pick.randrange(-5, 50)
            assert native.test_and_set(digest, at) == oracle.test_and_set(digest, at)
            assert len(native) == len(oracle)
        assert native.generations() == (oracle.young, oracle.old)


def test_the_observer_refuses_what_is_not_a_64_bit_int() -> None:
    observer = Observer(4)
    wrong: list[Any] = [("1", 1), (1, "1"), (1.0, 1), (None, 1), (1, None)]
    for digest, at in wrong:
        with pytest.raises(TypeError):
            observer.test_and_set(digest, at)
    for digest, at in ((2**64, 1), (1, -(2**63) - 1)):
        with pytest.raises(OverflowError):
            observer.test_and_set(digest, at)
    too_many: Any = (1, 2, 3)
    with pytest.raises(TypeError):
        observer.test_and_set(*too_many)
    with pytest.raises(TypeError):
        Observer("many")  # type: ignore[arg-type]
    assert (len(observer), observer.generations()) == (0, ({}, {}))


def test_impressions_of_plain_values_are_left_out_of_the_garbage_collector() -> None:
    """An impression of strs and ints can be in no cycle, so it is untracked (the collector
    walking debug mode's impressions cost more than making them); one holding anything else
    stays tracked, so a cycle through it is still found."""

    class Versioned:
        def __init__(self, version: object) -> None:
            self.version = version
            self.flags: dict[str, Any] = {}

    modes = ImpressionModes(Mode.DEBUG)
    plain, odd = Versioned(3), Versioned([3])
    requests: list[Any] = [
        (plain, T0, [GOOD]),
        (odd, T0, [GOOD]),
        (plain, T0, [("u1", "b", *GOOD[2:])]),
    ]
    made = modes.process_all(requests)
    assert [gc.is_tracked(i) for i in made] == [False, True, False]
    cycle: list[Any] = []
    holder: Any = Versioned(cycle)
    made += modes.process_all([(holder, T0, [GOOD])])
    cycle.append(made[-1])  # impression -> version (the list) -> impression
    assert gc.is_tracked(made[-1])


def test_fuzz_encode_impressions_never_crashes() -> None:
    """Random Impressions of plausible and implausible values: the bytes add_messages and the
    protobuf runtime gave, or an error where the runtime raised one, never a crash. (Not a
    tuple at all is refused: tests/telemetry/test_batches.py.)"""
    pick = random.Random(13)
    atoms: list[Any] = [
        None, "", "u1", "ü", "\udc80", b"b", b"\xff", 0, 1, -1, 2**63, -(2**63), 2**64, 1.5,
        True, False, (), [7], object(),
    ]  # fmt: skip
    plain = Impression("u1", "b", "f", "on", "rule", 7, T0, T0 - 1, 3)
    for _ in range(5_000):
        fields = [pick.choice(atoms) if pick.random() < 0.3 else value for value in plain]
        item: Any = tuple.__new__(Impression, fields)
        request = UploadRequest()
        try:
            add_messages(request.impressions, [item])
            expected: bytes | None = request.SerializeToString()
        except (TypeError, ValueError):
            expected = None
        try:
            got: bytes | None = _modes.encode_impressions([item], 4)
        except (TypeError, ValueError):
            got = None
        assert got == expected, fields


class OddHash(str):
    """A str subclass with its own hash: equal text, another hash in the observer's key."""

    def __hash__(self) -> int:
        return 42


def test_a_str_subclass_is_hashed_by_its_own_hash() -> None:
    """The last flag name's hash is reused only for a plain str of the same text: a
    subclass's own __hash__ goes into the observer's key, as it did in Python."""
    snap = snapshots()[0]
    result = RESULTS[0]
    for mode in (Mode.DEBUG, Mode.OPTIMIZED):
        twins = Twins(mode, 100)
        lookups: list[Any] = [
            ("u1", None, "alpha", result),
            (OddHash("u1"), None, "alpha", result),
            ("u1", None, OddHash("alpha"), result),
            ("u1", None, "alpha", result),
        ]
        twins.process_all([(snap, T0, lookups), (snap, T0 + 1, lookups)])
        twins.assert_same()


def test_a_count_past_64_bits_is_added_exactly() -> None:
    """The counts are merged as the Python loop added them, `before + count`: a count at or
    past 2**63 grows exactly (a long long sum overflowed, undefined in C, or raised)."""
    snap = snapshots()[0]
    hour = T0 - T0 % HOUR_MS
    for before in (2**63 - 1, 2**64, -(2**63), 1):
        modes = ImpressionModes(Mode.NONE)
        modes.counts[("f", hour)] = before
        modes.process_all([(snap, T0, [("u1", None, "f", RESULTS[0])] * 3)])
        assert modes.counts == {("f", hour): before + 3}


def test_a_struct_sequence_is_refused_as_the_impression_type() -> None:
    """Only tuple and classes of `class` statements on it can be made as tp_alloc(type, 9)
    plus 9 items: a struct sequence keeps more (sys.flags: its dealloc read past the
    allocation, a segfault), so it is refused. In a subprocess: the suite survives a crash."""
    code = """if True:
        import sys, time
        from fader import _modes
        from fader._modes import Observer

        class Snap:
            version = 3
            flags = {}

        def call(impression):
            made = []
            lookup = ("u1", None, "f", ("on", "rule", None, 7))
            _modes.process_all(
                [(Snap(), 0, [lookup])], "debug", Observer(4), {}, lambda *a: None,
                lambda snap: frozenset(), impression, made,
            )
            return made

        for impression in (type(sys.flags), time.struct_time, type(sys.version_info)):
            try:
                call(impression)
            except TypeError:
                pass
            else:
                raise SystemExit(f"{impression} accepted")

        class Plain(tuple):
            pass

        assert [type(i) for i in call(tuple) + call(Plain)] == [tuple, Plain]
        print("refused")
    """
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr) == (0, "refused\n", "")


# -- encode_all: the same modes, the impressions as wire bytes --------------------------------

UPLOAD_IMPRESSIONS = UploadRequest.IMPRESSIONS_FIELD_NUMBER


class VersionOnly:
    """A snapshot as the modes read it (its version and flags), with a version no snapshot
    loads: the encoder refuses it (out of uint64, or not an int)."""

    def __init__(self, version: Any) -> None:
        self.version = version
        self.flags = snapshots()[0].flags


def expected_entries(made: list[Impression]) -> tuple[bytes, int]:
    """The objects' entries one at a time, the ones the encoder refuses left out."""
    entries, refused = b"", 0
    for impression in made:
        try:
            entries += _modes.encode_impressions([impression], UPLOAD_IMPRESSIONS)
        except (ValueError, TypeError):
            refused += 1
    return entries, refused


def unencodable_requests(pick: random.Random) -> list[Pending]:
    """Keys and labels that are not valid Unicode, change numbers out of int64, snapshots
    whose version is out of uint64 or not an int, among good lookups."""
    bad_results = [Decision("on", "\udc80", None, 7), Decision("on", "rule", None, 2**64)]
    lookups: list[Answer] = [
        (pick.choice(("u1", "u\ud800", "u2")), None, "f", pick.choice(RESULTS + bad_results))
        for _ in range(pick.randrange(1, 6))
    ]
    # and good ones the encoder takes its slow way: not ASCII, str subclasses
    others: list[Any] = ["ключ", OddHash("u1"), OddHash("f"), "flag-ü", "ü"]
    lookups += [
        (pick.choice(others), pick.choice((None, "ü")), pick.choice(others), pick.choice(RESULTS))
        for _ in range(pick.randrange(0, 4))
    ]
    snap: Any = pick.choice([snapshots()[0], VersionOnly(2**64), VersionOnly("3")])
    return [(snap, T0 + pick.randrange(3), lookups)]


@pytest.mark.parametrize("seed", range(4))
def test_encode_all_writes_what_encoding_process_alls_impressions_gives(seed: int) -> None:
    """encode_all and process_all on twin states: the same counts, unique keys, observer
    and counters, and entries byte for byte those of the objects, one impression at a time;
    what the encoder refuses is counted, and only that is left out."""
    pick = random.Random(seed)
    snaps = snapshots()
    for _ in range(40):
        mode, size = pick.choice(list(Mode)), pick.choice((1, 3, 1_000))
        objects = ImpressionModes(mode, size)
        encoding = ImpressionModes(mode, size)
        left_out = 0
        for _ in range(pick.randrange(1, 4)):
            requests = random_requests(pick, snaps)
            if pick.random() < 0.3:
                requests += unencodable_requests(pick)
            made = objects.process_all(iter(requests))
            encoded = encoding.encode_all(iter(requests), UPLOAD_IMPRESSIONS)
            entries, refused = expected_entries(made)
            assert (encoded.entries, encoded.unencodable) == (entries, refused)
            assert encoded.written == len(made) - refused
            parsed = UploadRequest.FromString(encoded.entries).impressions
            assert len(parsed) == encoded.written
            left_out += refused
            assert objects.emitted == encoding.emitted + left_out
            assert objects.deduplicated == encoding.deduplicated
            assert list(objects.counts.items()) == list(encoding.counts.items())
            assert objects._observer.generations() == encoding._observer.generations()
            assert objects.unique_keys.take() == encoding.unique_keys.take()


class Millis(int):
    """A time that is an int, not a plain one."""


class IntSub(int):
    """An int subclass with its own truth and hash."""

    def __bool__(self) -> bool:
        return False

    def __hash__(self) -> int:
        return 5


# What a (flag, result) slot does not remember: str and int subclasses (their hash and truth
# are theirs to say, each time), bools, fields 3 to 6 longer than a slot holds.
UNREMEMBERED = [
    Decision(OddHash("on"), "rule", None, 7),
    Decision("on", OddHash("rule"), None, 7),
    Decision("on", "rule", None, IntSub(9)),
    Decision("on", "rule", None, True),
    Decision("on", "r" * 300, None, 7),
]


@pytest.mark.parametrize("seed", range(3))
def test_what_no_slot_remembers_gives_what_the_python_loop_gives(seed: int) -> None:
    """Lookups whose result no slot remembers, mixed with those it does, and request times
    that are not plain ints (their entries' time written field by field): the same observer
    keys, impressions and counts as the Python loop, and the objects' entries."""
    pick = random.Random(seed)
    snaps = snapshots()
    for _ in range(30):
        mode = pick.choice((Mode.OPTIMIZED, Mode.DEBUG))
        requests: list[Any] = []
        for _ in range(pick.randrange(1, 6)):
            lookups = [
                (
                    "".join(("u", str(pick.randrange(5)))),
                    None,
                    pick.choice(("f", "alpha")),
                    pick.choice(RESULTS[:3] + UNREMEMBERED),
                )
                for _ in range(pick.randrange(1, 9))
            ]
            time_ms = T0 + pick.randrange(3)
            when = Millis(time_ms) if pick.random() < 0.3 else time_ms
            requests.append((pick.choice(snaps), when, lookups))
        twins = Twins(mode, 100)
        twins.process_all(requests)
        twins.assert_same()
        objects, encoding = ImpressionModes(mode, 100), ImpressionModes(mode, 100)
        made = objects.process_all(iter(requests))
        encoded = encoding.encode_all(iter(requests), UPLOAD_IMPRESSIONS)
        assert (encoded.entries, encoded.unencodable) == expected_entries(made)


class Counted(str):
    calls = 0

    def __hash__(self) -> int:
        Counted.calls += 1
        return 7


def test_a_subclass_is_asked_its_hash_at_every_lookup_as_the_python_loop_asked() -> None:
    """A slot remembers the hashes of plain strs and ints only: a subclass's __hash__ may
    answer differently each time, so it is asked lookup by lookup, in both loops."""
    snap = snapshots()[0]
    result = Decision(Counted("on"), "rule", None, 7)
    lookups: list[Any] = [(f"u{i}", None, "f", result) for i in range(5)]
    for encode in (False, True):
        Counted.calls = 0
        modes = ImpressionModes(Mode.DEBUG, 100)
        if encode:
            assert modes.encode_all([(snap, T0, lookups)], UPLOAD_IMPRESSIONS).written == 5
        else:
            assert len(modes.process_all([(snap, T0, lookups)])) == 5
        assert Counted.calls == 5
    Counted.calls = 0
    oracle_process_all(ImpressionModes(Mode.DEBUG, 100), OracleObserver(100), [(snap, T0, lookups)])
    assert Counted.calls == 5


class Untruthful(int):
    """A change number whose truth cannot be told."""

    def __bool__(self) -> bool:
        raise ArithmeticError("no truth here")


@pytest.mark.parametrize("encode", [False, True], ids=["objects", "entries"])
def test_a_change_number_whose_truth_raises_raises_from_both_loops(encode: bool) -> None:
    """`change or 0` asks the change number's __bool__, as the Python loop did, and its
    error reaches the caller (an error lost there would leave an exception set behind a
    result that says all went well)."""
    lookups: list[Answer] = [("u1", None, "f", Decision("on", "r", None, Untruthful(7)))]
    requests: list[Pending] = [(snapshots()[0], T0, lookups)]
    modes = ImpressionModes(Mode.DEBUG, 100)
    with pytest.raises(ArithmeticError, match="no truth here"):
        if encode:
            modes.encode_all(requests, UPLOAD_IMPRESSIONS)
        else:
            modes.process_all(requests)


# -- the recorder -------------------------------------------------------------------------------


class ModelRecorder:
    """The recorder as it was in Python (sidecar.telemetry.impressions, before it was C)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.pending: list[Pending] = []
        self.size = self.overflow = 0
        self.shared: Pending | None = None

    def record(self, snap: Snapshot, time_ms: int, lookups: list[Answer]) -> None:
        if not lookups:
            return
        if self.size + len(lookups) > self.capacity:
            self.overflow += len(lookups)
            return
        self.size += len(lookups)
        if self.pending and self.pending[-1][1] == time_ms and self.pending[-1][0] is snap:
            last = self.pending[-1]
            if last is self.shared:
                last[2].extend(lookups)
            else:
                self.shared = self.pending[-1] = (snap, time_ms, last[2] + lookups)
            return
        self.pending.append((snap, time_ms, lookups))

    def take(self, limit: int | None) -> list[Pending]:
        taken, done = [], 0
        while self.pending and (limit is None or done < limit):
            entry = self.pending.pop(0)
            done += len(entry[2])
            taken.append(entry)
        self.size -= done
        return taken


def test_the_c_recorder_matches_the_python_one() -> None:
    """Random records (snapshots and times repeating, empty lists, past capacity) and takes:
    the same entries, sizes and overflow; no request's list is ever changed."""
    pick = random.Random(21)
    snaps = snapshots()
    for _ in range(300):
        capacity = pick.choice((0, 1, 5, 40))
        native, model = _modes.Recorder(capacity), ModelRecorder(capacity)
        given: list[tuple[list[Answer], int]] = []
        for _ in range(pick.randrange(1, 30)):
            if pick.random() < 0.2:
                limit = pick.choice((None, 0, 1, 3, 10))
                assert native.take(limit) == model.take(limit)
                continue
            lookups: list[Answer] = [(f"u{pick.randrange(9)}", None, "f", RESULTS[0])]
            lookups *= pick.randrange(4)
            snap, at = pick.choice(snaps), T0 + pick.randrange(3)
            given.append((lookups, len(lookups)))
            native.record(snap, at, lookups)
            model.record(snap, at, list(lookups))
            assert (native.size, native.overflow) == (model.size, model.overflow)
        assert native.take(None) == model.take(None)
        assert [len(lookups) for lookups, _ in given] == [length for _, length in given]


def test_record_one_shares_the_millisecond_and_reads_the_clock() -> None:
    """Lookups recorded one at a time, as fast as possible: in order, at the time.time_ns
    clock's millisecond, one entry per millisecond and snapshot; and a request's own list
    recorded in the same millisecond is copied, never added to."""
    snap = snapshots()[0]
    recorder = _modes.Recorder(100_000)
    start = time.time_ns() // 1_000_000
    for i in range(5_000):
        recorder.record_one(snap, f"u{i}", None, "f", RESULTS[0])
    end = time.time_ns() // 1_000_000
    entries = recorder.take(None)
    times = [at for _, at, _ in entries]
    assert times == sorted(set(times)) and start <= times[0] and times[-1] <= end
    assert [key for _, _, lookups in entries for key, *_ in lookups] == [
        f"u{i}" for i in range(5_000)
    ]
    assert len(entries) < 5_000  # some shared a millisecond
    shared = 0
    for _ in range(1_000):  # until a request and a lookup fall in the same millisecond
        request: list[Answer] = [("r", None, "f", RESULTS[0])]
        recorder.record(snap, time.time_ns() // 1_000_000, request)
        recorder.record_one(snap, "one", None, "f", RESULTS[1])
        entries = recorder.take(None)
        assert request == [("r", None, "f", RESULTS[0])]
        if len(entries) == 1:
            assert entries[0][2] == [*request, ("one", None, "f", RESULTS[1])]
            shared += 1
    assert shared > 0


def test_the_recorder_counts_what_has_no_room_and_refuses_wrong_types() -> None:
    snap = snapshots()[0]
    recorder = _modes.Recorder(2)
    recorder.record_one(snap, "a", None, "f", RESULTS[0])
    recorder.record(snap, T0, [GOOD, GOOD])  # no room for two
    recorder.record_one(snap, "b", None, "f", RESULTS[0])
    recorder.record_one(snap, "c", None, "f", RESULTS[0])
    assert (recorder.size, recorder.overflow, recorder.capacity) == (2, 3, 2)
    wrong: list[tuple[Any, ...]] = [(snap, T0, (GOOD,)), (snap, "now", [GOOD]), (snap, T0)]
    for args in wrong:
        with pytest.raises(TypeError):
            recorder.record(*args)
    odd: Any = recorder
    with pytest.raises(TypeError):
        odd.record_one(snap, "a")
    with pytest.raises(TypeError):
        odd.take("all")
    with pytest.raises(OverflowError):
        recorder.record(snap, 2**64, [GOOD])
    assert recorder.size == 2 and len(recorder.take(None)) == 1


def test_the_recorder_leaks_nothing_and_is_collected_in_a_cycle() -> None:
    snap = snapshots()[0]
    key, at = "".join(("leak", "-key")), T0 + 7
    lookups: list[Answer] = [(key, None, "f", RESULTS[0])]

    def run() -> None:
        recorder = _modes.Recorder(10)
        recorder.record(snap, at, lookups)
        recorder.record(snap, at, lookups)
        recorder.record_one(snap, key, None, "f", RESULTS[0])
        recorder.take(1)
        recorder.record(snap, at, lookups * 20)  # no room

    run()
    gc.collect()
    before = [sys.getrefcount(o) for o in (snap, key, lookups)]
    for _ in range(50):
        run()
    assert [sys.getrefcount(o) for o in (snap, key, lookups)] == before

    class Holder:
        recorder: Any = None

    holder = Holder()
    holder.recorder = _modes.Recorder(10)
    holder.recorder.record(holder, T0, [GOOD])  # recorder -> entry -> holder -> recorder
    alive = weakref.ref(holder)
    del holder
    gc.collect()
    assert alive() is None


def test_recorded_lookups_of_plain_values_are_left_out_of_the_garbage_collector() -> None:
    """A recorded lookup waits for the pipeline's next turn: one of strs, None and a
    Decision of plain values is untracked (it can be in no cycle, and each collection would
    walk it); one that could be in a cycle stays tracked, and a cycle through it is still
    collected."""
    snap = snapshots()[0]
    recorder = _modes.Recorder(100)
    plain: Answer = ("".join(("u", "1")), None, "f", RESULTS[0])
    keyed: Answer = ("u2", "bk", "f", RESULTS[2])
    assert gc.is_tracked(plain) and gc.is_tracked(keyed)  # a Decision is a tuple subclass
    recorder.record(snap, T0, [plain, keyed])
    assert not gc.is_tracked(plain) and not gc.is_tracked(keyed)

    class Loose(tuple[Any, ...]):
        """A result with a __dict__: it could hold a path back to its lookup."""

    loose: Any = Loose(("on", "rule", None, 7))
    holding: Any = ("u3", None, "f", loose)
    listing: Any = ("u4", None, "f", ("on", "rule", None, [1]))
    recorder.record(snap, T0, [holding, listing])
    assert gc.is_tracked(holding) and gc.is_tracked(listing)
    loose.back = holding  # lookup -> result -> its __dict__ -> lookup

    class Marker:
        pass

    loose.marker = Marker()
    alive = weakref.ref(loose.marker)
    recorder.take(None)
    del loose, holding
    gc.collect()
    assert alive() is None
    recorder.record_one(snap, "u5", None, "f", RESULTS[1])
    ((_, _, (made,)),) = recorder.take(None)
    assert made == ("u5", None, "f", RESULTS[1]) and not gc.is_tracked(made)


def test_the_recorder_takes_exact_lists_only() -> None:
    """A list subclass could run Python code (its __add__, __iter__, __del__) while the
    recorder joins it with the entry it holds, and free that entry under it (the audit's
    use-after-free): refused, and a list its caller changed afterwards cannot leave the
    recorder's size off for good."""
    snap = snapshots()[0]
    recorder = _modes.Recorder(100)

    class Sneaky(list[Any]):
        def __add__(self, other: Any) -> Any:
            recorder.take(None)
            return [*self, *other]

    recorder.record(snap, T0, [GOOD])
    with pytest.raises(TypeError, match="lookups must be a list"):
        recorder.record(snap, T0, Sneaky([GOOD]))
    grown: list[Answer] = [GOOD]
    recorder.record(snap, T0 + 1, grown)
    grown += [GOOD] * 5  # against the contract, after recording
    assert len(recorder.take(None)) == 2 and recorder.size == 0
    shrunk: list[Answer] = [GOOD, GOOD, GOOD]
    recorder.record(snap, T0 + 2, shrunk)
    shrunk.clear()
    recorder.take(None)
    assert recorder.size == 0
