"""Every matcher type with the Python SDK's input rules (split-semantics.md §2)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fader.snapshot.loader import build_snapshot

from tests.fader.rules.builders import condition, flag, matcher, snapshot_doc
from tests.vectors import split_vector

DAY_MS = 86_400_000


def matches(
    raw_matcher: dict[str, Any],
    attributes: dict[str, Any] | None = None,
    key: str = "alice",
    segments: dict[str, list[str]] | None = None,
    rbs: list[dict[str, Any]] | None = None,
    extra_flags: tuple[dict[str, Any], ...] = (),
) -> bool:
    doc = snapshot_doc(flag("f", condition(raw_matcher)), *extra_flags, segments=segments, rbs=rbs)
    return build_snapshot(doc).evaluate(key, "f", attributes=attributes).label == "rule"


def wl(
    matcher_type: str, items: list[str], attribute: str | None = "a", negate: bool = False
) -> dict[str, Any]:
    return matcher(matcher_type, attribute, negate, whitelistMatcherData={"whitelist": items})


def numeric(matcher_type: str, value: int, data_type: str = "NUMBER") -> dict[str, Any]:
    return matcher(
        matcher_type, "n", unaryNumericMatcherData={"dataType": data_type, "value": value}
    )


def test_all_keys_ignores_attributes() -> None:
    assert matches(matcher("ALL_KEYS", "absent"))
    assert not matches(matcher("ALL_KEYS", negate=True))


def test_in_segment_tests_the_matching_key_even_with_an_attribute_selector() -> None:
    seg: dict[str, Any] = {"userDefinedSegmentMatcherData": {"segmentName": "s"}}
    assert matches(matcher("IN_SEGMENT", **seg), key="carol", segments={"s": ["carol"]})
    assert not matches(matcher("IN_SEGMENT", **seg), key="dave", segments={"s": ["carol"]})
    on_attr = matcher("IN_SEGMENT", "a", **seg)
    assert matches(on_attr, {"a": "x"}, key="carol", segments={"s": ["carol"]})
    assert not matches(on_attr, {}, key="carol", segments={"s": ["carol"]})


def test_in_large_segment_is_a_segment() -> None:
    raw = matcher(
        "IN_LARGE_SEGMENT", userDefinedLargeSegmentMatcherData={"largeSegmentName": "big"}
    )
    assert matches(raw, key="k1", segments={"big": ["k1"]})
    assert not matches(raw, key="k2", segments={"big": ["k1"]})


def test_whitelist_stringifies_non_strings_with_json() -> None:
    assert matches(wl("WHITELIST", ["123"]), {"a": 123})
    assert matches(wl("WHITELIST", ["true"]), {"a": True})
    assert matches(wl("WHITELIST", ["alice"], attribute=None))
    assert not matches(wl("WHITELIST", ["x"]), {"a": "X"})


def test_negation_of_a_missing_attribute_is_true() -> None:
    assert matches(wl("WHITELIST", ["x"], negate=True), {})
    assert matches(wl("WHITELIST", ["x"], negate=True), None)
    assert not matches(wl("WHITELIST", ["x"], negate=True), {"a": "x"})


def test_numeric_matchers_take_integers_and_integer_strings_only() -> None:
    assert matches(numeric("EQUAL_TO", 10), {"n": 10})
    assert matches(numeric("EQUAL_TO", 10), {"n": "10"})
    assert not matches(numeric("EQUAL_TO", 10), {"n": 10.0})
    assert not matches(numeric("EQUAL_TO", 10), {"n": True})
    assert matches(numeric("GREATER_THAN_OR_EQUAL_TO", 18), {"n": 18})
    assert not matches(numeric("GREATER_THAN_OR_EQUAL_TO", 18), {"n": 17})
    assert matches(numeric("LESS_THAN_OR_EQUAL_TO", 18), {"n": -5})
    between = matcher(
        "BETWEEN", "n", betweenMatcherData={"dataType": "NUMBER", "start": 1, "end": 3}
    )
    assert [matches(between, {"n": v}) for v in (0, 1, 3, 4)] == [False, True, True, False]


def test_datetime_attribute_is_seconds_and_value_is_milliseconds() -> None:
    day_ms = 1_700_000_000_000 - 1_700_000_000_000 % DAY_MS
    raw = numeric("EQUAL_TO", day_ms, "DATETIME")
    assert matches(raw, {"n": day_ms // 1000 + 3600})  # same UTC day
    assert not matches(raw, {"n": day_ms})  # milliseconds are not seconds
    gte = numeric("GREATER_THAN_OR_EQUAL_TO", 1_700_000_040_000, "DATETIME")  # a minute start
    assert matches(gte, {"n": 1_700_000_040 + 59})
    assert not matches(gte, {"n": 1_700_000_039})  # truncated to the minute before


def test_set_matchers() -> None:
    assert matches(wl("EQUAL_TO_SET", ["a", "b"]), {"a": ["b", "a", "a"]})
    assert not matches(wl("EQUAL_TO_SET", ["a", "b"]), {"a": ["a"]})
    assert matches(wl("CONTAINS_ANY_OF_SET", ["a", "z"]), {"a": ["a", "q"]})
    assert matches(wl("CONTAINS_ALL_OF_SET", ["a", "b"]), {"a": ["a", "b", "c"]})
    assert not matches(wl("CONTAINS_ALL_OF_SET", ["a", "b"]), {"a": ["a"]})
    assert matches(wl("PART_OF_SET", ["a", "b"]), {"a": ["a"]})
    assert not matches(wl("PART_OF_SET", ["a", "b"]), {"a": []})
    assert not matches(wl("PART_OF_SET", ["a", "b"]), {"a": ["a", "c"]})


def test_set_matchers_iterate_a_string_as_characters_and_refuse_numbers() -> None:
    assert matches(wl("CONTAINS_ANY_OF_SET", ["a", "b"]), {"a": "abc"})
    assert not matches(wl("CONTAINS_ANY_OF_SET", ["1"]), {"a": 1})


def test_string_matchers() -> None:
    assert matches(wl("STARTS_WITH", ["pre", "x"]), {"a": "prefix"})
    assert matches(wl("ENDS_WITH", ["fix"]), {"a": "prefix"})
    assert matches(wl("CONTAINS_STRING", ["efi"]), {"a": "prefix"})
    assert not matches(wl("STARTS_WITH", ["Pre"]), {"a": "prefix"})
    assert matches(wl("STARTS_WITH", ["12"]), {"a": 123})


def test_boolean_matcher_accepts_bools_and_case_insensitive_strings() -> None:
    raw = matcher("EQUAL_TO_BOOLEAN", "b", booleanMatcherData=True)
    assert matches(raw, {"b": True})
    assert matches(raw, {"b": "TRUE"})
    assert not matches(raw, {"b": "yes"})
    assert not matches(raw, {"b": 1})


def test_semver_matchers() -> None:
    eq = matcher("EQUAL_TO_SEMVER", "v", stringMatcherData="1.2.3")
    assert matches(eq, {"v": "1.2.3"})
    assert not matches(eq, {"v": "1.2.3+build"})
    between = matcher(
        "BETWEEN_SEMVER", "v", betweenStringMatcherData={"start": "1.0.0-rc.1", "end": "2.0.0"}
    )
    assert matches(between, {"v": "2.0.0+build"})
    assert not matches(between, {"v": "1.0.0-beta"})
    gte = matcher("GREATER_THAN_OR_EQUAL_TO_SEMVER", "v", stringMatcherData="1.2.3")
    assert matches(gte, {"v": "1.10.0"})
    assert not matches(gte, {"v": "not a version"})
    lte = matcher("LESS_THAN_OR_EQUAL_TO_SEMVER", "v", stringMatcherData="1.2.3")
    assert matches(lte, {"v": "1.2.3-rc"})
    in_list = wl("IN_LIST_SEMVER", ["1.0.0", "2.0.0-rc.01"], attribute="v")
    assert matches(in_list, {"v": "2.0.0-rc.1"})


REGEX_LINES = 145  # README: "All 145 lines of Split's regex test file behave identically"


def test_regex_vectors_search_semantics() -> None:
    """Every line of Split's regex file: Fader (RE2) and Python's ``re`` both give the
    expected search result, and no line is left out (the count is the README's figure)."""
    path = split_vector("regex.txt")
    count = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line:
            continue
        pattern, text, expected = line.rsplit("#", 2)
        raw = matcher("MATCHES_STRING", "s", stringMatcherData=pattern)
        assert matches(raw, {"s": text}) == (expected == "true"), line
        assert (re.search(pattern, text) is not None) == (expected == "true"), line
        count += 1
    assert count == REGEX_LINES


def test_rule_based_segment_with_exclusions() -> None:
    rbs = [
        {
            "name": "grown-ups",
            "status": "ACTIVE",
            "conditions": [
                {
                    "matcherGroup": {
                        "combiner": "AND",
                        "matchers": [
                            matcher(
                                "GREATER_THAN_OR_EQUAL_TO",
                                "age",
                                unaryNumericMatcherData={"dataType": "NUMBER", "value": 18},
                            )
                        ],
                    }
                }
            ],
            "excluded": {"keys": ["banned"], "segments": [{"name": "staff", "type": "standard"}]},
        }
    ]
    raw = matcher(
        "IN_RULE_BASED_SEGMENT", userDefinedSegmentMatcherData={"segmentName": "grown-ups"}
    )
    segments = {"staff": ["sam"]}
    assert matches(raw, {"age": 30}, key="ann", rbs=rbs, segments=segments)
    assert not matches(raw, {"age": 10}, key="ann", rbs=rbs, segments=segments)
    assert not matches(raw, {"age": 30}, key="banned", rbs=rbs, segments=segments)
    assert not matches(raw, {"age": 30}, key="sam", rbs=rbs, segments=segments)


def test_rule_based_exclusion_by_another_rule_based_segment() -> None:
    rbs = [
        {
            "name": "outer",
            "conditions": [
                {"matcherGroup": {"combiner": "AND", "matchers": [matcher("ALL_KEYS")]}}
            ],
            "excluded": {"keys": [], "segments": [{"name": "inner", "type": "rule-based"}]},
        },
        {
            "name": "inner",
            "conditions": [
                {
                    "matcherGroup": {
                        "combiner": "AND",
                        "matchers": [wl("WHITELIST", ["x"], attribute=None)],
                    }
                }
            ],
            "excluded": {"keys": ["y"], "segments": []},
        },
    ]
    raw = matcher("IN_RULE_BASED_SEGMENT", userDefinedSegmentMatcherData={"segmentName": "outer"})
    assert not matches(raw, key="x", rbs=rbs)  # x is in inner, so excluded from outer
    assert matches(raw, key="z", rbs=rbs)
    assert matches(raw, key="y", rbs=rbs)  # excluded from inner: the walk ends "not excluded"


@pytest.mark.parametrize("treatments,expected", [(["on"], True), (["off"], False)])
def test_dependency(treatments: list[str], expected: bool) -> None:
    raw = matcher(
        "IN_SPLIT_TREATMENT", dependencyMatcherData={"split": "g", "treatments": treatments}
    )
    assert matches(raw, extra_flags=(flag("g"),)) == expected
