"""Guardrail statistics on simulated releases: false breaches without an effect, and detection.

Run: ``python -m benchmarks.guardrail_simulation [--null-runs 1000] [--effect-runs 200]``.

Each run is one release of a flag with a conversion guardrail ("errors", direction decrease,
tolerance 0, alpha 0.05, Split's minimum of 355 units per arm). Exposures arrive evenly, 50/50;
the control plane looks every 250 exposures per arm (80 looks up to 20,000 per arm) and acts
on the first breach, exactly as the guardrail loop peeks at every interval. Every look goes
through `evaluate_guardrail` itself; numpy only draws the data, for all runs at once.

* No effect (both arms at 5 %): the share of runs with any breach over the 80 looks must stay
  <= alpha; reported with its 95 % Clopper-Pearson interval. The same for A/B/n (a baseline and
  three harmless treatments), where Bonferroni keeps the family-wise rate <= alpha.
* +2 points (5 % -> 7 %): every run must breach; the exposures at the breach are reported.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sidecar.controlplane.statistics import (
    ArmStats,
    Direction,
    Guardrail,
    Outcome,
    evaluate_guardrail,
)

LOOK_EVERY = 250  # exposures per arm between two looks
MAX_PER_ARM = 20_000  # the last look
MIN_SAMPLE = 355  # units per arm before judging: the first judged look is at 500
BASELINE_RATE = 0.05
EFFECT = 0.02  # +2 points of error rate
RULE = Guardrail("errors", Direction.DECREASE, max_regression=0.0, min_sample=MIN_SAMPLE)


@dataclass(frozen=True)
class Simulation:
    runs: int
    breaches: int
    exposures_at_breach: list[int]  # total over all arms, one per breached run

    @property
    def rate(self) -> float:
        return self.breaches / self.runs

    def interval(self, confidence: float = 0.95) -> tuple[float, float]:
        return clopper_pearson(self.breaches, self.runs, confidence)


def simulate(runs: int, rates: list[float], seed: int) -> Simulation:
    """Run `runs` releases with one arm per rate (the first is the baseline `off`)."""
    rng = np.random.default_rng(seed)
    looks = MAX_PER_ARM // LOOK_EVERY
    names = ["off"] + [f"t{i}" for i in range(1, len(rates))]
    # converted units so far, per arm, run and look
    converted = [
        rng.binomial(LOOK_EVERY, rate, size=(runs, looks)).cumsum(axis=1) for rate in rates
    ]
    at_breach = []
    for run in range(runs):
        for look in range(looks):
            units = (look + 1) * LOOK_EVERY
            arms = {
                name: ArmStats.conversions(units, int(counts[run, look]))
                for name, counts in zip(names, converted, strict=True)
            }
            if evaluate_guardrail(RULE, arms).outcome is Outcome.BREACH:
                at_breach.append(units * len(rates))
                break
    return Simulation(runs, len(at_breach), at_breach)


def clopper_pearson(successes: int, trials: int, confidence: float) -> tuple[float, float]:
    """Exact binomial interval: the rates whose tail probability is (1 - confidence) / 2."""
    tail = (1 - confidence) / 2
    lower = 0.0 if successes == 0 else _solve(lambda p: _at_least(successes, trials, p) - tail)
    upper = 1.0 if successes == trials else _solve(lambda p: tail - _at_most(successes, trials, p))
    return lower, upper


def _at_most(k: int, n: int, p: float) -> float:
    return sum(_binomial_pmf(i, n, p) for i in range(k + 1))


def _at_least(k: int, n: int, p: float) -> float:
    return 1.0 - _at_most(k - 1, n, p)


def _binomial_pmf(i: int, n: int, p: float) -> float:
    if p <= 0.0 or p >= 1.0:
        return float(i == (0 if p <= 0.0 else n))
    log_pmf = (
        math.lgamma(n + 1)
        - math.lgamma(i + 1)
        - math.lgamma(n - i + 1)
        + i * math.log(p)
        + (n - i) * math.log1p(-p)
    )
    return math.exp(log_pmf)


def _solve(increasing: Callable[[float], float]) -> float:
    """The root in (0, 1) of an increasing function, by bisection."""
    low, high = 0.0, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        if increasing(middle) < 0:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def report(name: str, result: Simulation) -> str:
    low, high = result.interval()
    return (
        f"{name}: {result.breaches} breaches in {result.runs} runs = {result.rate:.2%} "
        f"(95 % Clopper-Pearson {low:.2%} - {high:.2%})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--null-runs", type=int, default=1_000)
    parser.add_argument("--effect-runs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()
    print(
        f"rule: {RULE.metric}, direction {RULE.direction}, tolerance {RULE.max_regression}, "
        f"alpha {RULE.alpha} one-sided, tuning N {RULE.tuning:.0f}, min sample {MIN_SAMPLE}/arm; "
        f"a look every {LOOK_EVERY} exposures per arm up to {MAX_PER_ARM} "
        f"({MAX_PER_ARM // LOOK_EVERY} looks)"
    )
    started = time.perf_counter()
    null = simulate(args.null_runs, [BASELINE_RATE, BASELINE_RATE], args.seed)
    print(report("no effect, A/B (5 % vs 5 %)", null))
    family = simulate(args.null_runs, [BASELINE_RATE] * 4, args.seed + 1)
    print(report("no effect, A/B/n (baseline + 3 treatments, family-wise)", family))
    harmful = simulate(args.effect_runs, [BASELINE_RATE, BASELINE_RATE + EFFECT], args.seed + 2)
    print(report("+2 points (5 % vs 7 %)", harmful))
    if harmful.exposures_at_breach:
        per_run = harmful.exposures_at_breach
        print(
            f"exposures at the breach (both arms): median {statistics.median(per_run):,.0f}, "
            f"min {min(per_run):,}, max {max(per_run):,}"
        )
    print(f"elapsed: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
