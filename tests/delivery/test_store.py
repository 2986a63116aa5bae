"""The Store: forward-only versions, forced rollback, listeners, no mixed answers."""

from __future__ import annotations

import threading
import time

import pytest
from fader.snapshot.loader import build_snapshot
from fader.snapshot.snapshot import Snapshot

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


def test_concurrent_readers_never_see_a_mix() -> None:
    """Each snapshot's two flags agree on the version's treatment; readers check the pair."""
    store = Store()

    def pair(version: int) -> Snapshot:
        t = f"v{version}"
        doc = snapshot_doc(
            flag("a", condition(partitions={t: 100})),
            flag("b", condition(partitions={t: 100})),
            version=version,
        )
        return build_snapshot(doc)

    store.swap(pair(0))
    stop = threading.Event()
    mixed: list[tuple[str, str]] = []

    def reader() -> None:
        while not stop.is_set():
            snap = store.current
            assert snap is not None
            a, b = snap.evaluate("k", "a").treatment, snap.evaluate("k", "b").treatment
            if a != b or a != f"v{snap.version}":
                mixed.append((a, b))

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for version in range(1, 200):
        store.swap(pair(version))
    stop.set()
    for t in threads:
        t.join()
    assert mixed == []
    assert store.current is not None and store.current.version == 199


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
    """The reaper waits until no request holds the old snapshot."""
    store = Store()
    store.swap(_snap(1, "old"))
    in_flight = store.current
    assert in_flight is not None
    store.swap(_snap(2, "new"))
    time.sleep(0.3)
    assert in_flight.evaluate("k", "f").treatment == "old"
    del in_flight
