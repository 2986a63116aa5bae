"""The evaluation core: one snapshot per request, every evaluation counted, the request's
impressions recorded once, its latency observed, NotReady before the first snapshot."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fader.snapshot.loader import build_snapshot
from fader.snapshot.snapshot import Snapshot

from sidecar.core.evaluator import Evaluator, Lookup
from sidecar.core.refusals import NotReady
from sidecar.delivery.store import Store
from sidecar.telemetry.impressions import Recorder
from sidecar.telemetry.metrics import UNKNOWN_FLAG, Metrics
from tests.fader.rules.builders import condition, flag, matcher, snapshot_doc

PRO = matcher("WHITELIST", "plan", whitelistMatcherData={"whitelist": ["pro"]})


def versioned(version: int, treatment: str) -> Snapshot:
    """Flag `f` answers `treatment` to plan=pro and `off` otherwise; `g` answers `on`."""
    f = flag("f", condition(PRO, partitions={treatment: 100}))
    return build_snapshot(snapshot_doc(f, flag("g"), version=version))


class SwapsWhenRead(dict[str, Any]):
    """Attributes that swap the store to `then` the first time the engine reads them: a
    swap landing in the middle of a request, at a known point, every time."""

    def __init__(self, store: Store, then: Snapshot, **values: Any) -> None:
        super().__init__(values)
        self._store, self._then = store, then

    def get(self, name: str, default: Any = None) -> Any:
        if self._store.current is not self._then:
            self._store.swap(self._then)
        return super().get(name, default)


def test_a_request_is_answered_from_one_snapshot_even_when_a_swap_lands_inside_it() -> None:
    """Mutant this catches: the core reading `store.current` per lookup instead of using the
    snapshot the request took (items after the swap would answer from version 2)."""
    store = Store()
    store.swap(versioned(1, "on"))
    evaluator = Evaluator(store, Metrics(lambda: store.current))
    snap = evaluator.snapshot()
    swapping = SwapsWhenRead(store, versioned(2, "v2"), plan="pro")
    lookups = [
        ("k1", None, "f", swapping),
        ("k2", None, "f", {"plan": "pro"}),
        ("k3", None, "g", None),
    ]
    answers = evaluator.evaluate(snap, lookups, "EvaluateBatch", 0.0)
    assert store.current is not None and store.current.version == 2  # the swap did land
    assert [(a[0], a[3].treatment) for a in answers] == [("k1", "on"), ("k2", "on"), ("k3", "on")]
    assert {a[3].change_number for a in answers} == {7}


def test_not_ready_before_the_first_snapshot() -> None:
    evaluator = Evaluator(Store(), Metrics(lambda: None))
    with pytest.raises(NotReady, match="no snapshot is active yet"):
        evaluator.snapshot()


def test_each_evaluation_is_counted_and_the_request_timed_once() -> None:
    store = Store()
    store.swap(versioned(1, "on"))
    metrics = Metrics(lambda: store.current)
    evaluator = Evaluator(store, metrics)
    lookups: list[Lookup] = [
        ("a", None, "f", {"plan": "pro"}),
        ("b", None, "f", None),
        ("c", None, "nope", None),
    ]
    evaluator.evaluate(evaluator.snapshot(), lookups, "GetTreatments", 0.0)
    merged = metrics.merged()
    assert merged.evaluations == {("f", "on"): 1, ("f", "off"): 1, (UNKNOWN_FLAG, "control"): 1}
    assert sum(merged.lookups["GetTreatments"].counts) == 1


def test_a_request_is_recorded_as_one_list_with_its_snapshot() -> None:
    store = Store()
    store.swap(versioned(3, "on"))
    recorder = Recorder(1_000)
    evaluator = Evaluator(store, Metrics(lambda: store.current), recorder)
    snap = evaluator.snapshot()
    answers = evaluator.evaluate(snap, [("a", "b", "f", None), ("a", "b", "g", None)], "x", 0.0)
    [(recorded_snap, time_ms, recorded)] = recorder.take(None)
    assert recorded_snap is snap and time_ms > 0
    assert recorded == answers
    assert [(k, bk, f, r.treatment) for k, bk, f, r in recorded] == [
        ("a", "b", "f", "off"),
        ("a", "b", "g", "on"),
    ]


def test_without_a_recorder_nothing_is_recorded_and_answers_are_the_same() -> None:
    store = Store()
    store.swap(versioned(1, "on"))
    evaluator = Evaluator(store, Metrics(lambda: store.current))
    answers = evaluator.evaluate(evaluator.snapshot(), [("a", None, "g", None)], "x", 0.0)
    assert answers[0][3].treatment == "on"


def test_a_single_lookup_is_counted_recorded_and_timed_like_a_list_of_one() -> None:
    store = Store()
    store.swap(versioned(1, "on"))
    metrics, recorder = Metrics(lambda: store.current), Recorder(1_000)
    evaluator = Evaluator(store, metrics, recorder)
    snap = evaluator.snapshot()
    start = time.time_ns() // 1_000_000
    result = evaluator.evaluate_one(snap, ("a", "b", "f", {"plan": "pro"}), "GetTreatment", 0.0)
    end = time.time_ns() // 1_000_000
    assert (result.treatment, result.label) == ("on", "rule")
    assert metrics.merged().evaluations == {("f", "on"): 1}
    assert sum(metrics.merged().lookups["GetTreatment"].counts) == 1
    [(recorded_snap, time_ms, answers)] = recorder.take(None)
    assert (recorded_snap, answers) == (snap, [("a", "b", "f", result)])
    assert start <= time_ms <= end  # recorded now, on the clock of time.time_ns
