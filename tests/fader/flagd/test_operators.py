"""``fractional``'s precomputed buckets and hashing: the bisection of the hash against the
bounds computed once picks what flagd's ``(hash * total) >> 32`` picks, at every bucket edge;
any string buckets, a lone surrogate included (mmh3 crashes the process on one given as a
str)."""

from __future__ import annotations

import random
from bisect import bisect_right

import pytest
from fader.flagd.jsonlogic import Compiler
from fader.flagd.operators import Fractional, _table, operators, parse_buckets, pick


def test_the_bounds_pick_what_the_multiplication_picks_at_every_edge() -> None:
    rng = random.Random(16)
    for _ in range(2000):
        weights = [
            rng.choice((0, 1, 3, 7, 25, 100, 2**20, 2**29)) for _ in range(rng.randrange(1, 6))
        ]
        buckets = parse_buckets([[f"v{i}", w] for i, w in enumerate(weights)])
        assert buckets is not None
        table = _table(buckets)
        if table is None:
            assert sum(weights) == 0
            continue
        total, cumulative, hashes = sum(weights), 0, [0, 2**32 - 1, rng.randrange(2**32)]
        for weight in weights:
            cumulative += weight
            edge = -((-cumulative << 32) // total)  # the first hash past this bucket
            hashes += [h for h in (edge - 2, edge - 1, edge, edge + 1) if 0 <= h < 2**32]
        for h in hashes:
            assert table.variants[bisect_right(table.bounds, h)] == pick(h, buckets), (weights, h)


@pytest.mark.parametrize("generation", list(Fractional))
def test_a_lone_surrogate_is_bucketed_not_a_crash(generation: Fractional) -> None:
    buckets = [["a", 50], ["b", 50]]
    rules = [
        {"fractional": buckets},
        {"fractional": [{"var": "id"}, *buckets]},
        {"fractional": [{"cat": ["k", {"var": "id"}]}, *buckets]},
    ]
    for specialise in (True, False):
        for rule in rules:
            compiler = Compiler("k", {}, operators(generation), specialise=specialise)
            node = compiler.compile(rule, "$")
            for text in ("a\ud800", "\udfff", "x\ud83d\ude00"):
                assert node.fn({"targetingKey": text, "id": text}) in ("a", "b")
