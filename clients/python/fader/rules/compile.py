"""Compile a validated snapshot document into evaluable flags.

Everything that can be decided before a request is decided here: inactive flags are
dropped, matchers become closures, a condition's partitions become a 100-byte table
from bucket to one of its prebuilt ``Decision`` objects, and each flag gets one ``run``
closure specialised for its shape (killed, one condition, traffic allocation,
prerequisites).
The input must already have passed ``fader.snapshot.validate``.
"""

from __future__ import annotations

import functools
import hashlib
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import msgpack

from fader.rules.hashing import is_murmur, legacy_index, murmur32
from fader.rules.matchers import MatcherContext, RuleBasedMember, TreatmentOf, compile_matcher
from fader.rules.model import (
    Attributes,
    CompiledFlag,
    CompiledRuleBasedSegment,
    EvalFn,
    MatchFn,
    Members,
    text,
)
from fader.rules.result import (
    CONTROL,
    LABEL_DEFAULT_RULE,
    LABEL_EXCEPTION,
    LABEL_KILLED,
    LABEL_NOT_IN_SPLIT,
    LABEL_PREREQUISITES_NOT_MET,
    Decision,
)

ACTIVE = "ACTIVE"


@dataclass(frozen=True, slots=True)
class CompiledRules:
    """The evaluable content of one snapshot."""

    flags: Mapping[str, CompiledFlag]
    rule_based_segments: Mapping[str, CompiledRuleBasedSegment]
    segments: Mapping[str, Members]


class FlagTable(dict[str, CompiledFlag]):
    """The flags of one snapshot. Closures that look flags up (dependencies, prerequisites)
    hold it through a weak reference, so compiled rules contain no reference cycle and
    reference counting alone frees a retired snapshot: snapshots are frozen out of the
    cyclic collector (``fader.snapshot.loader.collector_paused``). It keeps the
    rule-based segments alive for the closures that refer to them the same way."""

    __slots__ = ("__weakref__", "rule_based")

    rule_based: RuleBasedTable


class RuleBasedTable(dict[str, CompiledRuleBasedSegment]):
    """The rule-based segments of one snapshot, weakly referenced like FlagTable."""

    __slots__ = ("__weakref__",)


class _Shared:
    """Equal parts of different flags, built once per snapshot and shared.

    Flags repeat themselves: the same attribute matchers (``plan`` in ``["pro"]``), the
    same segment, the same flag sets, treatments and labels. Each distinct matcher is
    compiled once (keyed by its encoded JSON; matchers only refer to this snapshot's
    segments, flags and rule-based segments, so equal JSON means equal behaviour), and
    equal conjunctions and tuples are one object: a 10,000-flag snapshot then holds far
    fewer closures and frozensets (issue 18: the in-process client's memory).
    """

    __slots__ = ("conjunctions", "ctx", "matchers", "pack", "values")

    def __init__(self, ctx: MatcherContext) -> None:
        self.ctx = ctx
        # ``msgpack.packb`` makes a Packer per call; one per load is enough (and a load
        # runs on one thread)
        self.pack = msgpack.Packer(use_bin_type=True).pack
        self.matchers: dict[bytes, MatchFn] = {}
        self.conjunctions: dict[tuple[MatchFn, ...], MatchFn | None] = {}
        self.values: dict[tuple[type, Any], Any] = {}

    def matcher(self, raw: Mapping[str, Any]) -> MatchFn:
        key = self.pack(raw)
        compiled = self.matchers.get(key)
        if compiled is None:
            compiled = self.matchers[key] = compile_matcher(raw, self.ctx)
        return compiled

    def all_of(self, matchers: tuple[MatchFn, ...]) -> MatchFn | None:
        """``_all_of``, one closure for every condition with the same matchers."""
        if matchers not in self.conjunctions:
            self.conjunctions[matchers] = _all_of(matchers)
        return self.conjunctions[matchers]

    def value(self, value: _Hashable) -> _Hashable:
        """One object for equal frozensets or tuples of strings (keyed with their type,
        so that a tuple never stands in for an equal-looking frozenset)."""
        return self.values.setdefault((type(value), value), value)  # type: ignore[no-any-return]


_Hashable = TypeVar("_Hashable", frozenset[str], tuple[str, ...], tuple[MatchFn, ...])


def is_active(raw: Mapping[str, Any]) -> bool:
    """Split drops non-ACTIVE flags and RBS at ingestion (an unknown status counts as archived)."""
    return bool(raw.get("status", ACTIVE) == ACTIVE)


def compile_rules(
    flags: list[Any],
    segments: Mapping[str, Sequence[str]],
    rule_based_segments: Sequence[Mapping[str, Any]],
    default_change_number: int = 0,
    *,
    consume: bool = False,
) -> CompiledRules:
    """Compile validated flags, segments and rule-based segments.

    With ``consume``, each flag's JSON is dropped from ``flags`` as soon as it is compiled,
    so that a large snapshot never holds its whole JSON and its whole compiled form at once
    (the peak memory of a 10,000-flag load).
    """
    compiler = Compiler(segments, rule_based_segments, default_change_number)
    for index, raw in enumerate(flags):
        compiler.flag(raw)
        if consume:
            flags[index] = None
    return compiler.rules


class Compiler:
    """Compiles one snapshot: segments and rule-based segments at once, then flags one at
    a time, so that a loader can decode and compile each flag before it decodes the next.
    Flags refer to each other only at lookup time, so their order does not matter."""

    def __init__(
        self,
        segments: Mapping[str, Sequence[str]],
        rule_based_segments: Sequence[Mapping[str, Any]],
        default_change_number: int = 0,
    ) -> None:
        compiled_flags = FlagTable()
        compiled_rbs = RuleBasedTable()
        compiled_flags.rule_based = compiled_rbs
        segment_sets: dict[str, Members] = {
            name: dict.fromkeys(keys) for name, keys in segments.items()
        }
        ctx = MatcherContext(
            segment_sets,
            _treatment_of(compiled_flags),
            _rule_based_member(compiled_rbs, segment_sets),
        )
        self._shared = _Shared(ctx)
        self._default_change_number = default_change_number
        for raw in rule_based_segments:
            if is_active(raw):
                compiled_rbs[raw["name"]] = _compile_rule_based_segment(raw, self._shared)
        self.rules = CompiledRules(compiled_flags, compiled_rbs, segment_sets)
        self._flags = compiled_flags

    def flag(self, raw: Mapping[str, Any]) -> None:
        """Compiles one validated flag into ``rules`` (an inactive one is left out)."""
        if is_active(raw):
            self._flags[raw["name"]] = _compile_flag(
                raw, self._shared, self._flags, self._default_change_number
            )


def _treatment_of(flags: FlagTable) -> TreatmentOf:
    """IN_SPLIT_TREATMENT and prerequisites: evaluate another flag of the same snapshot.

    ``flags`` is filled after the closures are built; the lookup happens at request time,
    while the evaluation in progress holds the table.
    """
    table_ref = weakref.ref(flags)

    def treatment_of(name: str, key: str, bk: str, attrs: Attributes | None) -> str:
        table = table_ref()
        flag = None if table is None else table.get(name)
        return CONTROL if flag is None else flag.run(key, bk, attrs).treatment

    return treatment_of


_EMPTY: Members = {}


def _excluded_by(
    rbs: Mapping[str, CompiledRuleBasedSegment],
    segments: Mapping[str, Members],
    excluded: Sequence[tuple[bool, str]],
    key: str,
    bk: str,
    attrs: Attributes | None,
) -> bool:
    """RuleBasedSegmentMatcher._match_dep_rb_segments, quirk included: a key listed in a
    nested segment's excluded keys ends the walk with "not excluded".

    Module-level on purpose: a recursive closure is a reference cycle (see FlagTable).
    """
    for is_rule_based, name in excluded:
        if not is_rule_based:
            if key in segments.get(name, _EMPTY):
                return True
            continue
        nested = rbs[name]
        if key in nested.excluded_keys:
            return False
        if _excluded_by(rbs, segments, nested.excluded_segments, key, bk, attrs) or any(
            condition(key, bk, attrs) for condition in nested.conditions
        ):
            return True
    return False


def _rule_based_member(rbs: RuleBasedTable, segments: Mapping[str, Members]) -> RuleBasedMember:
    """IN_RULE_BASED_SEGMENT with the Python SDK's exclusion walk."""
    table_ref = weakref.ref(rbs)

    def member(name: str, key: str, bk: str, attrs: Attributes | None) -> bool:
        rbs = table_ref()
        if rbs is None:  # only if the snapshot died mid-evaluation, which the caller prevents
            raise LookupError("rule-based segments released")
        segment = rbs[name]
        if key in segment.excluded_keys:
            return False
        if _excluded_by(rbs, segments, segment.excluded_segments, key, bk, attrs):
            return False
        return any(condition(key, bk, attrs) for condition in segment.conditions)

    return member


def _compile_rule_based_segment(
    raw: Mapping[str, Any], shared: _Shared
) -> CompiledRuleBasedSegment:
    excluded = raw.get("excluded") or {}
    excluded_segments = tuple(
        (item.get("type") == "rule-based", item["name"]) for item in excluded.get("segments") or ()
    )
    return CompiledRuleBasedSegment(
        name=raw["name"],
        excluded_keys=frozenset(excluded.get("keys") or ()),
        excluded_segments=excluded_segments,
        conditions=tuple(_compile_match(c, shared) for c in raw.get("conditions") or ()),
    )


def _matchers(raw_condition: Mapping[str, Any], shared: _Shared) -> tuple[MatchFn, ...]:
    """A condition's matchers; plain ALL_KEYS ones are left out (they always match)."""
    matchers = []
    for raw in raw_condition["matcherGroup"]["matchers"]:
        if not (raw["matcherType"] == "ALL_KEYS" and not raw.get("negate")):
            matchers.append(shared.matcher(raw))
    return shared.value(tuple(matchers))


def _compile_match(raw_condition: Mapping[str, Any], shared: _Shared) -> MatchFn:
    """AND of a condition's matchers as one callable (rule-based segment conditions)."""
    return shared.all_of(_matchers(raw_condition, shared)) or _always


def _always(key: str, bk: str, attrs: Attributes | None) -> bool:
    return True


def _all_of(matchers: tuple[MatchFn, ...]) -> MatchFn | None:
    """AND of ``matchers`` unrolled for the common small sizes; None when there are none."""
    if not matchers:
        return None
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

    def all_of(key: str, bk: str, attrs: Attributes | None) -> bool:
        for matcher in matchers:  # noqa: SIM110 - a plain loop beats all(<genexpr>) here
            if not matcher(key, bk, attrs):
                return False
        return True

    return all_of


class _Results:
    """Prebuilt results of one flag; ``control`` never carries a config (SDK fallback path).
    Callers pass interned treatments and labels (``text``); configurations are interned
    here."""

    def __init__(self, configs: Mapping[str, str] | None, change_number: int) -> None:
        self._configs = {name: text(config) for name, config in (configs or {}).items()}
        self._change_number = change_number

    def make(self, treatment: str, label: str | None) -> Decision:
        config = None if treatment == CONTROL else self._configs.get(treatment)
        return Decision(treatment, label, config, self._change_number)


class _Condition(NamedTuple):
    rollout: bool
    matchers: tuple[MatchFn, ...]  # empty: every key matches
    # None when one treatment covers every bucket; else ``results[table[bucket - 1]]``.
    # 100 bytes of indexes instead of 100 pointers: 7x less memory on 10,000 flags.
    table: bytes | None
    results: tuple[Decision, ...]
    fixed: Decision


def _compile_condition(raw: Mapping[str, Any], shared: _Shared, results: _Results) -> _Condition:
    label = text(raw.get("label"))
    partitions = raw.get("partitions") or []
    rollout = raw.get("conditionType", "WHITELIST") == "ROLLOUT"
    match = _matchers(raw, shared)
    if not partitions:
        return _Condition(rollout, match, None, (), results.make(CONTROL, label))
    if len(partitions) == 1 and partitions[0]["size"] == 100:
        fixed = results.make(text(partitions[0]["treatment"]), label)
        return _Condition(rollout, match, None, (), fixed)
    index_of: dict[str, int] = {}
    layout = tuple(
        (index_of.setdefault(text(p["treatment"]), len(index_of)), p["size"]) for p in partitions
    )
    if sum(size for _, size in layout) < 100:  # Split answers control for the rest
        layout += ((index_of.setdefault(CONTROL, len(index_of)), 100),)
    table = _table(layout)
    answers = tuple(results.make(treatment, label) for treatment in index_of)
    if table.count(table[0]) == 100:
        return _Condition(rollout, match, None, (), answers[table[0]])
    return _Condition(rollout, match, table, answers, answers[table[0]])


@functools.lru_cache(maxsize=4096)
def _table(layout: tuple[tuple[int, int], ...]) -> bytes:
    """Bucket -> answer index for partitions given as (answer index, size) pairs.

    Cached: the same few layouts (50/50, 10/90...) recur across thousands of flags, and
    equal tables are then one shared object.
    """
    table = bytearray()
    for index, size in layout:
        table += bytes((index,)) * min(size, 100 - len(table))
    return bytes(table)


def _compile_flag(
    raw: Mapping[str, Any],
    shared: _Shared,
    flags: FlagTable,
    default_change_number: int,
) -> CompiledFlag:
    change_number = raw.get("changeNumber", default_change_number)
    results = _Results(raw.get("configurations"), change_number)
    default = text(raw["defaultTreatment"])
    conditions = tuple(_compile_condition(c, shared, results) for c in raw.get("conditions") or ())
    killed = bool(raw.get("killed", False))
    prerequisites = tuple(
        (item["n"], frozenset(item["ts"])) for item in raw.get("prerequisites") or ()
    )
    traffic_allocation = raw.get("trafficAllocation")
    allocation = 100 if traffic_allocation is None else traffic_allocation
    run = _build_run(
        killed_result=results.make(default, LABEL_KILLED) if killed else None,
        prerequisites=prerequisites,
        results=results,
        check_prerequisites=bool(prerequisites) and default != CONTROL,
        flags=flags,
        conditions=conditions,
        shared=shared,
        traffic_allocation=allocation,
        traffic_seed=raw.get("trafficAllocationSeed") or 0,
        seed=raw["seed"],
        murmur=is_murmur(raw.get("algo")),
        default=default,
    )
    treatments = {default}
    for condition in raw.get("conditions") or ():
        treatments.update(p["treatment"] for p in condition.get("partitions") or ())
    return CompiledFlag(
        name=raw["name"],
        change_number=change_number,
        default_treatment=default,
        treatments=shared.value(tuple(sorted(map(text, treatments)))),
        sets=shared.value(frozenset(map(text, raw.get("sets") or ()))),
        impressions_disabled=bool(raw.get("impressionsDisabled", False)),
        traffic_type=text(raw.get("trafficTypeName")),
        killed=killed,
        has_targeting=_has_targeting(raw, conditions),
        run=run,
        exception_result=Decision(CONTROL, LABEL_EXCEPTION, None, change_number),
        digest=definition_digest(raw, shared.pack),
        segment_names=shared.value(frozenset(map(text, _segments_named(raw)))),
    )


_PACKB: Callable[[Any], bytes] = functools.partial(msgpack.packb, use_bin_type=True)


def definition_digest(raw: Mapping[str, Any], pack: Callable[[Any], bytes] = _PACKB) -> bytes:
    """A short hash of a flag's JSON definition (``pack``: a load's own Packer)."""
    return hashlib.blake2b(pack(raw), digest_size=16).digest()


def _segments_named(raw: Mapping[str, Any]) -> Iterator[str]:
    """Segments a flag's own matchers test (IN_SEGMENT, IN_LARGE_SEGMENT)."""
    for condition in raw.get("conditions") or ():
        for matcher in condition["matcherGroup"]["matchers"]:
            data = matcher.get("userDefinedSegmentMatcherData")
            if matcher["matcherType"] == "IN_SEGMENT" and data:
                yield data["segmentName"]
            large = matcher.get("userDefinedLargeSegmentMatcherData")
            if matcher["matcherType"] == "IN_LARGE_SEGMENT" and large:
                yield large["largeSegmentName"]


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
    everyone = not conditions[0].matchers
    allocation = raw.get("trafficAllocation")
    cut = conditions[0].rollout and allocation is not None and allocation < 100
    return not (everyone and conditions[0].table is None and not cut)


def _build_run(
    *,
    killed_result: Decision | None,
    prerequisites: tuple[tuple[str, frozenset[str]], ...],
    results: _Results,
    check_prerequisites: bool,
    flags: FlagTable,
    conditions: tuple[_Condition, ...],
    shared: _Shared,
    traffic_allocation: int,
    traffic_seed: int,
    seed: int,
    murmur: bool,
    default: str,
) -> EvalFn:
    """Split's evaluation algorithm for one flag (splitio/engine/evaluator.py).

    Killed wins first; then prerequisites (which the SDK skips when the default treatment
    is ``control``); then the conditions in order, with traffic allocation checked once,
    just before the first ROLLOUT condition; then the default treatment. Only the results
    a flag can answer are built (10,000 flags: 20,000 fewer ``Decision``s).
    """
    if killed_result is not None:
        return lambda key, bk, attrs: killed_result
    default_result = results.make(default, LABEL_DEFAULT_RULE)
    hashing = _Hashing(murmur, seed, traffic_seed)
    single = len(conditions) == 1 and not (traffic_allocation < 100 and conditions[0].rollout)
    if single and conditions[0].table is None:
        run = _fixed_answer(conditions[0], default_result, shared)
    elif single:
        run = _rollout(conditions[0], hashing, default_result, shared)
    else:
        # traffic allocation is only checked below 100: no "not in split" answer otherwise
        not_in_split = (
            results.make(default, LABEL_NOT_IN_SPLIT)
            if traffic_allocation < 100
            else default_result
        )
        run = _conditions(
            conditions, hashing, traffic_allocation, not_in_split, default_result, shared
        )
    if not check_prerequisites:
        return run
    prerequisites_result = results.make(default, LABEL_PREREQUISITES_NOT_MET)

    table_ref = weakref.ref(flags)

    def run_after_prerequisites(key: str, bk: str, attrs: Attributes | None) -> Decision:
        table = table_ref()
        for name, allowed in prerequisites:
            flag = None if table is None else table.get(name)
            treatment = CONTROL if flag is None else flag.run(key, bk, attrs).treatment
            if treatment not in allowed:
                return prerequisites_result
        return run(key, bk, attrs)

    return run_after_prerequisites


@dataclass(frozen=True, slots=True)
class _Hashing:
    """How a flag buckets: ``index = bucket - 1`` in 0..99.

    Murmur (``algo: 2``, what Split emits today) is computed inline in the closures below
    as ``murmur32(bk.encode(), seed & 0xFFFFFFFF) % 100``: two C calls, no Python frame.
    """

    murmur: bool
    seed: int
    traffic_seed: int

    @property
    def seed_u32(self) -> int:
        return self.seed & 0xFFFFFFFF

    @property
    def traffic_seed_u32(self) -> int:
        return self.traffic_seed & 0xFFFFFFFF


def _fixed_answer(condition: _Condition, default_result: Decision, shared: _Shared) -> EvalFn:
    """One condition answering one treatment: the matchers decide, nothing is hashed.

    Unrolled for up to three matchers, the most common shape of a targeted flag.
    """
    fixed, matchers = condition.fixed, condition.matchers
    if not matchers:
        return lambda key, bk, attrs: fixed
    if len(matchers) == 1:
        (one,) = matchers

        def one_matcher(key: str, bk: str, attrs: Attributes | None) -> Decision:
            return fixed if one(key, bk, attrs) else default_result

        return one_matcher
    if len(matchers) == 2:
        one, two = matchers

        def two_matchers(key: str, bk: str, attrs: Attributes | None) -> Decision:
            return fixed if one(key, bk, attrs) and two(key, bk, attrs) else default_result

        return two_matchers
    if len(matchers) == 3:
        one, two, three = matchers

        def three_matchers(key: str, bk: str, attrs: Attributes | None) -> Decision:
            if one(key, bk, attrs) and two(key, bk, attrs) and three(key, bk, attrs):
                return fixed
            return default_result

        return three_matchers
    match = shared.all_of(matchers)
    assert match is not None

    def many_matchers(key: str, bk: str, attrs: Attributes | None) -> Decision:
        return fixed if match(key, bk, attrs) else default_result

    return many_matchers


def _rollout(
    condition: _Condition, hashing: _Hashing, default_result: Decision, shared: _Shared
) -> EvalFn:
    """One condition split between treatments by bucket, no traffic-allocation cut."""
    match = shared.all_of(condition.matchers)
    table, answers = condition.table, condition.results
    assert table is not None
    murmur, seed, seed_u32 = hashing.murmur, hashing.seed, hashing.seed_u32

    def rollout(key: str, bk: str, attrs: Attributes | None) -> Decision:
        if match is None or match(key, bk, attrs):
            index = murmur32(bk.encode(), seed_u32) % 100 if murmur else legacy_index(bk, seed)
            return answers[table[index]]
        return default_result

    return rollout


def _conditions(
    conditions: tuple[_Condition, ...],
    hashing: _Hashing,
    traffic_allocation: int,
    not_in_split: Decision,
    default_result: Decision,
    shared: _Shared,
) -> EvalFn:
    """The general shape: conditions in order, traffic allocation before the first ROLLOUT."""
    steps = tuple(
        (c.rollout, shared.all_of(c.matchers), c.table, c.results, c.fixed) for c in conditions
    )
    check_traffic = traffic_allocation < 100
    murmur, seed, seed_u32 = hashing.murmur, hashing.seed, hashing.seed_u32
    traffic_seed, traffic_seed_u32 = hashing.traffic_seed, hashing.traffic_seed_u32

    def run(key: str, bk: str, attrs: Attributes | None) -> Decision:
        pending_traffic = check_traffic
        for rollout, match, table, answers, fixed in steps:
            if rollout and pending_traffic:
                if murmur:
                    index = murmur32(bk.encode(), traffic_seed_u32) % 100
                else:
                    index = legacy_index(bk, traffic_seed)
                if index >= traffic_allocation:  # bucket (index + 1) > allocation
                    return not_in_split
                pending_traffic = False
            if match is None or match(key, bk, attrs):
                if table is None:
                    return fixed
                index = murmur32(bk.encode(), seed_u32) % 100 if murmur else legacy_index(bk, seed)
                return answers[table[index]]
        return default_result

    return run
