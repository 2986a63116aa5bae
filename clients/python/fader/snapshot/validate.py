"""Whole-snapshot validation: every error, each naming its flag and JSON path.

Nothing is compiled or swapped until the whole document passes, so a refused
snapshot never half-applies (flagd accepts invalid configs with a warning, flagd#1487;
Fader refuses them). Rules are stricter than Split's SDKs where an SDK would silently
change meaning (an out-of-range traffic allocation, an unknown ``algo``, partitions
not summing to 100) and exactly as permissive where Split's own feed relies on it
(missing optional fields, a segment named but not supplied, which only warns).
Decoded JSON and msgpack objects are dicts, so the checks test for ``dict``: an ABC
check on ``Mapping`` is a noticeable part of a 10,000-flag load.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeGuard

from fader.rules import semver
from fader.rules.matchers import MATCHER_TYPES, compile_regex
from fader.snapshot.issues import Issue

INT32_MIN: Final = -(2**31)
INT32_MAX: Final = 2**31 - 1
FLAG_SET_PATTERN: Final = re.compile(r"^[a-z0-9][_a-z0-9]{0,49}$")
_WHITELIST_TYPES: Final = frozenset(
    {
        "WHITELIST",
        "EQUAL_TO_SET",
        "CONTAINS_ANY_OF_SET",
        "CONTAINS_ALL_OF_SET",
        "PART_OF_SET",
        "STARTS_WITH",
        "ENDS_WITH",
        "CONTAINS_STRING",
        "IN_LIST_SEMVER",
    }
)
_UNARY_NUMERIC: Final = frozenset({"EQUAL_TO", "GREATER_THAN_OR_EQUAL_TO", "LESS_THAN_OR_EQUAL_TO"})
_SEMVER_SINGLE: Final = frozenset(
    {"EQUAL_TO_SEMVER", "GREATER_THAN_OR_EQUAL_TO_SEMVER", "LESS_THAN_OR_EQUAL_TO_SEMVER"}
)
_DATA_TYPES: Final = frozenset({"NUMBER", "DATETIME"})


@dataclass
class Report:
    """Errors refuse the snapshot; warnings are reported and the snapshot still applies."""

    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)


def is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_str_list(value: Any) -> bool:
    """A list of strings; the type set is built in C, which matters for 1M segment keys."""
    return isinstance(value, list) and (not value or set(map(type, value)) == {str})


@dataclass
class _Refs:
    """What the documents names, collected while walking, checked at the end."""

    flag_names: set[str] = field(default_factory=set)
    active_rbs: set[str] = field(default_factory=set)
    all_rbs: set[str] = field(default_factory=set)
    segments: set[str] = field(default_factory=set)
    # node -> [(target node, owner flag, path)] with nodes "flag:x" / "rbs:y"
    edges: dict[str, list[tuple[str, str | None, str]]] = field(default_factory=dict)
    missing_segments: list[tuple[str, str | None, str]] = field(default_factory=list)


# A Split flag's keys as Split's API writes them (those Fader does not use included).
FLAG_KEYS: Final = frozenset(
    {
        "name", "trafficTypeName", "trafficTypeId", "killed", "defaultTreatment",
        "changeNumber", "algo", "trafficAllocation", "trafficAllocationSeed", "seed",
        "status", "conditions", "configurations", "sets", "impressionsDisabled",
        "prerequisites", "orgId", "environment", "id", "creationTime", "lastUpdateTime",
        "owner", "description", "tags",
    }
)  # fmt: skip


class _Walker:
    """Walks one document, appending issues; ``owner`` is the flag being walked."""

    def __init__(self, report: Report, refs: _Refs) -> None:
        self.report = report
        self.refs = refs
        self.owner: str | None = None
        self.node = ""

    def error(self, path: str, message: str) -> None:
        self.report.errors.append(Issue(self.owner, path, message))

    def expect(self, ok: bool, path: str, message: str) -> bool:
        if not ok:
            self.error(path, message)
        return ok

    def link(self, target: str, path: str) -> None:
        self.refs.edges.setdefault(self.node, []).append((target, self.owner, path))

    # --- flags ---------------------------------------------------------------------

    def flag(self, raw: Any, path: str) -> None:
        self.owner = None
        if not self.expect(isinstance(raw, dict), path, "a flag must be an object"):
            return
        name = raw.get("name")
        if not self.expect(
            isinstance(name, str) and name != "", f"{path}.name", "name must be a non-empty string"
        ):
            return
        self.owner = name
        self.node = f"flag:{name}"
        self.refs.edges.setdefault(self.node, [])
        self._unknown_keys(raw, path)
        self._flag_scalars(raw, path)
        self._flag_sets(raw, path)
        self._configurations(raw.get("configurations"), f"{path}.configurations")
        self._prerequisites(raw.get("prerequisites"), f"{path}.prerequisites")
        conditions = raw.get("conditions")
        if self.expect(
            isinstance(conditions, list), f"{path}.conditions", "conditions must be a list"
        ):
            for i, condition in enumerate(conditions):
                self.condition(condition, f"{path}.conditions[{i}]", with_partitions=True)

    def _unknown_keys(self, raw: Mapping[str, Any], path: str) -> None:
        """A misspelt key (``defaultTreatmen``) would otherwise be ignored without a word
        while the flag serves something else: it is a warning naming the likely key."""
        for key in sorted(set(raw) - FLAG_KEYS, key=str):
            close = difflib.get_close_matches(str(key), FLAG_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            self.report.warnings.append(
                Issue(self.owner, f"{path}.{key}", f"unknown key, ignored{hint}")
            )

    def _flag_scalars(self, raw: Mapping[str, Any], path: str) -> None:
        default = raw.get("defaultTreatment")
        self.expect(
            isinstance(default, str) and default.strip() != "",
            f"{path}.defaultTreatment",
            "defaultTreatment must be a non-empty string",
        )
        self._int32(raw.get("seed"), f"{path}.seed", required=True)
        allocation = raw.get("trafficAllocation")
        # The seed is checked even without an allocation: compile reads it either way.
        if allocation is None or self.expect(
            is_int(allocation) and 0 <= allocation <= 100,
            f"{path}.trafficAllocation",
            f"trafficAllocation must be an integer 0..100, got {allocation!r}",
        ):
            self._int32(
                raw.get("trafficAllocationSeed"),
                f"{path}.trafficAllocationSeed",
                required=allocation is not None and allocation < 100,
            )
        algo = raw.get("algo")
        self.expect(
            algo is None or (is_int(algo) and algo in (1, 2)),
            f"{path}.algo",
            f"algo must be 1 (legacy hash) or 2 (murmur3), got {algo!r}",
        )
        for key in ("killed", "impressionsDisabled"):
            value = raw.get(key)
            self.expect(
                value is None or isinstance(value, bool),
                f"{path}.{key}",
                f"{key} must be a boolean",
            )
        status = raw.get("status")
        self.expect(
            status is None or status in ("ACTIVE", "ARCHIVED"),
            f"{path}.status",
            f"status must be ACTIVE or ARCHIVED, got {status!r}",
        )
        change = raw.get("changeNumber")
        self.expect(
            change is None or is_int(change),
            f"{path}.changeNumber",
            "changeNumber must be an integer",
        )
        traffic_type = raw.get("trafficTypeName")
        self.expect(
            traffic_type is None or isinstance(traffic_type, str),
            f"{path}.trafficTypeName",
            "trafficTypeName must be a string",
        )

    def _int32(self, value: Any, path: str, *, required: bool) -> None:
        if value is None:
            self.expect(not required, path, "required: a 32-bit signed integer")
            return
        self.expect(
            is_int(value) and INT32_MIN <= value <= INT32_MAX,
            path,
            f"must be a 32-bit signed integer, got {value!r}",
        )

    def _flag_sets(self, raw: Mapping[str, Any], path: str) -> None:
        sets = raw.get("sets")
        if sets is None:
            return
        if not self.expect(_is_str_list(sets), f"{path}.sets", "sets must be a list of strings"):
            return
        for i, name in enumerate(sets):
            self.expect(
                FLAG_SET_PATTERN.match(name) is not None,
                f"{path}.sets[{i}]",
                f"flag set name {name!r} must match {FLAG_SET_PATTERN.pattern}",
            )

    def _configurations(self, configs: Any, path: str) -> None:
        if configs is None:
            return
        if not self.expect(isinstance(configs, dict), path, "configurations must be an object"):
            return
        for treatment, config in configs.items():
            self.expect(
                isinstance(config, str),
                f"{path}.{treatment}",
                "a treatment's configuration must be a JSON string",
            )

    def _prerequisites(self, prerequisites: Any, path: str) -> None:
        if prerequisites is None:
            return
        if not self.expect(isinstance(prerequisites, list), path, "prerequisites must be a list"):
            return
        for i, item in enumerate(prerequisites):
            where = f"{path}[{i}]"
            if not self.expect(isinstance(item, dict), where, "a prerequisite must be an object"):
                continue
            name = item.get("n")
            if self.expect(isinstance(name, str), f"{where}.n", "n must be a flag name"):
                self.link(f"flag:{name}", f"{where}.n")
            self.expect(
                _is_str_list(item.get("ts")), f"{where}.ts", "ts must be a list of treatments"
            )

    # --- conditions and matchers ---------------------------------------------------

    def condition(self, raw: Any, path: str, *, with_partitions: bool) -> None:
        if not self.expect(isinstance(raw, dict), path, "a condition must be an object"):
            return
        condition_type = raw.get("conditionType")
        self.expect(
            condition_type is None or condition_type in ("ROLLOUT", "WHITELIST"),
            f"{path}.conditionType",
            f"conditionType must be ROLLOUT or WHITELIST, got {condition_type!r}",
        )
        label = raw.get("label")
        self.expect(
            label is None or isinstance(label, str), f"{path}.label", "label must be a string"
        )
        group = raw.get("matcherGroup")
        if self.expect(
            isinstance(group, dict), f"{path}.matcherGroup", "matcherGroup must be an object"
        ):
            self.expect(
                group.get("combiner") == "AND",
                f"{path}.matcherGroup.combiner",
                f"combiner must be AND, got {group.get('combiner')!r}",
            )
            matchers = group.get("matchers")
            if self.expect(
                isinstance(matchers, list),
                f"{path}.matcherGroup.matchers",
                "matchers must be a list",
            ):
                for i, matcher in enumerate(matchers):
                    self.matcher(matcher, f"{path}.matcherGroup.matchers[{i}]")
        if with_partitions:
            self._partitions(raw.get("partitions"), f"{path}.partitions")

    def _partitions(self, partitions: Any, path: str) -> None:
        if not self.expect(
            isinstance(partitions, list) and len(partitions) > 0,
            path,
            "partitions must be a non-empty list",
        ):
            return
        total = 0
        for i, partition in enumerate(partitions):
            where = f"{path}[{i}]"
            if not self.expect(isinstance(partition, dict), where, "a partition must be an object"):
                return
            treatment = partition.get("treatment")
            self.expect(
                isinstance(treatment, str) and treatment != "",
                f"{where}.treatment",
                "treatment must be a non-empty string",
            )
            size = partition.get("size")
            if not self.expect(
                is_int(size) and 0 <= size <= 100,
                f"{where}.size",
                f"size must be an integer 0..100, got {size!r}",
            ):
                return
            total += size
        self.expect(total == 100, path, f"partition sizes sum to {total}, not 100")

    def matcher(self, raw: Any, path: str) -> None:
        if not self.expect(isinstance(raw, dict), path, "a matcher must be an object"):
            return
        matcher_type = raw.get("matcherType")
        if not self.expect(
            isinstance(matcher_type, str) and matcher_type in MATCHER_TYPES,
            f"{path}.matcherType",
            f"unknown matcher type {matcher_type!r}",
        ):
            return
        negate = raw.get("negate")
        self.expect(
            negate is None or isinstance(negate, bool), f"{path}.negate", "negate must be a boolean"
        )
        selector = raw.get("keySelector")
        if selector is not None and self.expect(
            isinstance(selector, dict), f"{path}.keySelector", "keySelector must be an object"
        ):
            attribute = selector.get("attribute")
            self.expect(
                attribute is None or isinstance(attribute, str),
                f"{path}.keySelector.attribute",
                "attribute must be a string or null",
            )
        _MATCHER_CHECKS.get(matcher_type, _no_data)(self, raw, path)

    def segment_ref(self, name: str, path: str) -> None:
        if name not in self.refs.segments:
            self.refs.missing_segments.append((name, self.owner, path))


def _no_data(w: _Walker, raw: Mapping[str, Any], path: str) -> None:
    """ALL_KEYS reads no data."""


def _data(w: _Walker, raw: Mapping[str, Any], path: str, key: str) -> Any:
    data = raw.get(key)
    if not w.expect(isinstance(data, dict), f"{path}.{key}", f"{key} must be an object"):
        return None
    return data


def _check_segment(w: _Walker, raw: Mapping[str, Any], path: str) -> None:
    data = _data(w, raw, path, "userDefinedSegmentMatcherData")
    if data is not None:
        name = data.get("segmentName")
        where = f"{path}.userDefinedSegmentMatcherData.segmentName"
        if w.expect(isinstance(name, str), where, "segmentName must be a string"):
            w.segment_ref(name, where)


def _check_large_segment(w: _Walker, raw: Mapping[str, Any], path: str) -> None:
    data = _data(w, raw, path, "userDefinedLargeSegmentMatcherData")
    if data is not None:
        name = data.get("largeSegmentName")
        where = f"{path}.userDefinedLargeSegmentMatcherData.largeSegmentName"
        if w.expect(isinstance(name, str), where, "largeSegmentName must be a string"):
            w.segment_ref(name, where)


def _check_rule_based(w: _Walker, raw: Mapping[str, Any], path: str) -> None:
    data = _data(w, raw, path, "userDefinedSegmentMatcherData")
    if data is not None:
        name = data.get("segmentName")
        where = f"{path}.userDefinedSegmentMatcherData.segmentName"
        if w.expect(isinstance(name, str), where, "segmentName must be a string"):
            w.link(f"rbs:{name}", where)


def _check_whitelist(w: _Walker, raw: Mapping[str, Any], path: str) -> None:
    data = _data(w, raw, path, "whitelistMatcherData")
    if data is None:
        return
    where = f"{path}.whitelistMatcherData.whitelist"
    items = data.get("whitelist")
    if not w.expect(_is_str_list(items), where, "whitelist must be a list of strings"):
        return
    if raw.get("matcherType") == "IN_LIST_SEMVER":
        for i, item in enumerate(items):
            _semver(w, item, f"{where}[{i}]")


def _semver(w: _Walker, text: Any, path: str) -> None:
    if not w.expect(isinstance(text, str), path, "must be a semantic version string"):
        return
    try:
        semver.parse(text)
    except semver.SemverError as exc:
        w.error(path, f"invalid semantic version: {exc}")


def _check_unary_numeric(w: _Walker, raw: Mapping[str, Any], path: str) -> None:
    data = _data(w, raw, path, "unaryNumericMatcherData")
    if data is not None:
        _data_type(w, data, f"{path}.unaryNumericMatcherData")
        w.expect(
            is_number(data.get("value")),
            f"{path}.unaryNumericMatcherData.value",
            "value must be a number",
        )


def _data_type(w: _Walker, data: Mapping[str, Any], path: str) -> None:
    w.expect(
        isinstance(data.get("dataType"), str) and data.get("dataType") in _DATA_TYPES,
        f"{path}.dataType",
        f"dataType must be NUMBER or DATETIME, got {data.get('dataType')!r}",
    )


def _check_between(w: _Walker, raw: Mapping[str, Any], path: str) -> None:
    data = _data(w, raw, path, "betweenMatcherData")
    if data is not None:
        _data_type(w, data, f"{path}.betweenMatcherData")
        for key in ("start", "end"):
            w.expect(
                is_number(data.get(key)),
                f"{path}.betweenMatcherData.{key}",
                f"{key} must be a number",
            )


def _check_dependency(w: _Walker, raw: Mapping[str, Any], path: str) -> None:
    data = _data(w, raw, path, "dependencyMatcherData")
    if data is None:
        return
    name = data.get("split")
    if w.expect(
        isinstance(name, str), f"{path}.dependencyMatcherData.split", "split must be a flag name"
    ):
        w.link(f"flag:{name}", f"{path}.dependencyMatcherData.split")
    w.expect(
        _is_str_list(data.get("treatments")),
        f"{path}.dependencyMatcherData.treatments",
        "treatments must be a list of strings",
    )


def _check_boolean(w: _Walker, raw: Mapping[str, Any], path: str) -> None:
    w.expect(
        isinstance(raw.get("booleanMatcherData"), bool),
        f"{path}.booleanMatcherData",
        "booleanMatcherData must be true or false",
    )


def _check_regex(w: _Walker, raw: Mapping[str, Any], path: str) -> None:
    pattern = raw.get("stringMatcherData")
    where = f"{path}.stringMatcherData"
    if not isinstance(pattern, str):
        w.error(where, "stringMatcherData must be a regular expression")
        return
    try:
        compile_regex(pattern)
    except Exception as exc:  # re2.error carries RE2's own message, sometimes as bytes
        w.error(where, f"invalid regular expression (RE2 syntax): {_message(exc)}")


def _message(exc: Exception) -> str:
    """An exception's message as text, not the repr of the bytes some bindings pass."""
    detail = exc.args[0] if len(exc.args) == 1 else str(exc)
    if isinstance(detail, bytes):
        return detail.decode("utf-8", "replace")
    return str(detail)


def _check_semver(w: _Walker, raw: Mapping[str, Any], path: str) -> None:
    _semver(w, raw.get("stringMatcherData"), f"{path}.stringMatcherData")


def _check_between_semver(w: _Walker, raw: Mapping[str, Any], path: str) -> None:
    data = _data(w, raw, path, "betweenStringMatcherData")
    if data is not None:
        for key in ("start", "end"):
            _semver(w, data.get(key), f"{path}.betweenStringMatcherData.{key}")


_MATCHER_CHECKS: Final[dict[str, Callable[[_Walker, Mapping[str, Any], str], None]]] = {
    "IN_SEGMENT": _check_segment,
    "IN_LARGE_SEGMENT": _check_large_segment,
    "IN_RULE_BASED_SEGMENT": _check_rule_based,
    "EQUAL_TO": _check_unary_numeric,
    "GREATER_THAN_OR_EQUAL_TO": _check_unary_numeric,
    "LESS_THAN_OR_EQUAL_TO": _check_unary_numeric,
    "BETWEEN": _check_between,
    "IN_SPLIT_TREATMENT": _check_dependency,
    "EQUAL_TO_BOOLEAN": _check_boolean,
    "MATCHES_STRING": _check_regex,
    "BETWEEN_SEMVER": _check_between_semver,
    **dict.fromkeys(_WHITELIST_TYPES, _check_whitelist),
    **dict.fromkeys(_SEMVER_SINGLE, _check_semver),
}


# --- rule-based segments --------------------------------------------------------------


def _rule_based_segment(w: _Walker, raw: Any, path: str) -> None:
    w.owner = None
    if not w.expect(isinstance(raw, dict), path, "a rule-based segment must be an object"):
        return
    name = raw.get("name")
    if not w.expect(
        isinstance(name, str) and name != "", f"{path}.name", "name must be a non-empty string"
    ):
        return
    w.node = f"rbs:{name}"
    w.refs.edges.setdefault(w.node, [])
    status = raw.get("status")
    w.expect(
        status is None or status in ("ACTIVE", "ARCHIVED"),
        f"{path}.status",
        "status must be ACTIVE or ARCHIVED",
    )
    conditions = raw.get("conditions")
    if w.expect(isinstance(conditions, list), f"{path}.conditions", "conditions must be a list"):
        for i, condition in enumerate(conditions):
            w.condition(condition, f"{path}.conditions[{i}]", with_partitions=False)
    excluded = raw.get("excluded")
    if excluded is None or not w.expect(
        isinstance(excluded, dict), f"{path}.excluded", "excluded must be an object"
    ):
        return
    keys = excluded.get("keys")
    w.expect(
        keys is None or _is_str_list(keys),
        f"{path}.excluded.keys",
        "keys must be a list of strings",
    )
    segments = excluded.get("segments")
    if segments is None or not w.expect(
        isinstance(segments, list), f"{path}.excluded.segments", "segments must be a list"
    ):
        return
    for i, item in enumerate(segments):
        where = f"{path}.excluded.segments[{i}]"
        if not w.expect(
            isinstance(item, dict) and isinstance(item.get("name"), str),
            where,
            "must be {name, type}",
        ):
            continue
        if item.get("type") == "rule-based":
            w.link(f"rbs:{item['name']}", f"{where}.name")
        else:
            w.segment_ref(item["name"], f"{where}.name")


# --- the whole document ---------------------------------------------------------------


def validate(
    flags: Sequence[Any],
    segments: Any,
    rule_based_segments: Sequence[Any],
    *,
    flags_path: str = "$.flags",
    rbs_path: str = "$.ruleBasedSegments",
    segments_path: str = "$.segments",
) -> Report:
    """Validate flags, segments and rule-based segments together (references need all three)."""
    validation = Validation(
        segments, rule_based_segments, rbs_path=rbs_path, segments_path=segments_path
    )
    for i, raw in enumerate(flags):
        validation.flag(raw, f"{flags_path}[{i}]")
    return validation.finish()


class Validation:
    """``validate`` one flag at a time: segments and rule-based segments first, then each
    flag as it comes (a loader may decode, check and compile flags one by one, never
    holding the whole document's JSON), then ``finish`` checks what refers to what.

    The report lists the same issues in the same order as checking the whole at once.
    """

    def __init__(
        self,
        segments: Any,
        rule_based_segments: Sequence[Any],
        *,
        rbs_path: str = "$.ruleBasedSegments",
        segments_path: str = "$.segments",
    ) -> None:
        self.report = Report()
        self._refs = _Refs()
        self._walker = walker = _Walker(self.report, self._refs)
        if walker.expect(isinstance(segments, dict), segments_path, "segments must be an object"):
            for name, keys in segments.items():
                walker.expect(
                    _is_str_list(keys),
                    f"{segments_path}.{name}",
                    "a segment must be a list of keys",
                )
                self._refs.segments.add(name)
        # duplicate flag names are reported here, before the rule-based segments' issues
        self._duplicates_at = len(self.report.errors)
        self._duplicates: list[Issue] = []
        _collect_rule_based_names(walker, rule_based_segments, rbs_path)
        for i, raw in enumerate(rule_based_segments):
            _rule_based_segment(walker, raw, f"{rbs_path}[{i}]")

    def flag(self, raw: Any, path: str) -> None:
        name = raw.get("name") if isinstance(raw, dict) else None
        if isinstance(name, str):
            names = self._refs.flag_names
            if name in names:
                self._duplicates.append(Issue(name, f"{path}.name", f"duplicate name {name!r}"))
            names.add(name)
        self._walker.flag(raw, path)

    @property
    def failed(self) -> bool:
        """An error was found already (the snapshot will be refused)."""
        return bool(self.report.errors or self._duplicates)

    def finish(self) -> Report:
        report = self.report
        report.errors[self._duplicates_at : self._duplicates_at] = self._duplicates
        self._duplicates = []
        _check_references(report, self._refs)
        return report


def _collect_rule_based_names(w: _Walker, rbs: Sequence[Any], rbs_path: str) -> None:
    names = w.refs.all_rbs
    for i, raw in enumerate(rbs):
        name = raw.get("name") if isinstance(raw, dict) else None
        if not isinstance(name, str):
            continue
        if name in names:
            w.report.errors.append(Issue(name, f"{rbs_path}[{i}].name", f"duplicate name {name!r}"))
        names.add(name)
        if raw.get("status", "ACTIVE") == "ACTIVE":
            w.refs.active_rbs.add(name)


def _check_references(report: Report, refs: _Refs) -> None:
    for edges in refs.edges.values():
        for target, owner, path in edges:
            kind, name = target.split(":", 1)
            if kind == "flag" and name not in refs.flag_names:
                report.errors.append(
                    Issue(owner, path, f"depends on flag {name!r}, which is not in the snapshot")
                )
            elif kind == "rbs" and name not in refs.active_rbs:
                state = "archived" if name in refs.all_rbs else "not in the snapshot"
                report.errors.append(Issue(owner, path, f"rule-based segment {name!r} is {state}"))
    for name, owner, path in refs.missing_segments:
        report.warnings.append(
            Issue(owner, path, f"segment {name!r} is not in the snapshot; it counts as empty")
        )
    cycle = _find_cycle(refs.edges)
    if cycle:
        owner = next((n.split(":", 1)[1] for n in cycle if n.startswith("flag:")), None)
        report.errors.append(Issue(owner, "$", "dependency cycle: " + " -> ".join(cycle)))


def _find_cycle(edges: Mapping[str, list[tuple[str, str | None, str]]]) -> list[str] | None:
    """First cycle found by an iterative DFS over flag/RBS references, as a node path."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    for root in edges:
        if state.get(root):
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path = [root]
        state[root] = 1
        while stack:
            node, index = stack[-1]
            targets = edges.get(node, [])
            if index >= len(targets):
                stack.pop()
                path.pop()
                state[node] = 2
                continue
            stack[-1] = (node, index + 1)
            target = targets[index][0]
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if not state.get(target) and target in edges:
                state[target] = 1
                stack.append((target, 0))
                path.append(target)
    return None
