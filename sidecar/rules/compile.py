"""Compile a validated snapshot document into evaluable flags.

Everything that can be decided before a request is decided here: inactive flags are
dropped, matchers become closures, a condition's partitions become a 100-entry table
of prebuilt ``Result`` objects indexed by bucket, and each flag gets one ``run``
closure specialised for its shape (killed, traffic allocation, prerequisites).
The input must already have passed ``sidecar.snapshot.validate``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sidecar.rules.hashing import BucketFn, bucket_fn
from sidecar.rules.matchers import MatcherContext, compile_matcher
from sidecar.rules.model import Attributes, CompiledFlag, CompiledRuleBasedSegment, EvalFn, MatchFn
from sidecar.rules.result import (
    CONTROL,
    LABEL_DEFAULT_RULE,
    LABEL_EXCEPTION,
    LABEL_KILLED,
    LABEL_NOT_IN_SPLIT,
    LABEL_PREREQUISITES_NOT_MET,
    Result,
)

ACTIVE = "ACTIVE"


@dataclass(frozen=True, slots=True)
class CompiledRules:
    """The evaluable content of one snapshot."""

    flags: Mapping[str, CompiledFlag]
    rule_based_segments: Mapping[str, CompiledRuleBasedSegment]
    segments: Mapping[str, frozenset[str]]


def is_active(raw: Mapping[str, Any]) -> bool:
    """Split drops non-ACTIVE flags and RBS at ingestion (an unknown status counts as archived)."""
    return bool(raw.get("status", ACTIVE) == ACTIVE)


def compile_rules(
    flags: Sequence[Mapping[str, Any]],
    segments: Mapping[str, Sequence[str]],
    rule_based_segments: Sequence[Mapping[str, Any]],
    default_change_number: int = 0,
) -> CompiledRules:
    """Compile validated flags, segments and rule-based segments."""
    compiled_flags: dict[str, CompiledFlag] = {}
    compiled_rbs: dict[str, CompiledRuleBasedSegment] = {}
    segment_sets = {name: frozenset(keys) for name, keys in segments.items()}
    ctx = MatcherContext(
        segment_sets,
        _treatment_of(compiled_flags),
        _rule_based_member(compiled_rbs, segment_sets),
    )
    for raw in rule_based_segments:
        if is_active(raw):
            compiled_rbs[raw["name"]] = _compile_rule_based_segment(raw, ctx)
    for raw in flags:
        if is_active(raw):
            compiled_flags[raw["name"]] = _compile_flag(
                raw, ctx, compiled_flags, default_change_number
            )
    return CompiledRules(compiled_flags, compiled_rbs, segment_sets)


def _treatment_of(flags: Mapping[str, CompiledFlag]) -> Any:
    """IN_SPLIT_TREATMENT and prerequisites: evaluate another flag of the same snapshot.

    ``flags`` is filled after the closures are built; the lookup happens at request time.
    """

    def treatment_of(name: str, key: str, bk: str, attrs: Attributes | None) -> str:
        flag = flags.get(name)
        return CONTROL if flag is None else flag.run(key, bk, attrs).treatment

    return treatment_of


def _rule_based_member(
    rbs: Mapping[str, CompiledRuleBasedSegment], segments: Mapping[str, frozenset[str]]
) -> Any:
    """IN_RULE_BASED_SEGMENT with the Python SDK's exclusion walk, quirks included."""
    empty: frozenset[str] = frozenset()

    def excluded_by(excluded: Sequence[tuple[bool, str]], key: str, bk: str, attrs: Any) -> bool:
        # Mirrors RuleBasedSegmentMatcher._match_dep_rb_segments: a key listed in a nested
        # segment's excluded keys ends the walk with "not excluded".
        for is_rule_based, name in excluded:
            if not is_rule_based:
                if key in segments.get(name, empty):
                    return True
                continue
            nested = rbs[name]
            if key in nested.excluded_keys:
                return False
            if excluded_by(nested.excluded_segments, key, bk, attrs) or any(
                condition(key, bk, attrs) for condition in nested.conditions
            ):
                return True
        return False

    def member(name: str, key: str, bk: str, attrs: Attributes | None) -> bool:
        segment = rbs[name]
        if key in segment.excluded_keys:
            return False
        if excluded_by(segment.excluded_segments, key, bk, attrs):
            return False
        return any(condition(key, bk, attrs) for condition in segment.conditions)

    return member


def _compile_rule_based_segment(
    raw: Mapping[str, Any], ctx: MatcherContext
) -> CompiledRuleBasedSegment:
    excluded = raw.get("excluded") or {}
    excluded_segments = tuple(
        (item.get("type") == "rule-based", item["name"]) for item in excluded.get("segments") or ()
    )
    return CompiledRuleBasedSegment(
        name=raw["name"],
        excluded_keys=frozenset(excluded.get("keys") or ()),
        excluded_segments=excluded_segments,
        conditions=tuple(_compile_match(c, ctx) for c in raw.get("conditions") or ()),
    )


def _compile_match(raw_condition: Mapping[str, Any], ctx: MatcherContext) -> MatchFn:
    """AND of a condition's matchers, unrolled for the common small sizes."""
    matchers = [compile_matcher(m, ctx) for m in raw_condition["matcherGroup"]["matchers"]]
    if len(matchers) == 1:
        return matchers[0]
    if len(matchers) == 2:
        first, second = matchers

        def both(key: str, bk: str, attrs: Attributes | None) -> bool:
            return first(key, bk, attrs) and second(key, bk, attrs)

        return both
    if len(matchers) == 3:
        one, two, three = matchers

        def three_of(key: str, bk: str, attrs: Attributes | None) -> bool:
            return one(key, bk, attrs) and two(key, bk, attrs) and three(key, bk, attrs)

        return three_of
    group = tuple(matchers)

    def all_of(key: str, bk: str, attrs: Attributes | None) -> bool:
        for matcher in group:  # noqa: SIM110 - a plain loop beats all(<genexpr>) here
            if not matcher(key, bk, attrs):
                return False
        return True

    return all_of


class _Results:
    """Prebuilt results of one flag; ``control`` never carries a config (SDK fallback path)."""

    def __init__(self, configs: Mapping[str, str] | None, change_number: int) -> None:
        self._configs = configs or {}
        self._change_number = change_number

    def make(self, treatment: str, label: str | None) -> Result:
        config = None if treatment == CONTROL else self._configs.get(treatment)
        return Result(treatment, label, config, self._change_number)


@dataclass(frozen=True, slots=True)
class _Condition:
    rollout: bool
    match: MatchFn
    # None when one treatment covers every bucket; else results indexed by bucket - 1.
    table: tuple[Result, ...] | None
    fixed: Result


def _compile_condition(
    raw: Mapping[str, Any], ctx: MatcherContext, results: _Results
) -> _Condition:
    label = raw.get("label")
    partitions = raw.get("partitions") or []
    rollout = raw.get("conditionType", "WHITELIST") == "ROLLOUT"
    match = _compile_match(raw, ctx)
    if not partitions:
        fixed = results.make(CONTROL, label)
        return _Condition(rollout, match, None, fixed)
    if len(partitions) == 1 and partitions[0]["size"] == 100:
        return _Condition(rollout, match, None, results.make(partitions[0]["treatment"], label))
    by_treatment: dict[str, Result] = {}
    table: list[Result] = []
    covered = 0
    for partition in partitions:
        covered += partition["size"]
        treatment = partition["treatment"]
        result = by_treatment.setdefault(treatment, results.make(treatment, label))
        while len(table) < min(covered, 100):
            table.append(result)
    control = results.make(CONTROL, label)
    table.extend([control] * (100 - len(table)))
    distinct = set(table)
    if len(distinct) == 1:
        return _Condition(rollout, match, None, table[0])
    return _Condition(rollout, match, tuple(table), table[0])


def _compile_flag(
    raw: Mapping[str, Any],
    ctx: MatcherContext,
    flags: Mapping[str, CompiledFlag],
    default_change_number: int,
) -> CompiledFlag:
    change_number = raw.get("changeNumber", default_change_number)
    results = _Results(raw.get("configurations"), change_number)
    default = raw["defaultTreatment"]
    conditions = tuple(_compile_condition(c, ctx, results) for c in raw.get("conditions") or ())
    killed = bool(raw.get("killed", False))
    prerequisites = tuple(
        (item["n"], frozenset(item["ts"])) for item in raw.get("prerequisites") or ()
    )
    traffic_allocation = raw.get("trafficAllocation")
    run = _build_run(
        killed_result=results.make(default, LABEL_KILLED) if killed else None,
        prerequisites=prerequisites,
        prerequisites_result=results.make(default, LABEL_PREREQUISITES_NOT_MET),
        check_prerequisites=bool(prerequisites) and default != CONTROL,
        flags=flags,
        conditions=conditions,
        traffic_allocation=100 if traffic_allocation is None else traffic_allocation,
        traffic_seed=raw.get("trafficAllocationSeed") or 0,
        seed=raw["seed"],
        bucket=bucket_fn(raw.get("algo")),
        not_in_split=results.make(default, LABEL_NOT_IN_SPLIT),
        default_result=results.make(default, LABEL_DEFAULT_RULE),
    )
    treatments = {default}
    for condition in raw.get("conditions") or ():
        treatments.update(p["treatment"] for p in condition.get("partitions") or ())
    return CompiledFlag(
        name=raw["name"],
        change_number=change_number,
        default_treatment=default,
        treatments=tuple(sorted(treatments)),
        sets=frozenset(raw.get("sets") or ()),
        impressions_disabled=bool(raw.get("impressionsDisabled", False)),
        traffic_type=raw.get("trafficTypeName"),
        killed=killed,
        has_targeting=_has_targeting(raw, conditions),
        run=run,
        exception_result=Result(CONTROL, LABEL_EXCEPTION, None, change_number),
        source=raw,
    )


def _has_targeting(raw: Mapping[str, Any], conditions: Sequence[_Condition]) -> bool:
    """False when every key gets the same answer whatever its attributes (flagd's STATIC).

    That holds with no prerequisites and either no conditions, or a first condition that
    matches every key (only non-negated ALL_KEYS) and answers one treatment for all buckets,
    reached without a traffic-allocation cut.
    """
    if raw.get("prerequisites"):
        return True
    if not conditions:
        return False
    first = raw["conditions"][0]
    matchers = first["matcherGroup"]["matchers"]
    everyone = all(m["matcherType"] == "ALL_KEYS" and not m.get("negate") for m in matchers)
    allocation = raw.get("trafficAllocation")
    cut = conditions[0].rollout and allocation is not None and allocation < 100
    return not (everyone and conditions[0].table is None and not cut)


def _build_run(
    *,
    killed_result: Result | None,
    prerequisites: tuple[tuple[str, frozenset[str]], ...],
    prerequisites_result: Result,
    check_prerequisites: bool,
    flags: Mapping[str, CompiledFlag],
    conditions: tuple[_Condition, ...],
    traffic_allocation: int,
    traffic_seed: int,
    seed: int,
    bucket: BucketFn,
    not_in_split: Result,
    default_result: Result,
) -> EvalFn:
    """Split's evaluation algorithm for one flag (splitio/engine/evaluator.py).

    Killed wins first; then prerequisites (which the SDK skips when the default treatment
    is ``control``); then the conditions in order, with traffic allocation checked once,
    just before the first ROLLOUT condition; then the default treatment.
    """
    if killed_result is not None:
        return lambda key, bk, attrs: killed_result
    check_traffic = traffic_allocation < 100
    steps: tuple[_Step, ...] = tuple((c.rollout, c.match, c.table, c.fixed) for c in conditions)

    if len(steps) == 1 and not (check_traffic and steps[0][0]):
        run = _single_condition(steps[0], seed, bucket, default_result)
    else:
        run = _conditions(
            steps,
            check_traffic,
            traffic_seed,
            traffic_allocation,
            seed,
            bucket,
            not_in_split,
            default_result,
        )
    if not check_prerequisites:
        return run

    def run_after_prerequisites(key: str, bk: str, attrs: Attributes | None) -> Result:
        for name, allowed in prerequisites:
            flag = flags.get(name)
            treatment = CONTROL if flag is None else flag.run(key, bk, attrs).treatment
            if treatment not in allowed:
                return prerequisites_result
        return run(key, bk, attrs)

    return run_after_prerequisites


_Step = tuple[bool, MatchFn, "tuple[Result, ...] | None", Result]


def _single_condition(step: _Step, seed: int, bucket: BucketFn, default_result: Result) -> EvalFn:
    """The most common shape: one condition and no traffic-allocation cut to make."""
    _, match, table, fixed = step
    if table is None:

        def fixed_answer(key: str, bk: str, attrs: Attributes | None) -> Result:
            return fixed if match(key, bk, attrs) else default_result

        return fixed_answer
    buckets = table

    def rollout(key: str, bk: str, attrs: Attributes | None) -> Result:
        return buckets[bucket(bk, seed) - 1] if match(key, bk, attrs) else default_result

    return rollout


def _conditions(
    steps: tuple[_Step, ...],
    check_traffic: bool,
    traffic_seed: int,
    traffic_allocation: int,
    seed: int,
    bucket: BucketFn,
    not_in_split: Result,
    default_result: Result,
) -> EvalFn:
    """The general shape: conditions in order, traffic allocation before the first ROLLOUT."""

    def run(key: str, bk: str, attrs: Attributes | None) -> Result:
        pending_traffic = check_traffic
        for rollout, match, table, fixed in steps:
            if rollout and pending_traffic:
                if bucket(bk, traffic_seed) > traffic_allocation:
                    return not_in_split
                pending_traffic = False
            if match(key, bk, attrs):
                return fixed if table is None else table[bucket(bk, seed) - 1]
        return default_result

    return run
