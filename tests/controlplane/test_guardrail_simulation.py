"""The issue's acceptance for the statistics, on simulated releases peeking at every look
(benchmarks/guardrail_simulation.py: a look every 250 exposures per arm up to 20,000, 355
units per arm before judging): without an effect the false-breach rate's 95 % upper bound is
<= alpha, and a +2 point error rate on a 5 % baseline breaches in every run."""

from __future__ import annotations

import statistics

import pytest
from scipy.stats import beta

from benchmarks.guardrail_simulation import (
    BASELINE_RATE,
    EFFECT,
    RULE,
    clopper_pearson,
    report,
    simulate,
)


def test_no_effect_false_breach_rate_is_at_most_alpha() -> None:
    result = simulate(1_000, [BASELINE_RATE, BASELINE_RATE], seed=101)
    print(report("no effect, A/B", result))
    assert result.interval()[1] <= RULE.alpha


def test_no_effect_family_wise_rate_over_three_treatments_is_at_most_alpha() -> None:
    result = simulate(1_000, [BASELINE_RATE] * 4, seed=102)
    print(report("no effect, A/B/n", result))
    assert result.interval()[1] <= RULE.alpha


def test_two_point_regression_breaches_in_every_run() -> None:
    result = simulate(200, [BASELINE_RATE, BASELINE_RATE + EFFECT], seed=103)
    print(report("+2 points", result))
    print(f"median exposures at the breach: {statistics.median(result.exposures_at_breach):,.0f}")
    assert result.breaches == result.runs == 200
    # a breach is never taken before the minimum sample
    assert min(result.exposures_at_breach) >= 2 * RULE.min_sample


@pytest.mark.parametrize(("successes", "trials"), [(0, 200), (21, 1_000), (200, 200), (7, 50)])
def test_clopper_pearson_matches_scipy(successes: int, trials: int) -> None:
    low, high = clopper_pearson(successes, trials, 0.95)
    expected_low = 0.0 if successes == 0 else beta.ppf(0.025, successes, trials - successes + 1)
    expected_high = (
        1.0 if successes == trials else beta.ppf(0.975, successes + 1, trials - successes)
    )
    assert low == pytest.approx(expected_low, abs=1e-9)
    assert high == pytest.approx(expected_high, abs=1e-9)
