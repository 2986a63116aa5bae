"""Random targeting rules of the shapes ``fader.flagd`` specialises, and random evaluation
data that hits every branch of them: values of every JSON type (strings that equal the
rules' literals, numbers that equal them loosely, lone surrogates, lists where an object is
expected...), present, absent or null, at one and two levels.

The tests compile each rule twice, with and without specialisation, and require the same
answer on every datum: a specialisation that is wrong for some input fails them.
"""

from __future__ import annotations

import random
from typing import Any

LITERALS: tuple[Any, ...] = (
    "ballmer@macrosoft.com",
    "jack",
    "1",
    "",
    "true",
    "ä€😀",
    1,
    0,
    1.0,
    2.5,
    True,
    False,
    None,
)
PATHS = ("email", "user.name", "user.id", "tier", "a.b.c", "list.1", "targetingKey", "0")
NAMES = ("email", "user", "tier", "a", "list", "targetingKey", "0")


class Word(str):
    """A str subclass (an application's StrEnum value, say): a string to every rule."""


def value(rng: random.Random, depth: int = 0) -> Any:
    """Any JSON value, biased towards the literals the rules compare with."""
    roll = rng.random()
    if roll < 0.03:
        return "a\ud800b"  # a lone surrogate: JSON text may hold one
    if roll < 0.06:
        return Word(rng.choice(("jack", "ballmer@macrosoft.com", "x")))
    if roll < 0.55:
        return rng.choice(LITERALS)
    if roll < 0.7:
        return "".join(rng.choice("ab1ü") for _ in range(rng.randrange(0, 30)))
    if roll < 0.8:
        return rng.choice((rng.randrange(-(2**40), 2**40), rng.uniform(-1e6, 1e6), 2**70))
    if depth > 1:
        return None
    if roll < 0.9:
        return [value(rng, depth + 1) for _ in range(rng.randrange(0, 3))]
    return {name: value(rng, depth + 1) for name in rng.sample(NAMES, rng.randrange(0, 3))}


def data(rng: random.Random) -> Any:
    """Evaluation data: mostly an object of attributes, with nested ones."""
    roll = rng.random()
    if roll < 0.05:
        return value(rng)  # not an object at all
    if roll < 0.1:
        return [value(rng) for _ in range(rng.randrange(0, 3))]  # "0", "1" index it
    attributes: dict[str, Any] = {}
    for name in rng.sample(NAMES, rng.randrange(0, len(NAMES) + 1)):
        attributes[name] = value(rng)
    if rng.random() < 0.5:
        attributes["user"] = {
            "name": rng.choice(("jack", "jill", "", 7, None, ["x"])),
            "id": value(rng),
        }
    if rng.random() < 0.2:
        attributes["a"] = {"b": {"c": value(rng)}}
    return attributes


def var(rng: random.Random) -> dict[str, Any]:
    path = rng.choice(PATHS)
    return {"var": rng.choice((path, [path]))}


def condition(rng: random.Random) -> dict[str, Any]:
    """``==`` / ``!=`` / ``in`` of a ``var`` against literals, either way round, or a
    condition that is not a comparison (a bare ``var``: truthiness)."""
    kind = rng.randrange(5)
    if kind == 0:
        return var(rng)
    if kind == 1:
        words = [rng.choice(LITERALS[:7]) for _ in range(rng.randrange(0, 4))]
        return {"in": [var(rng), words]}
    if kind == 2:
        return {"in": [var(rng), rng.choice(("ballmer@macrosoft.com", "jack1"))]}
    operands = [var(rng), rng.choice(LITERALS)]
    rng.shuffle(operands)
    return {rng.choice(("==", "!=")): operands}


def rule(rng: random.Random) -> Any:
    """A targeting rule: a comparison, an ``if`` (literal or computed branches, one or
    more conditions), a ``cat`` of a literal and a ``var``."""
    kind = rng.randrange(4)
    if kind == 0:
        return condition(rng)
    if kind == 1:
        return {"cat": [rng.choice(LITERALS), var(rng)]}
    branches = ("hi", "bye", "none", True, 2, None)
    args: list[Any] = []
    for _ in range(rng.randrange(1, 4)):
        args += [condition(rng), rng.choice(branches) if kind == 2 else var(rng)]
    if rng.random() < 0.7:
        args.append(rng.choice(branches))
    return {rng.choice(("if", "?:")): args}


def buckets(rng: random.Random) -> list[list[Any]]:
    variants = ("clubs", "diamonds", "hearts", "spades", 7, True)
    chosen = rng.sample(variants, rng.randrange(1, 5))
    weights = (0, 1, 5, 25, 50, 1000, 2**30)
    return [[v, rng.choice(weights)] if rng.random() < 0.9 else [v] for v in chosen]


def fractional(rng: random.Random) -> dict[str, Any]:
    """``fractional`` bucketing on the default key, on a ``cat`` of the flag key and a
    ``var``, on a ``var`` (which may be an array, or absent), or on a literal."""
    kind = rng.randrange(4)
    entries: list[Any] = list(buckets(rng))
    if kind == 1:
        entries.insert(0, {"cat": [{"var": "$flagd.flagKey"}, var(rng)]})
    elif kind == 2:
        entries.insert(0, var(rng))
    elif kind == 3:
        entries.insert(0, rng.choice(LITERALS))
    return {"fractional": entries}
