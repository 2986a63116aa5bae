"""sidecar.plumbing._batchwire against upb and against the Python it replaced.

The reader must accept and refuse exactly the requests upb does, with upb's reason, and read
the same fields; it must never crash, whatever the bytes. The handler built on it must answer
what the Python reading of upb's objects answered (same bytes, same refusals, remembered
entries or not), and `tally` and `join_entries` must count and encode as `Counter.update` and
one entry per answer do.
"""

from __future__ import annotations

import gc
import random
import sys
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from operator import itemgetter
from time import perf_counter
from typing import Any

import pytest
from fader.pb.fader.v1 import evaluation_pb2 as pb
from fader.pb.fader.v1 import telemetry_pb2
from fader.rules.result import Decision
from fader.snapshot.loader import build_snapshot
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass

from sidecar.api.fader_v1 import (
    UNDECODABLE,
    VERSION_TAG,
    Lookups,
    _entry,
    _refusal,
    _varint,
    exposures_from_wire,
)
from sidecar.core.refusals import BadRequest
from sidecar.core.requests import (
    MAX_KEY_LENGTH,
    MAX_NAME_LENGTH,
    check_items,
    check_key,
    check_name,
)
from sidecar.delivery.store import Store
from sidecar.limits import RequestLimits
from sidecar.plumbing._batchwire import (
    WireError,
    join_entries,
    read_batch,
    read_exposures,
    tally,
)
from tests.core.builders import core_for
from tests.fader.rules.builders import condition, flag, matcher, snapshot_doc

UNLIMITED = 2**40


def _wire_batch_request() -> Any:
    """EvaluateBatchRequest with `BatchItem.attributes` declared `repeated bytes` (the map's
    wire form): what the handler parsed before the reader, and the reader's oracle. Same
    package and names as fader.v1's, in a pool of its own, so upb names the same type."""
    fields = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="tests/fader_v1_wire_batch.proto", package="fader.v1", syntax="proto3"
    )
    item = file.message_type.add(name="BatchItem")
    optional, repeated = fields.LABEL_OPTIONAL, fields.LABEL_REPEATED
    for number, name in enumerate(("key", "flag", "bucketing_key"), start=1):
        item.field.add(name=name, number=number, label=optional, type=fields.TYPE_STRING)
    item.field.add(name="attributes", number=4, label=repeated, type=fields.TYPE_BYTES)
    request = file.message_type.add(name="EvaluateBatchRequest")
    request.field.add(
        name="items",
        number=1,
        label=repeated,
        type=fields.TYPE_MESSAGE,
        type_name=".fader.v1.BatchItem",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return GetMessageClass(pool.FindMessageTypeByName("fader.v1.EvaluateBatchRequest"))


WireBatchRequest = _wire_batch_request()
Read = tuple[str, str | None, str, tuple[bytes, ...] | None]


def upb_reading(data: bytes) -> list[Read] | str:
    """What upb reads (the items' fields), or its refusal's message."""
    try:
        request = WireBatchRequest.FromString(data)
    except DecodeError as err:
        return f"the request does not decode: {err}"
    return [
        (item.key, item.bucketing_key or None, item.flag, tuple(item.attributes) or None)
        for item in request.items
    ]


def native_reading(data: bytes) -> list[Read] | str:
    """What the reader reads with nothing remembered and no limits: every item with entries
    is pending and carries them, as does every item with an empty key or flag."""
    try:
        read, pending, items = read_batch(data, {}, UNLIMITED, UNLIMITED, UNLIMITED, UNLIMITED)
    except WireError as err:
        return f"{UNDECODABLE}{err}"
    expected = [i for i, (key, _, name, entries) in enumerate(read) if not key or not name]
    expected = sorted(set(expected) | {i for i, item in enumerate(read) if item[3] is not None})
    assert pending == expected and items == len(read)
    return read  # type: ignore[return-value]  # no remembered entries: no dict


def assert_same_reading(data: bytes) -> None:
    assert native_reading(data) == upb_reading(data), data


# ---------------------------------------------------------------- wire building blocks


def varint(value: int, padding: int = 0) -> bytes:
    """`value` as a varint, made `padding` bytes longer than needed (upb accepts that)."""
    out = bytearray(_varint(value))
    for _ in range(padding):
        out[-1] |= 0x80
        out.append(0)
    return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def delimited(number: int, body: bytes) -> bytes:
    return tag(number, 2) + varint(len(body)) + body


def group(number: int, body: bytes, depth: int = 1) -> bytes:
    for _ in range(depth):
        body = tag(number, 3) + body + tag(number, 4)
    return body


def attribute_entry(name: str, value: pb.AttributeValue) -> bytes:
    entry = pb.BatchItem.AttributesEntry(key=name, value=value).SerializeToString()
    return delimited(4, entry)


TEXTS = ["", "k", "user-1", "é", "日本", "🙂", "a" * 300, "\x00", "x\u07ff\uffff"]
BAD_UTF8 = [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"a\xe2\x82", b"\x80"]


def unknown_field(rng: random.Random, depth: int = 0) -> bytes:
    """A field the reader must skip: unknown numbers, every wire type, nested groups (where
    field number 0 is allowed)."""
    number = rng.choice([5, 6, 15, 16, 100, 2**29 - 1] + [0] * (depth > 0))
    kind = rng.randrange(6 if depth < 3 else 5)
    if kind == 0:
        return tag(number, 0) + varint(rng.getrandbits(64), rng.randrange(3))
    if kind == 1:
        return tag(number, 1) + rng.randbytes(8)
    if kind == 2:
        return tag(number, 5) + rng.randbytes(4)
    if kind == 3:
        return delimited(number, rng.randbytes(rng.randrange(6)))
    if kind == 4:
        return tag(number, 0) + varint(1, padding=9 - 1)  # a 10-byte varint
    body = b"".join(unknown_field(rng, depth + 1) for _ in range(rng.randrange(3)))
    return group(number, body)


def item_fields(rng: random.Random) -> bytes:
    """A BatchItem's body: fields in any order, repeated, with wrong wire types and unknowns."""
    parts: list[bytes] = []
    for _ in range(rng.randrange(7)):
        choice = rng.randrange(10)
        if choice < 3:
            parts.append(delimited(choice + 1, rng.choice(TEXTS).encode()))
        elif choice < 5:
            value = rng.choice(
                [
                    pb.AttributeValue(string_value=rng.choice(TEXTS)),
                    pb.AttributeValue(int_value=rng.randrange(-5, 5)),
                    pb.AttributeValue(),
                ]
            )
            parts.append(attribute_entry(rng.choice(["plan", "age", ""]), value))
        elif choice == 5:
            parts.append(delimited(4, rng.randbytes(rng.randrange(5))))  # not an entry
        elif choice == 6:
            parts.append(tag(rng.randrange(1, 5), 0) + varint(rng.randrange(300)))
        elif choice == 7:
            parts.append(group(rng.randrange(1, 5), b""))  # a known number as a group
        else:
            parts.append(unknown_field(rng))
    return b"".join(parts)


def request_bytes(rng: random.Random) -> bytes:
    parts: list[bytes] = []
    for _ in range(rng.randrange(6)):
        choice = rng.randrange(8)
        if choice < 5:
            parts.append(delimited(1, item_fields(rng)))
        elif choice == 5:
            parts.append(tag(1, rng.choice([0, 5])) + b"\x01\x02\x03\x04")
        else:
            parts.append(unknown_field(rng))
    return b"".join(parts)


def mutations(data: bytes, rng: random.Random) -> Iterator[bytes]:
    """Damaged copies: truncated, a byte changed, bytes inserted, a huge length, bad UTF-8."""
    if data:
        yield data[: rng.randrange(len(data))]
        at = rng.randrange(len(data))
        yield data[:at] + bytes([rng.randrange(256)]) + data[at + 1 :]
        yield data[:at] + rng.choice([b"\xff\xff\xff\xff\x0f", b"\x80" * 11]) + data[at:]
        yield data[:at] + rng.randbytes(rng.randrange(1, 4)) + data[at:]
    bad = rng.choice(BAD_UTF8)
    yield data + delimited(1, delimited(rng.randrange(1, 4), bad))
    yield data + delimited(1, delimited(4, bad))  # bytes: not checked for UTF-8


# ---------------------------------------------------------------- the reader against upb


def random_and_mutated(make: Callable[[random.Random], bytes], seed: int) -> Iterator[bytes]:
    """20,000 requests `make` builds, each followed by its damaged copies."""
    rng = random.Random(seed)
    for _ in range(20_000):
        data = make(rng)
        yield data
        yield from mutations(data, rng)


def test_random_and_mutated_requests_read_as_upb_reads_them() -> None:
    for data in random_and_mutated(request_bytes, 20261202):
        assert_same_reading(data)


def test_random_bytes_read_as_upb_reads_them() -> None:
    rng = random.Random(7)
    for size in range(1, 40):
        for _ in range(1000):
            assert_same_reading(rng.randbytes(size))
            assert_same_reading(b"\x0a" + bytes([size]) + rng.randbytes(size))


EDGES = {
    "empty request": b"",
    "empty item": b"\x0a\x00",
    "item running past the request": b"\x0a\x05\x0a\x01k",
    "string running past its item": b"\x0a\x03\x0a\x05k",
    "10-byte varint": tag(5, 0) + varint(1, padding=9),
    "11-byte varint": tag(5, 0) + b"\x80" * 10 + b"\x00",
    "10th byte with high bits": tag(5, 0) + b"\xff" * 9 + b"\x7f",
    "5-byte tag": varint(5 << 3, padding=4) + b"\x00",
    "6-byte tag": varint(5 << 3, padding=5) + b"\x00",
    "tag over 32 bits": b"\x80\x80\x80\x80\x10\x00",
    "largest field number": tag(2**29 - 1, 0) + b"\x00",
    "field number 0": b"\x00\x00",
    "field number 0 as a group": b"\x03\x04",
    "wire type 6": tag(5, 6),
    "wire type 7": tag(5, 7),
    "end group at the top": tag(5, 4),
    "end group in an item": delimited(1, tag(5, 4)),
    "group ended by another number": tag(5, 3) + tag(6, 4),
    "group never ended": tag(5, 3) + tag(6, 0) + b"\x00",
    "group at the very end": tag(5, 3),
    "100 nested groups": group(5, b"", depth=100),
    "101 nested groups": group(5, b"", depth=101),
    "99 nested groups in an item": delimited(1, group(5, b"", depth=99)),
    "100 nested groups in an item": delimited(1, group(5, b"", depth=100)),
    "length 2^31 - 1": tag(5, 2) + varint(2**31 - 1) + b"x",
    "length 2^31 - 2, short": tag(5, 2) + varint(2**31 - 2) + b"x",
    "length over 64 bits": tag(5, 2) + b"\xff" * 9 + b"\x01",
    "fixed64 cut short": tag(5, 1) + b"\x00" * 7,
    "fixed32 cut short": delimited(1, tag(5, 5) + b"\x00" * 3),
    "items as a varint": tag(1, 0) + b"\x01",
    "items as a group": group(1, tag(5, 0) + b"\x01"),
    "key as fixed32": delimited(1, tag(1, 5) + b"abcd"),
    "bad UTF-8 key later overwritten": delimited(1, delimited(1, b"\xff") + delimited(1, b"k")),
    "key overwritten": delimited(1, delimited(1, b"a") + delimited(2, b"f") + delimited(1, b"b")),
    "bad UTF-8 in an entry": delimited(1, delimited(4, b"\xff")),
    "surrogate in a flag": delimited(1, delimited(2, b"\xed\xb0\x80")),
    "overlong NUL in a bucketing key": delimited(1, delimited(3, b"\xc0\x80")),
    "bad UTF-8 after corruption": delimited(1, delimited(1, b"\xff")) + b"\x0a\x05",
    "corruption after bad UTF-8": delimited(1, delimited(1, b"\xff") + b"\x0a\x05"),
    "unknown delimited with bad UTF-8": delimited(1, delimited(9, b"\xff")),
    "field number 0 inside a group": group(16, b"\x00\x05" + b"\x80\x00\x14" + b"\x02\x01x"),
    "group 0 inside a group": group(16, b"\x03\x04"),
    "group 0 inside a group, ended by 1": group(16, b"\x03\x0c"),
    "wire type 6 inside a group": group(16, b"\x06"),
    "field number 0 inside an item's group": delimited(1, group(16, b"\x03\x04\x00\x00")),
}


@pytest.mark.parametrize("data", EDGES.values(), ids=EDGES.keys())
def test_edge_cases_read_as_upb_reads_them(data: bytes) -> None:
    assert_same_reading(data)


def test_items_past_the_limit_are_counted_not_kept() -> None:
    """A request with more items than allowed is refused for their number: the reader still
    reads every item (one that does not decode is refused as such, first) but keeps only the
    allowed ones, so 200,000 empty items cost the memory of three."""
    one = delimited(1, delimited(1, b"k") + delimited(2, b"f"))
    read, pending, items = read_batch(one * 5, {}, 9, 9, 9, 3)
    assert (read, pending, items) == ([("k", None, "f", None)] * 3, [], 5)
    with pytest.raises(WireError):
        read_batch(one * 5 + delimited(1, delimited(1, b"\xff")), {}, 9, 9, 9, 3)
    many = delimited(1, b"") * 200_000
    tracemalloc.start()
    try:
        read, pending, items = read_batch(many, {}, 9, 9, 9, 3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (len(read), pending, items) == (3, [0, 1, 2], 200_000)
    assert peak < 100_000, peak  # ~20 MB when every item was kept


def test_the_reader_refuses_what_is_not_its_to_read() -> None:
    with pytest.raises(TypeError):
        read_batch(bytearray(b""), {}, 1, 1, 1, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        read_batch(b"", [], 1, 1, 1, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        read_batch(b"")  # type: ignore[call-arg]
    with pytest.raises(OverflowError):
        read_batch(b"", {}, 2**70, 1, 1, 1)
    item = delimited(
        1, delimited(1, b"k") + delimited(2, b"f") + attribute_entry("a", pb.AttributeValue())
    )
    entry = attribute_entry("a", pb.AttributeValue())[2:]
    with pytest.raises(TypeError):
        read_batch(item, {entry: "not a pair"}, 9, 9, 9, 9)  # type: ignore[dict-item]


def test_remembered_entries_and_limits_decide_what_is_pending() -> None:
    """An item is settled natively only when every field is within bounds (in characters,
    not bytes) and every entry is remembered; a name sent twice keeps the last value."""
    plan = attribute_entry("plan", pb.AttributeValue(string_value="pro"))[2:]
    free = attribute_entry("plan", pb.AttributeValue(string_value="free"))[2:]
    known: dict[bytes, tuple[str, object]] = {plan: ("plan", "pro"), free: ("plan", "free")}

    def item(key: str, entries: list[bytes], bucketing: str = "", name: str = "f") -> bytes:
        body = delimited(1, key.encode()) + delimited(2, name.encode())
        body += delimited(3, bucketing.encode())
        return delimited(1, body + b"".join(delimited(4, e) for e in entries))

    data = b"".join(
        [
            item("k", [free, plan]),
            item("é" * 5, []),  # 10 bytes, 5 characters
            item("k", [plan, b"\x0a\x01x"]),  # an entry not remembered
            item("k", [], bucketing="b" * 6),
            item("", []),
            item("k", [], name="n" * 7),
            item("k", [plan, free, plan]),  # one distinct name
        ]
    )
    read, pending, _ = read_batch(data, known, 5, 6, 1, 9)
    assert pending == [2, 3, 4, 5]
    assert read[0] == ("k", None, "f", {"plan": "pro"})
    assert read[1] == ("é" * 5, None, "f", None)
    assert read[2] == ("k", None, "f", (plan, b"\x0a\x01x"))
    assert read[3] == ("k", "b" * 6, "f", None)
    assert read[6] == ("k", None, "f", {"plan": "pro"})
    _, pending, _ = read_batch(data, known, 5, 6, 0, 9)  # too many attributes: Python refuses them
    assert pending == [0, 2, 3, 4, 5, 6]
    shared, _, _ = read_batch(item("a", []) + item("b", []), {}, 5, 6, 1, 9)
    assert shared[0][2] is shared[1][2]


# ---------------------------------------------------------------- the handler, end to end


def _lookups() -> Lookups:
    store = Store()
    pro = matcher("WHITELIST", "plan", whitelistMatcherData={"whitelist": ["pro"]})
    doc = snapshot_doc(flag("f", condition(pro), condition(partitions={"off": 100})), flag("g"))
    store.swap(build_snapshot(doc))
    settings = {"max_attributes": 2, "max_attribute_size": 8, "max_batch_items": 6}
    return Lookups(core_for(store, limits=RequestLimits(**settings)))


def python_handler(lookups: Lookups, data: bytes) -> bytes:
    """`evaluate_batch_wire` as it was before the reader (8ac0782): upb's objects read in
    Python, one encoded entry per answer. The reference the native path must equal."""
    try:
        request = WireBatchRequest.FromString(data)
    except DecodeError as err:
        raise BadRequest(f"the request does not decode: {err}") from None
    started = perf_counter()
    snap = lookups._evaluator.snapshot()
    items = request.items
    check_items(len(items), lookups._max_items, "items")
    memory = lookups._attribute_entries
    read = []
    try:
        for index, item in enumerate(items):
            key, name = item.key, item.flag
            check_key(key, f"items[{index}].key")
            check_name(name, f"items[{index}].flag")
            bucketing_key = item.bucketing_key or None
            if bucketing_key is not None:
                check_key(bucketing_key, f"items[{index}].bucketing_key")
            entries = list(item.attributes)
            attrs: dict[str, object] | None = None
            if entries:
                attrs = {}
                for entry in entries:
                    pair = memory.known.get(entry)
                    if pair is None:
                        attrs = memory.admit(entries, f"items[{index}].attributes")
                        break
                    attrs[pair[0]] = pair[1]
                else:
                    memory._policy.check_count(len(attrs), f"items[{index}].attributes")
            read.append((key, bucketing_key, name, attrs))
    except (BadRequest, DecodeError) as err:
        raise _refusal(pb.EvaluateBatchRequest, data, err) from None
    answers = lookups._evaluator.evaluate(snap, read, "EvaluateBatch", started)
    tail = VERSION_TAG + _varint(snap.version) if snap.version else b""
    return b"".join(_entry(name, decision) for _, _, name, decision in answers) + tail


def outcome(handler: Callable[[Lookups, bytes], bytes], lookups: Lookups, data: bytes) -> object:
    try:
        return handler(lookups, data)
    except BadRequest as err:
        return str(err)


ENTRIES = [
    attribute_entry("plan", pb.AttributeValue(string_value="pro")),
    attribute_entry("plan", pb.AttributeValue(string_value="free")),
    attribute_entry("age", pb.AttributeValue(int_value=3)),
    attribute_entry("tags", pb.AttributeValue(string_list_value=pb.StringList(values=["a"]))),
    attribute_entry("big", pb.AttributeValue(string_value="x" * 9)),  # over the size limit
    attribute_entry("", pb.AttributeValue(bool_value=True)),  # empty name
    attribute_entry("none", pb.AttributeValue()),  # no value
    attribute_entry("c", pb.AttributeValue(bool_value=False)),
    delimited(4, b"\x0a\x01\xff"),  # a name that is not UTF-8
    delimited(4, b"\x12\x03\x0a\x01\xff"),  # a value that is not UTF-8
]


def handler_request(rng: random.Random) -> bytes:
    items = []
    for _ in range(rng.choice([0, 1, 3, 6, 6, 7])):
        body = delimited(1, rng.choice(["k", "é" * 250, "e" * 251, "", "user"]).encode())
        body += delimited(2, rng.choice(["f", "f", "g", "missing", "", "n" * 1025]).encode())
        if rng.random() < 0.3:
            body += delimited(3, rng.choice(["", "b", "é" * 251]).encode())
        if rng.random() < 0.6:
            body += b"".join(rng.choices(ENTRIES[:4] * 6 + ENTRIES[4:], k=rng.randrange(1, 4)))
        items.append(delimited(1, body))
    return b"".join(items)


def test_the_handler_answers_what_the_python_reading_answered() -> None:
    """Same response bytes and same refusal messages as the Python reading of upb's objects,
    over random requests with keys, names and attributes in and out of bounds, each sent
    twice (so also with their entries remembered)."""
    rng = random.Random(5)
    native, python = _lookups(), _lookups()
    answered = refused = 0
    for _ in range(6000):
        data = handler_request(rng)
        if rng.random() < 0.1:
            data = next(mutations(data, rng))
        for _ in range(2):
            got = outcome(Lookups.evaluate_batch_wire, native, data)
            assert got == outcome(python_handler, python, data), data
            answered += isinstance(got, bytes)
            refused += isinstance(got, str)
        assert native._attribute_entries.known == python._attribute_entries.known
    assert answered > 2000 and refused > 2000  # both paths were exercised


# ---------------------------------------------------------------- counting and encoding


def answers_with_shared_and_equal_pairs(rng: random.Random, distinct: int) -> list[Any]:
    """Answers whose (flag, decision) pairs repeat by identity, and also by value only."""
    decisions = [Decision(f"t{i % 3}", "label", None, i) for i in range(distinct)]
    names = [f"flag-{i % 4}" for i in range(distinct)]
    answers = []
    for i in range(rng.randrange(200)):
        pick = rng.randrange(distinct)
        decision = decisions[pick]
        if i % 7 == 0:  # an equal decision, another object
            decision = Decision(*decision)
        name = names[pick] if i % 5 else "".join(names[pick])  # an equal str, maybe another
        answers.append((f"k{i}", None, name, decision))
    return answers


@pytest.mark.parametrize("distinct", [1, 5, 32, 33, 100])
def test_tally_counts_as_counter_update(distinct: int) -> None:
    rng = random.Random(distinct)
    for _ in range(20):
        answers = answers_with_shared_and_equal_pairs(rng, distinct)
        expected: Counter[Any] = Counter({("flag-0", Decision("x", None, None, None)): 2})
        expected.update(map(itemgetter(2, 3), answers))
        got: Counter[Any] = Counter({("flag-0", Decision("x", None, None, None)): 2})
        tally(got, iter(answers))
        assert got == expected
        assert list(got) == list(expected)  # new pairs in first-seen order


def _remember(
    entries: dict[tuple[str, Decision], bytes],
    asked: list[tuple[str, Decision]],
    limit: int,
    pair: tuple[str, Decision],
) -> bytes:
    """EvaluationEntries._missing with its own bound; notes what it was asked."""
    asked.append(pair)
    if len(entries) >= limit:
        entries.clear()
    entries[pair] = part = _entry(*pair)
    return part


@pytest.mark.parametrize("distinct", [1, 5, 32, 33, 100])
def test_join_entries_is_one_entry_per_answer(distinct: int) -> None:
    """Byte-identical to encoding every answer on its own, whatever the cache holds, also
    when `missing` empties it on the way (EvaluationEntries.MAX_ENTRIES)."""
    rng = random.Random(distinct)
    for limit in (1, 3, 10_000):
        entries: dict[tuple[str, Decision], bytes] = {}
        asked: list[tuple[str, Decision]] = []
        missing = partial(_remember, entries, asked, limit)

        for _ in range(10):
            answers = answers_with_shared_and_equal_pairs(rng, distinct)
            expected = b"".join(_entry(name, decision) for _, _, name, decision in answers)
            assert join_entries(entries, answers, missing) == expected
        if limit == 10_000:
            assert len(asked) == len(set(asked))  # each pair encoded once


def test_join_entries_and_tally_refuse_what_they_cannot_read() -> None:
    good = ("k", None, "f", Decision("on", None, None, None))
    with pytest.raises(TypeError):
        join_entries({}, [good, ("k", "f")], lambda pair: b"")  # type: ignore[list-item]
    with pytest.raises(TypeError):
        join_entries({}, [good], lambda pair: "not bytes")  # type: ignore[arg-type,return-value]
    with pytest.raises(ZeroDivisionError):
        join_entries({}, [good], lambda pair: 1 // 0)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError):
        tally({}, [good, None])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        tally({}, 5)  # type: ignore[arg-type]
    assert join_entries({}, [], lambda pair: b"") == b""


def test_nothing_is_leaked_or_freed_early() -> None:
    """Every reference taken is given back, on answers and on refusals: the objects the
    calls are handed keep their reference counts, and repeated calls allocate nothing that
    stays."""
    name, value = "".join(("pl", "an")), 10**20  # objects no one else shares
    entry = attribute_entry("plan", pb.AttributeValue(int_value=5))[2:]
    known: dict[bytes, tuple[str, object]] = {entry: (name, value)}
    good = delimited(1, delimited(1, b"k") + delimited(2, b"f") + delimited(4, entry))
    decision, flag_name = Decision("on", "rule", None, 10**15 + 7), "".join(("f", "g"))
    part = _entry(flag_name, decision)
    answers = [("k", None, flag_name, decision)] * 40 + [("j", "b", "f", decision)]
    objects = (name, value, entry, good, decision, flag_name, part)

    def run() -> None:
        read_batch(good * 3, known, 9, 9, 9, 9)
        read_batch(good, {}, 9, 9, 9, 9)  # pending: the entries' tuple
        for bad in (good * 2 + b"\x0a\x05", good + delimited(1, delimited(1, b"\xff"))):
            with pytest.raises(WireError):
                read_batch(bad, known, 9, 9, 9, 9)
        tally({}, answers)
        join_entries({(flag_name, decision): part}, answers, lambda pair: part)
        with pytest.raises(TypeError):
            join_entries({}, [*answers, None], lambda pair: part)  # type: ignore[list-item]
        with pytest.raises(ZeroDivisionError):
            join_entries({}, answers, lambda pair: bytes(1 // 0))

    run()
    before = [sys.getrefcount(o) for o in objects]
    for _ in range(20):
        run()
    gc.collect()
    assert [sys.getrefcount(o) for o in objects] == before
    blocks = sys.getallocatedblocks()
    for _ in range(500):
        run()
    gc.collect()
    assert sys.getallocatedblocks() - blocks < 200


# ---------------------------------------------------------------- a client's exposures


def python_exposures(data: bytes) -> tuple[list[Any], str | None, Any] | str:
    """What the sidecar made of a RecordExposuresRequest before `read_exposures`: upb's
    message (or its refusal), and the first impression check_batch's rules refuse; with
    the impressions and the request's other records (as rows) apart."""
    try:
        request = pb.RecordExposuresRequest.FromString(data)
    except DecodeError as err:
        return f"the request does not decode: {err}"
    problem = None
    for index, imp in enumerate(request.impressions):
        where = f"impressions[{index}]"
        try:
            check_key(imp.key, f"{where}.key")
            if imp.bucketing_key:
                check_key(imp.bucketing_key, f"{where}.bucketing_key")
            check_name(imp.flag, f"{where}.flag")
            if not imp.treatment:
                raise BadRequest(f"{where}.treatment: must not be empty")
            if imp.time_ms <= 0:
                raise BadRequest(f"{where}.time_ms: must be positive")
        except BadRequest as err:
            problem = str(err)
            break
    counts = [(c.flag, c.hour_ms, c.count) for c in request.counts]
    unique = [(u.flag, list(u.keys)) for u in request.unique_keys]
    return list(request.impressions), problem, (request.batch_id, counts, unique)


def native_exposures(data: bytes) -> tuple[list[Any], str | None, Any] | str:
    """`exposures_from_wire`'s reading: its entries, under the upload's field number, parse
    as the impressions that came; the rest are the request's other records."""
    try:
        batch = exposures_from_wire(data)
    except BadRequest as err:
        return str(err)
    impressions = list(telemetry_pb2.UploadRequest.FromString(batch.entries).impressions)
    assert len(impressions) == batch.impressions
    rest = (batch.batch_id, batch.counts, batch.unique_keys)
    return impressions, batch.impression_problem, rest


def assert_same_exposures(data: bytes) -> None:
    assert native_exposures(data) == python_exposures(data), data


def impression_fields(rng: random.Random) -> bytes:
    """An Impression's body: every field, at the edges of the checks, in any order, some
    twice, some with another wire type, and unknown fields."""
    texts = [*TEXTS, "a" * MAX_KEY_LENGTH, "é" * (MAX_KEY_LENGTH + 1), "f" * (MAX_NAME_LENGTH + 1)]
    parts: list[bytes] = []
    for number in rng.sample(range(1, 10), rng.randrange(10)):
        if number <= 5:
            parts.append(delimited(number, rng.choice(texts).encode()))
        else:
            value = rng.choice([0, 1, 2**40, -1, -(2**63), 2**63 - 1, rng.getrandbits(64)])
            parts.append(tag(number, 0) + varint(value % 2**64, rng.randrange(2)))
    for _ in range(rng.randrange(3)):
        choice = rng.randrange(4)
        if choice == 0:
            parts.insert(rng.randrange(len(parts) + 1), unknown_field(rng))
        elif choice == 1:  # a known number with another wire type: skipped as unknown
            parts.append(tag(rng.randrange(1, 10), rng.choice([0, 1, 5])) + b"\x01" * 8)
        elif choice == 2:
            parts.append(delimited(rng.randrange(1, 6), rng.choice(TEXTS).encode()))
        else:
            parts.append(tag(7, 0) + varint(rng.randrange(1, 10)))  # the last time wins
    return b"".join(parts)


def valid_impression(rng: random.Random) -> bytes:
    return telemetry_pb2.Impression(
        key=f"user-{rng.randrange(100)}",
        flag="f",
        treatment="on",
        time_ms=rng.randrange(1, 2**40),
        previous_time_ms=rng.randrange(2),
    ).SerializeToString()


def exposure_field(rng: random.Random) -> bytes:
    """One field of a RecordExposuresRequest: impressions good and odd, the other fields, and
    what upb skips or refuses."""
    kind = rng.randrange(11)
    if kind < 3:
        return delimited(3, valid_impression(rng))
    if kind < 6:
        return delimited(3, impression_fields(rng))
    if kind == 6:  # the batch id or the client id
        return delimited(rng.randrange(1, 3), rng.choice(TEXTS).encode())
    if kind == 7:
        count = telemetry_pb2.ImpressionCount(flag="f", hour_ms=0, count=rng.randrange(3))
        return delimited(4, count.SerializeToString())
    if kind == 8:  # impressions with another wire type: skipped as unknown
        return tag(3, rng.choice([0, 5])) + b"\x01\x02\x03\x04"
    if kind == 9:
        return unknown_field(rng)
    return delimited(3, delimited(rng.randrange(1, 6), rng.choice(BAD_UTF8)))  # not UTF-8


def exposures_request(rng: random.Random) -> bytes:
    return b"".join(exposure_field(rng) for _ in range(rng.randrange(8)))


def test_random_and_mutated_exposures_read_as_upb_and_the_python_checks_did() -> None:
    for data in random_and_mutated(exposures_request, 20261203):
        assert_same_exposures(data)


EXPOSURE_EDGES = {
    "empty request": b"",
    "one good impression": delimited(
        3, delimited(1, b"k") + delimited(3, b"f") + delimited(4, b"on") + tag(7, 0) + b"\x01"
    ),
    "an impression running past the request": b"\x1a\x05\x0a\x01k",
    "impressions as a varint": tag(3, 0) + b"\x01",
    "impressions as a group": group(3, tag(5, 0) + b"\x01"),
    "a negative time": delimited(
        3,
        delimited(1, b"k")
        + delimited(3, b"f")
        + delimited(4, b"on")
        + tag(7, 0)
        + varint(2**64 - 5),
    ),
    "a key of MAX_KEY_LENGTH characters, twice as many bytes": delimited(
        3,
        delimited(1, "é".encode() * MAX_KEY_LENGTH)
        + delimited(3, b"f")
        + delimited(4, b"t")
        + tag(7, 0)
        + b"\x01",
    ),
    "an empty bucketing key": delimited(
        3,
        delimited(1, b"k")
        + delimited(2, b"")
        + delimited(3, b"f")
        + delimited(4, b"t")
        + tag(7, 0)
        + b"\x01",
    ),
    "bad UTF-8 in a label": delimited(3, delimited(5, b"\xff")),
    "bad UTF-8 in an unknown field of an impression": delimited(3, delimited(10, b"\xff")),
    "100 nested groups in an impression": delimited(3, group(15, b"", depth=100)),
    "99 nested groups in an impression": delimited(3, group(15, b"", depth=99)),
    "counts that do not decode": delimited(4, b"\x0a\x05"),
    "a padded impressions tag": varint(3 << 3 | 2, padding=2) + varint(0),
}


@pytest.mark.parametrize("data", EXPOSURE_EDGES.values(), ids=EXPOSURE_EDGES.keys())
def test_exposure_edge_cases_read_as_upb_and_the_python_checks_did(data: bytes) -> None:
    assert_same_exposures(data)


def test_impressions_are_passed_on_as_they_came_under_the_upload_field() -> None:
    """Canonical entries come out byte for byte, only their tag changed, and the upload they
    join then holds exactly what the client made."""
    made = [
        telemetry_pb2.Impression(key=f"k{i}", flag="f", treatment="on", time_ms=i + 1)
        for i in range(3)
    ]
    request = pb.RecordExposuresRequest(batch_id="b", impressions=made)
    request.counts.add(flag="f", hour_ms=0, count=2)
    entries, count, problem, rest = read_exposures(request.SerializeToString(), 3, 4, 9, 9)
    assert (count, problem) == (3, None)
    assert entries == telemetry_pb2.UploadRequest(impressions=made).SerializeToString()
    assert (
        rest == pb.RecordExposuresRequest(batch_id="b", counts=request.counts).SerializeToString()
    )
    with pytest.raises(ValueError, match="1 to 15"):
        read_exposures(b"", 3, 16, 9, 9)
    with pytest.raises(TypeError):
        read_exposures(bytearray(), 3, 4, 9, 9)  # type: ignore[arg-type]


def test_reading_exposures_leaks_nothing() -> None:
    good = delimited(3, valid_impression(random.Random(1)))
    refused = delimited(3, delimited(1, b""))
    undecodable = good + b"\x1a\x05"

    def run() -> None:
        read_exposures(good * 3 + delimited(1, b"b"), 3, 4, 9, 9)
        read_exposures(refused * 2, 3, 4, 9, 9)
        read_exposures(delimited(3, delimited(1, "é".encode())), 3, 4, 9, 9)
        with pytest.raises(WireError):
            read_exposures(undecodable, 3, 4, 9, 9)

    run()
    gc.collect()
    blocks = sys.getallocatedblocks()
    for _ in range(500):
        run()
    gc.collect()
    assert sys.getallocatedblocks() - blocks < 200
