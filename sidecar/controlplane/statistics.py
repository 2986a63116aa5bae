"""Release statistics for guardrails: pure functions over per-arm sufficient statistics.

Why these methods:

* **Sufficient statistics.** Every metric Fader measures is a per-unit value (conversion 0/1,
  a count of events, the mean of an event's value), so an arm is fully described by its unit
  count, sum and sum of squares. The store aggregates those in SQL and nothing unit-level has
  to travel.
* **A confidence sequence, not a fixed-horizon test.** The control plane looks at every
  guardrail interval (once a minute) and acts on the first breach. A fixed-horizon t-test
  checked that often would cross its threshold by chance in a large share of harmless
  releases. The asymptotic confidence sequence of Waudby-Smith et al. (2023, eq. 9, the one
  GrowthBook's sequential test uses) holds at every look at once, so peeking is free.
* **One-sided use.** A guardrail only asks "is the treatment worse than tolerated?". A
  two-sided sequence at level 2*alpha gives a one-sided bound at level alpha on each side.
* **Bonferroni for A/B/n.** With k treatments each compared with the baseline, each
  comparison runs at alpha/k. Holm would reject more, but it orders p-values at one look and so
  gives no confidence bound per treatment; Bonferroni's fixed levels keep one always-valid
  sequence per treatment (shown on the release page), and with the union bound the chance
  of any false breach over all treatments and all looks stays <= alpha. Flags have few
  treatments, so the cost in power is small.
* **Sample-ratio mismatch first.** When the exposures do not follow the dial's split, the
  assignment or the logging is broken and every metric comparison is suspect, so an SRM
  (chi-square p < 0.001, GrowthBook's threshold) pauses instead of judging metrics.

No I/O and no dependencies beyond the standard library, so the module can be tested alone
and used by anything that can produce sufficient statistics.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

DEFAULT_ALPHA = 0.05
DEFAULT_TUNING = 5_000.0  # GrowthBook's default N: the sample size the sequence is tightest at
DEFAULT_MIN_SAMPLE = 355  # units per arm before judging (Split's minimum per treatment)
SRM_THRESHOLD = 0.001


@dataclass(frozen=True)
class ArmStats:
    """One arm's units: count, sum of the per-unit values and sum of their squares."""

    n: int
    total: float
    total_squares: float

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"unit count must be >= 0, got {self.n}")
        if self.total_squares < 0:
            raise ValueError(f"sum of squares must be >= 0, got {self.total_squares}")
        if self.n == 0 and (self.total != 0 or self.total_squares != 0):
            raise ValueError("an arm with no units must have zero sums")

    @classmethod
    def from_values(cls, values: Iterable[float]) -> ArmStats:
        n, total, squares = 0, 0.0, 0.0
        for value in values:
            n += 1
            total += value
            squares += value * value
        return cls(n, total, squares)

    @classmethod
    def conversions(cls, units: int, converted: int) -> ArmStats:
        """A conversion metric: each unit is 1 (converted) or 0, so sum = sum of squares."""
        if not 0 <= converted <= units:
            raise ValueError(f"converted units must be within 0..{units}, got {converted}")
        return cls(units, float(converted), float(converted))

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0

    @property
    def variance(self) -> float:
        """Sample variance (n - 1 denominator); rounding below zero is clamped to zero.

        For a conversion this is p(1 - p)·n/(n - 1); GrowthBook's ProportionStatistic uses
        p(1 - p), a relative difference of 1/(n - 1) (under 0.3 % past 355 units).
        """
        if self.n < 2:
            return 0.0
        return max(0.0, (self.total_squares - self.total * self.total / self.n) / (self.n - 1))


@dataclass(frozen=True)
class Difference:
    """Treatment - baseline, absolute and relative, with the variance of each estimate."""

    absolute: float
    absolute_variance: float
    relative: float | None  # None when the baseline mean is 0
    relative_variance: float | None
    units: int  # units in both arms: the n of the confidence sequence


def difference(treatment: ArmStats, baseline: ArmStats) -> Difference:
    """Difference of means; the relative lift's variance comes from the delta method."""
    if treatment.n == 0 or baseline.n == 0:
        raise ValueError("both arms need at least one unit to compare them")
    m_t, m_c = treatment.mean, baseline.mean
    v_t, v_c = treatment.variance, baseline.variance
    absolute_variance = v_t / treatment.n + v_c / baseline.n
    if m_c == 0:
        relative, relative_variance = None, None
    else:
        relative = (m_t - m_c) / m_c
        relative_variance = v_t / (treatment.n * m_c**2) + m_t**2 * v_c / (baseline.n * m_c**4)
    return Difference(
        m_t - m_c, absolute_variance, relative, relative_variance, treatment.n + baseline.n
    )


@dataclass(frozen=True)
class ConfidenceSequence:
    """A two-sided (1 - alpha) confidence sequence for one look, and its p-value."""

    estimate: float
    lower: float
    upper: float
    p_value: float  # always-valid, two-sided, for "the true value is `null`"
    alpha: float


def confidence_sequence(
    estimate: float,
    variance: float,
    units: int,
    *,
    alpha: float = DEFAULT_ALPHA,
    null: float = 0.0,
    tuning: float = DEFAULT_TUNING,
) -> ConfidenceSequence:
    """Asymptotic confidence sequence (Waudby-Smith et al. 2023, eq. 9) and p-value (eq. 155).

    `variance` is the estimate's variance (SE², e.g. `Difference.absolute_variance`), `units`
    the units in both arms. The interval covers the true value at every look simultaneously
    with probability ≥ 1 - alpha (asymptotically), which is what makes acting on any look safe.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be within (0, 1), got {alpha}")
    if units <= 0:
        raise ValueError(f"units must be > 0, got {units}")
    if variance < 0:
        raise ValueError(f"variance must be >= 0, got {variance}")
    if tuning <= 0:
        raise ValueError(f"tuning must be > 0, got {tuning}")
    rho2 = _mixing_rho(alpha, tuning) ** 2
    spread = units * rho2 + 1  # n rho^2 + 1
    s2 = variance * units
    half_width = math.sqrt(s2) * math.sqrt(
        2 * spread * math.log(math.sqrt(spread) / alpha) / (units * units * rho2)
    )
    if variance == 0:
        p_value = 1.0 if estimate == null else 0.0
    else:
        t2 = (estimate - null) ** 2 * units / variance
        log_evalue = rho2 * t2 / (2 * spread) - 0.5 * math.log(spread)
        p_value = math.exp(-log_evalue) if log_evalue > 0 else 1.0
    return ConfidenceSequence(
        estimate, estimate - half_width, estimate + half_width, p_value, alpha
    )


def _mixing_rho(alpha: float, tuning: float) -> float:
    """rho that makes the sequence tightest near `tuning` units (Waudby-Smith et al., eq. 161)."""
    log_term = -2 * math.log(alpha)
    return math.sqrt((log_term + math.log(log_term + 1)) / tuning)


@dataclass(frozen=True)
class SrmResult:
    """Chi-square test of exposures per treatment against the expected split."""

    chi_square: float
    degrees_of_freedom: int
    p_value: float
    mismatch: bool


def sample_ratio_mismatch(
    exposures: Mapping[str, int],
    expected_split: Mapping[str, float],
    *,
    threshold: float = SRM_THRESHOLD,
) -> SrmResult:
    """Compare exposures per treatment with the split they should follow (any positive weights).

    A treatment with exposures but no weight (or missing from `expected_split`) is traffic
    where none was expected: that is a mismatch outright. Treatments with weight and no
    exposures count as zero observed. The expected split must describe the exposures counted
    (e.g. those since the dial last moved).
    """
    if any(count < 0 for count in exposures.values()):
        raise ValueError("exposure counts must be >= 0")
    if any(weight < 0 for weight in expected_split.values()):
        raise ValueError("expected split weights must be >= 0")
    weighted = {name: weight for name, weight in expected_split.items() if weight > 0}
    stray = [name for name, count in exposures.items() if count > 0 and name not in weighted]
    if stray:
        return SrmResult(math.inf, max(len(weighted), 1), 0.0, True)
    total = sum(exposures.get(name, 0) for name in weighted)
    dof = len(weighted) - 1
    if total == 0 or dof == 0:
        return SrmResult(0.0, dof, 1.0, False)
    weight_sum = sum(weighted.values())
    statistic = 0.0
    for name, weight in weighted.items():
        expected = weight / weight_sum * total
        statistic += (exposures.get(name, 0) - expected) ** 2 / expected
    p_value = chi_square_p_value(statistic, dof)
    return SrmResult(statistic, dof, p_value, p_value < threshold)


def chi_square_p_value(statistic: float, degrees_of_freedom: int) -> float:
    """P(X ≥ statistic) for a chi-square with k degrees of freedom: Q(k/2, statistic/2)."""
    if degrees_of_freedom < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {degrees_of_freedom}")
    if statistic <= 0:
        return 1.0
    if math.isinf(statistic):
        return 0.0
    return _upper_regularized_gamma(degrees_of_freedom / 2, statistic / 2)


_GAMMA_EPSILON = 1e-15
_GAMMA_MAX_ITERATIONS = 10_000
_TINY = 1e-300


def _upper_regularized_gamma(a: float, x: float) -> float:
    """Q(a, x) = Γ(a, x) / Γ(a).

    Below x = a + 1 the power series of P = 1 - Q converges fast; above it the continued
    fraction for Q does, and it keeps Q's relative precision in the far tail, where the small
    p-values an SRM check cares about live.
    """
    log_prefactor = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1:
        term = total = 1 / a
        denominator = a
        for _ in range(_GAMMA_MAX_ITERATIONS):
            denominator += 1
            term *= x / denominator
            total += term
            if abs(term) < abs(total) * _GAMMA_EPSILON:
                return max(0.0, 1.0 - total * math.exp(log_prefactor))
    else:
        # Modified Lentz evaluation of Q's continued fraction.
        b = x + 1 - a
        c = 1 / _TINY
        d = 1 / b
        fraction = d
        for i in range(1, _GAMMA_MAX_ITERATIONS):
            an = -i * (i - a)
            b += 2
            d = an * d + b
            d = _TINY if abs(d) < _TINY else d
            c = b + an / c
            c = _TINY if abs(c) < _TINY else c
            d = 1 / d
            step = d * c
            fraction *= step
            if abs(step - 1) < _GAMMA_EPSILON:
                return math.exp(log_prefactor) * fraction
    raise ArithmeticError(f"incomplete gamma did not converge for a={a}, x={x}")


class Direction(StrEnum):
    """Which way is better for a metric: `decrease` means lower is better (errors, latency)."""

    DECREASE = "decrease"
    INCREASE = "increase"


class MetricKind(StrEnum):
    """How a metric's per-unit value is made; conversions are shown in percentage points."""

    CONVERSION = "conversion"
    COUNT = "count"
    MEAN = "mean"


class Outcome(StrEnum):
    BREACH = "breach"  # harmful beyond the tolerance: kill the flag
    HEALTHY = "healthy"  # enough data, no breach: the plan may advance
    HOLD = "hold"  # no data or too little: hold the plan at its step, never advance
    SRM = "srm"  # exposures do not follow the split: pause, metrics not judged


@dataclass(frozen=True)
class Guardrail:
    """A metric guarding a flag, with the regression tolerated in the metric's own unit.

    `max_regression` = 0.01 on a conversion metric tolerates one point. `alpha` is the
    one-sided error rate for the whole flag (split over the treatments, see the module).
    """

    metric: str
    direction: Direction
    kind: MetricKind = MetricKind.CONVERSION
    max_regression: float = 0.0
    min_sample: int = DEFAULT_MIN_SAMPLE
    alpha: float = DEFAULT_ALPHA
    tuning: float = DEFAULT_TUNING

    def __post_init__(self) -> None:
        if self.max_regression < 0:
            raise ValueError(f"max_regression must be >= 0, got {self.max_regression}")
        if self.min_sample < 2:
            raise ValueError(f"min_sample must be >= 2, got {self.min_sample}")
        if not 0 < self.alpha < 0.5:
            raise ValueError(f"alpha must be within (0, 0.5), got {self.alpha}")
        if self.tuning <= 0:
            raise ValueError(f"tuning must be > 0, got {self.tuning}")


@dataclass(frozen=True)
class Comparison:
    """One treatment against the baseline on one metric, at one look.

    `ci` is the two-sided confidence sequence at level 2*alpha/k (k treatments), whose harmful
    bound is the one-sided bound the rule uses. `p_value` is the always-valid one-sided
    p-value for "the regression is at most the tolerance", Bonferroni-adjusted (times k), so a
    breach is `p_value < alpha`. Estimates are None until both arms have 2 units.
    """

    treatment: str
    outcome: Outcome
    units: int
    baseline_units: int
    mean: float | None
    baseline_mean: float | None
    delta: float | None
    relative: float | None
    ci: tuple[float, float] | None
    p_value: float | None
    message: str


@dataclass(frozen=True)
class Verdict:
    """The decision for one guardrail metric at one look; `message` explains it to people."""

    metric: str
    outcome: Outcome
    message: str
    comparisons: tuple[Comparison, ...]  # empty when SRM stopped the judging
    srm: SrmResult | None  # None when no expected split was given


def evaluate_guardrail(
    rule: Guardrail,
    arms: Mapping[str, ArmStats],
    *,
    baseline: str = "off",
    exposures: Mapping[str, int] | None = None,
    expected_split: Mapping[str, float] | None = None,
) -> Verdict:
    """Apply the guardrail rule to every treatment in `arms` against `baseline`.

    1. With an `expected_split`, check SRM on `exposures` (default: the arms' unit counts)
       first; a mismatch returns SRM and no comparison.
    2. A treatment with fewer than `min_sample` units in it or the baseline holds.
    3. A treatment breaches when its confidence sequence's harmful bound is beyond the
       tolerance; otherwise it is healthy.
    The verdict is the worst: breach, then hold, then healthy. Every treatment of the flag
    should be in `arms` (empty ones too) so the Bonferroni family stays the same across looks.
    """
    if expected_split is not None:
        counted = exposures if exposures is not None else {t: a.n for t, a in arms.items()}
        srm = sample_ratio_mismatch(counted, expected_split)
        if srm.mismatch:
            shown = ", ".join(f"{name} {count}" for name, count in counted.items())
            message = f"sample ratio mismatch: p = {srm.p_value:.2g} (exposures {shown})"
            return Verdict(rule.metric, Outcome.SRM, message, (), srm)
    else:
        srm = None
    treatments = [name for name in arms if name != baseline]
    if not treatments:
        message = f"{rule.metric}: hold, no treatment besides {baseline!r} to compare"
        return Verdict(rule.metric, Outcome.HOLD, message, (), srm)
    control = arms.get(baseline, ArmStats(0, 0.0, 0.0))
    label = len(treatments) > 1
    comparisons = tuple(
        _compare(rule, name, arms[name], baseline, control, len(treatments), label)
        for name in treatments
    )
    outcome = next(
        o
        for o in (Outcome.BREACH, Outcome.HOLD, Outcome.HEALTHY)
        if any(c.outcome is o for c in comparisons)
    )
    worst = max((c for c in comparisons if c.outcome is outcome), key=lambda c: _harm(rule, c))
    return Verdict(rule.metric, outcome, worst.message, comparisons, srm)


def _compare(
    rule: Guardrail,
    name: str,
    arm: ArmStats,
    baseline: str,
    control: ArmStats,
    family: int,
    label: bool,
) -> Comparison:
    """One treatment's comparison, at one-sided level alpha/family (two-sided 2*alpha/family)."""
    title = f"{rule.metric} ({name})" if label else rule.metric
    fewest, short = min((arm.n, name), (control.n, baseline))
    holding = f"hold, {short} has {fewest} of {rule.min_sample} units"
    mean = arm.mean if arm.n else None
    baseline_mean = control.mean if control.n else None
    if fewest < 2:
        return Comparison(
            name, Outcome.HOLD, arm.n, control.n, mean, baseline_mean,
            delta=None, relative=None, ci=None, p_value=None, message=f"{title}: {holding}",
        )  # fmt: skip
    diff = difference(arm, control)
    harmful_sign = 1.0 if rule.direction is Direction.DECREASE else -1.0
    boundary = harmful_sign * rule.max_regression  # the tolerated difference, signed
    sequence = confidence_sequence(
        diff.absolute,
        diff.absolute_variance,
        diff.units,
        alpha=2 * rule.alpha / family,
        null=boundary,
        tuning=rule.tuning,
    )
    harmful_bound = sequence.lower if harmful_sign > 0 else sequence.upper
    beyond = harmful_sign * (diff.absolute - boundary) > 0
    p_value = min(1.0, (sequence.p_value / 2 if beyond else 1.0) * family)
    shown = (
        f"{title}: {_format(rule, diff.absolute)}, "
        f"CS [{_format(rule, sequence.lower, unit=False)}, "
        f"{_format(rule, sequence.upper, unit=False)}]"
    )
    if fewest < rule.min_sample:
        outcome, message = Outcome.HOLD, f"{shown}: {holding}"
    elif harmful_sign * (harmful_bound - boundary) > 0:
        outcome, message = Outcome.BREACH, shown
    else:
        outcome, message = Outcome.HEALTHY, f"{shown}: within tolerance"
    return Comparison(
        name,
        outcome,
        arm.n,
        control.n,
        mean,
        baseline_mean,
        diff.absolute,
        diff.relative,
        (sequence.lower, sequence.upper),
        p_value,
        message,
    )


def _harm(rule: Guardrail, comparison: Comparison) -> float:
    """How far a comparison leans to the harmful side: picks the one a message should show."""
    if comparison.ci is None:
        return -math.inf
    lower, upper = comparison.ci
    return lower if rule.direction is Direction.DECREASE else -upper


def _format(rule: Guardrail, value: float, *, unit: bool = True) -> str:
    if rule.kind is MetricKind.CONVERSION:
        return f"{value * 100:+.1f}" + (" pts" if unit else "")
    return f"{value:+.3g}"
