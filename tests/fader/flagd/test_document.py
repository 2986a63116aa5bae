"""The flagd dialect in the library: what a snapshot accepts and refuses, the combined
shape, and the provider suite's targeting cases evaluated in process, for both fractional
generations (v2 as the flagd server computes it, v3 as openfeature-flagd-core 2.x does)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from fader.flagd import result as labels
from fader.flagd.document import build
from fader.snapshot.issues import SnapshotError
from fader.snapshot.loader import build_snapshot, check_document, load_bytes
from fader.snapshot.snapshot import Snapshot

from sidecar.delivery.store import Store
from tests.fader.flagd import randomised
from tests.fader.flagd.gherkin import Case, check_of, read_feature
from tests.fader.rules.builders import condition, flag, snapshot_doc
from tests.vectors import FLAGD


def provider_flags(generation: str) -> dict[str, Any]:
    """The testbed's provider flag files merged as its launchpad merges them (every file
    but the selector ones, in name order), with the fractional generation chosen."""
    merged: dict[str, Any] = {"flags": {}, "$evaluators": {}}
    for path in sorted((FLAGD / "flags").glob("*.json")):
        if path.name.startswith("selector"):
            continue
        doc = json.loads(path.read_text())
        merged["flags"].update(doc.get("flags", {}))
        merged["$evaluators"].update(doc.get("$evaluators", {}))
    merged["fractional"] = generation
    return merged


def targeting_cases(generation: str) -> list[Case]:
    other = {"v2": "@fractional-v3", "v3": "@fractional-v2"}[generation]
    cases = read_feature(FLAGD / "gherkin" / "targeting.feature")
    return [c for c in cases if "@fractional-v1" not in c.tags and other not in c.tags]


def typed_answer(snap: Snapshot, flag_key: str, kind: str, fallback: Any, context: dict[str, Any]):
    """What a provider makes of an in-process answer: (value, reason or ERROR)."""
    key = context.get("targetingKey")
    result = snap.evaluate(key if isinstance(key, str) else "", flag_key, None, context)
    if result.label in labels.ERRORS:
        return fallback, "ERROR"
    reason = labels.REASONS[result.label or ""]
    if result.label in labels.WITHOUT_VALUE:
        return fallback, reason
    compiled = snap.flags[flag_key]
    assert compiled.values is not None
    value = compiled.values[result.treatment]
    if kind == "float":
        value = float(value)
    return value, reason


@pytest.mark.parametrize("generation", ["v2", "v3"])
def test_provider_targeting_suite_in_process(generation: str) -> None:
    snap = build_snapshot(provider_flags(generation))
    cases = targeting_cases(generation)
    assert len(cases) >= 98
    wrong: list[tuple[Any, ...]] = []
    for case in cases:
        check = check_of(case)
        value, reason = typed_answer(snap, check.flag, check.kind, check.fallback, check.context)
        if check.expect_value and value != check.value:
            wrong.append((case.id, check.context, value, check.value))
        elif check.reason is not None and reason != check.reason:
            wrong.append((case.id, reason, check.reason))
    assert not wrong, wrong


def test_a_plain_flagd_file_is_a_snapshot_numbered_by_the_store() -> None:
    data = json.dumps(
        {"flags": {"f": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a"}}}
    )
    store = Store()
    first, second = (load_bytes(data.encode(), "json", "test") for _ in range(2))
    assert first.kind == "flagd" and not first.versioned
    store.swap(first)
    store.swap(second)
    assert (first.version, second.version) == (1, 2)


def test_a_flagd_section_beside_split_flags() -> None:
    doc = snapshot_doc(flag("split-flag", condition(partitions={"on": 100})), version=7)
    doc["flagd"] = {
        "flags": {
            "flagd-flag": {
                "state": "ENABLED",
                "variants": {"on": True, "off": False},
                "defaultVariant": "off",
                "targeting": {"if": [{"==": [{"var": "plan"}, "pro"]}, "on"]},
                "metadata": {"team": "web"},
            }
        },
        "metadata": {"flagSetId": "shop"},
    }
    snap = build_snapshot(doc)
    assert snap.version == 7
    assert snap.evaluate("u", "split-flag").treatment == "on"
    answer = snap.evaluate("u", "flagd-flag", None, {"plan": "pro"})
    assert (answer.treatment, answer.label, answer.config) == ("on", "targeting match", "true")
    assert snap.evaluate("u", "flagd-flag").label == "default variant"
    assert snap.flags["flagd-flag"].sets == {"shop"}
    assert snap.flags["flagd-flag"].metadata == {"flagSetId": "shop", "team": "web"}
    assert snap.flagd is not None
    assert json.loads(snap.flagd.payload("shop"))["flags"].keys() == {"flagd-flag"}
    assert json.loads(snap.flagd.payload("other"))["flags"] == {}


def refusal(doc: Any) -> list[str]:
    with pytest.raises(SnapshotError) as raised:
        build_snapshot(doc)
    return [str(issue) for issue in raised.value.issues]


def test_names_are_unique_across_dialects() -> None:
    doc = snapshot_doc(flag("same", condition(partitions={"on": 100})), version=1)
    doc["flagd"] = {"flags": {"same": {"state": "ENABLED", "variants": {"a": "a"}}}}
    assert refusal(doc) == [
        "flag 'same' at $.flagd.flags[\"same\"]: a Split flag has the same name "
        "(names are unique across both dialects)"
    ]


def test_structural_errors_name_the_flag_and_path() -> None:
    doc = {
        "flags": {
            "a": {"state": "ON", "variants": {"x": 1}},
            "b": {"state": "ENABLED", "variants": {"x": 1, "y": "one"}},
            "c": {"state": "ENABLED", "variants": {"x": 1}, "defaultVariant": "z"},
            "d": {"state": "ENABLED", "variants": {"x": 1}, "targeting": "x"},
            "e": {"state": "ENABLED", "variants": {"x": 1}, "metadata": {"m": [1]}},
        },
        "fractional": "v9",
    }
    assert refusal(doc) == [
        "$.fractional: must be 'v2' or 'v3', got 'v9'",
        "flag 'a' at $.flags[\"a\"].state: state must be ENABLED or DISABLED, got 'ON'",
        "flag 'b' at $.flags[\"b\"].variants: variants must all be booleans, all strings, "
        "all numbers or all objects",
        "flag 'c' at $.flags[\"c\"].defaultVariant: 'z' is not one of the variants",
        "flag 'd' at $.flags[\"d\"].targeting: targeting must be a JsonLogic object",
        "flag 'e' at $.flags[\"e\"].metadata.m: metadata values are strings, numbers or booleans",
    ]


def nested(depth: int) -> Any:
    rule: Any = "on"
    for _ in range(depth):
        rule = {"if": [True, rule]}
    return rule


def test_targeting_over_the_limits_is_refused() -> None:
    deep = {"state": "ENABLED", "variants": {"on": 1}, "targeting": nested(40)}
    wide = {
        "state": "ENABLED",
        "variants": {"on": 1},
        "targeting": {"or": [{"==": [{"var": "k"}, i]} for i in range(5000)]},
    }
    errors = refusal({"flags": {"deep": deep, "wide": wide}})
    assert len(errors) == 2
    assert errors[0].startswith("flag 'deep' at $.flags[\"deep\"].targeting")
    assert errors[0].endswith("targeting is nested deeper than 32 levels")
    assert errors[1].endswith("targeting has more than 10000 nodes")


def test_a_large_literal_list_is_one_set_lookup_not_a_limit() -> None:
    emails = [f"user{i}@example.com" for i in range(50_000)]
    snap = build_snapshot(
        {
            "flags": {
                "beta": {
                    "state": "ENABLED",
                    "variants": {"on": True, "off": False},
                    "defaultVariant": "off",
                    "targeting": {"if": [{"in": [{"var": "email"}, emails]}, "on"]},
                }
            }
        }
    )
    assert snap.evaluate("k", "beta", None, {"email": "user49999@example.com"}).treatment == "on"
    assert snap.evaluate("k", "beta", None, {"email": "someone@example.com"}).treatment == "off"


def test_unevaluable_targeting_warns_and_answers_parse_error() -> None:
    doc = {
        "flags": {
            "unknown-op": {"state": "ENABLED", "variants": {"a": 1}, "targeting": {"nope": [1]}},
        }
    }
    report = check_document(doc)
    assert not report.errors
    assert [str(w) for w in report.warnings] == [
        "flag 'unknown-op' at $.flags[\"unknown-op\"].targeting: unknown operator 'nope': "
        "the flag answers PARSE_ERROR"
    ]
    assert build_snapshot(doc).evaluate("k", "unknown-op").label == labels.LABEL_TARGETING_ERROR


def test_targeting_reads_the_key_and_flagd_properties() -> None:
    snap = build_snapshot(
        {
            "flags": {
                "f": {
                    "state": "ENABLED",
                    "variants": {"match": "m", "other": "o"},
                    "defaultVariant": "other",
                    "targeting": {
                        "if": [
                            {
                                "and": [
                                    {"==": [{"var": "targetingKey"}, "alice"]},
                                    {"==": [{"var": "$flagd.flagKey"}, "f"]},
                                    {">": [{"var": "$flagd.timestamp"}, 1_600_000_000]},
                                ]
                            },
                            "match",
                        ]
                    },
                }
            }
        }
    )
    assert snap.evaluate("alice", "f").treatment == "match"
    assert snap.evaluate("bob", "f").treatment == "other"
    # the flagd lanes pass the context whole: its targetingKey wins over the lookup key
    assert snap.evaluate("", "f", None, {"targetingKey": "alice"}).treatment == "match"


@pytest.mark.parametrize("generation", ["v2", "v3"])
def test_specialised_flags_answer_as_the_general_ones(generation: str) -> None:
    """Whole flags, random rules of the specialised shapes (a choice's answers are matched
    to the variants when compiling; its data is not copied): the same Decision as the
    general closures for random data, with and without a lookup key."""
    rng = random.Random(f"document-{generation}")
    variants = {"hi": 1, "bye": 2, "none": 3, "clubs": 4, "true": 5, "2": 6, "7": 7}
    flags = {}
    for i in range(150):
        rule = randomised.fractional(rng) if i % 3 == 0 else randomised.rule(rng)
        default = rng.choice((*variants, None))
        flags[f"f{i}"] = {
            "state": "ENABLED",
            "variants": variants,
            "targeting": rule,
            **({"defaultVariant": default} if default is not None else {}),
        }
    doc = {"flags": flags, "fractional": generation}
    fast, general = build(doc).flags, build(doc, specialise=False).flags
    assert fast.keys() == general.keys() == flags.keys()
    for _ in range(60):
        data = randomised.data(rng)
        attributes = data if isinstance(data, dict) else None
        key = rng.choice(("user-1", "", "ü"))
        for name, compiled in fast.items():
            expected = general[name].run(key, key, attributes)
            assert compiled.run(key, key, attributes) == expected, (flags[name], attributes, key)
