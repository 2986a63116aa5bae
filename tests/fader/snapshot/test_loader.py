"""fader.snapshot.loader: a native msgpack snapshot is decoded, validated and compiled one
flag at a time (``codec.split_flags``); every other encoding and shape is decoded whole.

Both ways must answer alike: the same refusal with the same issues in the same order, or
the same snapshot answering the same decisions. JSON always takes the whole-document way,
so each case is loaded as msgpack and as JSON and the outcomes compared.
"""

from __future__ import annotations

import copy
import gc
import json
import tracemalloc
from typing import Any

import msgpack
import pytest
from fader.snapshot.codec import JSON, MSGPACK, split_flags
from fader.snapshot.depth import MAX_DEPTH
from fader.snapshot.issues import SnapshotError
from fader.snapshot.limits import DEPTH, LimitError
from fader.snapshot.loader import load_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fader.rules.builders import condition, flag, matcher, snapshot_doc
from tests.fader.rules.strategies import snapshots

KEYS = ("user-1", "user-2", "tester-3", "key-0-1")
ATTRIBUTES: tuple[dict[str, Any] | None, ...] = (
    None,
    {"plan": "pro", "age": 30},
    {"plan": "free", "age": 12, "beta": True},
)


def _outcome(document: Any, fmt: str) -> Any:
    """What loading ``document`` encoded as ``fmt`` gives: the refusal, or the snapshot's
    content and every flag's answers for a few keys and attribute sets."""
    data = msgpack.packb(document) if fmt == MSGPACK else json.dumps(document).encode()
    try:
        snapshot = load_bytes(data, fmt, "test")
    except SnapshotError as exc:
        return (type(exc).__name__, getattr(exc, "reason", None), exc.issues)
    flags = {
        name: (
            flag.change_number,
            flag.default_treatment,
            flag.treatments,
            flag.sets,
            flag.impressions_disabled,
            flag.traffic_type,
            flag.killed,
            flag.has_targeting,
            flag.digest,
            flag.segment_names,
            [
                snapshot.evaluate(key, name, None, attributes)
                for key in KEYS
                for attributes in ATTRIBUTES
            ],
        )
        for name, flag in snapshot.flags.items()
    }
    return (snapshot.version, snapshot.kind, snapshot.warnings, snapshot.segments, flags)


def _same_both_ways(document: Any) -> Any:
    outcome = _outcome(document, MSGPACK)
    assert outcome == _outcome(document, JSON)
    return outcome


def _streamed(document: dict[str, Any]) -> bool:
    """The msgpack encoding of ``document`` takes the flag-by-flag way."""
    split = split_flags(msgpack.packb(document))
    return split is not None and split[1] is not None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snapshots(), st.data())
def test_flag_by_flag_answers_as_the_whole_document(document: Any, data: st.DataObject) -> None:
    """Random valid snapshots, as they are or with one flag broken, duplicated or moved
    after the others: the same snapshot or the same issues either way."""
    document = copy.deepcopy(document)
    flags = document["flags"]
    change = data.draw(st.sampled_from(("none", "break", "duplicate", "not-an-object", "last")))
    if flags and change != "none":
        index = data.draw(st.integers(0, len(flags) - 1))
        if change == "break":
            flags[index]["seed"] = "not a number"
        elif change == "duplicate":
            flags.append(copy.deepcopy(flags[index]))
        elif change == "not-an-object":
            flags.insert(index, ["not", "a", "flag"])
        else:  # segments and rule-based segments after the flags in the encoding
            document = {"flags": document.pop("flags"), **document}
    assert _streamed(document)
    _same_both_ways(document)


def _two_flags() -> dict[str, Any]:
    in_segment = matcher("IN_SEGMENT", userDefinedSegmentMatcherData={"segmentName": "beta-users"})
    whitelist = matcher("WHITELIST", whitelistMatcherData={"whitelist": ["user-1"]})
    return snapshot_doc(
        flag("a", condition(whitelist, partitions={"on": 100}, label="listed")),
        flag("b", condition(in_segment, partitions={"on": 50, "off": 50}, label="beta")),
        segments={"beta-users": ["user-1", "user-2"]},
    )


def test_every_issue_is_reported_in_the_same_order() -> None:
    """Errors before and after valid flags, a duplicate name, a broken rule-based segment
    and a dependency on a missing flag: one refusal listing all of them, in the order the
    whole-document validation lists them."""
    document = _two_flags()
    document["flags"].insert(0, {"name": "b", "seed": 1, "defaultTreatment": "off"})
    document["flags"].append({"name": "c", "seed": "x", "conditions": []})
    dependency = matcher(
        "IN_SPLIT_TREATMENT", dependencyMatcherData={"split": "missing", "treatments": ["on"]}
    )
    document["flags"].append(flag("d", condition(dependency)))
    document["ruleBasedSegments"] = [{"name": "r", "status": "ACTIVE", "conditions": 7}]
    assert _streamed(document)
    kind, _, issues = _same_both_ways(document)
    assert kind == "SnapshotError"
    messages = [issue.message for issue in issues]
    assert messages.index("duplicate name 'b'") < messages.index("conditions must be a list")
    assert any("'missing'" in message for message in messages)


def test_a_flag_nesting_too_deep_is_refused_as_the_whole_document_is() -> None:
    document = _two_flags()
    deep: Any = "bottom"
    for _ in range(MAX_DEPTH - 3):  # the document and its flags list are two more levels
        deep = [deep]
    document["flags"][1]["tags"] = deep  # deep enough with the flag's own map
    assert _same_both_ways(document)[0] == 1  # applied: exactly the limit
    document["flags"][1]["tags"] = [deep]
    with pytest.raises(LimitError) as refused:
        load_bytes(msgpack.packb(document), MSGPACK, "test")
    assert refused.value.reason == DEPTH
    assert _outcome(document, JSON)[1] == DEPTH


def test_flagd_names_clash_with_split_flags_read_one_by_one() -> None:
    document = _two_flags()
    document["flagd"] = {
        "flags": {"b": {"state": "ENABLED", "variants": {"on": True}, "defaultVariant": "on"}}
    }
    _, _, issues = _same_both_ways(document)
    assert [issue.flag for issue in issues] == ["b"]


def test_split_flags_leaves_other_shapes_to_the_whole_decoder() -> None:
    document = _two_flags()
    packed = msgpack.packb(document)
    split = split_flags(packed)
    assert split is not None
    rest, flags = split
    assert flags is not None
    assert rest == {**document, "flags": []}
    assert [msgpack.unpackb(item) for item in flags] == document["flags"]
    assert split_flags(packed + b"\x00") is None  # trailing bytes: decode says so
    assert split_flags(packed[:-3]) is None  # truncated
    assert split_flags(msgpack.packb([1, 2])) is None  # not a map
    flagd_file = {"flags": {"f": {"state": "ENABLED"}}}
    assert split_flags(msgpack.packb(flagd_file)) == (flagd_file, None)  # decoded whole
    split_13 = {"ff": {"d": document["flags"], "t": 3}}
    assert split_flags(msgpack.packb(split_13)) == (split_13, None)


def _bench_like(count: int) -> dict[str, Any]:
    """Flags shaped like the memory benchmark's (benchmarks/inprocess_bench.py --memory):
    three conditions, four matchers, a segment, a configuration; each flag lists its own
    testers."""
    flags = []
    for index in range(count):
        testers = matcher(
            "WHITELIST",
            whitelistMatcherData={"whitelist": [f"tester-{index}-{j}" for j in range(5)]},
        )
        segment = matcher(
            "IN_SEGMENT", userDefinedSegmentMatcherData={"segmentName": f"seg-{index % 100}"}
        )
        plan = matcher("WHITELIST", "plan", whitelistMatcherData={"whitelist": ["pro"]})
        adults = matcher(
            "GREATER_THAN_OR_EQUAL_TO",
            "age",
            unaryNumericMatcherData={"dataType": "NUMBER", "value": 18},
        )
        conditions = (
            condition(testers, partitions={"on": 100}, label="whitelisted", kind="WHITELIST"),
            condition(segment, partitions={"on": 50, "off": 50}, label="in segment"),
            condition(plan, adults, partitions={"on": 10, "off": 90}, label="pro adults"),
        )
        flags.append(
            flag(
                f"flag-{index}",
                *conditions,
                seed=index * 7919,
                changeNumber=index,
                sets=[f"set_{index % 10}"],
                configurations={"on": '{"a":1}'},
            )
        )
    segments = {f"seg-{s}": [f"key-{s}-{k}" for k in range(100)] for s in range(100)}
    return snapshot_doc(*flags, segments=segments)


def test_a_load_holds_a_fraction_of_the_decoded_document() -> None:
    """Memory, measured by tracemalloc (allocated bytes: deterministic, unlike RSS). A
    2,000-flag msgpack snapshot of 2.3 MB peaked at 7.3x its size while loading and kept
    5.8x once loaded when the whole document was decoded first and each flag compiled on
    its own; flag by flag, with equal matchers and strings shared, 4.1x and 2.9x."""
    data = msgpack.packb(_bench_like(2_000))
    gc.collect()
    tracemalloc.start()
    try:
        snapshot = load_bytes(data, MSGPACK, "test")
        snapshot.document = None
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert snapshot.flag_count == 2_000
    assert peak < 5 * len(data), f"peak {peak / len(data):.1f}x the encoded size"
    assert kept < 4 * len(data), f"kept {kept / len(data):.1f}x the encoded size"
