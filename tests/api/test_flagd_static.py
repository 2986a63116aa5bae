"""flagd's STATIC reason only for flags that answer every key alike.

OpenFeature flagd providers cache a STATIC answer by flag key alone (RPC mode), so a flag
reported STATIC whose answer depends on the key, the bucketing key or the attributes would
hand one user's answer to every other user. The reason comes from `mapping.reason`, which
reads `CompiledFlag.has_targeting` (`fader.rules.compile._has_targeting`).

Each flag below is evaluated over a pool of requests (200 keys, bucketing keys, and the
attribute maps its matchers look at). For every way a Split flag can vary by request, the
test first checks that the answers really differ across the pool (so the case tests
something), then that no answer is STATIC. Flags that cannot vary must be STATIC and answer
the whole pool alike. The differential test checks the same property of `has_targeting`
on its random snapshots (tests/fader/rules/test_differential.py).

Mutants these tests catch (each fails every run): `_has_targeting` ignoring the traffic
allocation cut, ignoring the first condition's matchers, ignoring partitions that split
the buckets, or ignoring prerequisites; `reason` answering STATIC before checking
targeting.
"""

from __future__ import annotations

from typing import Any

import pytest
from fader.rules.result import Decision
from fader.snapshot.loader import build_snapshot
from fader.snapshot.snapshot import Snapshot

from sidecar.api import flagd_mapping as mapping
from tests.fader.rules.builders import condition, flag, matcher, snapshot_doc

Json = dict[str, Any]
Request = tuple[str, str | None, Json | None]

KEYS = (*(f"user-{i}" for i in range(200)), "vip")
BUCKETING = (None, "bucket-1", "bucket-2")

# One matcher per type (on the matching key or an attribute), with attribute maps among
# which at least one matches and one does not. Segments "s" = ["vip"], rule-based segment
# "r" = keys in "s" unless excluded, flag "dep" answers "on" to "vip" only.
MATCHERS: dict[str, tuple[Json, tuple[Json | None, ...]]] = {
    "WHITELIST": (matcher("WHITELIST", whitelistMatcherData={"whitelist": ["vip"]}), (None,)),
    "EQUAL_TO": (
        matcher("EQUAL_TO", "n", unaryNumericMatcherData={"dataType": "NUMBER", "value": 5}),
        ({"n": 5}, {"n": 6}),
    ),
    "GREATER_THAN_OR_EQUAL_TO": (
        matcher(
            "GREATER_THAN_OR_EQUAL_TO",
            "n",
            unaryNumericMatcherData={"dataType": "NUMBER", "value": 5},
        ),
        ({"n": 5}, {"n": 4}),
    ),
    "LESS_THAN_OR_EQUAL_TO": (
        matcher(
            "LESS_THAN_OR_EQUAL_TO",
            "t",
            unaryNumericMatcherData={"dataType": "DATETIME", "value": 1_700_000_000_000},
        ),
        ({"t": 1_700_000_000}, {"t": 1_800_000_000}),
    ),
    "BETWEEN": (
        matcher("BETWEEN", "n", betweenMatcherData={"dataType": "NUMBER", "start": 1, "end": 5}),
        ({"n": 3}, {"n": 9}),
    ),
    "EQUAL_TO_SET": (
        matcher("EQUAL_TO_SET", "s", whitelistMatcherData={"whitelist": ["a", "b"]}),
        ({"s": ["a", "b"]}, {"s": ["a"]}),
    ),
    "CONTAINS_ANY_OF_SET": (
        matcher("CONTAINS_ANY_OF_SET", "s", whitelistMatcherData={"whitelist": ["a"]}),
        ({"s": ["a", "z"]}, {"s": ["z"]}),
    ),
    "CONTAINS_ALL_OF_SET": (
        matcher("CONTAINS_ALL_OF_SET", "s", whitelistMatcherData={"whitelist": ["a", "b"]}),
        ({"s": ["a", "b", "c"]}, {"s": ["a"]}),
    ),
    "PART_OF_SET": (
        matcher("PART_OF_SET", "s", whitelistMatcherData={"whitelist": ["a", "b"]}),
        ({"s": ["a"]}, {"s": ["c"]}),
    ),
    "STARTS_WITH": (
        matcher("STARTS_WITH", "e", whitelistMatcherData={"whitelist": ["ab"]}),
        ({"e": "abc"}, {"e": "xab"}),
    ),
    "ENDS_WITH": (
        matcher("ENDS_WITH", "e", whitelistMatcherData={"whitelist": ["ab"]}),
        ({"e": "xab"}, {"e": "abx"}),
    ),
    "CONTAINS_STRING": (
        matcher("CONTAINS_STRING", "e", whitelistMatcherData={"whitelist": ["ab"]}),
        ({"e": "xabx"}, {"e": "xx"}),
    ),
    "MATCHES_STRING": (
        matcher("MATCHES_STRING", "e", stringMatcherData="^a+$"),
        ({"e": "aaa"}, {"e": "b"}),
    ),
    "EQUAL_TO_BOOLEAN": (
        matcher("EQUAL_TO_BOOLEAN", "b", booleanMatcherData=True),
        ({"b": True}, {"b": False}),
    ),
    "EQUAL_TO_SEMVER": (
        matcher("EQUAL_TO_SEMVER", "v", stringMatcherData="1.2.3"),
        ({"v": "1.2.3"}, {"v": "1.2.4"}),
    ),
    "GREATER_THAN_OR_EQUAL_TO_SEMVER": (
        matcher("GREATER_THAN_OR_EQUAL_TO_SEMVER", "v", stringMatcherData="1.2.3"),
        ({"v": "2.0.0"}, {"v": "1.0.0"}),
    ),
    "LESS_THAN_OR_EQUAL_TO_SEMVER": (
        matcher("LESS_THAN_OR_EQUAL_TO_SEMVER", "v", stringMatcherData="1.2.3"),
        ({"v": "1.0.0"}, {"v": "2.0.0"}),
    ),
    "BETWEEN_SEMVER": (
        matcher("BETWEEN_SEMVER", "v", betweenStringMatcherData={"start": "1.0.0", "end": "2.0.0"}),
        ({"v": "1.2.3"}, {"v": "3.0.0"}),
    ),
    "IN_LIST_SEMVER": (
        matcher("IN_LIST_SEMVER", "v", whitelistMatcherData={"whitelist": ["1.2.3"]}),
        ({"v": "1.2.3"}, {"v": "1.2.4"}),
    ),
    "IN_SEGMENT": (
        matcher("IN_SEGMENT", userDefinedSegmentMatcherData={"segmentName": "s"}),
        (None,),
    ),
    "IN_LARGE_SEGMENT": (
        matcher("IN_LARGE_SEGMENT", userDefinedLargeSegmentMatcherData={"largeSegmentName": "s"}),
        (None,),
    ),
    "IN_RULE_BASED_SEGMENT": (
        matcher("IN_RULE_BASED_SEGMENT", userDefinedSegmentMatcherData={"segmentName": "r"}),
        (None,),
    ),
    "IN_SPLIT_TREATMENT": (
        matcher("IN_SPLIT_TREATMENT", dependencyMatcherData={"split": "dep", "treatments": ["on"]}),
        (None,),
    ),
}

VIP = matcher("WHITELIST", whitelistMatcherData={"whitelist": ["vip"]})
EVERYONE = matcher("ALL_KEYS")
NOBODY = matcher("ALL_KEYS", negate=True)


def world(*flags: Json, rule_based: list[Json] | None = None) -> Snapshot:
    """`flags` next to what matchers may refer to: segment "s" = ["vip"], rule-based
    segment "r" = the keys in "s", flag "dep" ("on" to "vip", "off" to everyone else), and
    any further rule-based segments."""
    in_s = matcher("IN_SEGMENT", userDefinedSegmentMatcherData={"segmentName": "s"})
    dep = flag("dep", condition(VIP, partitions={"on": 100}))
    rbs = [rule_based_segment("r", in_s), *(rule_based or [])]
    return build_snapshot(snapshot_doc(dep, *flags, segments={"s": ["vip"]}, rbs=rbs))


def rule_based_segment(
    name: str, *matchers: Json, keys: list[str] | None = None, segments: list[Json] | None = None
) -> Json:
    return {
        "name": name,
        "status": "ACTIVE",
        "conditions": [{"matcherGroup": {"combiner": "AND", "matchers": list(matchers)}}],
        "excluded": {"keys": keys or [], "segments": segments or []},
    }


def pool(attributes: tuple[Json | None, ...] = (None,)) -> list[Request]:
    return [(k, bk, a) for k in KEYS for bk in BUCKETING for a in attributes]


def reasons_and_answers(
    snap: Snapshot, name: str, requests: list[Request]
) -> tuple[set[str], set[Decision]]:
    compiled = snap.flags[name]
    reasons: set[str] = set()
    answers: set[Decision] = set()
    for key, bucketing_key, attributes in requests:
        result = snap.evaluate(key, name, bucketing_key, attributes)
        answers.add(result)
        reasons.add(mapping.reason(compiled, result))
    return reasons, answers


def assert_varies_and_is_never_static(snap: Snapshot, name: str, requests: list[Request]) -> None:
    reasons, answers = reasons_and_answers(snap, name, requests)
    assert len(answers) > 1, f"{name}: the case does not vary, so it tests nothing: {answers}"
    assert mapping.REASON_STATIC not in reasons, (
        f"{name} answers {len(answers)} different ways but is reported STATIC: "
        "a provider would cache one key's answer for all"
    )


@pytest.mark.parametrize("negate", [False, True], ids=["plain", "negated"])
@pytest.mark.parametrize("matcher_type", sorted(MATCHERS))
def test_a_flag_whose_first_condition_has_a_matcher_is_never_static(
    matcher_type: str, negate: bool
) -> None:
    raw, attributes = MATCHERS[matcher_type]
    snap = world(flag("f", condition({**raw, "negate": negate}, partitions={"on": 100})))
    assert_varies_and_is_never_static(snap, "f", pool(attributes))


def test_every_matcher_type_but_all_keys_is_covered() -> None:
    from fader.rules.matchers import MATCHER_TYPES

    assert set(MATCHERS) == MATCHER_TYPES - {"ALL_KEYS"}


# Flag shapes whose answer depends on the request without any matcher in the first
# condition, or through something other than it.
SHAPES: dict[str, Json] = {
    "traffic allocation 50": flag("f", trafficAllocation=50),
    "traffic allocation 1": flag("f", trafficAllocation=1),
    "traffic allocation 99": flag("f", trafficAllocation=99),
    "traffic allocation cut before a second rollout": flag(
        "f",
        condition(NOBODY, partitions={"x": 100}, kind="WHITELIST"),
        condition(partitions={"on": 100}),
        trafficAllocation=50,
    ),
    "partitions 50/50": flag("f", condition(partitions={"on": 50, "off": 50})),
    "partitions 99/1": flag("f", condition(partitions={"on": 99, "off": 1})),
    "partitions 1/99": flag("f", condition(partitions={"on": 1, "off": 99})),
    "partitions in three": flag("f", condition(partitions={"a": 30, "b": 30, "c": 40})),
    "a matcher next to ALL_KEYS": flag("f", condition(EVERYONE, VIP)),
    "a targeted condition before an everyone condition": flag(
        "f", condition(VIP, partitions={"vip": 100}), condition(partitions={"on": 100})
    ),
    "negated ALL_KEYS, then a 50/50 split": flag(
        "f", condition(NOBODY, partitions={"x": 100}), condition(partitions={"on": 50, "off": 50})
    ),
    "prerequisites": flag("f", prerequisites=[{"n": "dep", "ts": ["on"]}]),
    "prerequisites and a traffic cut": flag(
        "f", prerequisites=[{"n": "dep", "ts": ["off"]}], trafficAllocation=50
    ),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_flag_that_varies_by_request_is_never_static(shape: str) -> None:
    snap = world(SHAPES[shape])
    assert_varies_and_is_never_static(snap, "f", pool())


@pytest.mark.parametrize(
    "excluded",
    [
        {"keys": ["user-7"]},
        {"segments": [{"name": "s", "type": "standard"}]},
        {"segments": [{"name": "r", "type": "rule-based"}]},
    ],
    ids=["excluded key", "excluded segment", "excluded rule-based segment"],
)
def test_a_rule_based_segment_of_everyone_but_exclusions_is_never_static(
    excluded: dict[str, Any],
) -> None:
    """A rule-based segment whose condition takes every key varies only by what it
    excludes ("vip" is in "s" and so in "r")."""
    everyone_but = rule_based_segment("everyone-but", EVERYONE, **excluded)
    in_it = matcher(
        "IN_RULE_BASED_SEGMENT", userDefinedSegmentMatcherData={"segmentName": "everyone-but"}
    )
    snap = world(flag("f", condition(in_it)), rule_based=[everyone_but])
    assert_varies_and_is_never_static(snap, "f", pool())


# Flags that answer every request alike: STATIC, and the same answer for the whole pool.
STATIC: dict[str, Json] = {
    "everyone, one treatment": flag("f"),
    "no conditions (the default treatment)": flag("f", conditions=[]),
    "partitions 100/0": flag("f", condition(partitions={"on": 100, "off": 0})),
    "everyone first, targeting never reached": flag(
        "f", condition(partitions={"on": 100}), condition(VIP, partitions={"vip": 100})
    ),
    "a traffic allocation before a WHITELIST-type condition (never checked)": flag(
        "f", condition(partitions={"on": 100}, kind="WHITELIST"), trafficAllocation=50
    ),
    "a config": flag("f", configurations={"on": '{"color":"blue"}'}),
}


@pytest.mark.parametrize("shape", sorted(STATIC))
def test_a_flag_that_answers_everyone_alike_is_static(shape: str) -> None:
    snap = world(STATIC[shape])
    attributes = tuple(a for _, variants in MATCHERS.values() for a in variants)
    reasons, answers = reasons_and_answers(snap, "f", pool(attributes[:6]))
    assert len(answers) == 1, answers
    assert reasons == {mapping.REASON_STATIC}


@pytest.mark.parametrize("shape", ["traffic allocation 50", "partitions 50/50", "prerequisites"])
def test_killed_is_disabled_for_everyone_whatever_its_rules(shape: str) -> None:
    """A killed flag answers its default treatment to every request (DISABLED, never
    STATIC, never TARGETING_MATCH); the same rules not killed vary."""
    snap = world({**SHAPES[shape], "killed": True})
    reasons, answers = reasons_and_answers(snap, "f", pool())
    assert reasons == {mapping.REASON_DISABLED}
    assert len(answers) == 1
