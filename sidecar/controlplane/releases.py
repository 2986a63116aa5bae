"""What a release did: the data behind ``/releases``, ``/releases/FLAG`` and its JSON.

A release is a flag with a rollout plan or a guardrail. Its report is computed on request
from the same parts the guardrail loop uses (``assessment.assess``), so the page and the JSON
show what the loop decides on. The JSON contract (``report``; Argo Rollouts and scripts read
it, so its keys do not change)::

    {"flag", "state": "running|paused|killed|complete", "dial", "decisions": [...],
     "metrics": [{"metric", "treatment", "baseline", "units", "mean", "baseline_mean",
                  "delta", "ci": [lo, hi], "p_value", "verdict"}]}

``state``: ``killed`` when the flag is killed; else its plan's: ``running``, ``paused`` (also
an aborted plan, or one killed and since revived: nothing moves it forward), ``complete``; a
guarded flag without a plan is ``running``. ``dial``: the percent of keys the release's
treatment is served to now (0 while killed). ``metrics``: one entry per guardrail metric and
treatment against the baseline; ``ci`` and the estimates are null until both arms have two
units; ``verdict`` is breach, healthy, hold, or srm while the sample ratio is off.

The series (``timeline``) add the page's charts: the dial over time (from the store's
versions), units per treatment over time, and each metric's difference with its
confidence sequence over time (the same rule as the loop, applied at the end of every bucket).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from sidecar.controlplane import dimmer
from sidecar.controlplane.assessment import (
    Assessment,
    analysis_start_ms,
    assess,
    default_split,
    family,
    rule_for,
)
from sidecar.controlplane.decisions import Decision, DecisionLog
from sidecar.controlplane.definitions import Definitions, GuardrailDef, MetricDef
from sidecar.controlplane.edits import UnknownFlag
from sidecar.controlplane.exposures import DEFAULT_WINDOW_MS, ExposureStore, Metric
from sidecar.controlplane.exposures import MetricKind as StoreKind
from sidecar.controlplane.flagset import FLAG
from sidecar.controlplane.rollout import COMPLETED, KILLED, PAUSED, RUNNING, Plan, RolloutEngine
from sidecar.controlplane.statistics import (
    DEFAULT_MIN_SAMPLE,
    ArmStats,
    Outcome,
    evaluate_guardrail,
)
from sidecar.controlplane.store import FlagStore

RUNNING_STATE: Final = "running"
PAUSED_STATE: Final = "paused"
KILLED_STATE: Final = "killed"
COMPLETE_STATE: Final = "complete"
MAX_POINTS: Final = 120  # buckets per chart: enough to see a trend, few enough to draw
MIN_BUCKET_MS: Final = 1000
MAX_BUCKETS: Final = 9000  # under the exposure store's limit, which counts the window too


@dataclass(frozen=True)
class DialPoint:
    time: float
    percent: int
    killed: bool
    version: int


@dataclass(frozen=True)
class BandPoint:
    """A treatment's difference against the baseline as of ``time``, with its sequence."""

    time: float
    delta: float
    lower: float
    upper: float


@dataclass(frozen=True)
class MetricTimeline:
    rule: GuardrailDef
    metric: MetricDef
    bands: Mapping[str, list[BandPoint]]  # treatment -> points


@dataclass(frozen=True)
class Timeline:
    """The page's series; times in unix seconds."""

    start: float
    end: float
    bucket_seconds: float
    dial: list[DialPoint]
    units: Mapping[str, list[tuple[float, int]]]  # treatment -> (time, cumulative units)
    metrics: list[MetricTimeline] = field(default_factory=list)


class Releases:
    """Reads releases: summaries, reports (the JSON contract) and their series."""

    def __init__(
        self,
        store: FlagStore,
        rollouts: RolloutEngine,
        definitions: Definitions,
        decisions: DecisionLog,
        exposures: ExposureStore | None,
        *,
        window_ms: int = DEFAULT_WINDOW_MS,
        min_sample: int = DEFAULT_MIN_SAMPLE,
        clock: Any = time.time,
    ) -> None:
        self.store = store
        self.rollouts = rollouts
        self.definitions = definitions
        self.decisions = decisions
        self.exposures = exposures
        self.window_ms = window_ms
        self.min_sample = min_sample
        self.clock = clock

    def flags(self) -> list[str]:
        """Every flag with a plan or a guardrail that still exists."""
        names = set(self.rollouts.plans()) | set(self.definitions.guarded_flags())
        return sorted(name for name in names if name in self.store.state.flags.flags)

    # --- one flag ---------------------------------------------------------------------------

    def _context(self, flag: str) -> tuple[dict[str, Any], Plan | None, list[GuardrailDef]]:
        definition = self.store.state.flags.flags.get(flag)
        rules = self.definitions.guardrails(flag)
        plan = self.rollouts.plans().get(flag)
        if definition is None or (plan is None and not rules):
            raise UnknownFlag(flag, f"{flag!r} is not a release (no flag with a plan or guardrail)")
        return definition, plan, rules

    def assessment(self, flag: str) -> Assessment | None:
        definition, plan, rules = self._context(flag)
        return self._assess(flag, definition, plan, rules)

    def _assess(
        self,
        flag: str,
        definition: Mapping[str, Any],
        plan: Plan | None,
        rules: list[GuardrailDef],
    ) -> Assessment | None:
        if self.exposures is None or not rules:
            return None
        metrics = {m.name: m for m in self.definitions.metrics()}
        state = self.store.state
        return assess(
            self.exposures,
            flag,
            definition,
            state.changed.get((FLAG, flag), state.version),
            [(rule, metrics[rule.metric]) for rule in rules if rule.metric in metrics],
            since_ms=analysis_start_ms(plan, rules),
            window_ms=self.window_ms,
            min_sample=self.min_sample,
            judge_on_mismatch=True,
        )

    def report(self, flag: str) -> dict[str, Any]:
        """The JSON contract (module docstring)."""
        definition, plan, rules = self._context(flag)
        found = self._assess(flag, definition, plan, rules)
        return {
            "flag": flag,
            "state": state_of(definition, plan),
            "dial": dial_of(definition, plan),
            "decisions": [d.to_json() for d in self.decisions.for_flag(flag)],
            "metrics": metric_rows(found),
        }

    def summary(self, flag: str) -> dict[str, Any]:
        """One line of ``/releases``: state, dial, exposures, the worst metric."""
        definition, plan, rules = self._context(flag)
        found = self._assess(flag, definition, plan, rules)
        units = None
        if self.exposures is not None:
            counts = self.exposures.exposure_counts(flag, start_ms=analysis_start_ms(plan, rules))
            units = sum(c.units for c in counts.values())
        return {
            "flag": flag,
            "state": state_of(definition, plan),
            "dial": dial_of(definition, plan),
            "plan": None if plan is None else f"{plan.status} step {plan.step_label}",
            "units": units,
            "outcome": None if found is None or found.outcome is None else found.outcome.value,
            "worst": None if found is None else found.message,
        }

    def decisions_of(self, flag: str) -> list[Decision]:
        return self.decisions.for_flag(flag)

    def timeline(self, flag: str) -> Timeline:
        definition, plan, rules = self._context(flag)
        since_ms = analysis_start_ms(plan, rules)
        now = self.clock()
        start = since_ms / 1000 if since_ms else (plan.started_at if plan else now)
        bucket_ms = bucket_for(int((now - start) * 1000), self.window_ms)
        dial = self.dial_history(flag, treatment_of(definition, plan))
        units: dict[str, list[tuple[float, int]]] = {}
        metrics: list[MetricTimeline] = []
        if self.exposures is not None:
            for point in self.exposures.exposure_series(
                flag, bucket_ms=bucket_ms, start_ms=since_ms
            ):
                at = (point.start_ms + bucket_ms) / 1000
                units.setdefault(point.treatment, []).append((at, point.cumulative_units))
            catalogue = {m.name: m for m in self.definitions.metrics()}
            for rule in rules:
                if rule.metric in catalogue:
                    metrics.append(
                        self._bands(
                            flag, definition, rule, catalogue[rule.metric], since_ms, bucket_ms
                        )
                    )
        return Timeline(start, now, bucket_ms / 1000, dial, units, metrics)

    def _bands(
        self,
        flag: str,
        definition: Mapping[str, Any],
        rule: GuardrailDef,
        metric: MetricDef,
        since_ms: int,
        bucket_ms: int,
    ) -> MetricTimeline:
        assert self.exposures is not None
        points = self.exposures.metric_series(
            flag,
            Metric(metric.event_type, StoreKind(metric.kind.value)),
            bucket_ms=bucket_ms,
            window_ms=self.window_ms,
            start_ms=since_ms,
            end_ms=int(self.clock() * 1000) + bucket_ms,
        )
        by_end: dict[int, dict[str, ArmStats]] = {}
        for p in points:
            arm = ArmStats(p.n, p.total, p.total_squares) if p.n else ArmStats(0, 0.0, 0.0)
            by_end.setdefault(p.end_ms, {})[p.treatment] = arm
        split = default_split(definition)
        guard = rule_for(rule, metric, self.min_sample)
        bands: dict[str, list[BandPoint]] = {}
        for end_ms in sorted(by_end):
            verdict = evaluate_guardrail(
                guard, family(split, by_end[end_ms], rule.baseline), baseline=rule.baseline
            )
            for c in verdict.comparisons:
                if c.delta is not None and c.ci is not None:
                    bands.setdefault(c.treatment, []).append(
                        BandPoint(end_ms / 1000, c.delta, c.ci[0], c.ci[1])
                    )
        return MetricTimeline(rule, metric, bands)

    def dial_history(self, flag: str, treatment: str | None) -> list[DialPoint]:
        """The treatment's share at every version that changed the flag (0 while killed)."""
        with self.store.db.transaction() as tx:
            rows = tx.query(
                "SELECT v.version, v.created_at, i.body FROM fader_items i"
                " JOIN fader_versions v ON v.version = i.version"
                " WHERE i.kind = ? AND i.name = ? ORDER BY v.version",
                (FLAG, flag),
            )
        history = []
        for version, created_at, body in rows:
            if body is None:
                continue
            definition = json.loads(body)
            killed = bool(definition.get("killed"))
            percent = 0 if killed else share_of(definition, treatment)
            history.append(DialPoint(float(created_at), percent, killed, int(version)))
        return history


def treatment_of(definition: Mapping[str, Any], plan: Plan | None) -> str | None:
    """The release's treatment: the plan's, else the one the dimmer moves."""
    if plan is not None:
        return plan.treatment
    current = dimmer.current_dial(definition)
    return None if current is None else current.treatment


def share_of(definition: Mapping[str, Any], treatment: str | None) -> int:
    if treatment is None:
        return 0
    return int(default_split(definition).weights.get(treatment, 0))


def dial_of(definition: Mapping[str, Any], plan: Plan | None) -> int:
    if definition.get("killed"):
        return 0
    return share_of(definition, treatment_of(definition, plan))


def state_of(definition: Mapping[str, Any], plan: Plan | None) -> str:
    if definition.get("killed"):
        return KILLED_STATE
    if plan is None or plan.status == RUNNING:
        return RUNNING_STATE
    if plan.status == COMPLETED:
        return COMPLETE_STATE
    if plan.status in (PAUSED, KILLED):
        return PAUSED_STATE
    return PAUSED_STATE  # aborted: nothing moves it forward


def metric_rows(found: Assessment | None) -> list[dict[str, Any]]:
    """The contract's ``metrics``: one row per guardrail metric and compared treatment."""
    if found is None:
        return []
    mismatch = found.outcome is Outcome.SRM
    rows = []
    for judged in found.judged:
        for c in judged.verdict.comparisons:
            rows.append(
                {
                    "metric": judged.metric.name,
                    "treatment": c.treatment,
                    "baseline": judged.rule.baseline,
                    "units": c.units,
                    "mean": _number(c.mean),
                    "baseline_mean": _number(c.baseline_mean),
                    "delta": _number(c.delta),
                    "ci": None if c.ci is None else [_number(c.ci[0]), _number(c.ci[1])],
                    "p_value": _number(c.p_value),
                    "verdict": Outcome.SRM.value if mismatch else c.outcome.value,
                }
            )
    return rows


def _number(value: float | None) -> float | None:
    """JSON has no infinities or NaN: those become null."""
    return value if value is not None and math.isfinite(value) else None


def bucket_for(span_ms: int, window_ms: int) -> int:
    """A bucket giving about MAX_POINTS points over the span, whole seconds, within the
    exposure store's bucket limit (which counts the attribution window as well)."""
    wanted = max(MIN_BUCKET_MS, span_ms // MAX_POINTS, -(-(span_ms + window_ms) // MAX_BUCKETS))
    return -(-wanted // 1000) * 1000
