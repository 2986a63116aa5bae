"""The release statistics against GrowthBook's gbstats 0.8.0 and scipy on the same data, and
the guardrail rule: SRM first, hold before the minimum sample, breach beyond the tolerance,
Bonferroni over several treatments."""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable

import pytest
from gbstats.frequentist.tests import SequentialConfig, SequentialTwoSidedTTest
from gbstats.models.statistics import ProportionStatistic, SampleMeanStatistic
from gbstats.utils import check_srm
from scipy.stats import chi2

from sidecar.controlplane.statistics import (
    ArmStats,
    Direction,
    Guardrail,
    MetricKind,
    Outcome,
    chi_square_p_value,
    confidence_sequence,
    difference,
    evaluate_guardrail,
    sample_ratio_mismatch,
)


def close(expected: float) -> object:
    return pytest.approx(expected, rel=1e-6, abs=1e-9)


def conversion_units(rng: random.Random, n: int, rate: float) -> list[float]:
    return [1.0 if rng.random() < rate else 0.0 for _ in range(n)]


def count_units(rng: random.Random, n: int, mean: float) -> list[float]:
    # a geometric count of events per unit (many zeros, a long tail)
    return [float(int(math.log(1 - rng.random()) / math.log(mean / (1 + mean)))) for _ in range(n)]


def latency_units(rng: random.Random, n: int, median_ms: float) -> list[float]:
    return [rng.lognormvariate(math.log(median_ms), 0.6) for _ in range(n)]


Generator = Callable[[random.Random, int, float], list[float]]

# (name, unit generator, baseline n, treatment n, baseline parameter, treatment parameter)
DATA_SETS: list[tuple[str, Generator, int, int, float, float]] = [
    ("conversion, no effect", conversion_units, 5_000, 5_000, 0.05, 0.05),
    ("conversion, +2 pts", conversion_units, 4_000, 4_300, 0.05, 0.07),
    ("conversion, small and unequal", conversion_units, 400, 355, 0.10, 0.08),
    ("count per unit", count_units, 3_000, 2_500, 1.5, 1.8),
    ("latency mean", latency_units, 2_000, 2_000, 120.0, 125.0),
    ("latency mean, tiny", latency_units, 12, 9, 80.0, 95.0),
]


def gbstats_arm(arm: ArmStats) -> SampleMeanStatistic:
    return SampleMeanStatistic(n=arm.n, sum=arm.total, sum_squares=arm.total_squares)


def data_set(index: int) -> tuple[ArmStats, ArmStats]:
    _, units, n_c, n_t, param_c, param_t = DATA_SETS[index]
    rng = random.Random(index)
    baseline = ArmStats.from_values(units(rng, n_c, param_c))
    treatment = ArmStats.from_values(units(rng, n_t, param_t))
    return baseline, treatment


@pytest.mark.parametrize("index", range(len(DATA_SETS)), ids=[d[0] for d in DATA_SETS])
@pytest.mark.parametrize(
    ("alpha", "tuning", "null"), [(0.05, 5_000.0, 0.0), (0.1, 5_000.0, 0.0), (0.01, 800.0, 0.003)]
)
@pytest.mark.parametrize("scale", ["absolute", "relative"])
def test_confidence_sequence_matches_gbstats(
    index: int, alpha: float, tuning: float, null: float, scale: str
) -> None:
    baseline, treatment = data_set(index)
    oracle = SequentialTwoSidedTTest(
        gbstats_arm(baseline),
        gbstats_arm(treatment),
        SequentialConfig(
            difference_type=scale, alpha=alpha, sequential_tuning_parameter=tuning, test_value=null
        ),
    )
    diff = difference(treatment, baseline)
    if scale == "absolute":
        estimate, variance = diff.absolute, diff.absolute_variance
    else:
        assert diff.relative is not None and diff.relative_variance is not None
        estimate, variance = diff.relative, diff.relative_variance
    ours = confidence_sequence(
        estimate, variance, diff.units, alpha=alpha, null=null, tuning=tuning
    )
    lower, upper = oracle.confidence_interval
    assert ours.estimate == close(oracle.point_estimate)
    assert ours.lower == close(lower)
    assert ours.upper == close(upper)
    assert ours.p_value == close(oracle.p_value)
    result = oracle.compute_result()  # gbstats' public runner path gives the same numbers
    assert result.error_message is None
    assert [ours.lower, ours.upper] == [close(result.ci[0]), close(result.ci[1])]


@pytest.mark.parametrize(
    ("n_c", "k_c", "n_t", "k_t"), [(5_000, 250, 5_000, 350), (800, 40, 1_200, 61)]
)
def test_formula_matches_gbstats_proportion_statistic(
    n_c: int, k_c: int, n_t: int, k_t: int
) -> None:
    """GrowthBook's binomial statistic uses the variance p(1 - p); given that variance, our
    sequence is the same (ArmStats itself uses the sample variance, see ArmStats.variance)."""
    oracle = SequentialTwoSidedTTest(
        ProportionStatistic(n=n_c, sum=k_c),
        ProportionStatistic(n=n_t, sum=k_t),
        SequentialConfig(difference_type="absolute"),
    )
    p_c, p_t = k_c / n_c, k_t / n_t
    variance = p_t * (1 - p_t) / n_t + p_c * (1 - p_c) / n_c
    ours = confidence_sequence(p_t - p_c, variance, n_c + n_t)
    assert [ours.lower, ours.upper] == [close(b) for b in oracle.confidence_interval]
    assert ours.p_value == close(oracle.p_value)


def test_arm_stats_reduce_every_metric_kind_to_mean_and_sample_variance() -> None:
    values = [0.0, 2.0, 3.0, 7.0]
    arm = ArmStats.from_values(values)
    assert (arm.n, arm.total, arm.total_squares) == (4, 12.0, 62.0)
    assert arm.mean == 3.0
    assert arm.variance == pytest.approx(sum((v - 3.0) ** 2 for v in values) / 3)
    conversion = ArmStats.conversions(10, 3)
    assert conversion == ArmStats.from_values([1.0] * 3 + [0.0] * 7)
    assert conversion.variance == pytest.approx(0.3 * 0.7 * 10 / 9)
    assert ArmStats(1, 5.0, 25.0).variance == 0.0
    assert ArmStats(0, 0.0, 0.0).mean == 0.0


def test_relative_difference_uses_the_delta_method() -> None:
    treatment, baseline = ArmStats.from_values([2.0, 4.0, 6.0]), ArmStats.from_values([1.0, 3.0])
    diff = difference(treatment, baseline)
    assert diff.absolute == 2.0
    assert diff.absolute_variance == pytest.approx(4 / 3 + 2 / 2)
    assert diff.relative == 1.0
    # v_T/(n_T m_C^2) + m_T^2 v_C/(n_C m_C^4)
    assert diff.relative_variance == pytest.approx(4 / (3 * 4) + 16 * 2 / (2 * 16))
    assert diff.units == 5
    flat = difference(ArmStats.conversions(100, 3), ArmStats.conversions(100, 0))
    assert flat.relative is None and flat.relative_variance is None


def test_confidence_sequence_narrows_with_data_and_widens_with_confidence() -> None:
    def width(units: int, alpha: float) -> float:
        seq = confidence_sequence(0.0, 0.25 * 4 / units, units, alpha=alpha)
        return seq.upper - seq.lower

    assert width(20_000, 0.05) < width(2_000, 0.05) < width(500, 0.05)
    assert width(2_000, 0.01) > width(2_000, 0.05) > width(2_000, 0.1)
    zero = confidence_sequence(0.02, 0.0, 1_000)
    assert (zero.lower, zero.upper, zero.p_value) == (0.02, 0.02, 0.0)
    assert confidence_sequence(0.0, 0.0, 1_000).p_value == 1.0


@pytest.mark.parametrize(
    ("call", "problem"),
    [
        (lambda: ArmStats(-1, 0.0, 0.0), "unit count"),
        (lambda: ArmStats(0, 1.0, 1.0), "no units"),
        (lambda: ArmStats(3, 1.0, -1.0), "sum of squares"),
        (lambda: ArmStats.conversions(10, 11), "converted"),
        (lambda: difference(ArmStats(0, 0.0, 0.0), ArmStats.conversions(5, 1)), "both arms"),
        (lambda: confidence_sequence(0.1, 0.01, 100, alpha=1.5), "alpha"),
        (lambda: confidence_sequence(0.1, 0.01, 0), "units"),
        (lambda: confidence_sequence(0.1, -0.01, 100), "variance"),
        (lambda: confidence_sequence(0.1, 0.01, 100, tuning=0), "tuning"),
        (lambda: Guardrail("e", Direction.DECREASE, max_regression=-0.1), "max_regression"),
        (lambda: Guardrail("e", Direction.DECREASE, min_sample=1), "min_sample"),
        (lambda: Guardrail("e", Direction.DECREASE, alpha=0.5), "alpha"),
        (lambda: sample_ratio_mismatch({"off": -1}, {"off": 1.0}), "exposure counts"),
        (lambda: sample_ratio_mismatch({"off": 1}, {"off": -1.0}), "weights"),
        (lambda: chi_square_p_value(3.0, 0), "degrees of freedom"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(call: Callable[[], object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        call()


@pytest.mark.parametrize("dof", [1, 2, 3, 4, 5, 7, 10, 25])
def test_chi_square_p_value_matches_scipy(dof: int) -> None:
    for statistic in [1e-6, 0.01, 0.5, 1.0, 2.5, dof - 0.5, dof + 1.0, 10.0, 30.0, 80.0, 300.0]:
        expected = float(chi2.sf(statistic, dof))
        assert chi_square_p_value(statistic, dof) == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert chi_square_p_value(0.0, dof) == 1.0


@pytest.mark.parametrize(
    ("exposures", "split"),
    [
        ([5_000, 5_000], [0.5, 0.5]),
        ([5_200, 4_800], [0.5, 0.5]),
        ([5_150, 4_850], [0.5, 0.5]),
        ([900, 130], [0.9, 0.1]),
        ([3_000, 3_100, 2_650, 3_020], [1.0, 1.0, 1.0, 1.0]),
        ([10_000, 9_000, 1_000], [0.45, 0.45, 0.1]),
    ],
)
def test_srm_matches_gbstats(exposures: list[int], split: list[float]) -> None:
    names = [f"t{i}" for i in range(len(exposures))]
    ours = sample_ratio_mismatch(
        dict(zip(names, exposures, strict=True)), dict(zip(names, split, strict=True))
    )
    expected = float(check_srm(exposures, split))
    assert ours.p_value == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert ours.degrees_of_freedom == len(exposures) - 1
    assert ours.mismatch == (expected < 0.001)


def test_srm_edge_cases() -> None:
    assert sample_ratio_mismatch({"off": 0, "on": 0}, {"off": 1.0, "on": 1.0}).mismatch is False
    stray = sample_ratio_mismatch({"off": 100, "on": 100, "v2": 3}, {"off": 1.0, "on": 1.0})
    assert stray.mismatch and stray.p_value == 0.0
    missing = sample_ratio_mismatch({"off": 600}, {"off": 1.0, "on": 1.0})  # "on" never exposed
    assert missing.mismatch and missing.degrees_of_freedom == 1


ERRORS = Guardrail("errors", Direction.DECREASE)


def conversions(**arms: tuple[int, int]) -> dict[str, ArmStats]:
    return {name: ArmStats.conversions(n, k) for name, (n, k) in arms.items()}


def test_clear_regression_breaches_with_delta_bounds_and_message() -> None:
    verdict = evaluate_guardrail(ERRORS, conversions(off=(5_000, 250), on=(5_000, 360)))
    assert verdict.outcome is Outcome.BREACH
    (only,) = verdict.comparisons
    assert only.treatment == "on" and only.outcome is Outcome.BREACH
    assert only.delta == pytest.approx(0.022)
    assert only.relative == pytest.approx(0.44)
    assert only.mean == pytest.approx(0.072)
    assert only.baseline_mean == pytest.approx(0.05)
    assert only.ci is not None and 0 < only.ci[0] < 0.022 < only.ci[1]
    assert only.p_value is not None and only.p_value < ERRORS.alpha
    match = re.fullmatch(r"errors: \+2\.2 pts, CS \[\+(\d\.\d), \+(\d\.\d)\]", verdict.message)
    assert match, verdict.message
    assert float(match[1]) == pytest.approx(only.ci[0] * 100, abs=0.05)
    assert float(match[2]) == pytest.approx(only.ci[1] * 100, abs=0.05)


def test_guardrail_uses_a_one_sided_bound_at_two_alpha_matching_gbstats() -> None:
    arms = conversions(off=(5_000, 250), on=(5_000, 330))
    rule = Guardrail("errors", Direction.DECREASE, max_regression=0.005)
    (only,) = evaluate_guardrail(rule, arms).comparisons
    oracle = SequentialTwoSidedTTest(
        gbstats_arm(arms["off"]),
        gbstats_arm(arms["on"]),
        SequentialConfig(difference_type="absolute", alpha=0.1, test_value=0.005),
    )
    assert only.ci is not None
    assert list(only.ci) == [close(bound) for bound in oracle.confidence_interval]
    assert only.p_value == close(oracle.p_value / 2)


def test_no_effect_with_plenty_of_data_is_healthy() -> None:
    verdict = evaluate_guardrail(ERRORS, conversions(off=(20_000, 1_000), on=(20_000, 1_010)))
    assert verdict.outcome is Outcome.HEALTHY
    assert verdict.message.endswith(": within tolerance")
    p_value = verdict.comparisons[0].p_value
    assert p_value is not None and p_value > 0.05


def test_improvement_is_healthy_and_direction_decides_the_harmful_side() -> None:
    fewer_errors = conversions(off=(5_000, 360), on=(5_000, 250))
    assert evaluate_guardrail(ERRORS, fewer_errors).outcome is Outcome.HEALTHY
    signups = Guardrail("signups", Direction.INCREASE)
    assert evaluate_guardrail(signups, fewer_errors).outcome is Outcome.BREACH
    assert evaluate_guardrail(signups, conversions(off=(5_000, 250), on=(5_000, 360))).outcome is (
        Outcome.HEALTHY
    )


def test_tolerance_is_in_the_metric_unit() -> None:
    arms = conversions(off=(20_000, 1_000), on=(20_000, 1_300))  # +1.5 pts, clearly significant
    assert evaluate_guardrail(ERRORS, arms).outcome is Outcome.BREACH
    one_point = Guardrail("errors", Direction.DECREASE, max_regression=0.01)
    two_points = Guardrail("errors", Direction.DECREASE, max_regression=0.02)
    (within,) = evaluate_guardrail(two_points, arms).comparisons
    assert within.outcome is Outcome.HEALTHY and within.ci is not None and within.ci[0] > 0
    # the CS lies above 0 but not wholly above +1 pt: not a breach of a 1-point tolerance
    (partly,) = evaluate_guardrail(one_point, arms).comparisons
    assert partly.ci is not None and partly.ci[0] < 0.01 < partly.ci[1]
    assert partly.outcome is Outcome.HEALTHY


def test_mean_metric_message_is_in_the_metric_unit() -> None:
    rng = random.Random(7)
    arms = {
        "off": ArmStats.from_values(latency_units(rng, 2_000, 100.0)),
        "on": ArmStats.from_values(latency_units(rng, 2_000, 130.0)),
    }
    latency = Guardrail("latency", Direction.DECREASE, kind=MetricKind.MEAN, max_regression=5.0)
    verdict = evaluate_guardrail(latency, arms)
    assert verdict.outcome is Outcome.BREACH
    assert re.fullmatch(r"latency: \+\d\d\.?\d*, CS \[\+\d+\.?\d*, \+\d+\.?\d*\]", verdict.message)


def test_hold_before_the_minimum_sample_and_without_data() -> None:
    harmful_but_small = conversions(off=(300, 5), on=(300, 60))
    verdict = evaluate_guardrail(ERRORS, harmful_but_small)
    assert verdict.outcome is Outcome.HOLD
    assert "of 355 units" in verdict.message
    (only,) = verdict.comparisons
    assert only.delta == pytest.approx(55 / 300) and only.ci is not None
    empty = evaluate_guardrail(ERRORS, conversions(off=(0, 0), on=(0, 0)))
    assert empty.outcome is Outcome.HOLD
    assert empty.comparisons[0].delta is None and empty.comparisons[0].mean is None
    no_baseline = evaluate_guardrail(ERRORS, conversions(on=(5_000, 400)))
    assert no_baseline.outcome is Outcome.HOLD and "off has 0 of 355" in no_baseline.message
    only_baseline = evaluate_guardrail(ERRORS, conversions(off=(5_000, 400)))
    assert only_baseline.outcome is Outcome.HOLD and only_baseline.comparisons == ()


def test_srm_is_checked_first_and_stops_the_judging() -> None:
    harmful = conversions(off=(5_000, 250), on=(4_000, 400))
    verdict = evaluate_guardrail(ERRORS, harmful, expected_split={"off": 50.0, "on": 50.0})
    assert verdict.outcome is Outcome.SRM
    assert verdict.comparisons == ()
    assert verdict.srm is not None and verdict.srm.p_value < 0.001
    assert verdict.message.startswith("sample ratio mismatch: p = ")
    # the same data with the split it came from is judged, and breaches
    judged = evaluate_guardrail(ERRORS, harmful, expected_split={"off": 5.0, "on": 4.0})
    assert judged.outcome is Outcome.BREACH and judged.srm is not None
    # exposures given apart from the metric's units (a mean metric counts only units with events)
    balanced = evaluate_guardrail(
        ERRORS, harmful, exposures={"off": 9_000, "on": 9_050}, expected_split={"off": 1, "on": 1}
    )
    assert balanced.outcome is Outcome.BREACH


def test_several_treatments_are_judged_with_bonferroni() -> None:
    """Data whose CS excludes 0 at 2*alpha but not at 2*alpha/3: a breach alone, not among 3."""
    n = 5_000
    baseline = ArmStats.conversions(n, 250)
    border = None
    for converted in range(251, 400):
        diff = difference(ArmStats.conversions(n, converted), baseline)
        alone = confidence_sequence(diff.absolute, diff.absolute_variance, diff.units, alpha=0.1)
        among = confidence_sequence(
            diff.absolute, diff.absolute_variance, diff.units, alpha=0.1 / 3
        )
        if alone.lower > 0 and among.lower <= 0:
            border = converted
            break
    assert border is not None
    pair = conversions(off=(n, 250), on=(n, border))
    assert evaluate_guardrail(ERRORS, pair).outcome is Outcome.BREACH
    family = conversions(off=(n, 250), on=(n, border), v2=(n, 250), v3=(n, 252))
    verdict = evaluate_guardrail(ERRORS, family)
    assert verdict.outcome is Outcome.HEALTHY
    assert [c.treatment for c in verdict.comparisons] == ["on", "v2", "v3"]
    assert verdict.message.startswith("errors (on): ")  # the worst one is shown, named
    clearly_bad = conversions(off=(n, 250), on=(n, 250), v2=(n, 420), v3=(n, 252))
    bad = evaluate_guardrail(ERRORS, clearly_bad)
    assert bad.outcome is Outcome.BREACH and bad.message.startswith("errors (v2): ")
    assert [c.outcome for c in bad.comparisons] == [
        Outcome.HEALTHY,
        Outcome.BREACH,
        Outcome.HEALTHY,
    ]


def test_breach_exactly_when_adjusted_p_value_is_below_alpha() -> None:
    rng = random.Random(11)
    for _ in range(300):
        n_c, n_t = rng.randint(400, 6_000), rng.randint(400, 6_000)
        arms = {
            "off": ArmStats.conversions(n_c, rng.randint(0, n_c // 10)),
            "on": ArmStats.conversions(n_t, rng.randint(0, n_t // 8)),
            "v2": ArmStats.conversions(n_t, rng.randint(0, n_t // 8)),
        }
        rule = Guardrail(
            "errors",
            rng.choice(list(Direction)),
            max_regression=rng.choice([0.0, 0.005, 0.01]),
            alpha=rng.choice([0.01, 0.05, 0.1]),
        )
        for comparison in evaluate_guardrail(rule, arms).comparisons:
            assert comparison.p_value is not None
            assert (comparison.outcome is Outcome.BREACH) == (comparison.p_value < rule.alpha)
