"""``fader.flagd.resolve``: the typed resolve in process. The flagd testbed's evaluator
suite (125 cases with the fractional v2 rows, 104 with the v3 ones),
``openfeature-flagd-core`` (the Python in-process provider's evaluator) as an oracle on
random contexts, and each fast path (a static flag's ready answer, a choice's) against the
general one on random contexts."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from fader.flagd import resolve
from fader.flagd.resolve import Resolution, Resolver, typed_value
from fader.snapshot.loader import build_snapshot
from openfeature.contrib.tools.flagd.core import FlagdCore
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import OpenFeatureError

from tests.fader.flagd import randomised
from tests.fader.flagd.gherkin import Case, check_of, evaluator_cases
from tests.fader.rules.builders import condition, flag, snapshot_doc
from tests.vectors import flagd_vector

TESTKIT = "evaluator/flags/testkit-flags.json"
DEFAULTS: dict[str, Any] = {
    "boolean": False,
    "string": "fallback",
    "integer": -1,
    "float": -1.5,
    "object": {"fallback": True},
}


def kit_document(generation: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(flagd_vector(TESTKIT).read_text())
    doc["fractional"] = generation
    return doc


@pytest.mark.parametrize("generation", ["v2", "v3"])
def test_evaluator_suite(generation: str) -> None:
    resolver = Resolver(build_snapshot(kit_document(generation)))
    cases: list[Case] = evaluator_cases(generation)
    assert len(cases) == {"v2": 125, "v3": 104}[generation]  # rows tagged for one generation
    wrong: list[tuple[Any, ...]] = []
    for case in cases:
        check = check_of(case)
        answer = resolver.for_kind(check.kind)(check.flag, check.fallback, check.context)
        got = (answer.value, answer.reason, answer.error_code)
        expected = (
            check.value if check.expect_value else answer.value,
            check.reason or answer.reason,
            check.error_code or answer.error_code,
        )
        if got != expected or (check.expect_value and type(answer.value) is not type(check.value)):
            wrong.append((case.id, got, expected))
        elif check.metadata not in (None, dict(answer.metadata)) and answer.error_code is None:
            wrong.append((case.id, answer.metadata, check.metadata))
    assert not wrong, wrong


def reference(
    core: FlagdCore, kind: str, flag_key: str, context: dict[str, Any]
) -> tuple[Any, ...]:
    """flagd-core's answer as (value, variant, reason, error code); it raises its errors."""
    method = getattr(core, f"resolve_{kind}_value")
    key = context.get("targetingKey")
    attributes = {k: v for k, v in context.items() if k != "targetingKey"}
    ctx = EvaluationContext(key if isinstance(key, str) else None, attributes)
    try:
        details = method(flag_key, DEFAULTS[kind], ctx)
    except OpenFeatureError as err:
        return DEFAULTS[kind], None, "ERROR", err.error_code.value
    return details.value, details.variant, str(details.reason), None


def flagd_core_quirk(kind: str, value: Any) -> bool:
    """Where flagd-core types a value unlike the flagd server (and Fader's lanes): its float
    resolve takes a boolean as 1.0 or 0.0 (the server: TYPE_MISMATCH), and its integer
    resolve refuses an integral float such as 0.0 (the server: the integer 0)."""
    if kind == "float":
        return isinstance(value, bool)
    return kind == "integer" and isinstance(value, float) and value.is_integer()


def ours(answer: Resolution) -> tuple[Any, ...]:
    return answer.value, answer.variant, answer.reason, answer.error_code


def test_answers_as_flagd_core_on_random_contexts() -> None:
    """v3, what flagd-core computes: every testkit flag, every type, contexts drawn from
    the values its rules read (emails, names, versions, colours...), as the in-process
    provider would pass them."""
    resolver = Resolver(build_snapshot(kit_document("v3")))
    core = FlagdCore()
    core.set_flags(json.dumps(kit_document("v3")))
    flags = json.loads(flagd_vector(TESTKIT).read_text())["flags"]
    keys, values = sorted(flags), {key: flag["variants"] for key, flag in flags.items()}
    rng = random.Random(7)
    pool = _context_values()
    compared = 0
    for _ in range(3_000):
        flag_key = rng.choice([*keys, "missing-flag"])
        kind = rng.choice(list(DEFAULTS))
        context = {name: rng.choice(values) for name, values in pool.items() if rng.random() < 0.5}
        if rng.random() < 0.7:
            context["targetingKey"] = rng.choice(("user-1", "jack", "ballmer", ""))
        expected = reference(core, kind, flag_key, context)
        got = ours(resolver.for_kind(kind)(flag_key, DEFAULTS[kind], context))
        if flagd_core_quirk(kind, values.get(flag_key, {}).get(got[1] or expected[1])):
            assert got[3] != expected[3], (flag_key, kind, got, expected)
            continue
        assert got == expected, (flag_key, kind, context)
        compared += 1
    assert compared > 2_500


def _context_values() -> dict[str, list[Any]]:
    """Every literal a testkit rule compares an attribute with, by attribute name, plus
    values that match none (so every branch is taken)."""
    found: dict[str, set[str]] = {}

    def walk(node: Any, name: str | None) -> None:
        if isinstance(node, dict):
            for args in node.values():
                if isinstance(args, list):
                    names = [a["var"] for a in args if isinstance(a, dict) and "var" in a]
                    var = names[0] if names and isinstance(names[0], str) else None
                    for arg in args:
                        walk(arg, var or name)
                else:
                    walk(args, name)
        elif isinstance(node, list):
            for item in node:
                walk(item, name)
        elif name is not None and isinstance(node, str | int | float):
            found.setdefault(name, set()).add(json.dumps(node))

    doc = json.loads(flagd_vector(TESTKIT).read_text())
    walk([flag.get("targeting", {}) for flag in doc["flags"].values()], None)
    walk(list(doc.get("$evaluators", {}).values()), None)
    values = {
        name: [json.loads(v) for v in sorted(vs)]
        for name, vs in found.items()
        if name != "targetingKey" and not name.startswith("$") and "." not in name
    }
    for options in values.values():
        options += ["no-match", 3, None]
    values["user"] = [{"name": n} for n in ("jack", "queen", "ace", "")]
    return values


NAMES = ("hi", "bye", "none", "true", "2", "jack", "hearts", "clubs", "spades")
VALUES = (
    lambda rng: rng.random() < 0.5,
    lambda rng: rng.choice(("x", "y", "")),
    lambda rng: rng.choice((0, 7, 2.0, -3)),
    lambda rng: rng.choice((0.5, 1.0, 2.5)),
    lambda rng: {"x": rng.randrange(3)},
)


def general(snap: Any, kind: str, flag_key: str, default: Any, context: Any) -> Resolution:
    """The answer through the engine's own lookup: evaluate, then map the Decision."""
    compiled = snap.flags[flag_key]
    key = context.get("targetingKey") if context else None
    decision = snap.evaluate(key if type(key) is str else "", flag_key, None, context)
    answer = resolve.resolution(compiled, decision, kind)
    return answer if answer.variant is not None else answer._replace(value=default)


@pytest.mark.parametrize("seed", range(4))
def test_fast_paths_answer_as_the_general_path(seed: int) -> None:
    """Random rules of the shapes that compile to choices (and some that do not), random
    data: the choice's ready answers, the static answers and the memo agree with
    evaluating and mapping each time."""
    rng = random.Random(seed)
    flags: dict[str, Any] = {}
    for index in range(60):
        # the names the rules answer (a boolean names "true"), valued in one type
        names = rng.sample(NAMES, rng.randrange(1, len(NAMES)))
        make = rng.choice(VALUES)
        variants = {name: make(rng) for name in names}
        definition: dict[str, Any] = {"state": "ENABLED", "variants": variants}
        if rng.random() < 0.8:
            definition["defaultVariant"] = rng.choice(names)
        roll = rng.random()
        if roll < 0.3:
            definition["targeting"] = randomised.rule(rng)
        elif roll < 0.55:
            definition["targeting"] = randomised.fractional(rng)
        elif roll < 0.8:
            branches = [rng.choice((*names, "unknown", None)) for _ in range(2)]
            definition["targeting"] = {"if": [randomised.condition(rng), *branches]}
        if rng.random() < 0.05:
            definition["state"] = "DISABLED"
        flags[f"f{index}"] = definition
    snap = build_snapshot({"flags": flags})
    resolver = Resolver(snap)
    assert sum(f.choice is not None for f in snap.flags.values()) > 15
    for _ in range(4_000):
        flag_key, kind = rng.choice(list(flags)), rng.choice(list(DEFAULTS))
        context = randomised.data(rng)
        if not isinstance(context, dict):  # a context is an object: other data is the lanes'
            continue
        got = resolver.for_kind(kind)(flag_key, DEFAULTS[kind], context)
        assert got == general(snap, kind, flag_key, DEFAULTS[kind], context), (flag_key, kind)


def test_errors_and_defaults_are_values() -> None:
    doc = snapshot_doc(flag("split-flag", condition(partitions={"on": 100})), version=3)
    doc["flagd"] = {
        "flags": {
            "off": {"state": "DISABLED", "variants": {"a": 1}, "defaultVariant": "a"},
            "no-default": {"state": "ENABLED", "variants": {"a": 1}},
            "ratio": {
                "state": "ENABLED",
                "variants": {"low": 0.25, "one": 1},
                "defaultVariant": "one",
                "targeting": {"if": [{"==": [{"var": "tier"}, "low"]}, "low"]},
                "metadata": {"team": "web"},
            },
        }
    }
    resolver = Resolver(build_snapshot(doc))
    assert resolver.resolve_integer("missing", 5, {})[2:5] == (
        "ERROR",
        {},
        "FLAG_NOT_FOUND",
    )
    assert resolver.resolve_integer("missing", 5).value == 5
    split = resolver.resolve_string("split-flag", "d", {"targetingKey": "k"})
    assert (split.value, split.error_code) == ("d", "GENERAL")
    assert resolver.resolve_integer("off", 9) == Resolution(9, None, "DISABLED", {})
    assert resolver.resolve_integer("no-default", 9) == Resolution(9, None, "DEFAULT", {})
    web = {"team": "web"}
    assert resolver.resolve_float("ratio", 0.0, {"tier": "low"}) == Resolution(
        0.25, "low", "TARGETING_MATCH", web
    )
    one = resolver.resolve_float("ratio", 0.0, {"tier": "high"})
    assert (one, type(one.value)) == (Resolution(1.0, "one", "DEFAULT", web), float)
    mismatch = resolver.resolve_integer("ratio", 7, {"tier": "low"})
    assert (mismatch.value, mismatch.variant, mismatch.error_code) == (7, None, "TYPE_MISMATCH")
    assert resolver.resolve_integer("ratio", 7, {"tier": "high"}).value == 1
    assert resolver.resolve_boolean("ratio", True, None).error_code == "TYPE_MISMATCH"


@pytest.mark.parametrize(
    ("value", "kind", "typed"),
    [(2.0, "integer", 2), (2, "float", 2.0), (True, "boolean", True), ({}, "object", {})],
)
def test_typed_value(value: Any, kind: str, typed: Any) -> None:
    assert (typed_value("f", "v", value, kind), type(typed_value("f", "v", value, kind))) == (
        typed,
        type(typed),
    )


@pytest.mark.parametrize(
    ("value", "kind"),
    [(True, "integer"), (False, "float"), (2.5, "integer"), ([1], "object"), (None, "string")],
)
def test_typed_value_refuses(value: Any, kind: str) -> None:
    with pytest.raises(resolve.TypeMismatch, match=f"variant 'v' of 'f' is not a {kind}"):
        typed_value("f", "v", value, kind)


def test_each_type_is_built_once_on_first_use() -> None:
    resolver = Resolver(build_snapshot(kit_document("v2")))
    first = resolver.resolve_string
    assert resolver.resolve_string is first is resolver.for_kind("string")
    assert resolver.for_kind("boolean") is resolver.resolve_boolean is not first
    with pytest.raises(AttributeError):
        resolver.resolve_strings  # noqa: B018 (the attribute access is the test)
    with pytest.raises(KeyError):
        resolver.for_kind("date")
