"""Split's 24 matcher types, compiled to closures with the Python SDK's exact semantics.

Each builder receives the matcher's (already validated) JSON and returns a predicate
over one non-missing input value. ``compile_matcher`` then wraps it with the input
selection (matching key or attribute), the missing-attribute rule (no match, *then*
negation, so a negated matcher on a missing attribute is true) and negation.
Input coercions follow ``splitio-client`` on purpose: numbers must be integers (a
numeric string is parsed with ``int()``, floats never match), strings are produced
from other types with ``json.dumps``, and set matchers call ``set()`` on the input (a
string becomes its characters).
"""

from __future__ import annotations

import json
import numbers
import operator
from collections.abc import Callable, Mapping
from typing import Any, Final

import re2

from fader.rules import semver
from fader.rules.model import Attributes, MatchFn, Members, text

ValueFn = Callable[[Any], bool]
# Evaluates another flag by name for IN_SPLIT_TREATMENT: (flag, key, bk, attrs) -> treatment
TreatmentOf = Callable[[str, str, str, "Attributes | None"], str]
# Checks membership in a rule-based segment: (name, key, bk, attrs) -> member?
RuleBasedMember = Callable[[str, str, str, "Attributes | None"], bool]

_ATTRIBUTE_VALUE_FREE: Final = frozenset(
    {"ALL_KEYS", "IN_SPLIT_TREATMENT", "IN_RULE_BASED_SEGMENT"}
)


class MatcherContext:
    """What matchers may refer to outside themselves: segments, other flags, RBS."""

    def __init__(
        self,
        segments: Mapping[str, Members],
        treatment_of: TreatmentOf,
        rule_based_member: RuleBasedMember,
    ) -> None:
        self.segments = segments
        self.treatment_of = treatment_of
        self.rule_based_member = rule_based_member


def attribute_of(raw: Mapping[str, Any]) -> str | None:
    """The attribute a matcher reads, or None for the matching key."""
    selector = raw.get("keySelector")
    if isinstance(selector, Mapping):
        attribute = selector.get("attribute")
        return attribute if isinstance(attribute, str) else None
    return None


def compile_matcher(raw: Mapping[str, Any], ctx: MatcherContext) -> MatchFn:
    """One matcher JSON object -> predicate over (key, bucketing key, attributes)."""
    matcher_type = raw["matcherType"]
    negate = bool(raw.get("negate", False))
    attribute = text(attribute_of(raw))
    if matcher_type in SEGMENT_TYPES:
        inner = _in_segment(raw, ctx)
    elif matcher_type in _ATTRIBUTE_VALUE_FREE:
        inner = _special(matcher_type, raw, ctx)
    elif attribute is not None and matcher_type in _FUSED:
        inner = _FUSED[matcher_type](attribute, raw)
    elif attribute is None and matcher_type == "WHITELIST":
        inner = _key_whitelist(raw)
    else:
        inner = _with_input(attribute, _VALUE_BUILDERS[matcher_type](raw, ctx))
    if not negate:
        return inner

    def negated(key: str, bk: str, attrs: Attributes | None) -> bool:
        return not inner(key, bk, attrs)

    return negated


def _with_input(attribute: str | None, test: ValueFn) -> MatchFn:
    """Feed the matching key or the attribute value to ``test``; a missing value never matches."""
    if attribute is None:

        def on_key(key: str, bk: str, attrs: Attributes | None) -> bool:
            return test(key)

        return on_key

    def on_attribute(key: str, bk: str, attrs: Attributes | None) -> bool:
        if attrs is None:
            return False
        value = attrs.get(attribute)
        return value is not None and test(value)

    return on_attribute


def _special(matcher_type: str, raw: Mapping[str, Any], ctx: MatcherContext) -> MatchFn:
    """Matchers that ignore the selected input value (the SDK never reads it for them)."""
    if matcher_type == "ALL_KEYS":
        return lambda key, bk, attrs: True
    if matcher_type == "IN_SPLIT_TREATMENT":
        data = raw["dependencyMatcherData"]
        flag_name: str = data["split"]
        treatments = frozenset(data["treatments"])
        treatment_of = ctx.treatment_of

        def depends(key: str, bk: str, attrs: Attributes | None) -> bool:
            return treatment_of(flag_name, key, bk, attrs) in treatments

        return depends
    segment_name: str = raw["userDefinedSegmentMatcherData"]["segmentName"]
    member = ctx.rule_based_member

    def in_rule_based(key: str, bk: str, attrs: Attributes | None) -> bool:
        return member(segment_name, key, bk, attrs)

    return in_rule_based


# --- input coercions (splitio-client's Sanitizer classes) -------------------------------


def as_string(value: Any) -> str | None:
    """str as is; anything else through ``json.dumps`` (123 -> "123", True -> "true")."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return None


def as_int(value: Any) -> int | None:
    """Integers (not bools) as is, numeric strings through ``int()``; floats are refused."""
    if type(value) is int:
        return value
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def as_bool(value: Any) -> bool | None:
    """bool as is; a string whose lowercase form is JSON ``true``/``false``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            decoded = json.loads(value.lower())
        except ValueError:
            return None
        return decoded if isinstance(decoded, bool) else None
    return None


# --- value matchers ----------------------------------------------------------------------


def _whitelist(raw: Mapping[str, Any]) -> frozenset[str]:
    return frozenset(raw["whitelistMatcherData"]["whitelist"])


# Up to this many names, a whitelist is searched as a tuple: as fast as a frozenset for so
# few strings, and a fraction of its memory (a frozenset of 5 strings takes 728 bytes, a
# tuple 80), which adds up over thousands of flags' short lists of testers.
SMALL_WHITELIST: Final = 8


def _members(raw: Mapping[str, Any]) -> frozenset[str] | tuple[str, ...]:
    """A whitelist for ``in`` tests only (never compared as a set)."""
    allowed = _whitelist(raw)
    return tuple(allowed) if len(allowed) <= SMALL_WHITELIST else allowed


# DATETIME: the matcher value is in ms, the attribute in seconds (Python SDK); both are
# truncated, to the day for EQUAL_TO and to the minute for the others. The float
# arithmetic mirrors splitio/models/datatypes.py so that boundaries agree exactly.
def _to_day(seconds: float) -> float:
    return seconds - seconds % 86400


def _to_minute(seconds: float) -> float:
    return seconds - seconds % 60


def _numeric_parsers(
    data_type: str, truncate: Callable[[float], float]
) -> tuple[Callable[[Any], Any], Callable[[int], Any]]:
    """(parse the matcher's value, parse the input) for NUMBER or DATETIME."""
    if data_type == "DATETIME":
        return (lambda v: truncate(v / 1000)), truncate
    return (lambda v: v), (lambda v: v)


def _equal_to(raw: Mapping[str, Any], ctx: MatcherContext) -> ValueFn:
    data = raw["unaryNumericMatcherData"]
    parse_data, parse_input = _numeric_parsers(data["dataType"], _to_day)
    target = parse_data(data["value"])

    def test(value: Any) -> bool:
        number = as_int(value)
        return number is not None and parse_input(number) == target

    return test


def _greater_or_equal(raw: Mapping[str, Any], ctx: MatcherContext) -> ValueFn:
    data = raw["unaryNumericMatcherData"]
    parse_data, parse_input = _numeric_parsers(data["dataType"], _to_minute)
    target = parse_data(data["value"])

    def test(value: Any) -> bool:
        number = as_int(value)
        return number is not None and bool(parse_input(number) >= target)

    return test


def _less_or_equal(raw: Mapping[str, Any], ctx: MatcherContext) -> ValueFn:
    data = raw["unaryNumericMatcherData"]
    parse_data, parse_input = _numeric_parsers(data["dataType"], _to_minute)
    target = parse_data(data["value"])

    def test(value: Any) -> bool:
        number = as_int(value)
        return number is not None and bool(parse_input(number) <= target)

    return test


def _between(raw: Mapping[str, Any], ctx: MatcherContext) -> ValueFn:
    data = raw["betweenMatcherData"]
    parse_data, parse_input = _numeric_parsers(data["dataType"], _to_minute)
    low, high = parse_data(data["start"]), parse_data(data["end"])

    def test(value: Any) -> bool:
        number = as_int(value)
        return number is not None and bool(low <= parse_input(number) <= high)

    return test


def _set_of(value: Any) -> set[Any] | None:
    """``set(value)`` as the SDK does; None when the value is not iterable or hashable."""
    try:
        return set(value)
    except TypeError:
        return None


def _equal_to_set(raw: Mapping[str, Any], ctx: MatcherContext) -> ValueFn:
    allowed = _whitelist(raw)

    def test(value: Any) -> bool:
        items = _set_of(value)
        return items is not None and items == allowed

    return test


def _contains_any(raw: Mapping[str, Any], ctx: MatcherContext) -> ValueFn:
    allowed = _whitelist(raw)

    def test(value: Any) -> bool:
        items = _set_of(value)
        return items is not None and not allowed.isdisjoint(items)

    return test


def _contains_all(raw: Mapping[str, Any], ctx: MatcherContext) -> ValueFn:
    allowed = _whitelist(raw)

    def test(value: Any) -> bool:
        items = _set_of(value)
        return items is not None and allowed.issubset(items)

    return test


def _part_of(raw: Mapping[str, Any], ctx: MatcherContext) -> ValueFn:
    allowed = _whitelist(raw)

    def test(value: Any) -> bool:
        items = _set_of(value)
        return items is not None and len(items) > 0 and items.issubset(allowed)

    return test


def _starts_with(raw: Mapping[str, Any], ctx: MatcherContext) -> ValueFn:
    prefixes = tuple(_whitelist(raw))

    def test(value: Any) -> bool:
        text = as_string(value)
        return text is not None and text.startswith(prefixes)

    return test


def _ends_with(raw: Mapping[str, Any], ctx: MatcherContext) -> ValueFn:
    suffixes = tuple(_whitelist(raw))

    def test(value: Any) -> bool:
        text = as_string(value)
        return text is not None and text.endswith(suffixes)

    return test


def _contains_string(raw: Mapping[str, Any], ctx: MatcherContext) -> ValueFn:
    parts = tuple(_whitelist(raw))

    def test(value: Any) -> bool:
        text = as_string(value)
        return text is not None and any(part in text for part in parts)

    return test


def compile_regex(pattern: str) -> Any:
    """RE2 (linear time: a snapshot cannot hang the sidecar); raises re2.error when invalid."""
    options = re2.Options()
    options.log_errors = False
    return re2.compile(pattern, options)


def _matches_string(raw: Mapping[str, Any], ctx: MatcherContext) -> ValueFn:
    search = compile_regex(raw["stringMatcherData"]).search

    def test(value: Any) -> bool:
        text = as_string(value)
        return text is not None and search(text) is not None

    return test


def _equal_to_boolean(raw: Mapping[str, Any], ctx: MatcherContext) -> ValueFn:
    expected = raw["booleanMatcherData"]

    def test(value: Any) -> bool:
        decoded = as_bool(value)
        return decoded is not None and decoded == expected

    return test


def _semver_input(value: Any) -> semver.Semver | None:
    text = as_string(value)
    return None if text is None else semver.parse_or_none(text)


def _equal_to_semver(raw: Mapping[str, Any], ctx: MatcherContext) -> ValueFn:
    target = semver.parse(raw["stringMatcherData"]).version

    def test(value: Any) -> bool:
        version = _semver_input(value)
        return version is not None and version.version == target

    return test


def _greater_or_equal_semver(raw: Mapping[str, Any], ctx: MatcherContext) -> ValueFn:
    target = semver.parse(raw["stringMatcherData"])

    def test(value: Any) -> bool:
        version = _semver_input(value)
        return version is not None and version.compare(target) >= 0

    return test


def _less_or_equal_semver(raw: Mapping[str, Any], ctx: MatcherContext) -> ValueFn:
    target = semver.parse(raw["stringMatcherData"])

    def test(value: Any) -> bool:
        version = _semver_input(value)
        return version is not None and version.compare(target) <= 0

    return test


def _between_semver(raw: Mapping[str, Any], ctx: MatcherContext) -> ValueFn:
    data = raw["betweenStringMatcherData"]
    low, high = semver.parse(data["start"]), semver.parse(data["end"])

    def test(value: Any) -> bool:
        version = _semver_input(value)
        return version is not None and low.compare(version) <= 0 and high.compare(version) >= 0

    return test


def _in_list_semver(raw: Mapping[str, Any], ctx: MatcherContext) -> ValueFn:
    versions = frozenset(semver.parse(item).version for item in _whitelist(raw) if item)

    def test(value: Any) -> bool:
        version = _semver_input(value)
        return version is not None and version.version in versions

    return test


def _in_segment(raw: Mapping[str, Any], ctx: MatcherContext) -> MatchFn:
    """IN_SEGMENT / IN_LARGE_SEGMENT: the selected input must be present, but membership is
    always tested for the *matching key* (the SDK computes memberships per key)."""
    data = raw.get("userDefinedSegmentMatcherData") or raw.get("userDefinedLargeSegmentMatcherData")
    assert isinstance(data, Mapping)
    name = data.get("segmentName") or data.get("largeSegmentName")
    members: Members = ctx.segments.get(str(name), {})
    attribute = attribute_of(raw)
    if attribute is None:

        def on_key(key: str, bk: str, attrs: Attributes | None) -> bool:
            return key in members

        return on_key

    def on_attribute(key: str, bk: str, attrs: Attributes | None) -> bool:
        return attrs is not None and attrs.get(attribute) is not None and key in members

    return on_attribute


_VALUE_BUILDERS: Final[dict[str, Callable[[Mapping[str, Any], MatcherContext], ValueFn]]] = {
    "EQUAL_TO": _equal_to,
    "GREATER_THAN_OR_EQUAL_TO": _greater_or_equal,
    "LESS_THAN_OR_EQUAL_TO": _less_or_equal,
    "BETWEEN": _between,
    "EQUAL_TO_SET": _equal_to_set,
    "CONTAINS_ANY_OF_SET": _contains_any,
    "CONTAINS_ALL_OF_SET": _contains_all,
    "PART_OF_SET": _part_of,
    "STARTS_WITH": _starts_with,
    "ENDS_WITH": _ends_with,
    "CONTAINS_STRING": _contains_string,
    "MATCHES_STRING": _matches_string,
    "EQUAL_TO_BOOLEAN": _equal_to_boolean,
    "EQUAL_TO_SEMVER": _equal_to_semver,
    "GREATER_THAN_OR_EQUAL_TO_SEMVER": _greater_or_equal_semver,
    "LESS_THAN_OR_EQUAL_TO_SEMVER": _less_or_equal_semver,
    "BETWEEN_SEMVER": _between_semver,
    "IN_LIST_SEMVER": _in_list_semver,
}

# --- fused attribute matchers ----------------------------------------------------------
# The most common attribute matchers read the attribute and test it in one closure: one
# call per matcher instead of two. Their semantics are exactly those of the generic
# builders above (the differential test checks both paths against the SDK). WHITELIST is
# only built this way, on the matching key or on an attribute.


def _key_whitelist(raw: Mapping[str, Any]) -> MatchFn:
    """WHITELIST on the matching key, always a string: ``as_string`` would return it as is."""
    allowed = _members(raw)

    def match(key: str, bk: str, attrs: Attributes | None) -> bool:
        return key in allowed

    return match


def _fused_whitelist(attribute: str, raw: Mapping[str, Any]) -> MatchFn:
    allowed = _members(raw)

    def match(key: str, bk: str, attrs: Attributes | None) -> bool:
        if attrs is None:
            return False
        value = attrs.get(attribute)
        if value is None:
            return False
        if type(value) is not str:
            value = as_string(value)
        return value in allowed

    return match


def _fused_number(
    compare: Callable[[int, Any], bool],
) -> Callable[[str, Mapping[str, Any]], MatchFn]:
    """Unary NUMBER matchers; DATETIME ones keep the generic path (truncation)."""

    def build(attribute: str, raw: Mapping[str, Any]) -> MatchFn:
        data = raw["unaryNumericMatcherData"]
        if data["dataType"] != "NUMBER":
            return _with_input(attribute, _VALUE_BUILDERS[raw["matcherType"]](raw, _NO_CONTEXT))
        target = data["value"]

        def match(key: str, bk: str, attrs: Attributes | None) -> bool:
            if attrs is None:
                return False
            value = attrs.get(attribute)
            if type(value) is not int:
                if value is None:
                    return False
                value = as_int(value)
                if value is None:
                    return False
            return compare(value, target)

        return match

    return build


def _fused_boolean(attribute: str, raw: Mapping[str, Any]) -> MatchFn:
    expected = raw["booleanMatcherData"]

    def match(key: str, bk: str, attrs: Attributes | None) -> bool:
        if attrs is None:
            return False
        value = attrs.get(attribute)
        if value is True or value is False:
            return bool(value == expected)
        if value is None:
            return False
        decoded = as_bool(value)
        return decoded is not None and decoded == expected

    return match


_NO_CONTEXT: Final = MatcherContext({}, lambda *a: "control", lambda *a: False)

_FUSED: Final[dict[str, Callable[[str, Mapping[str, Any]], MatchFn]]] = {
    "WHITELIST": _fused_whitelist,
    "EQUAL_TO": _fused_number(operator.eq),
    "GREATER_THAN_OR_EQUAL_TO": _fused_number(operator.ge),
    "LESS_THAN_OR_EQUAL_TO": _fused_number(operator.le),
    "EQUAL_TO_BOOLEAN": _fused_boolean,
}

SEGMENT_TYPES: Final = frozenset({"IN_SEGMENT", "IN_LARGE_SEGMENT"})

# Every matcher type Fader understands (Split's 24; WHITELIST is only built fused).
MATCHER_TYPES: Final = (
    frozenset(_VALUE_BUILDERS) | frozenset(_FUSED) | _ATTRIBUTE_VALUE_FREE | SEGMENT_TYPES
)
