"""fader.v1 messages to the core and back: attribute types survive, every refusal names its
field, and absent result fields stay unset."""

from __future__ import annotations

import datetime

import pytest
from fader.pb.fader.v1 import evaluation_pb2 as pb
from fader.rules.result import Decision
from fader.snapshot.loader import build_snapshot

from sidecar.api.fader_v1 import EvaluationEntries, Lookups, attributes, fill_evaluation
from sidecar.core.attributes import AttributePolicy
from sidecar.core.refusals import BadRequest
from sidecar.core.requests import check_key, check_name
from sidecar.delivery.store import Store
from tests.core.builders import core_for
from tests.fader.rules.builders import condition, flag, snapshot_doc


def test_attribute_types() -> None:
    stamp = pb.AttributeValue()
    stamp.timestamp_value.FromDatetime(datetime.datetime(2024, 1, 1, 0, 0, 1, 999_000))
    values = {
        "s": pb.AttributeValue(string_value="x"),
        "i": pb.AttributeValue(int_value=-(2**63)),
        "d": pb.AttributeValue(double_value=5.0),
        "b": pb.AttributeValue(bool_value=False),
        "l": pb.AttributeValue(string_list_value=pb.StringList(values=["a", "b"])),
        "t": stamp,
    }
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
