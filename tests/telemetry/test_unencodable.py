"""A record that cannot be encoded is left out alone and counted; the rest are uploaded.
Impressions are encoded when they are made (an unencodable one is counted there); counts,
unique keys and events when their batch is spooled or sent (the bad ones are set aside)."""

from __future__ import annotations

import pytest
from fader.pb.fader.v1 import telemetry_pb2 as pb
from fader.rules.result import Decision
from fader.snapshot.loader import build_snapshot

from sidecar.telemetry.batches import (
    UNENCODABLE,
    Batch,
    decode,
    encode,
    remove_unencodable,
    to_request,
)
from sidecar.telemetry.impressions import now_ms
from tests.fader.rules.builders import flag, snapshot_doc
from tests.telemetry.test_pipeline import SNAP, ScriptedCollector, pipeline, run, serve, until


def test_only_the_bad_records_are_set_aside() -> None:
    event = ("user-1", "user", "buy", 9.5, "", 1_700_000_000_000)
    bad_event = ("\udc80", "user", "buy", None, "", 1_700_000_000_000)
    batch = Batch(
        id="b1",
        counts=[("f", 1_699_999_200_000, 4), ("\ud800", 1_699_999_200_000, 1)],
        unique_keys=[("f", ["user-1", "\ud800"]), ("g", ["user-2"])],
        events=[event, bad_event],
        size=1000,
    )
    for attempt in (encode, lambda b: to_request(b, "pod", "debug")):
        with pytest.raises(UNENCODABLE):
            attempt(batch)
    bad = remove_unencodable(batch)
    assert bad.id == "b1"
    assert bad.counts == [("\ud800", 1_699_999_200_000, 1)]
    assert bad.unique_keys == [("f", ["user-1", "\ud800"])]
    assert bad.events == [bad_event]
    assert bad.records() == {"impressions": 0, "counts": 1, "unique_keys": 2, "events": 1}
    assert batch.events == [event] and batch.unique_keys == [("g", ["user-2"])]
    assert batch.size == 1000
    assert decode(encode(batch)) == batch
    request = pb.UploadRequest.FromString(to_request(batch, "pod", "debug"))
    assert [c.flag for c in request.counts] == ["f"] and len(request.events) == 1


def test_a_clean_batch_loses_nothing() -> None:
    batch = Batch(id="b2", counts=[("f", 0, 1)], events=[("a", "user", "buy", None, "", 5)])
    assert len(remove_unencodable(batch)) == 0
    assert len(batch) == 2


def test_an_impression_that_cannot_be_encoded_is_counted_and_the_rest_sent() -> None:
    """A key that is not valid Unicode (a lone surrogate) and a snapshot version out of
    uint64 make impressions no upload can hold: each is counted as dropped, unencodable;
    every other impression of the same requests arrives."""
    huge = build_snapshot(snapshot_doc(flag("f"), version=5))
    huge.version = 2**64  # no loader accepts it: set after

    async def scenario() -> None:
        collector = ScriptedCollector()
        _, port = await serve(collector)
        pipe = pipeline(port)
        await pipe.start()
        on = Decision("on", "rule", None, 7)
        pipe.recorder.record(SNAP, now_ms(), [("a", None, "f", on), ("\udc80", None, "f", on)])
        pipe.recorder.record(huge, now_ms(), [("b", None, "f", on)])
        pipe.recorder.record(SNAP, now_ms() + 1, [("c", None, "f", on)])
        await until(lambda: pipe.stats.sent.get("impressions") == 2, pipe=pipe)
        assert collector.impressions == ["a", "c"]
        assert pipe.stats.dropped == {("impressions", "unencodable"): 2}
        assert pipe.stats.queued["impressions"] == 4

    run(scenario)
