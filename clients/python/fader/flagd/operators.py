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
from fader.flagd.jsonlogic import Compiler, Data, Node, Operator, literal

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
    """Buckets parsed once: cumulative weights and their variants (None: no valid weights)."""

    total: int
    cumulative: tuple[int, ...]
    variants: tuple[Any, ...]


def _table(buckets: Buckets | None) -> _Table | None:
    if buckets is None:
        return None
    total = sum(weight for _, weight in buckets)
    if total <= 0 or total > MAX_TOTAL_WEIGHT:
        return None
    return _Table(
        total,
        tuple(accumulate(weight for _, weight in buckets)),
        tuple(variant for variant, _ in buckets),
    )


def _pick_in(table: _Table | None, hash_value: int) -> Any:
    if table is None:
        return None
    return table.variants[bisect_right(table.cumulative, (hash_value * table.total) >> 32)]


def fractional(generation: Fractional) -> Operator:
    """The ``fractional`` operator of one generation.

    Rules nearly always list their buckets as literals; those are parsed once, here, and a
    request then costs the bucketing value, one murmur3 and one bisection. Anything computed
    (a weight or a variant from an expression) takes the general path.
    """

    def build(compiler: Compiler, nodes: list[Node], path: str) -> Node:
        compiler.reads_key = True
        if not nodes:
            return literal(None)
        flag_key = compiler.flag_key
        fns = [node.fn for node in nodes]
        value_of = v2_value if generation is Fractional.V2 else v3_value

        def general(data: Data) -> Any:
            value, rest = value_of(flag_key, [fn(data) for fn in fns], data)
            buckets = parse_buckets(rest)
            if value is None or buckets is None:
                return None
            return pick(_hash(value), buckets)

        if all(node.constant for node in nodes) and isinstance(nodes[0].value, list):
            return _shorthand(generation, flag_key, _table(parse_buckets([n.value for n in nodes])))
        if not all(node.constant for node in nodes[1:]):
            return Node(general)
        table = _table(parse_buckets([node.value for node in nodes[1:]]))
        first = fns[0]
        if generation is Fractional.V2:

            def v2(data: Data) -> Any:
                value = first(data)
                if type(value) is str:
                    return _pick_in(table, mmh3.hash(value, 0, signed=False))
                return general(data)

            return Node(v2)

        def v3(data: Data) -> Any:
            value = first(data)
            if value is None or isinstance(value, list):
                return general(data)
            try:
                encoded = cbor.encode(value)
            except cbor.NotEncodable:
                return None
            return _pick_in(table, mmh3.hash(encoded, 0, signed=False))

        return Node(v3)

    return build


def _hash(value: str | bytes) -> int:
    """Unsigned murmur3 x86_32, seed 0: of the UTF-8 text (v2) or the CBOR bytes (v3)."""
    return int(mmh3.hash(value, 0, signed=False))


def _shorthand(generation: Fractional, flag_key: str, table: _Table | None) -> Node:
    """Every argument a literal bucket: the value is the flag key and the targeting key."""
    if generation is Fractional.V2:

        def v2(data: Data) -> Any:
            key = data.get(TARGETING_KEY) if isinstance(data, dict) else None
            if not isinstance(key, str):
                return None
            return _pick_in(table, mmh3.hash(flag_key + key, 0, signed=False))

        return Node(v2)
    prefix = b"\x82" + cbor.encode(flag_key)  # a two-item array, then the flag key

    def v3(data: Data) -> Any:
        key = data.get(TARGETING_KEY) if isinstance(data, dict) else None
        if not isinstance(key, str) or not key:
            return None
        return _pick_in(table, mmh3.hash(prefix + cbor.encode(key), 0, signed=False))

    return Node(v3)


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
