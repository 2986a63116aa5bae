"""Split's evaluation algorithm, rule by rule (split-semantics.md §3 and the traps list)."""

from __future__ import annotations

from typing import Any

import pytest
from fader.rules.hashing import bucket
from fader.rules.result import Decision
from fader.snapshot.loader import build_snapshot

from tests.fader.rules.builders import condition, flag, matcher, snapshot_doc


def _eval(doc: dict[str, Any], key: str = "user-1", name: str = "f", **kw: Any) -> Decision:
    return build_snapshot(doc).evaluate(key, name, **kw)


def test_unknown_flag_is_control_definition_not_found() -> None:
    result = _eval(snapshot_doc(flag()), name="missing")
    assert result == Decision("control", "definition not found", None, None)


def test_archived_flag_is_not_found() -> None:
    result = _eval(snapshot_doc(flag(status="ARCHIVED")))
    assert result.label == "definition not found"


def test_killed_returns_default_with_its_config_before_anything_else() -> None:
    doc = snapshot_doc(
        flag(
            killed=True,
            defaultTreatment="safe",
            configurations={"safe": '{"a":1}'},
            trafficAllocation=0,
            prerequisites=[{"n": "g", "ts": ["never"]}],
        ),
        flag("g"),
    )
    assert _eval(doc) == Decision("safe", "killed", '{"a":1}', 7)


def test_killed_with_control_default_has_no_config() -> None:
    doc = snapshot_doc(
        flag(killed=True, defaultTreatment="control", configurations={"control": "{}"})
    )
    assert _eval(doc) == Decision("control", "killed", None, 7)


def test_fifty_fifty_rollout_uses_murmur_bucket_of_bucketing_key() -> None:
    doc = snapshot_doc(flag("f", condition(partitions={"on": 50, "off": 50}, label="default rule")))
    snap = build_snapshot(doc)
    for key in ("user-1", "user-2", "user-3", "user-4"):
        expected = "on" if bucket(key, 1314120000, 2) <= 50 else "off"
        assert snap.evaluate(key, "f").treatment == expected
        assert snap.evaluate("someone-else", "f", bucketing_key=key).treatment == expected
    # documented buckets from split-semantics.md §8 (seed 1314120000): 17, 72, 73, 25
    assert [snap.evaluate(k, "f").treatment for k in ("user-1", "user-2", "user-3", "user-4")] == [
        "on",
        "off",
        "off",
        "on",
    ]


def test_traffic_allocation_checked_before_first_rollout_only() -> None:
    whitelist = condition(
        matcher("WHITELIST", whitelistMatcherData={"whitelist": ["vip"]}),
        label="whitelisted",
        kind="WHITELIST",
    )
    doc = snapshot_doc(flag("f", whitelist, condition(label="default rule"), trafficAllocation=20))
    snap = build_snapshot(doc)
    assert snap.evaluate("vip", "f") == Decision("on", "whitelisted", None, 7)
    # traffic-allocation buckets (seed -1667452163): user-1..5 = 89, 22, 21, 18, 51
    labels = [snap.evaluate(f"user-{i}", "f").label for i in range(1, 6)]
    assert labels == ["not in split"] * 3 + ["default rule", "not in split"]


def test_traffic_allocation_zero_keeps_everyone_out() -> None:
    assert _eval(snapshot_doc(flag(trafficAllocation=0))).label == "not in split"


def test_condition_without_type_is_whitelist_and_skips_traffic_allocation() -> None:
    doc = snapshot_doc(flag("f", condition(kind=None, label="untyped"), trafficAllocation=0))
    assert _eval(doc).label == "untyped"


def test_no_condition_matches_gives_default_rule() -> None:
    cond = condition(matcher("WHITELIST", whitelistMatcherData={"whitelist": ["x"]}))
    doc = snapshot_doc(flag("f", cond, configurations={"off": '{"d":0}'}))
    assert _eval(doc) == Decision("off", "default rule", '{"d":0}', 7)


def test_missing_label_is_none() -> None:
    assert _eval(snapshot_doc(flag("f", condition(label=None)))).label is None


def test_partitions_short_of_100_buckets_fall_to_control() -> None:
    # validation refuses such a snapshot; the compiled table still guards the gap
    from fader.rules.compile import compile_rules

    raw = flag("f", condition(partitions={"on": 100}))
    raw["conditions"][0]["partitions"] = [{"treatment": "on", "size": 1}]
    rules = compile_rules([raw], {}, [])
    keys = [f"k{i}" for i in range(200)]
    treatments = {rules.flags["f"].run(k, k, None).treatment for k in keys}
    assert treatments == {"on", "control"}


def test_prerequisites_not_met_gives_default() -> None:
    doc = snapshot_doc(
        flag("f", prerequisites=[{"n": "g", "ts": ["on"]}]),
        flag("g", condition(partitions={"off": 100})),
    )
    assert _eval(doc) == Decision("off", "prerequisites not met", None, 7)


def test_prerequisites_met_continues_to_conditions() -> None:
    doc = snapshot_doc(flag("f", prerequisites=[{"n": "g", "ts": ["on"]}]), flag("g"))
    assert _eval(doc) == Decision("on", "rule", None, 7)


def test_prerequisites_are_skipped_when_the_default_is_control() -> None:
    """splitio-client re-enters condition evaluation when its 'treatment so far' is control."""
    doc = snapshot_doc(
        flag("f", prerequisites=[{"n": "g", "ts": ["on"]}], defaultTreatment="control"),
        flag("g", condition(partitions={"off": 100})),
    )
    assert _eval(doc) == Decision("on", "rule", None, 7)


def test_dependency_matcher_forwards_bucketing_key_and_attributes() -> None:
    inner = flag(
        "inner",
        condition(matcher("WHITELIST", "plan", whitelistMatcherData={"whitelist": ["pro"]})),
    )
    outer = flag(
        "outer",
        condition(
            matcher(
                "IN_SPLIT_TREATMENT", dependencyMatcherData={"split": "inner", "treatments": ["on"]}
            )
        ),
    )
    snap = build_snapshot(snapshot_doc(inner, outer))
    assert snap.evaluate("u", "outer", attributes={"plan": "pro"}).treatment == "on"
    assert snap.evaluate("u", "outer", attributes={"plan": "free"}).treatment == "off"


def test_config_is_per_treatment() -> None:
    doc = snapshot_doc(
        flag("f", condition(partitions={"v1": 100}), configurations={"v1": '{"x":1}'})
    )
    assert _eval(doc).config == '{"x":1}'
    doc = snapshot_doc(
        flag("f", condition(partitions={"v2": 100}), configurations={"v1": '{"x":1}'})
    )
    assert _eval(doc).config is None


def test_control_treatment_from_a_partition_carries_no_config() -> None:
    doc = snapshot_doc(
        flag("f", condition(partitions={"control": 100}), configurations={"control": "{}"})
    )
    assert _eval(doc) == Decision("control", "rule", None, 7)


def test_exception_inside_rules_is_control_exception() -> None:
    from fader.rules.compile import compile_rules
    from fader.rules.evaluate import make_evaluate

    raw = flag(
        "f",
        condition(
            matcher("IN_RULE_BASED_SEGMENT", userDefinedSegmentMatcherData={"segmentName": "gone"})
        ),
    )
    rules = compile_rules([raw], {}, [])  # unvalidated: the RBS does not exist
    evaluate = make_evaluate(rules.flags, {name: f.run for name, f in rules.flags.items()})
    assert evaluate("u", "f") == Decision("control", "exception", None, 7)


def test_whole_answer_is_from_one_snapshot_version() -> None:
    one = build_snapshot(snapshot_doc(flag(changeNumber=1), version=1))
    two = build_snapshot(snapshot_doc(flag(changeNumber=2), version=2))
    assert one.evaluate("u", "f").change_number == 1
    assert two.evaluate("u", "f").change_number == 2


@pytest.mark.parametrize("algo", [None, 1])
def test_legacy_algo_buckets_with_legacy_hash(algo: int | None) -> None:
    raw = flag("f", condition(partitions={"on": 50, "off": 50}))
    if algo is None:
        del raw["algo"]
    else:
        raw["algo"] = algo
    snap = build_snapshot(snapshot_doc(raw))
    for key in ("a", "b", "c", "d", "e"):
        expected = "on" if bucket(key, 1314120000, 1) <= 50 else "off"
        assert snap.evaluate(key, "f").treatment == expected
