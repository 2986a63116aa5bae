"""Every adapter hands its evaluations to the same recorder, and each evaluation of a known
flag becomes one impression (debug mode): fader.v1 lookups, the fast lane and flagd."""

from __future__ import annotations

from fader.pb.fader.v1 import evaluation_pb2 as pb
from fader.snapshot.loader import build_snapshot

from sidecar.api.fader_v1 import Lookups
from sidecar.api.fastlane import Handlers
from sidecar.api.flagd_service import FlagdResolver
from sidecar.delivery.store import Store
from sidecar.telemetry.impressions import Impression, ImpressionModes, Mode, Recorder
from sidecar.telemetry.metrics import Metrics
from tests.core.builders import core_for
from tests.fader.rules.builders import flag, snapshot_doc


def setup() -> tuple[Store, Metrics, Recorder]:
    store = Store()
    store.swap(build_snapshot(snapshot_doc(flag("f"), flag("g"), version=9)))
    return store, Metrics(lambda: store.current), Recorder(1_000)


def recorded(recorder: Recorder) -> list[tuple[str, str | None, str, str]]:
    """(key, bucketing key, flag, treatment) of the impressions the recorded lookups make."""
    made: list[Impression] = []
    modes = ImpressionModes(Mode.DEBUG)
    for snap, time_ms, lookups in recorder.take(None):
        assert snap.version == 9 and time_ms > 0
        made += modes.process(snap, time_ms, lookups)
    return [(i.key, i.bucketing_key, i.flag, i.treatment) for i in made]


def test_fader_v1_lookups() -> None:
    store, metrics, recorder = setup()
    lookups = Lookups(core_for(store, metrics=metrics, recorder=recorder))
    lookups.get_treatment(pb.GetTreatmentRequest(key="a", flag="f", bucketing_key="b"))
    lookups.get_treatments(pb.GetTreatmentsRequest(key="c", flags=["f", "missing", "g"]))
    items = [pb.BatchItem(key="d", flag="g"), pb.BatchItem(key="e", flag="missing")]
    lookups.evaluate_batch(pb.EvaluateBatchRequest(items=items))
    assert recorded(recorder) == [
        ("a", "b", "f", "on"),
        ("c", None, "f", "on"),
        ("c", None, "g", "on"),
        ("d", None, "g", "on"),
    ]


def test_fast_lane_handlers() -> None:
    store, metrics, recorder = setup()
    handlers = Handlers(core_for(store, metrics=metrics, recorder=recorder))
    handlers.treatment({"key": "a", "flag": "f"})
    handlers.treatments({"key": "b", "flags": ["g", "missing"]})
    handlers.batch({"items": [{"key": "c", "flag": "f", "bucketing_key": "x"}]})
    assert recorded(recorder) == [
        ("a", None, "f", "on"),
        ("b", None, "g", "on"),
        ("c", "x", "f", "on"),
    ]


def test_flagd_resolver() -> None:
    store, metrics, recorder = setup()
    resolver = FlagdResolver(core_for(store, metrics=metrics, recorder=recorder))
    snap = store.current
    assert snap is not None
    resolver.resolve(snap, "a", ["f"], None, "flagd.Resolve", 0.0)
    resolver.resolve(snap, "a", ["missing", "g"], None, "flagd.ResolveAll", 0.0)
    assert recorded(recorder) == [("a", None, "f", "on"), ("a", None, "g", "on")]
