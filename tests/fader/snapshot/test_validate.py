"""Every class of validation error: refused with flag + JSON path, store left unchanged."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from fader.snapshot.loader import SnapshotError, build_snapshot
from fader.snapshot.validate import validate

from sidecar.delivery.store import Store
from tests.fader.rules.builders import condition, flag, matcher, snapshot_doc

Doc = dict[str, Any]


def _errors(doc: Doc) -> list[str]:
    with pytest.raises(SnapshotError) as info:
        build_snapshot(doc)
    return [str(issue) for issue in info.value.issues]


def _m(doc: Doc, **fields: Any) -> Doc:
    doc["flags"][0]["conditions"][0]["matcherGroup"]["matchers"][0] = {"negate": False, **fields}
    return doc


def _base() -> Doc:
    return snapshot_doc(flag("f"), flag("g"))


CASES: dict[str, tuple[Callable[[Doc], Any], str, str]] = {
    "unknown matcher": (
        lambda d: _m(d, matcherType="IN_THE_MOOD"),
        "$.flags[0].conditions[0].matcherGroup.matchers[0].matcherType",
        "unknown matcher type 'IN_THE_MOOD'",
    ),
    "partitions not 100": (
        lambda d: d["flags"][0]["conditions"][0].update(
            partitions=[{"treatment": "on", "size": 60}, {"treatment": "off", "size": 30}]
        ),
        "$.flags[0].conditions[0].partitions",
        "sum to 90, not 100",
    ),
    "partition size out of range": (
        lambda d: d["flags"][0]["conditions"][0].update(
            partitions=[{"treatment": "on", "size": 101}]
        ),
        "$.flags[0].conditions[0].partitions[0].size",
        "0..100",
    ),
    "dependency on a missing flag": (
        lambda d: _m(
            d,
            matcherType="IN_SPLIT_TREATMENT",
            dependencyMatcherData={"split": "nope", "treatments": ["on"]},
        ),
        "dependencyMatcherData.split",
        "flag 'nope', which is not in the snapshot",
    ),
    "prerequisite on a missing flag": (
        lambda d: d["flags"][0].update(prerequisites=[{"n": "ghost", "ts": ["on"]}]),
        "$.flags[0].prerequisites[0].n",
        "'ghost'",
    ),
    "dependency cycle": (
        lambda d: (
            _m(
                d,
                matcherType="IN_SPLIT_TREATMENT",
                dependencyMatcherData={"split": "g", "treatments": ["on"]},
            ),
            d["flags"][1].update(prerequisites=[{"n": "f", "ts": ["on"]}]),
        ),
        "$",
        "dependency cycle: flag:",
    ),
    "bad regex": (
        lambda d: _m(
            d,
            matcherType="MATCHES_STRING",
            keySelector={"attribute": "a"},
            stringMatcherData="(unclosed",
        ),
        "stringMatcherData",
        "invalid regular expression",
    ),
    "regex RE2 cannot run (backreference)": (
        lambda d: _m(d, matcherType="MATCHES_STRING", stringMatcherData=r"(a)\1"),
        "stringMatcherData",
        "RE2",
    ),
    "bad semver": (
        lambda d: _m(d, matcherType="EQUAL_TO_SEMVER", stringMatcherData="1.2"),
        "stringMatcherData",
        "invalid semantic version",
    ),
    "wrong type: whitelist": (
        lambda d: _m(d, matcherType="WHITELIST", whitelistMatcherData={"whitelist": "alice"}),
        "whitelistMatcherData.whitelist",
        "list of strings",
    ),
    "wrong type: numeric value": (
        lambda d: _m(
            d, matcherType="EQUAL_TO", unaryNumericMatcherData={"dataType": "NUMBER", "value": "10"}
        ),
        "unaryNumericMatcherData.value",
        "must be a number",
    ),
    "unknown dataType": (
        lambda d: _m(
            d, matcherType="EQUAL_TO", unaryNumericMatcherData={"dataType": "DATE", "value": 1}
        ),
        "unaryNumericMatcherData.dataType",
        "NUMBER or DATETIME",
    ),
    "wrong type: boolean data": (
        lambda d: _m(d, matcherType="EQUAL_TO_BOOLEAN", booleanMatcherData="true"),
        "booleanMatcherData",
        "true or false",
    ),
    "missing matcher data": (
        lambda d: _m(d, matcherType="BETWEEN"),
        "betweenMatcherData",
        "must be an object",
    ),
    "wrong type: seed": (
        lambda d: d["flags"][0].update(seed="12"),
        "$.flags[0].seed",
        "32-bit signed integer",
    ),
    "seed out of int32": (
        lambda d: d["flags"][0].update(seed=2**31),
        "$.flags[0].seed",
        "32-bit signed integer",
    ),
    "traffic allocation out of range": (
        lambda d: d["flags"][0].update(trafficAllocation=150),
        "$.flags[0].trafficAllocation",
        "0..100",
    ),
    "traffic allocation without its seed": (
        lambda d: (
            d["flags"][0].update(trafficAllocation=50),
            d["flags"][0].pop("trafficAllocationSeed"),
        ),
        "$.flags[0].trafficAllocationSeed",
        "required",
    ),
    "unknown algo": (
        lambda d: d["flags"][0].update(algo=3),
        "$.flags[0].algo",
        "algo must be 1",
    ),
    "empty default treatment": (
        lambda d: d["flags"][0].update(defaultTreatment=" "),
        "$.flags[0].defaultTreatment",
        "non-empty string",
    ),
    "unknown status": (
        lambda d: d["flags"][0].update(status="MAYBE"),
        "$.flags[0].status",
        "ACTIVE or ARCHIVED",
    ),
    "config not a string": (
        lambda d: d["flags"][0].update(configurations={"on": {"color": "green"}}),
        "$.flags[0].configurations.on",
        "JSON string",
    ),
    "bad flag set name": (
        lambda d: d["flags"][0].update(sets=["Bad Set"]),
        "$.flags[0].sets[0]",
        "flag set name",
    ),
    "duplicate flag name": (
        lambda d: d["flags"][1].update(name="f"),
        "$.flags[1].name",
        "duplicate name 'f'",
    ),
    "combiner not AND": (
        lambda d: d["flags"][0]["conditions"][0]["matcherGroup"].update(combiner="OR"),
        "combiner",
        "combiner must be AND",
    ),
    "unknown condition type": (
        lambda d: d["flags"][0]["conditions"][0].update(conditionType="SOMETIMES"),
        "conditionType",
        "ROLLOUT or WHITELIST",
    ),
    "conditions not a list": (
        lambda d: d["flags"][0].update(conditions={}),
        "$.flags[0].conditions",
        "must be a list",
    ),
    "missing rule-based segment": (
        lambda d: _m(
            d,
            matcherType="IN_RULE_BASED_SEGMENT",
            userDefinedSegmentMatcherData={"segmentName": "rbs"},
        ),
        "userDefinedSegmentMatcherData.segmentName",
        "rule-based segment 'rbs' is not in the snapshot",
    ),
    "segment keys not strings": (
        lambda d: d.update(segments={"s": [1, 2]}),
        "$.segments.s",
        "list of keys",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_error_class_names_flag_and_path(name: str) -> None:
    mutate, path, message = CASES[name]
    doc = _base()
    mutate(doc)
    errors = _errors(doc)
    assert any(path in e and message in e for e in errors), errors


def test_all_errors_are_reported_at_once() -> None:
    doc = _base()
    doc["flags"][0]["seed"] = "x"
    doc["flags"][1]["algo"] = 9
    errors = _errors(doc)
    assert any("flag 'f'" in e and ".seed" in e for e in errors)
    assert any("flag 'g'" in e and ".algo" in e for e in errors)


def test_version_must_be_non_negative_integer() -> None:
    for bad in (-1, "3", 1.5, None):
        doc = _base()
        doc["version"] = bad
        assert any("$.version" in e for e in _errors(doc))


def test_missing_segment_is_a_warning_not_an_error() -> None:
    doc = snapshot_doc(
        flag(
            "f",
            condition(matcher("IN_SEGMENT", userDefinedSegmentMatcherData={"segmentName": "x"})),
        )
    )
    snap = build_snapshot(doc)
    assert [w.message for w in snap.warnings] == [
        "segment 'x' is not in the snapshot; it counts as empty"
    ]


def test_refused_snapshot_leaves_the_store_serving_the_old_one() -> None:
    store = Store()
    good = build_snapshot(_base())
    store.swap(good)
    bad = copy.deepcopy(_base())
    bad["version"] = 2
    bad["flags"][0]["conditions"][0]["partitions"] = [{"treatment": "on", "size": 10}]
    with pytest.raises(SnapshotError):
        store.swap(build_snapshot(bad))
    assert store.current is good
    assert store.current.evaluate("k", "f").treatment == "on"


def test_an_unknown_flag_key_is_a_warning_naming_the_likely_one() -> None:
    raw = flag("f")
    raw["defaultTreatmen"] = "on"
    report = validate([raw], {}, [])
    assert not report.errors
    assert [str(w) for w in report.warnings] == [
        "flag 'f' at $.flags[0].defaultTreatmen: unknown key, ignored "
        "(did you mean 'defaultTreatment'?)"
    ]
