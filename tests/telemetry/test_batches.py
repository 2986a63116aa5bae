"""Batches: cut by records and bytes, round-trip through the spool's msgpack, to protobuf."""

from __future__ import annotations

import pytest

from sidecar.telemetry.batches import Batch, BatchBuilder, decode, encode, to_request
from sidecar.telemetry.impressions import Impression

IMP = Impression("u1", None, "f", "on", "rule", 7, 1_000, None, 3)


def test_cut_by_record_count() -> None:
    builder = BatchBuilder(max_records=3, max_bytes=1 << 20)
    builder.add_impressions([IMP] * 4)
    builder.add_impressions([IMP] * 3)
    assert [len(b) for b in builder.sealed] == [3, 3]
    assert builder.open_records == 1
    builder.seal()
    assert [len(b) for b in builder.sealed] == [3, 3, 1]
    assert len({b.id for b in builder.sealed}) == 3


def test_cut_by_bytes() -> None:
    builder = BatchBuilder(max_records=1000, max_bytes=200)
    big = IMP._replace(key="k" * 150)
    builder.add_impressions([big])
    assert builder.sealed == []
    builder.add_impressions([big])
    assert [len(b) for b in builder.sealed] == [2]


def test_seal_of_nothing_makes_no_batch() -> None:
    builder = BatchBuilder(10, 1000)
    builder.seal()
    assert builder.sealed == []


def test_unique_keys_are_split_to_fit_the_record_limit() -> None:
    builder = BatchBuilder(max_records=4, max_bytes=1 << 20)
    builder.add_unique_keys([("f", [f"k{i}" for i in range(10)])])
    builder.seal()
    assert [b.unique_keys for b in builder.sealed] == [
        [("f", ["k0", "k1", "k2", "k3"])],
        [("f", ["k4", "k5", "k6", "k7"])],
        [("f", ["k8", "k9"])],
    ]


def test_spool_form_round_trips() -> None:
    batch = Batch(
        id="b1",
        impressions=[IMP, IMP._replace(bucketing_key="acct", previous_time_ms=900)],
        counts=[("f", 3_600_000, 5)],
        unique_keys=[("g", ["a", "b"])],
        events=[("u1", "user", "buy", 4.5, '{"x":1}', 1_234), ("u2", "user", "view", None, "", 5)],
        size=99,
    )
    assert decode(encode(batch)) == batch
    with pytest.raises(ValueError, match="not a spooled batch"):
        decode(b"\x93\x01\x02")


def test_to_request() -> None:
    batch = Batch(id="b1", impressions=[IMP], events=[("u1", "user", "buy", None, "", 5)])
    request = to_request(batch, "pod-1", "debug")
    assert (request.batch_id, request.sidecar_id, request.impressions_mode) == (
        "b1",
        "pod-1",
        "debug",
    )
    imp = request.impressions[0]
    assert (imp.key, imp.bucketing_key, imp.previous_time_ms, imp.snapshot_version) == (
        "u1",
        "",
        0,
        3,
    )
    assert not request.events[0].HasField("value")
