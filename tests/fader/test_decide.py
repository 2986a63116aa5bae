"""fader._decide (C) against the Python rules it fronts (`fader._local.rules_decide`): for
every lookup, the same decision or the same error, and the same lookups recorded."""

from __future__ import annotations

import datetime
import enum
import gc
import random
import sys
from collections import OrderedDict, deque
from typing import Any

import pytest
from fader import _decide
from fader._common import CallFailed
from fader._local import (
    MAX_KEY_LENGTH,
    MAX_NAME_LENGTH,
    Limits,
    long_flag_names,
    make_decide,
    rules_decide,
)
from fader.rules.result import NOT_FOUND, Decision
from fader.snapshot.loader import build_snapshot
from fader.snapshot.snapshot import Snapshot

from tests.fader.rules.builders import condition, flag, matcher, snapshot_doc

LIMITS = Limits(max_attributes=4, max_attribute_size=8, max_batch_items=100)


HALVES = {"on": 50, "off": 50}
CONDITIONS = (
    condition(
        matcher("WHITELIST", whitelistMatcherData={"whitelist": ["vip"]}),
        partitions=HALVES,
        label="vip",
    ),
    condition(
        matcher("WHITELIST", "plan", whitelistMatcherData={"whitelist": ["pro"]}),
        matcher(
            "GREATER_THAN_OR_EQUAL_TO",
            "age",
            unaryNumericMatcherData={"dataType": "NUMBER", "value": 18},
        ),
        partitions=HALVES,
        label="pro adults",
    ),
    condition(matcher("EQUAL_TO_BOOLEAN", "beta", booleanMatcherData=True), label="beta"),
)


def snapshot(*flag_names: str) -> Snapshot:
    """Flags whose treatment depends on the key, a string, a number and a boolean."""
    flags = [flag(name, *CONDITIONS, changeNumber=5) for name in flag_names]
    return build_snapshot(snapshot_doc(*flags, version=7))


class Plan(enum.IntEnum):
    PRO = 1


class Text(str):
    pass


class Ratio(float):
    pass


KEYS: list[object] = [
    "user-1",
    "vip",
    "",
    "k" * MAX_KEY_LENGTH,
    "k" * (MAX_KEY_LENGTH + 1),
    "clé",
    "\ud800",
    Text("user-2"),
    None,
    7,
]
BUCKETING: list[object] = [None, "", "b-1", "b" * (MAX_KEY_LENGTH + 1), "bé", Text("b-2"), 3]
VALUES: list[object] = [
    "pro",
    "x" * 8,
    "x" * 9,
    Text("pro"),
    True,
    False,
    30,
    -(2**63),
    2**63 - 1,
    2**63,
    -(2**63) - 1,
    Plan.PRO,
    2.5,
    Ratio(2.5),
    float("nan"),
    datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
    ["a", "b"],
    ("a",),
    {"a"},
    ["a", 1],
    None,
    object(),
    b"pro",
]
NAMES: list[object] = ["plan", "age", "beta", "extra", "", Text("plan"), 1]


PLAIN_VALUES: list[object] = ["pro", "free", 30, 12, True, 2.5]


def pick(rng: random.Random, plain: list[object], hostile: list[object]) -> object:
    """Mostly plain, so that both the C path and the rules are taken often."""
    return rng.choice(plain if rng.random() < 0.8 else hostile)


def attributes_of(rng: random.Random) -> object:
    shape = rng.random()
    if shape < 0.15:
        return None
    if shape < 0.2:
        return {}
    entries = {
        pick(rng, ["plan", "age", "beta"], NAMES): pick(rng, PLAIN_VALUES, VALUES)
        for _ in range(rng.randint(1, 5))
    }
    if shape < 0.25:
        return OrderedDict(entries)  # a dict subclass: the Python rules take it
    if shape < 0.3:
        return list(entries.items())  # not a mapping at all
    return entries


def outcome(decide: Any, lookup: tuple[object, ...]) -> tuple[str, object]:
    try:
        return "answer", decide(*lookup)
    except (CallFailed, TypeError, ValueError, UnicodeError, AttributeError) as err:
        detail = (err.code, err.details) if isinstance(err, CallFailed) else str(err)
        return type(err).__name__, detail


@pytest.mark.parametrize("recording", [True, False])
def test_the_c_path_answers_and_records_as_the_python_rules(recording: bool) -> None:
    snap = snapshot("checkout", "search")
    c_recorded: deque[object] = deque()
    py_recorded: deque[object] = deque()
    fast = make_decide(snap, LIMITS, c_recorded.append if recording else None)
    rules = rules_decide(
        snap, LIMITS, py_recorded.append if recording else None, long_flag_names(snap)
    )
    assert isinstance(fast, _decide.Decide)
    rng = random.Random(18)
    answered = refused = 0
    for _ in range(20_000):
        lookup = (
            pick(rng, [f"user-{rng.randrange(1000)}", "vip"], KEYS),
            pick(rng, ["checkout", "search"], ["missing", ""]),
            pick(rng, [None, "b-1"], BUCKETING),
            attributes_of(rng),
        )
        expected = outcome(rules, lookup)
        assert outcome(fast, lookup) == expected, lookup
        answered += expected[0] == "answer"
        refused += expected[0] != "answer"
    assert list(c_recorded) == list(py_recorded)
    assert len(c_recorded) > 1_000 if recording else not c_recorded
    assert answered > 5_000 and refused > 2_000  # both sides of the rules were taken


def test_plain_lookups_are_answered_in_c() -> None:
    """The common case does not reach the Python rules: they would be called otherwise."""
    snap = snapshot("checkout")
    slow_calls: list[tuple[object, ...]] = []

    def slow(*lookup: Any, **named: Any) -> Decision:
        slow_calls.append((*lookup, *named.values()))
        return NOT_FOUND

    recorded: list[object] = []
    decide = _decide.Decide(snap.evaluate, recorded.append, slow, NOT_FOUND, 8, 4)
    attributes = {"plan": "pro", "age": 30, "beta": True, "score": 2.5}
    decision = decide("user-1", "checkout", None, attributes)
    assert decision == snap.evaluate("user-1", "checkout", None, attributes)
    assert decide("vip", "checkout", "b-1", None).label == "vip"
    assert not slow_calls
    assert recorded == [
        ("user-1", None, "checkout", decision),
        ("vip", "b-1", "checkout", snap.evaluate("vip", "checkout", "b-1", None)),
    ]
    # an unknown flag, a fifth attribute, a keyword: each goes to the rules, as given
    decide("user-1", "missing", None, None)
    decide("user-1", "checkout", None, {**attributes, "extra": 1})
    decide("user-1", "checkout", None, attributes=None)
    assert [call[1] for call in slow_calls] == ["missing", "checkout", "checkout"]
    assert len(recorded) == 2


def test_long_flag_names_go_to_the_rules() -> None:
    """A snapshot with a name the sidecar would refuse to look up: every lookup is checked."""
    long_name = "f" * (MAX_NAME_LENGTH + 1)
    snap = snapshot("checkout", long_name)
    fast = make_decide(snap, LIMITS, None)
    rules = rules_decide(snap, LIMITS, None, long_flag_names(snap))
    for name in ("checkout", long_name):
        assert outcome(fast, ("user-1", name, None, None)) == outcome(
            rules, ("user-1", name, None, None)
        )
    assert outcome(fast, ("user-1", long_name, None, None))[0] == "CallFailed"


def test_errors_from_evaluate_and_record_propagate() -> None:
    snap = snapshot("checkout")

    def failing_record(lookup: object) -> None:
        raise RuntimeError("record failed")

    def failing_evaluate(*lookup: Any) -> Decision:
        raise KeyError("evaluate failed")

    decide = make_decide(snap, LIMITS, failing_record)
    with pytest.raises(RuntimeError, match="record failed"):
        decide("user-1", "checkout", None, None)
    decide = _decide.Decide(failing_evaluate, None, failing_evaluate, NOT_FOUND, 8, 4)
    with pytest.raises(KeyError, match="evaluate failed"):
        decide("user-1", "checkout", None, None)
    with pytest.raises(TypeError, match="callable"):
        _decide.Decide(snap.evaluate, 1, failing_evaluate, NOT_FOUND, 8, 4)  # type: ignore[arg-type]


def test_nothing_leaks() -> None:
    """Every reference a lookup takes is given back, on each of its paths."""
    snap = snapshot("checkout")
    recorded: deque[object] = deque(maxlen=1)
    decide = make_decide(snap, LIMITS, recorded.append)
    key, flag, attributes = "user-x", "checkout", {"plan": "pro"}
    decision = decide(key, flag, None, attributes)
    recorded.clear()
    gc.collect()
    held = (key, flag, attributes, decision)
    before = [sys.getrefcount(item) for item in held]
    for _ in range(1_000):
        decide(key, flag, None, attributes)  # in C, recorded
        decide(key, "missing", None, attributes)  # evaluated in C, then by the rules
        decide(key, flag, None, {"plan": Plan.PRO})  # the rules alone
    recorded.clear()
    gc.collect()
    assert [sys.getrefcount(item) for item in held] == before
