"""fader.v1 messages to the core and back: attribute types survive, every refusal names its
field, and absent result fields stay unset."""

from __future__ import annotations

import datetime
import re
from typing import Any

import pytest
from fader.pb.fader.v1 import evaluation_pb2 as pb
from fader.rules.result import Decision
from fader.snapshot.loader import build_snapshot
from fader.snapshot.snapshot import Snapshot
from google.protobuf.message import DecodeError

from sidecar.api.fader_v1 import (
    AttributeEntries,
    EvaluationEntries,
    Lookups,
    attributes,
    fill_evaluation,
)
from sidecar.core.attributes import AttributePolicy
from sidecar.core.evaluator import Evaluator, Lookup
from sidecar.core.refusals import BadRequest
from sidecar.core.requests import check_key, check_name
from sidecar.delivery.store import Store
from sidecar.limits import RequestLimits
from sidecar.telemetry.impressions import Answer
from tests.core.builders import core_for
from tests.fader.rules.builders import condition, flag, snapshot_doc


def typed_values(when: datetime.datetime) -> dict[str, pb.AttributeValue]:
    """One attribute of every wire type, the timestamp at `when`."""
    stamp = pb.AttributeValue()
    stamp.timestamp_value.FromDatetime(when)
    return {
        "s": pb.AttributeValue(string_value="x"),
        "i": pb.AttributeValue(int_value=-(2**63)),
        "d": pb.AttributeValue(double_value=5.0),
        "b": pb.AttributeValue(bool_value=False),
        "l": pb.AttributeValue(string_list_value=pb.StringList(values=["a", "b"])),
        "t": stamp,
    }


def test_attribute_types() -> None:
    values = typed_values(datetime.datetime(2024, 1, 1, 0, 0, 1, 999_000))
    got = attributes(values, AttributePolicy(10), "attributes")
    assert got == {"s": "x", "i": -(2**63), "d": 5.0, "b": False, "l": ["a", "b"], "t": 1704067201}
    assert got is not None and type(got["d"]) is float and type(got["i"]) is int
    assert attributes({}, AttributePolicy(10), "attributes") is None


def test_refusals() -> None:
    with pytest.raises(BadRequest, match=r"^attributes: 3 entries, at most 2 allowed$"):
        attributes(
            {k: pb.AttributeValue(bool_value=True) for k in "abc"}, AttributePolicy(2), "attributes"
        )
    with pytest.raises(BadRequest, match=r"^attributes: an attribute name is empty$"):
        attributes({"": pb.AttributeValue(bool_value=True)}, AttributePolicy(2), "attributes")
    with pytest.raises(BadRequest, match=r"^key: 251 characters, at most 250 allowed$"):
        check_key("k" * 251, "key")
    check_key("k" * 250, "key")
    with pytest.raises(BadRequest, match=r"^flags\[2\]: must not be empty$"):
        check_name("", "flags[2]")


def test_evaluation_leaves_absent_fields_unset() -> None:
    message = pb.Evaluation()
    fill_evaluation(message, "f", Decision("control", "definition not found", None, None))
    assert not message.HasField("config") and not message.HasField("change_number")
    assert (message.flag, message.treatment) == ("f", "control")
    full = pb.Evaluation()
    fill_evaluation(full, "f", Decision("on", "default rule", "{}", 7))
    assert (full.config, full.change_number, full.label) == ("{}", 7, "default rule")


def test_batch_entries_are_the_evaluations_filled_one_by_one() -> None:
    """The encoded-once entries give the response that filling each answer would, across a
    snapshot swap (entries are per snapshot) and past the cache's bound."""
    store = Store()
    lookups = Lookups(core_for(store))
    items = [pb.BatchItem(key=f"k{i}", flag=name) for i in range(4) for name in ("f", "g", "x")]
    for version, treatment in ((1, "on"), (2, "v2")):
        f = flag(
            "f", condition(partitions={treatment: 50, "off": 50}), configurations={"off": "{}"}
        )
        store.swap(build_snapshot(snapshot_doc(f, flag("g"), version=version)))
        snap = store.current
        assert snap is not None
        expected = pb.EvaluateBatchResponse(version=version)
        for item in items[:10]:
            fill_evaluation(
                expected.evaluations.add(), item.flag, snap.evaluate(item.key, item.flag)
            )
        response = lookups.evaluate_batch(pb.EvaluateBatchRequest(items=items[:10]))
        assert response == expected
        assert response.SerializeToString() == expected.SerializeToString()
    EvaluationEntries.MAX_ENTRIES, bound = 2, EvaluationEntries.MAX_ENTRIES
    try:
        assert lookups.evaluate_batch(pb.EvaluateBatchRequest(items=items[:10])) == expected
    finally:
        EvaluationEntries.MAX_ENTRIES = bound


def _entry(name: bytes, value: bytes) -> bytes:
    """One `map<string, AttributeValue>` entry of BatchItem (field 4) on the wire."""
    body = b"\x0a" + bytes([len(name)]) + name + b"\x12" + bytes([len(value)]) + value
    return b"\x22" + bytes([len(body)]) + body


def _item(*fields: bytes, key: bytes = b"k", flag_name: bytes = b"f") -> bytes:
    body = b"\x0a" + bytes([len(key)]) + key + b"\x12" + bytes([len(flag_name)]) + flag_name
    body += b"".join(fields)
    return b"\x0a" + bytes([len(body)]) + body


class _Spy:
    """An evaluator that notes the attributes of every lookup it is handed."""

    def __init__(self, evaluator: Evaluator) -> None:
        self.snapshot = evaluator.snapshot
        self._evaluate = evaluator.evaluate
        self.seen: list[object] = []

    def evaluate(self, snap: Snapshot, items: list[Lookup], *args: Any) -> list[Answer]:
        self.seen.extend(item[3] for item in items)
        return self._evaluate(snap, items, *args)


def _spy(lookups: Lookups) -> list[object]:
    """The attributes of every lookup `lookups` hands the evaluator from now on."""
    spy = _Spy(lookups._evaluator)
    lookups._evaluator = spy  # type: ignore[assignment]
    return spy.seen


def _batch_lookups(**limits: int) -> Lookups:
    store = Store()
    store.swap(build_snapshot(snapshot_doc(flag("f"))))
    settings = {"max_attributes": 10, "max_attribute_size": 100, "max_batch_items": 10} | limits
    return Lookups(core_for(store, limits=RequestLimits(**settings)))


def test_batch_attributes_read_from_wire_entries_are_the_map_path_first_and_remembered() -> None:
    """EvaluateBatch reads an item's attributes as wire entries and remembers admitted ones
    by their bytes: the engine gets what the map path (`attributes`) gives, on the first
    request and on repeats, including a name sent twice (the last wins, as in a map)."""
    values = typed_values(datetime.datetime(2024, 1, 1, 0, 0, 1))
    twice = _item(
        _entry(b"plan", pb.AttributeValue(string_value="free").SerializeToString()),
        _entry(b"plan", pb.AttributeValue(string_value="pro").SerializeToString()),
    )
    request = pb.EvaluateBatchRequest(
        items=[
            pb.BatchItem(key="a", flag="f", attributes=values),
            pb.BatchItem(key="b", flag="f"),
            pb.BatchItem(key="c", flag="f", attributes={"s": values["s"]}),
        ]
    )
    data = request.SerializeToString() + twice
    reference = pb.EvaluateBatchRequest.FromString(data)
    policy = AttributePolicy(10, 100)
    expected = [attributes(item.attributes, policy, "x") for item in reference.items]
    assert expected[3] == {"plan": "pro"}
    lookups = _batch_lookups()
    seen = _spy(lookups)
    first = lookups.evaluate_batch_wire(data)
    assert lookups._attribute_entries.known  # plain values are remembered
    second = lookups.evaluate_batch_wire(data)
    assert seen == expected + expected
    assert first == second
    assert pb.EvaluateBatchResponse.FromString(first) == lookups.evaluate_batch(reference)


REFUSED_ITEMS = {
    "too many": (
        [_entry(name, b"\x20\x01") for name in (b"a", b"b", b"c")],
        r"^items\[1\]\.attributes: 3 entries, at most 2 allowed$",
    ),
    "too long": (
        [_entry(b"s", pb.AttributeValue(string_value="x" * 101).SerializeToString())],
        r"^items\[1\]\.attributes\['s'\]: 101 characters, at most 100 allowed$",
    ),
    "empty name": ([_entry(b"", b"\x20\x01")], r"^items\[1\]\.attributes: an attribute name"),
    "no value": ([_entry(b"a", b"")], r"^items\[1\]\.attributes\['a'\]: no value set$"),
    "not UTF-8": (
        [_entry(b"\xff\xfe", b"\x20\x01")],
        "",  # what instrument's deserializer says for the whole message, below
    ),
}


@pytest.mark.parametrize("case", REFUSED_ITEMS.values(), ids=REFUSED_ITEMS.keys())
def test_batch_attribute_refusals_are_the_same_remembered_or_not(
    case: tuple[list[bytes], str],
) -> None:
    """Each refusal says what the map path says, also when the entries around it (or all of
    them, for the count) are already remembered; a refused entry is never remembered."""
    fields, message = case
    lookups = _batch_lookups(max_attributes=2)
    good = [_entry(name, b"\x20\x01") for name in (b"a", b"b")]
    lookups.evaluate_batch_wire(_item(*good) + _item(good[0]) + _item(good[1]))
    refused = _item(*good) + _item(*fields)
    if not message:
        with pytest.raises(DecodeError) as whole:
            pb.EvaluateBatchRequest.FromString(refused)
        message = "^" + re.escape(f"the request does not decode: {whole.value}") + "$"
    for _ in range(2):
        with pytest.raises(BadRequest, match=message):
            lookups.evaluate_batch_wire(refused)
    if "decode" not in message:
        with pytest.raises(BadRequest, match=message):  # the map path agrees
            reference = pb.EvaluateBatchRequest.FromString(refused).items[1].attributes
            attributes(reference, AttributePolicy(2, 100), "items[1].attributes")


def test_batch_refusals_of_the_whole_request() -> None:
    """A request that does not decode says so, before any item's refusal (gRPC used to parse
    it before the handler); items and keys are still checked in order."""
    lookups = _batch_lookups()
    does_not_decode = r"^the request does not decode: Error parsing message"
    with pytest.raises(BadRequest, match=does_not_decode):
        lookups.evaluate_batch_wire(b"\xff\xff\xff\xff\xff")
    bad_entry_after_bad_key = _item(key=b"") + _item(_entry(b"\xff", b"\x20\x01"))
    with pytest.raises(BadRequest, match=does_not_decode):
        lookups.evaluate_batch_wire(bad_entry_after_bad_key)
    with pytest.raises(BadRequest, match=r"^items\[1\]\.key: must not be empty$"):
        lookups.evaluate_batch_wire(_item() + _item(key=b""))
    with pytest.raises(BadRequest, match=r"^items: 11 given, at most 10 allowed$"):
        lookups.evaluate_batch_wire(_item() * 11)


def test_remembered_attribute_entries_are_bounded() -> None:
    """Past MAX_ENTRIES the memory starts over, and answers stay the map path's."""
    lookups = _batch_lookups()
    seen = _spy(lookups)
    bound, AttributeEntries.MAX_ENTRIES = AttributeEntries.MAX_ENTRIES, 3
    try:
        for round_ in range(3):
            items = [
                pb.BatchItem(key="k", flag="f", attributes={"n": pb.AttributeValue(int_value=i)})
                for i in range(round_, round_ + 4)
            ]
            lookups.evaluate_batch_wire(pb.EvaluateBatchRequest(items=items).SerializeToString())
            assert len(lookups._attribute_entries.known) <= 3
    finally:
        AttributeEntries.MAX_ENTRIES = bound
    assert seen == [{"n": i} for round_ in range(3) for i in range(round_, round_ + 4)]
