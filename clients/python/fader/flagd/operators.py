"""flagd's own JsonLogic operators: ``fractional``, ``sem_ver``, ``starts_with``, ``ends_with``.

Each returns ``null`` on bad input (not ``false``), so that a broken rule selects the
default variant instead of a variant named "false" (flagd#1874).

``fractional`` comes in two generations, chosen per snapshot (``Fractional``):

- **v2** (the default; what the flagd server computes): the bucketing value is a string,
  by default ``flagKey + targetingKey``; ``h = murmur3_x86_32(utf8(value), seed 0)``
  unsigned; ``bucket = (h * totalWeight) >> 32``; the first variant whose cumulative
  weight exceeds ``bucket`` wins.
- **v3** (``openfeature-flagd-core`` 2.x, hence the Python in-process provider): the same
  mapping, but the hash input is the deterministic CBOR encoding of the bucketing value,
  which may be any JSON value but null; by default the array ``[flagKey, targetingKey]``.

Weights are integers (default 1, negative ones count as 0), their sum at most 2^31 - 1;
a sum of 0 gives null.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Mapping
from enum import StrEnum
from itertools import accumulate
from typing import Any, Final, NamedTuple

import mmh3
from fader.flagd import cbor, semver
from fader.flagd.jsonlogic import Compiler, Data, Node, Operator, choice, literal

MAX_TOTAL_WEIGHT: Final = 2**31 - 1
TARGETING_KEY: Final = "targetingKey"


class Fractional(StrEnum):
    """Which generation of ``fractional`` a snapshot's flagd flags use."""

    V2 = "v2"
    V3 = "v3"


# (variant, weight) pairs after evaluation; None when the buckets are malformed.
Buckets = list[tuple[Any, int]]


def _weight(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float):
        if not value.is_integer():
            return None
        value = int(value)
    return max(0, int(value))


def parse_buckets(items: list[Any]) -> Buckets | None:
    """``[[variant, weight?], ...]`` -> pairs; None when an entry is malformed."""
    buckets: Buckets = []
    for item in items:
        if not isinstance(item, list) or not 1 <= len(item) <= 2:
            return None
        variant = item[0]
        if variant is not None and not isinstance(variant, str | bool | int | float):
            return None
        weight = _weight(item[1]) if len(item) == 2 else 1
        if weight is None:
            return None
        buckets.append((variant, weight))
    return buckets


def pick(hash_value: int, buckets: Buckets) -> Any:
    """The variant of ``buckets`` for an unsigned 32-bit hash; None for no weight at all."""
    total = sum(weight for _, weight in buckets)
    if total <= 0 or total > MAX_TOTAL_WEIGHT:
        return None
    bucket = (hash_value * total) >> 32
    cumulative = 0
    for variant, weight in buckets:
        cumulative += weight
        if bucket < cumulative:
            return variant
    return None


def v2_value(flag_key: str, args: list[Any], data: Data) -> tuple[str | None, list[Any]]:
    """(bucketing string, bucket entries) under v2: a leading string is the value;
    otherwise ``flagKey + targetingKey`` and every argument is a bucket (so a leading value
    that is not a string, such as a missing ``var``, makes the buckets malformed: null)."""
    first = args[0]
    if isinstance(first, str):
        return first, args[1:]
    key = data.get(TARGETING_KEY) if isinstance(data, dict) else None
    return (flag_key + key if isinstance(key, str) else None), args


def v3_value(flag_key: str, args: list[Any], data: Data) -> tuple[bytes | None, list[Any]]:
    """(CBOR bytes, bucket entries) under v3: a leading non-array is the value (null
    fails); otherwise ``[flagKey, targetingKey]`` with a non-empty targeting key."""
    first = args[0]
    if not isinstance(first, list):
        if first is None:
            return None, args[1:]
        value: Any = first
        rest = args[1:]
    else:
        key = data.get(TARGETING_KEY) if isinstance(data, dict) else None
        if not isinstance(key, str) or not key:
            return None, args
        value, rest = [flag_key, key], args
    try:
        return cbor.encode(value), rest
    except cbor.NotEncodable:
        return None, rest


class _Table(NamedTuple):
    """Buckets parsed once: for each variant the first unsigned 32-bit hash past its share,
    ``ceil(cumulative_weight * 2**32 / total)``, so that a hash's variant is one bisection
    (``(h * total) >> 32 < c`` exactly when ``h < ceil(c * 2**32 / total)``)."""

    bounds: tuple[int, ...]
    variants: tuple[Any, ...]


def _table(buckets: Buckets | None) -> _Table | None:
    """None when no variant can be picked (malformed entries, no weight, too much)."""
    if buckets is None:
        return None
    total = sum(weight for _, weight in buckets)
    if total <= 0 or total > MAX_TOTAL_WEIGHT:
        return None
    return _Table(
        tuple(-((-cumulative << 32) // total) for cumulative in accumulate(w for _, w in buckets)),
        tuple(variant for variant, _ in buckets),
    )


_murmur = mmh3.mmh3_32_uintdigest  # murmur3 x86_32 of a buffer, unsigned (seed 0 by default)


def _hash(value: str | bytes) -> int:
    """Unsigned murmur3 x86_32, seed 0: of the UTF-8 text (v2) or the CBOR bytes (v3).
    (mmh3 is given bytes, never a str: it crashes the process on a lone surrogate.)"""
    return int(_murmur(value if isinstance(value, bytes) else cbor.utf8(value), 0))


def fractional(generation: Fractional) -> Operator:
    """The ``fractional`` operator of one generation.

    Rules nearly always list their buckets as literals; those are parsed once, here, and a
    request then costs the bucketing value, one murmur3 and one bisection. When the
    bucketing value cannot be an array (a ``cat``, a literal), the rule is a choice between
    the variants (``Node.index``) and does not need the targeting key. Anything computed
    (a weight or a variant from an expression) takes the general path.
    """

    def build(compiler: Compiler, nodes: list[Node], path: str) -> Node:
        if not nodes:
            return literal(None)
        flag_key = compiler.flag_key
        general = _general(generation, flag_key, [node.fn for node in nodes])
        first = nodes[0]
        if not compiler.specialise or not all(node.constant for node in nodes[1:]):
            compiler.reads_key = True
            return Node(general)
        if first.constant and isinstance(first.value, list):
            compiler.reads_key = True
            table = _table(parse_buckets([node.value for node in nodes]))
            return _shorthand(generation, flag_key, table)
        table = _table(parse_buckets([node.value for node in nodes[1:]]))
        if first.text or first.boolean or first.constant:  # never an array
            if table is None:
                return literal(None)
            index = _v2_index if generation is Fractional.V2 else _v3_index
            return choice((*table.variants, None), index(first.fn, table.bounds))
        compiler.reads_key = True  # an array value means: bucket by the targeting key
        return Node(_by_value(generation, first.fn, table, general))

    return build


def _general(generation: Fractional, flag_key: str, fns: list[Callable[[Data], Any]]) -> Any:
    """Any ``fractional``: the arguments evaluated, the buckets parsed, on every call."""
    value_of = v2_value if generation is Fractional.V2 else v3_value

    def general(data: Data) -> Any:
        value, rest = value_of(flag_key, [fn(data) for fn in fns], data)
        buckets = parse_buckets(rest)
        if value is None or buckets is None:
            return None
        return pick(_hash(value), buckets)

    return general


def _v2_index(first: Callable[[Data], Any], bounds: tuple[int, ...]) -> Callable[[Data], int]:
    """v2 with a bucketing value that is never an array: a string is hashed, anything else
    makes the buckets malformed (the value is then read as one of them): -1, null."""

    def v2(data: Data) -> int:
        value = first(data)
        if not isinstance(value, str):
            return -1
        return bisect_right(bounds, _murmur(cbor.utf8(value), 0))

    return v2


def _v3_index(first: Callable[[Data], Any], bounds: tuple[int, ...]) -> Callable[[Data], int]:
    """v3 with a bucketing value that is never an array: its CBOR is hashed (a string's
    without the general encoder); null, or a value CBOR cannot carry, is -1: null."""

    def v3(data: Data) -> int:
        value = first(data)
        if type(value) is str:
            return bisect_right(bounds, _murmur(cbor.text(value), 0))
        if value is None:
            return -1
        try:
            return bisect_right(bounds, _murmur(cbor.encode(value), 0))
        except cbor.NotEncodable:
            return -1

    return v3


def _by_value(
    generation: Fractional,
    first: Callable[[Data], Any],
    table: _Table | None,
    general: Callable[[Data], Any],
) -> Callable[[Data], Any]:
    """Literal buckets and a computed bucketing value that may be an array: a string is
    hashed here, anything else takes the general path."""
    if table is None:
        return general
    bounds, variants = table
    v3 = generation is Fractional.V3

    def by_value(data: Data) -> Any:
        value = first(data)
        if type(value) is not str:
            return general(data)
        encoded = cbor.text(value) if v3 else cbor.utf8(value)
        return variants[bisect_right(bounds, _murmur(encoded, 0))]

    return by_value


def _shorthand(generation: Fractional, flag_key: str, table: _Table | None) -> Node:
    """Every argument a literal bucket: the value is the flag key and the targeting key."""
    if table is None:
        return literal(None)
    bounds, choices = table.bounds, (*table.variants, None)
    if generation is Fractional.V2:
        prefix = cbor.utf8(flag_key)

        def v2(data: Data) -> int:
            key = data.get(TARGETING_KEY) if isinstance(data, dict) else None
            if not isinstance(key, str):
                return -1
            return bisect_right(bounds, _murmur(prefix + cbor.utf8(key), 0))

        return choice(choices, v2)
    array_prefix = b"\x82" + cbor.text(flag_key)  # a two-item array, then the flag key

    def v3(data: Data) -> int:
        key = data.get(TARGETING_KEY) if isinstance(data, dict) else None
        if not isinstance(key, str) or not key:
            return -1
        return bisect_right(bounds, _murmur(array_prefix + cbor.text(key), 0))

    return choice(choices, v3)


def sem_ver(compiler: Compiler, nodes: list[Node], path: str) -> Node:
    """``[version, operator, version]``; null for a wrong count, an invalid version or
    an unknown operator. Constant versions are parsed once, here."""
    if len(nodes) != 3:
        return literal(None)
    left, operator, right = nodes
    parsed = {i: semver.parse(n.value) for i, n in enumerate(nodes) if n.constant and i != 1}
    left_fn, op_fn, right_fn = left.fn, operator.fn, right.fn

    def version(index: int, fn: Callable[[Data], Any], data: Data) -> semver.Version | None:
        return parsed[index] if index in parsed else semver.parse(fn(data))

    def compare(data: Data) -> bool | None:
        op = op_fn(data)
        mine, theirs = version(0, left_fn, data), version(2, right_fn, data)
        if mine is None or theirs is None or not isinstance(op, str):
            return None
        return semver.compare(mine, op, theirs)

    return Node(compare)


def _affix(test: Callable[[str, str], bool]) -> Operator:
    def build(compiler: Compiler, nodes: list[Node], path: str) -> Node:
        if len(nodes) != 2:
            return literal(None)
        first, second = nodes[0].fn, nodes[1].fn

        def check(data: Data) -> bool | None:
            text, affix = first(data), second(data)
            if not isinstance(text, str) or not isinstance(affix, str):
                return None
            return test(text, affix)

        return Node(check)

    return build


def operators(generation: Fractional) -> Mapping[str, Operator]:
    return {
        "fractional": fractional(generation),
        "sem_ver": sem_ver,
        "starts_with": _affix(str.startswith),
        "ends_with": _affix(str.endswith),
    }
