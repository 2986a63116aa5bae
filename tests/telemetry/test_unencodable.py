"""One record that cannot be encoded is taken out of its batch alone; the rest encode."""

from __future__ import annotations

import pytest
from fader.pb.fader.v1 import telemetry_pb2 as pb

from sidecar.telemetry.batches import (
    UNENCODABLE,
    Batch,
    decode,
    encode,
    remove_unencodable,
    to_request,
)
from sidecar.telemetry.impressions import Impression


def _impression(key: str, time_ms: int = 1_700_000_000_000) -> Impression:
    return Impression(key, None, "f", "on", "rule", 1, time_ms, None, 3)


def test_only_the_bad_records_are_set_aside() -> None:
    good = [_impression(f"user-{i}") for i in range(3)]
    lone_surrogate, too_late = _impression("\udc80"), _impression("late", time_ms=2**70)
    event = ("user-1", "user", "buy", 9.5, "", 1_700_000_000_000)
    batch = Batch(
        id="b1",
        impressions=[good[0], lone_surrogate, good[1], too_late, good[2]],
        counts=[("f", 1_699_999_200_000, 4)],
        unique_keys=[("f", ["user-1", "\ud800"])],
        events=[event],
        size=1000,
    )
    for attempt in (encode, lambda b: to_request(b, "pod", "debug")):
        with pytest.raises(UNENCODABLE):
            attempt(batch)
    bad = remove_unencodable(batch)
    assert bad.id == "b1"
    assert bad.impressions == [lone_surrogate, too_late]
    assert bad.unique_keys == [("f", ["user-1", "\ud800"])]
    assert bad.records() == {"impressions": 2, "counts": 0, "unique_keys": 2, "events": 0}
    assert batch.impressions == good and batch.events == [event] and batch.size == 1000
    assert decode(encode(batch)).impressions == good
    request = pb.UploadRequest.FromString(to_request(batch, "pod", "debug"))
    assert [i.key for i in request.impressions] == ["user-0", "user-1", "user-2"]
    assert len(request.counts) == 1 and len(request.events) == 1


def test_a_clean_batch_loses_nothing() -> None:
    batch = Batch(id="b2", impressions=[_impression("a"), _impression("b")])
    assert len(remove_unencodable(batch)) == 0
    assert len(batch) == 2
