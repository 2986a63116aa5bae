"""Engine micro-benchmark: Fader's compiled evaluation vs splitio-client's own evaluator.

Run: ``python -m benchmarks.engine_bench`` (``make bench`` runs it too). Both engines are
measured in the same run, on the same snapshot and keys, so the ratio is meaningful on a
noisy machine; the figure quoted is the median over repeats of the mean per evaluation.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

from fader.snapshot.loader import build_snapshot

KEYS = [f"user-{i}" for i in range(1000)]
SEGMENT_KEYS = KEYS[::7]
ATTRS = {"plan": "pro", "age": 30, "beta": True}


def _flag(name: str, conditions: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": name,
        "trafficTypeName": "user",
        "seed": 1314120000,
        "trafficAllocation": 100,
        "trafficAllocationSeed": 1,
        "algo": 2,
        "status": "ACTIVE",
        "killed": False,
        "defaultTreatment": "off",
        "changeNumber": 1,
        "configurations": {"on": '{"color":"green"}'},
        "conditions": conditions,
    }


def _cond(matchers: list[dict[str, Any]], partitions: dict[str, int], label: str) -> dict[str, Any]:
    return {
        "conditionType": "ROLLOUT",
        "matcherGroup": {"combiner": "AND", "matchers": matchers},
        "partitions": [{"treatment": t, "size": s} for t, s in partitions.items()],
        "label": label,
    }


def _attr(matcher_type: str, attribute: str, **data: Any) -> dict[str, Any]:
    return {
        "keySelector": {"trafficType": "user", "attribute": attribute},
        "matcherType": matcher_type,
        "negate": False,
        **data,
    }


ALL_KEYS = {"keySelector": None, "matcherType": "ALL_KEYS", "negate": False}

DOCUMENT: dict[str, Any] = {
    "version": 1,
    "flags": [
        _flag("a-all-on", [_cond([ALL_KEYS], {"on": 100}, "default rule")]),
        _flag(
            "b-three-attributes",
            [
                _cond(
                    [
                        _attr(
                            "WHITELIST", "plan", whitelistMatcherData={"whitelist": ["pro", "team"]}
                        ),
                        _attr(
                            "GREATER_THAN_OR_EQUAL_TO",
                            "age",
                            unaryNumericMatcherData={"dataType": "NUMBER", "value": 18},
                        ),
                        _attr("EQUAL_TO_BOOLEAN", "beta", booleanMatcherData=True),
                    ],
                    {"on": 100},
                    "pro adults in beta",
                )
            ],
        ),
        _flag(
            "c-segment-then-50-50",
            [
                _cond(
                    [
                        {
                            "matcherType": "IN_SEGMENT",
                            "negate": False,
                            "userDefinedSegmentMatcherData": {"segmentName": "beta"},
                        }
                    ],
                    {"on": 100},
                    "in segment beta",
                ),
                _cond([ALL_KEYS], {"on": 50, "off": 50}, "default rule"),
            ],
        ),
    ],
    "segments": {"beta": SEGMENT_KEYS},
    "ruleBasedSegments": [],
}

CASES = [
    ("(a) 100% flag", "a-all-on"),
    ("(b) 3 attribute conditions", "b-three-attributes"),
    ("(c) segment + 50/50 rollout", "c-segment-then-50-50"),
]

Evaluate = Callable[[str, str, dict[str, Any]], object]


def mean_us(evaluate: Evaluate, flag: str, count: int) -> float:
    """Mean µs per evaluation over ``count`` calls, keys rotating over a pool of 1,000."""
    keys = KEYS
    n_keys = len(keys)
    start = time.perf_counter_ns()
    for i in range(count):
        evaluate(keys[i % n_keys], flag, ATTRS)
    return (time.perf_counter_ns() - start) / count / 1000


def compare(
    fader: Evaluate, split: Evaluate, flag: str, count: int, repeats: int
) -> tuple[float, float, float]:
    """Interleaved rounds (Fader, then splitio): medians of each and of the per-round ratio.

    Interleaving puts both engines under the same background load in every round, so the
    ratio survives a noisy machine better than either absolute figure.
    """
    ours, theirs, ratios = [], [], []
    for _ in range(repeats):
        fader_us = mean_us(fader, flag, count)
        split_us = mean_us(split, flag, max(count // 50, 200))
        ours.append(fader_us)
        theirs.append(split_us)
        ratios.append(split_us / fader_us)
    return statistics.median(ours), statistics.median(theirs), statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=50_000, help="Fader evaluations per repeat")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()

    from tests.fader.rules.oracle import Oracle, offline  # splitio-client, a dev dependency

    snapshot = build_snapshot(DOCUMENT)
    oracle = Oracle(DOCUMENT)

    def fader(key: str, flag: str, attrs: dict[str, Any]) -> object:
        return snapshot.evaluate(key, flag, None, attrs)

    def split(key: str, flag: str, attrs: dict[str, Any]) -> object:
        return oracle.evaluate(key, flag, None, attrs)

    for label, flag in CASES:  # same answers, or the comparison means nothing
        for key in KEYS[:200]:
            result = snapshot.evaluate(key, flag, None, ATTRS)
            expected = oracle.evaluate(key, flag, None, ATTRS)
            assert (result.treatment, result.label, result.config) == expected, label

    print(
        f"engine benchmark: Python {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} cores, {args.repeats} interleaved rounds; medians of per-round "
        "mean µs per evaluation and of per-round speed-up"
    )
    print(f"{'case':32} {'fader µs':>10} {'splitio µs':>11} {'speed-up':>9}")
    with offline():
        for label, flag in CASES:
            ours, theirs, ratio = compare(fader, split, flag, args.count, args.repeats)
            print(f"{label:32} {ours:10.2f} {theirs:11.2f} {ratio:8.1f}x")


if __name__ == "__main__":
    main()
