"""The specialised closures of ``fader.flagd.jsonlogic`` against its general ones: the same
rule compiled both ways answers the same on thousands of random data (``randomised``), and
the common shapes do take the specialised path (so the comparison is not vacuous)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from fader.flagd.jsonlogic import Compiler, Node
from fader.flagd.operators import Fractional, operators

from tests.fader.flagd import randomised

RULES, DATA = 400, 60


def compiled(rule: Any, specialise: bool, generation: Fractional = Fractional.V3) -> Node:
    compiler = Compiler("my-flag", {}, operators(generation), specialise=specialise)
    return compiler.compile(rule, "$")


def outcome(node: Node, data: Any) -> str:
    """The answer as JSON (so that 1, 1.0 and true differ), or the exception's type."""
    try:
        return json.dumps(node.fn(data), sort_keys=True)
    except Exception as error:  # the engine answers "exception" for any of them
        return type(error).__name__


def choice_outcome(node: Node, data: Any) -> str:
    assert node.choices is not None and node.index is not None
    try:
        return json.dumps(node.choices[node.index(data)], sort_keys=True)
    except Exception as error:
        return type(error).__name__


def test_specialised_rules_answer_as_the_general_ones() -> None:
    rng = random.Random(20261202)
    specialised_shapes = 0
    for _ in range(RULES):
        rule = randomised.rule(rng)
        fast, general = compiled(rule, True), compiled(rule, False)
        assert general.choices is None and general.path is None
        specialised_shapes += fast.fn is not general.fn and fast.choices is not None
        for _ in range(DATA):
            data = randomised.data(rng)
            expected = outcome(general, data)
            assert outcome(fast, data) == expected, (rule, data)
            if fast.choices is not None:
                assert choice_outcome(fast, data) == expected, (rule, data)
    assert specialised_shapes > RULES // 10


@pytest.mark.parametrize("generation", list(Fractional))
def test_specialised_fractional_answers_as_the_general_one(generation: Fractional) -> None:
    rng = random.Random(f"fractional-{generation}")
    for _ in range(RULES):
        rule = randomised.fractional(rng)
        fast, general = compiled(rule, True, generation), compiled(rule, False, generation)
        for _ in range(DATA):
            data = randomised.data(rng)
            if isinstance(data, dict) and rng.random() < 0.7:
                data["targetingKey"] = rng.choice(
                    ("user-1", "", "ü", "a\ud800", 5, randomised.Word("user-1"))
                )
            expected = outcome(general, data)
            assert outcome(fast, data) == expected, (rule, data)
            if fast.choices is not None:
                assert choice_outcome(fast, data) == expected, (rule, data)


def test_common_shapes_are_specialised() -> None:
    email = {"==": ["ballmer@macrosoft.com", {"var": ["email"]}]}
    assert compiled({"var": "user.name"}, True).path == ("user", "name")
    assert compiled(email, True).boolean
    assert compiled({"if": [email, "hi", "bye"]}, True).choices == ("bye", "hi")
    chain = {"if": [email, "hi", {"in": [{"var": "tier"}, ["gold"]]}, "gold", "bye"]}
    assert compiled(chain, True).choices == ("hi", "gold", "bye")
    assert compiled({"cat": ["x", {"var": "user.id"}]}, True).text
    buckets = [["clubs", 25], ["diamonds", 75]]
    by_name = {"fractional": [{"cat": [{"var": "$flagd.flagKey"}, {"var": "user.name"}]}, *buckets]}
    for generation in Fractional:
        assert compiled(by_name, True, generation).choices == ("clubs", "diamonds", None)
        assert compiled({"fractional": buckets}, True, generation).choices is not None


def test_a_choice_needs_no_targeting_key_unless_it_buckets_by_it() -> None:
    def reads_key(rule: Any) -> bool:
        compiler = Compiler("my-flag", {}, operators(Fractional.V3))
        compiler.compile(rule, "$")
        return compiler.reads_key

    buckets = [["clubs", 25], ["diamonds", 75]]
    assert not reads_key({"fractional": [{"cat": ["k", {"var": "user.name"}]}, *buckets]})
    assert reads_key({"fractional": buckets})  # flagKey + targetingKey
    assert reads_key({"fractional": [{"var": "user.name"}, *buckets]})  # may be an array
    assert not reads_key({"if": [{"==": [{"var": "email"}, "x"]}, "a", "b"]})
