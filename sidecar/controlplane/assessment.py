"""One look at a guarded flag: the sample-ratio check, then every guardrail's verdict.

Both the guardrail loop (which acts on it) and the release page (which shows it) call
``assess``, so what the page shows is what the loop decides on.

Which exposures count, and why:

* **The sample-ratio check** compares the keys served by the flag's *current* definition
  with the split that definition has: exposures whose ``change_number`` is the flag's current
  one (the store version in which the flag last changed, which the sidecar stamps on every
  impression) and whose label is the default rule's. Counting by time ("since the dial
  moved") would be wrong for the seconds a new version takes to reach every sidecar, when
  the old split is still served; the change number is exact. Keys matched by an earlier rule
  (a whitelist, a segment) carry that rule's label and follow no split, so they are left out.
  A sidecar reports a changed flag's first impression per key again (its dedup hash holds
  the change number), so every key seen since the change is counted.
* **The metrics** compare units first exposed since the analysis started: the rollout
  plan's start (so each step builds on the evidence of the steps before it: a 1 % step is
  judged together with the 5 % one), or, for a flag without a plan, the first guardrail's
  creation. Keys that moved treatment when the dial moved stay in their first treatment
  until they moved (the exposure store's rule), so no event caused by a later treatment is
  credited to an earlier one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sidecar.controlplane import dimmer
from sidecar.controlplane.definitions import GuardrailDef, MetricDef
from sidecar.controlplane.exposures import DEFAULT_WINDOW_MS, ExposureStore, Metric
from sidecar.controlplane.exposures import MetricKind as StoreKind
from sidecar.controlplane.rollout import Plan
from sidecar.controlplane.statistics import (
    DEFAULT_MIN_SAMPLE,
    ArmStats,
    Guardrail,
    Outcome,
    SrmResult,
    Verdict,
    evaluate_guardrail,
    sample_ratio_mismatch,
)

CONTROL = "control"
_WORST_FIRST = (Outcome.SRM, Outcome.BREACH, Outcome.HOLD, Outcome.HEALTHY)


@dataclass(frozen=True)
class Split:
    """The default rule's split (treatment -> percent, ``control`` for an unallocated rest)
    and the label its impressions carry."""

    weights: Mapping[str, int]
    label: str | None

    @property
    def treatments(self) -> list[str]:
        return list(self.weights)


@dataclass(frozen=True)
class Judged:
    """One guardrail's verdict, with the definitions it was judged by."""

    rule: GuardrailDef
    metric: MetricDef
    verdict: Verdict


@dataclass(frozen=True)
class Assessment:
    """A flag at one look. ``outcome`` is the worst verdict (SRM first), None without rules."""

    flag: str
    change_number: int
    since_ms: int
    split: Split
    srm_units: Mapping[str, int]
    srm: SrmResult | None
    judged: tuple[Judged, ...]
    outcome: Outcome | None
    message: str

    def details(self) -> dict[str, Any]:
        """For a decision's details: enough to see why, without re-running the query."""
        return {
            "change_number": self.change_number,
            "since_ms": self.since_ms,
            "split": dict(self.split.weights),
            "srm_units": dict(self.srm_units),
            "srm_p_value": None if self.srm is None else self.srm.p_value,
            "metrics": [comparison_json(j) for j in self.judged],
        }


def default_split(definition: Mapping[str, Any]) -> Split:
    """The default rule's partitions as weights (sizes summed per treatment); when they add
    up to less than 100, Split serves ``control`` to the rest, so that is expected too."""
    index = dimmer.default_rule_index(definition)
    if index is None:
        return Split({}, None)
    condition = definition["conditions"][index]
    weights: dict[str, int] = {}
    for partition in condition.get("partitions") or ():
        name, size = str(partition.get("treatment")), int(partition.get("size", 0))
        weights[name] = weights.get(name, 0) + size
    rest = 100 - sum(weights.values())
    if rest > 0:
        weights[CONTROL] = weights.get(CONTROL, 0) + rest
    label = condition.get("label")
    return Split(weights, label if isinstance(label, str) and label else None)


def analysis_start_ms(plan: Plan | None, rules: Sequence[GuardrailDef]) -> int:
    """Where the metrics' evidence starts (see the module docstring)."""
    if plan is not None:
        return int(plan.started_at * 1000)
    return int(min((rule.created_at for rule in rules), default=0.0) * 1000)


def default_rule_units(
    exposures: ExposureStore, flag: str, change_number: int, label: str | None
) -> dict[str, int]:
    """Keys per treatment served by the default rule of the flag's current definition."""
    with exposures.cursor() as cursor:
        rows = cursor.execute(
            "SELECT treatment, count(DISTINCT key) FROM exposures"
            " WHERE flag = $flag AND change_number = $change"
            " AND label IS NOT DISTINCT FROM $label GROUP BY treatment ORDER BY treatment",
            {"flag": flag, "change": change_number, "label": label},
        ).fetchall()
    return {str(treatment): int(units) for treatment, units in rows}


def arms_for(
    exposures: ExposureStore,
    flag: str,
    metric: MetricDef,
    *,
    since_ms: int,
    window_ms: int,
    end_ms: int | None = None,
) -> dict[str, ArmStats]:
    """The guardrail query's per-treatment sufficient statistics, as the engine's arms."""
    stats = exposures.unit_statistics(
        flag,
        Metric(metric.event_type, StoreKind(metric.kind.value)),
        window_ms=window_ms,
        start_ms=since_ms,
        end_ms=end_ms,
    )
    return {t: ArmStats(s.n, s.total, s.total_squares) for t, s in stats.items()}


def family(split: Split, arms: Mapping[str, ArmStats], baseline: str) -> dict[str, ArmStats]:
    """Every treatment of the default rule (empty ones too) plus any seen, so the number of
    comparisons (the Bonferroni family) does not change from one look to the next."""
    empty = ArmStats(0, 0.0, 0.0)
    names = [*split.treatments, *arms, baseline]
    return {name: arms.get(name, empty) for name in dict.fromkeys(names) if name != CONTROL}


def rule_for(rule: GuardrailDef, metric: MetricDef, min_sample: int) -> Guardrail:
    return Guardrail(
        metric=metric.name,
        direction=metric.direction,
        kind=metric.kind,
        max_regression=rule.max_regression,
        min_sample=min_sample,
    )


def assess(
    exposures: ExposureStore,
    flag: str,
    definition: Mapping[str, Any],
    change_number: int,
    rules: Sequence[tuple[GuardrailDef, MetricDef]],
    *,
    since_ms: int,
    window_ms: int = DEFAULT_WINDOW_MS,
    min_sample: int = DEFAULT_MIN_SAMPLE,
    judge_on_mismatch: bool = False,
) -> Assessment:
    """SRM on the current definition's exposures; when it passes, every guardrail.

    With a mismatch the metrics are not judged (their verdicts would be suspect) unless
    ``judge_on_mismatch`` asks for them anyway, to show them; the outcome stays SRM."""
    split = default_split(definition)
    units = default_rule_units(exposures, flag, change_number, split.label)
    srm = sample_ratio_mismatch(units, split.weights) if split.weights else None
    mismatch = srm is not None and srm.mismatch
    if mismatch and not judge_on_mismatch:
        return Assessment(
            flag,
            change_number,
            since_ms,
            split,
            units,
            srm,
            (),
            Outcome.SRM,
            _srm_message(split, units, srm),
        )
    judged = []
    for rule, metric in rules:
        arms = arms_for(exposures, flag, metric, since_ms=since_ms, window_ms=window_ms)
        verdict = evaluate_guardrail(
            rule_for(rule, metric, min_sample),
            family(split, arms, rule.baseline),
            baseline=rule.baseline,
        )
        judged.append(Judged(rule, metric, verdict))
    outcome, message = _worst(judged)
    if mismatch:
        outcome, message = Outcome.SRM, _srm_message(split, units, srm)
    return Assessment(
        flag, change_number, since_ms, split, units, srm, tuple(judged), outcome, message
    )


def _srm_message(split: Split, units: Mapping[str, int], srm: SrmResult | None) -> str:
    shown = ", ".join(f"{name} {count}" for name, count in units.items())
    expected = ", ".join(f"{name} {weight} %" for name, weight in split.weights.items())
    p_value = 0.0 if srm is None else srm.p_value
    return f"sample ratio mismatch: p = {p_value:.2g} (keys {shown}; expected {expected})"


def _worst(judged: Sequence[Judged]) -> tuple[Outcome | None, str]:
    for outcome in _WORST_FIRST:
        found = [j.verdict.message for j in judged if j.verdict.outcome is outcome]
        if found:
            return outcome, "; ".join(found)
    return None, "no guardrail"


def comparison_json(judged: Judged) -> dict[str, Any]:
    verdict = judged.verdict
    return {
        "metric": verdict.metric,
        "outcome": verdict.outcome.value,
        "message": verdict.message,
        "comparisons": [
            {
                "treatment": c.treatment,
                "outcome": c.outcome.value,
                "units": c.units,
                "baseline_units": c.baseline_units,
                "delta": c.delta,
                "ci": None if c.ci is None else list(c.ci),
                "p_value": c.p_value,
            }
            for c in verdict.comparisons
        ],
    }
