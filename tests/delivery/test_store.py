"""The Store: forward-only versions, forced rollback, listeners, no mixed answers."""

from __future__ import annotations

import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

import pytest
from fader.snapshot.loader import build_snapshot
from fader.snapshot.snapshot import Snapshot

from sidecar.delivery.reaper import Reaper
from sidecar.delivery.store import StaleVersionError, Store
from tests.fader.rules.builders import condition, flag, snapshot_doc


def _snap(version: int, treatment: str = "on") -> Snapshot:
    return build_snapshot(
        snapshot_doc(flag("f", condition(partitions={treatment: 100})), version=version)
    )


def test_versions_only_move_forward_unless_forced() -> None:
    store = Store()
    assert store.current is None
    first, second = _snap(2), _snap(3)
    assert store.swap(first) is None
    assert store.swap(second) is first
    with pytest.raises(StaleVersionError, match="not newer"):
        store.swap(_snap(3))
    with pytest.raises(StaleVersionError):
        store.swap(_snap(1))
    assert store.current is second
    rollback = _snap(1)
    store.swap(rollback, force=True)
    assert store.current is rollback


def test_listeners_see_previous_and_current_and_can_unsubscribe() -> None:
    store = Store()
    seen: list[tuple[int | None, int]] = []
    unsubscribe = store.subscribe(
        lambda prev, cur: seen.append((prev.version if prev else None, cur.version))
    )
    store.swap(_snap(1))
    store.swap(_snap(2))
    unsubscribe()
    store.swap(_snap(3))
    assert seen == [(None, 1), (1, 2)]


def test_a_failing_listener_does_not_undo_the_swap() -> None:
    store = Store()

    def boom(prev: Snapshot | None, cur: Snapshot) -> None:
        raise RuntimeError("listener bug")

    store.subscribe(boom)
    snap = _snap(1)
    store.swap(snap)
    assert store.current is snap


def test_changed_flags() -> None:
    a = build_snapshot(snapshot_doc(flag("f"), flag("g"), version=1, segments={"s": ["x"]}))
    b_doc = snapshot_doc(flag("f"), flag("h"), version=2, segments={"s": ["y"]})
    b_doc["flags"][0]["conditions"][0]["matcherGroup"]["matchers"][0] = {
        "matcherType": "IN_SEGMENT",
        "negate": False,
        "userDefinedSegmentMatcherData": {"segmentName": "s"},
    }
    b = build_snapshot(b_doc)
    assert b.changed_flags(a) == ("f", "g", "h")
    assert a.changed_flags(None) == ("f", "g")
    assert a.changed_flags(a) == ()


def _pair(version: int) -> Snapshot:
    """Two flags that both answer "v<version>": a reader answering them from one snapshot
    always sees the pair agree with each other and with the snapshot's version."""
    t = f"v{version}"
    doc = snapshot_doc(
        flag("a", condition(partitions={t: 100})),
        flag("b", condition(partitions={t: 100})),
        version=version,
    )
    return build_snapshot(doc)


def _swap_and_let_the_reaper_pass(store: Store, version: int) -> None:
    """Swap to ``version`` (retiring the snapshot readers hold), then retire one more that
    nobody holds and wait until the reaper has taken that one apart: the reaper works
    through retired snapshots in order, so by then it has judged the held one too."""
    store.swap(_pair(version))
    marker = _pair(version + 1)
    released = weakref.ref(marker.flags["a"])
    store.swap(marker)
    del marker
    store.swap(_pair(version + 2))  # retires the marker, referenced by no one
    deadline = time.monotonic() + 5
    while released() is not None:
        assert time.monotonic() < deadline, "the reaper did not free an unreferenced snapshot"
        time.sleep(0.002)


def test_concurrent_readers_never_see_a_mix() -> None:
    """Reader threads each take ``store.current`` and answer flag "a"; then, while they
    wait, the writer swaps and the reaper runs; then they answer flag "b" from the snapshot
    they took. Every round, in every reader, both answers must come from that one version.

    The swap lands inside every read (barriers, not luck), and a failed check in a reader
    fails the test (the readers' futures re-raise). Mutant this catches, every run: a
    Store.swap that frees or rewrites the snapshot it replaces instead of retiring it to
    the reaper (a reader's second answer then comes from another version, or none).
    """
    readers, rounds = 2, 10
    store = Store(Reaper(poll_seconds=0.002))
    store.swap(_pair(0))
    took, swapped = (
        threading.Barrier(readers + 1, timeout=10),
        threading.Barrier(readers + 1, timeout=10),
    )

    def read(rounds: int) -> int:
        checked = 0
        for _ in range(rounds):
            snap = store.current
            assert snap is not None
            version = snap.version
            first = snap.evaluate("k", "a")
            took.wait()
            swapped.wait()
            second = snap.evaluate("k", "b")
            assert (first.treatment, second.treatment) == (f"v{version}", f"v{version}"), (
                f"one reader of version {version} answered {first} then {second}"
            )
            assert snap.version == version
            checked += 1
        return checked

    def reader() -> int:
        try:
            return read(rounds)
        except BaseException:
            took.abort()  # nobody waits for a reader that has failed
            swapped.abort()
            raise

    with ThreadPoolExecutor(readers) as pool:
        futures = [pool.submit(reader) for _ in range(readers)]
        try:
            for round_ in range(rounds):
                took.wait()
                _swap_and_let_the_reaper_pass(store, 3 * round_ + 1)
                swapped.wait()
        except threading.BrokenBarrierError:
            pass  # a reader failed: its future says why
        errors = [future.exception(timeout=20) for future in futures]
    failures = [e for e in errors if not isinstance(e, threading.BrokenBarrierError | None)]
    if failures:
        raise failures[0]  # the reader's own assertion, not the barrier it broke for others
    assert errors == [None] * readers
    assert [future.result() for future in futures] == [rounds] * readers
    assert store.current is not None and store.current.version == 3 * rounds


def test_a_retired_snapshot_is_freed_without_the_cyclic_collector() -> None:
    """Snapshots are frozen out of the GC; their dependency cycles must be cut on release."""
    import gc
    import weakref

    dependency = {
        "matcherType": "IN_SPLIT_TREATMENT",
        "dependencyMatcherData": {"split": "b", "treatments": ["on"]},
    }
    in_rbs = {
        "matcherType": "IN_RULE_BASED_SEGMENT",
        "userDefinedSegmentMatcherData": {"segmentName": "r"},
    }
    rbs = {
        "name": "r",
        "conditions": [{"matcherGroup": {"combiner": "AND", "matchers": [dependency]}}],
        "excluded": {"keys": [], "segments": [{"name": "r2", "type": "rule-based"}]},
    }
    rbs2 = {"name": "r2", "conditions": [], "excluded": {"keys": ["x"], "segments": []}}
    doc = snapshot_doc(
        flag("a", condition(dependency, in_rbs), prerequisites=[{"n": "b", "ts": ["on"]}]),
        flag("b"),
        version=1,
        rbs=[rbs, rbs2],
    )
    store = Store()
    store.swap(build_snapshot(doc))
    assert store.current is not None
    assert store.current.evaluate("k", "a").label == "rule"
    compiled = weakref.ref(store.current.flags["a"])
    gc.disable()
    try:
        store.swap(_snap(2))
        deadline = time.monotonic() + 5
        while compiled() is not None and time.monotonic() < deadline:
            time.sleep(0.01)  # the reaper frees it in the background
        assert compiled() is None
    finally:
        gc.enable()


def test_a_snapshot_in_use_is_not_released() -> None:
    """The reaper waits until no request holds the old snapshot.

    Mutant this catches, every run: a reaper whose reference-count threshold is off by one
    (it would take apart a snapshot that one request still reads)."""
    reaper = Reaper(poll_seconds=0.002)
    store = Store(reaper)
    store.swap(_snap(1, "old"))
    in_flight = store.current
    assert in_flight is not None
    marker = _snap(2, "new")
    released = weakref.ref(marker.flags["f"])
    store.swap(marker)  # retires the in-flight snapshot
    del marker
    store.swap(_snap(3, "newer"))  # retires the marker, which nobody holds
    deadline = time.monotonic() + 5
    while released() is not None:  # the reaper has judged both retired snapshots
        assert time.monotonic() < deadline, "the reaper did not free an unreferenced snapshot"
        time.sleep(0.002)
    # everything the reaper judged free is freed: a snapshot it wrongly took for free would
    # be taken apart by now (the marker alone can be freed first, the other still queued)
    assert reaper.wait_idle(5)
    assert reaper.retired == 1  # the in-flight snapshot, waiting for its request
    assert in_flight.evaluate("k", "f").treatment == "old"
    del in_flight
