"""Batches: cut by records and bytes between impression entries, round-trip through the
spool's msgpack (and read older spools), to protobuf."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest
from fader._modes import cut_entries, encode_impressions
from fader.pb.fader.v1 import telemetry_pb2 as pb

from sidecar.telemetry.batches import (
    IMPRESSIONS_FIELD,
    Batch,
    BatchBuilder,
    decode,
    encode,
    to_request,
)
from sidecar.telemetry.impressions import Impression, add_messages

IMP = Impression("u1", None, "f", "on", "rule", 7, 1_000, None, 3)


def entries(impressions: list[Impression]) -> bytes:
    return encode_impressions(impressions, IMPRESSIONS_FIELD)


def batch_of(impressions: list[Impression], **fields: Any) -> Batch:
    return Batch(
        impression_entries=[entries(impressions)],
        impression_count=len(impressions),
        **fields,
    )


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


def test_entries_are_cut_where_one_at_a_time_would_have_cut() -> None:
    """Entries added in chunks of any size make the batches that adding them one at a time
    makes: the same entries, counts and sizes (their bytes, exactly)."""
    pick = random.Random(3)
    for _ in range(200):
        limits = (pick.randrange(1, 9), pick.choice((1, 60, 150, 400, 1 << 20)))
        made = [random_impression(pick) for _ in range(pick.randrange(0, 30))]
        alone, chunked = BatchBuilder(*limits), BatchBuilder(*limits)
        for impression in made:
            alone.add_entries(entries([impression]), 1)
        start = 0
        while start < len(made):
            chunk = made[start : start + pick.randrange(1, 12)]
            chunked.add_entries(entries(chunk), len(chunk))
            start += len(chunk)
        alone.seal()
        chunked.seal()
        shape = [(b"".join(b.impression_entries), b.impression_count, b.size) for b in alone.sealed]
        assert [
            (b"".join(b.impression_entries), b.impression_count, b.size) for b in chunked.sealed
        ] == shape
        assert b"".join(b"".join(b.impression_entries) for b in alone.sealed) == entries(made)
        for batch in alone.sealed[:-1]:  # each sealed at the entry that reached a limit
            full = batch.impression_count == limits[0] or batch.size >= limits[1]
            assert full and batch.size - entry_size(batch) < limits[1]


def entry_size(batch: Batch) -> int:
    """The bytes of the batch's last entry."""
    data, start = b"".join(batch.impression_entries), 0
    for _ in range(batch.impression_count - 1):
        start, _taken = cut_entries(data, IMPRESSIONS_FIELD, start, 1, len(data))
    return len(data) - start


def test_cut_entries_walks_whole_entries_only() -> None:
    data = entries([IMP, IMP._replace(key="k" * 300), IMP])
    first = len(entries([IMP]))
    assert cut_entries(data, IMPRESSIONS_FIELD, 0, 10, 10**6) == (len(data), 3)
    assert cut_entries(data, IMPRESSIONS_FIELD, 0, 1, 10**6) == (first, 1)
    assert cut_entries(data, IMPRESSIONS_FIELD, 0, 10, 1) == (first, 1)
    assert cut_entries(data, IMPRESSIONS_FIELD, first, 10, 5) == (len(data) - first, 1)
    assert cut_entries(data, IMPRESSIONS_FIELD, len(data), 10, 10) == (len(data), 0)
    assert cut_entries(data, IMPRESSIONS_FIELD, 0, 0, 10) == (0, 0)
    truncated, tag_only = data[:-1], entries([IMP])[:1]
    for broken, at in (
        (truncated, len(data) - first),
        (data[1:], 0),
        (b"\x22\xff", 0),
        (tag_only, 0),
    ):
        with pytest.raises(ValueError, match=f"no entry of field 4 at byte {at}$"):
            cut_entries(broken, IMPRESSIONS_FIELD, 0, 10, 10**6)
    with pytest.raises(ValueError, match="no entry of field 3 at byte 0"):
        cut_entries(data, 3, 0, 10, 10**6)
    with pytest.raises(ValueError, match="outside"):
        cut_entries(data, IMPRESSIONS_FIELD, len(data) + 1, 10, 10)
    with pytest.raises(TypeError):
        not_bytes: Any = "text"
        cut_entries(not_bytes, IMPRESSIONS_FIELD, 0, 10, 10)


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
    batch = batch_of(
        [IMP, IMP._replace(bucketing_key="acct", previous_time_ms=900)],
        id="b1",
        counts=[("f", 3_600_000, 5)],
        unique_keys=[("g", ["a", "b"])],
        events=[("u1", "user", "buy", 4.5, '{"x":1}', 1_234), ("u2", "user", "view", None, "", 5)],
        size=99,
    )
    assert decode(encode(batch)) == batch
    with pytest.raises(ValueError, match="not a spooled batch"):
        decode(b"\x93\x01\x02")


def test_a_spool_of_an_older_version_is_read() -> None:
    """Spools written before impressions were encoded when made hold them as rows, and
    the oldest had no source and mode: both are read, the rows encoded."""
    rows = [IMP, IMP._replace(key="u2", label=None)]
    for tail in ([], ["python-10.7.0", "debug"]):
        old = msgpack.packb(["b1", [list(r) for r in rows], [], [], [], 70, *tail])
        batch = decode(old)
        assert (batch.impression_entries, batch.impression_count) == ([entries(rows)], 2)
        assert (batch.size, batch.source) == (70, tail[0] if tail else "")


def test_spooled_impressions_that_are_not_whole_entries_are_refused() -> None:
    good = encode(batch_of([IMP, IMP], id="b1"))
    assert decode(good).impression_count == 2
    fields = msgpack.unpackb(good)
    for broken in (entries([IMP])[:-1], b"\x0a\x00", entries([IMP]) + b"\x22"):
        fields[1] = broken
        with pytest.raises(ValueError, match="not a spooled batch"):
            decode(msgpack.packb(fields))


def test_to_request() -> None:
    batch = batch_of([IMP], id="b1", events=[("u1", "user", "buy", None, "", 5)])
    request = pb.UploadRequest.FromString(to_request(batch, "pod-1", "debug"))
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


def whole_message(batch: Batch, impressions: list[Impression], sidecar_id: str, mode: str) -> bytes:
    """The upload of `batch`, holding `impressions`, as it was built before impressions
    were encoded in C: one message, `add_messages`, serialized at once by the protobuf
    runtime (the oracle)."""
    request = pb.UploadRequest(
        batch_id=batch.id,
        sidecar_id=sidecar_id,
        impressions_mode=batch.mode or mode,
        source=batch.source,
    )
    add_messages(request.impressions, impressions)
    for flag, hour, count in batch.counts:
        request.counts.add(flag=flag, hour_ms=hour, count=count)
    for flag, keys in batch.unique_keys:
        request.unique_keys.add(flag=flag, keys=keys)
    for key, traffic_type, event_type, value, properties, timestamp in batch.events:
        event = request.events.add(
            key=key,
            traffic_type=traffic_type,
            event_type=event_type,
            properties_json=properties,
            timestamp_ms=timestamp,
        )
        if value is not None:
            event.value = value
    return request.SerializeToString()


def random_impression(pick: random.Random) -> Impression:
    def text() -> str:
        return pick.choice(("", "u", "user-1", "ü", "ключ", "🙂x", "k" * 200, "a\x00b"))

    def number(bits: int, signed: bool = True) -> int:
        low = -(2 ** (bits - 1)) if signed else 0
        high = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
        return pick.choice((0, 1, 127, 128, 300, 2**31, low, high, pick.randint(low, high)))

    return Impression(
        text(),
        pick.choice((None, "", "b", "ü")),
        text(),
        text(),
        pick.choice((None, "", "rule", "default rule")),
        number(64),
        number(64),
        pick.choice((None, number(64))),
        number(64, signed=False),
    )


def test_the_upload_bytes_are_those_of_the_whole_message() -> None:
    """Random batches (every field empty or set, multi-byte UTF-8, ints at their ranges'
    ends and negative): to_request's bytes equal the oracle's, byte for byte."""
    pick = random.Random(5)
    for _ in range(300):
        made = [random_impression(pick) for _ in range(pick.randrange(0, 6))]
        batch = batch_of(
            made,
            id=pick.choice(("", "b1")),
            counts=[("f", 1_699_999_200_000, pick.randrange(1, 9))] * pick.randrange(0, 2),
            unique_keys=[("f", ["u1", "u2"])] * pick.randrange(0, 2),
            events=[("u1", "user", "buy", pick.choice((None, 1.5)), "", 5)] * pick.randrange(2),
            source=pick.choice(("", "python-10.7.0")),
            mode=pick.choice(("", "optimized")),
        )
        assert to_request(batch, "pod-1", "debug") == whole_message(batch, made, "pod-1", "debug")


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        (0, None, TypeError),
        (0, b"\xff", ValueError),
        (2, 5, TypeError),
        (3, None, TypeError),
        (4, 7, TypeError),
        (0, "\udc80", ValueError),
        (4, "\ud800", ValueError),
        (5, 2**63, ValueError),
        (5, -(2**63) - 1, ValueError),
        (5, "7", TypeError),
        (5, 1.5, TypeError),
        (6, None, TypeError),
        (6, True, TypeError),
        (6, 2**70, ValueError),
        (7, 2**64, ValueError),
        (8, -1, ValueError),
        (8, 2**64, ValueError),
        (8, 3.0, TypeError),
    ],
)
def test_what_the_runtime_refused_is_refused_alike(field: int, value: object, error: type) -> None:
    """A record the protobuf runtime could not hold raises the same kind of error (one of
    UNENCODABLE), and a builder given it adds nothing of its list."""
    bad: Any = list(IMP)
    bad[field] = value
    made = [IMP, Impression(*bad)]
    with pytest.raises(error):
        whole_message(Batch(id="b"), made, "pod", "debug")
    with pytest.raises(error):
        entries(made)
    builder = BatchBuilder(10, 1 << 20)
    with pytest.raises(error):
        builder.add_impressions(made)
    builder.seal()
    assert builder.open_records == 0 and builder.sealed == []


def test_encode_impressions_refuses_what_is_not_an_impression() -> None:
    wrong: list[Any] = [None, (), tuple(IMP)[:8], [*IMP], "impression"]
    for item in wrong:
        with pytest.raises(TypeError):
            encode_impressions([IMP, item], 4)
    arguments: list[Any] = [((IMP,), 4), ([IMP], 0), ([IMP], 2**29), ([IMP], "4"), ([IMP],)]
    for args in arguments:
        with pytest.raises((TypeError, ValueError)):
            encode_impressions(*args)
    assert encode_impressions([], 4) == b""
    fields: Any = {"key": b"u1", "label": "r\xc3\xa9gle".encode("latin-1")}
    as_bytes = IMP._replace(**fields)
    batch = batch_of([as_bytes], id="b")  # the runtime took UTF-8 bytes for strings
    assert to_request(batch, "pod", "debug") == whole_message(batch, [as_bytes], "pod", "debug")
