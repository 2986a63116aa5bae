"""Hypothesis strategies for random, VALID Fader snapshots and evaluation cases.

The differential test feeds these to Fader and to splitio-client's own evaluator (oracle.py)
and demands identical (treatment, label, config). Everything is drawn from SMALL pools so
that whitelists, segments, numeric bounds and regexes actually hit, and so that inputs of
the wrong type (floats to numeric matchers, strings to set matchers, ints to string
matchers, "TRUE" strings to boolean matchers) show up often.

Validity rules kept here (a snapshot Fader refuses would test nothing):
partitions sum to exactly 100; only matcher types the Python SDK knows (no IN_LARGE_SEGMENT);
every referenced segment, flag and rule-based segment exists; references only point to
nodes generated earlier, so there are no dependency, prerequisite or rule-based-segment
cycles; unique names; regexes that RE2 compiles and that agree with Python ``re`` on every
input the pools can produce; numbers in definitions are integers; ARCHIVED only for flags
nothing references; keys stay in the Basic Multilingual Plane when any flag uses the legacy
hash (Fader hashes legacy over UTF-16 code units, the Python SDK over code points).

About one snapshot in four is an exclusion chain (:func:`exclusion_chains`): rule-based
segments excluding earlier rule-based and standard segments several levels deep, over a few
keys that are at once segment members and excluded keys, so that the order-dependent early
stops of the SDK's exclusion walk decide real answers. Fully random snapshots almost never
line those up.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import re2
from hypothesis import strategies as st

Json = dict[str, Any]
Draw = Callable[[st.SearchStrategy[Any]], Any]

# --------------------------------------------------------------------------- pools
# fmt: off

KEYS_BMP: tuple[str, ...] = (
    "alice", "bob", "carol", "user-1", "user-2", "12", "true", "abc1",
    "alice@split.io", "Ünïcødé", "日本", "a b",
)
KEYS_ASTRAL: tuple[str, ...] = ("🙂smile", "\U0001d4b3-key")  # only safe with algo 2 flags
HOT_KEYS: tuple[str, ...] = KEYS_BMP[:3]  # exclusion chains: segment members and excluded keys
TREATMENTS: tuple[str, ...] = ("on", "off", "v1", "v2", "on", "off", "v1", "v2", "control")
LABELS: tuple[str, ...] = ("default rule", "whitelisted", "in segment seg_0", "custom label", "")
CONFIGS: tuple[str, ...] = ('{"color":"green"}', "{}", '{"size":15,"test":20}', '{"a":[1,2]}')
SET_ITEMS: tuple[str, ...] = ("a", "b", "c", "1", "true", "gold", "é")
AFFIXES: tuple[str, ...] = (
    "a", "ab", "abc", "@split.io", "user", "1", "", "é", "z", "ld", '["', ", ", "\\u00e9", "e+",
)
STRINGS: tuple[str, ...] = (
    "gold", "silver", "abc", "abc1", "Abc", "zabcd", "x", "", "user-1", "alice@split.io",
    "12", "-3", "1.0", "true", "TRUE", " false", "日本", "é", "a b", '["a", "b"]', "1.2.3",
    "100 mk", "abbbc", "1985", "192.168.0.1", "🙂", "1e+16", "Infinity", "NaN", "-0.0", "5.0",
    '{"a": 1}', "2147483648",
)
VALID_SEMVERS: tuple[str, ...] = (  # ascending precedence; "+..." ties with its base
    "0.9.9", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-rc.1", "1.0.0-rc.2",
    "1.0.0-rc.10", "1.0.0", "1.0.0+build", "1.0.0+other", "1.2.3", "2.0.0", "2.0.0+build",
)
SEMVER_INPUTS: tuple[str, ...] = (
    *VALID_SEMVERS, "01.2.3", "1.2.3-01", "1.0.0-rc.01", " 1.2.3", "1.2", "1.2.3-", "1.2.3+",
    "v1.2.3", "1.2.3.4", "\u0661.2.3", "1.0.0-\u00b2", "a.b.c", "",  # Arabic-Indic 1, superscript 2
)
SECOND_BASES: tuple[int, ...] = (
    0, 59, 60, 86399, 86400, 1699920000, 1700000000, 1700000059, 1700000060, -1, -60, -86401,
)
SECOND_DELTAS: tuple[int, ...] = (0, 0, 1, -1, 59, 60, 86400, -86400)
MS_OFFSETS: tuple[int, ...] = (0, 0, 1, -1, 999, 500)
NUMBERS: tuple[int, ...] = (-5, -1, 0, 1, 5, 10, 12, 100, 2**31, 10**15)
NUMERIC_STRINGS: tuple[str, ...] = (" 7", "1_0", "12", "-3", "+5", "\u0663", "1e3", "1.5", "x", "")
ODD_FLOATS: tuple[float, ...] = (1.0, 12.5, 5.0, -0.0, 1e16, math.inf, math.nan)
BOOL_INPUTS: tuple[object, ...] = (
    True, False, "true", "TRUE", "False", " true", "tRuE\n", "1", "yes", 1, 0, "null", "",
)

ATTRIBUTE_KINDS: dict[str, str] = {
    "plan": "string",
    "email": "string",
    "age": "number",
    "ts": "datetime",
    "tags": "list",
    "beta": "boolean",
    "version": "semver",
}
ATTRIBUTE_NAMES: tuple[str, ...] = tuple(ATTRIBUTE_KINDS)

KEY_MATCHERS: tuple[str, ...] = ("ALL_KEYS", "IN_SEGMENT", "IN_RULE_BASED_SEGMENT",
                                 "IN_SPLIT_TREATMENT")
MATCHER_KIND: dict[str, str] = {
    "WHITELIST": "string",
    "EQUAL_TO": "number",
    "GREATER_THAN_OR_EQUAL_TO": "number",
    "LESS_THAN_OR_EQUAL_TO": "number",
    "BETWEEN": "number",
    "EQUAL_TO_SET": "list",
    "CONTAINS_ANY_OF_SET": "list",
    "CONTAINS_ALL_OF_SET": "list",
    "PART_OF_SET": "list",
    "STARTS_WITH": "string",
    "ENDS_WITH": "string",
    "CONTAINS_STRING": "string",
    "MATCHES_STRING": "string",
    "EQUAL_TO_BOOLEAN": "boolean",
    "EQUAL_TO_SEMVER": "semver",
    "GREATER_THAN_OR_EQUAL_TO_SEMVER": "semver",
    "LESS_THAN_OR_EQUAL_TO_SEMVER": "semver",
    "BETWEEN_SEMVER": "semver",
    "IN_LIST_SEMVER": "semver",
}
ALL_MATCHER_TYPES: tuple[str, ...] = (*KEY_MATCHERS, *MATCHER_KIND)

_NULL_MATCHER_DATA: Json = {
    "userDefinedSegmentMatcherData": None,
    "whitelistMatcherData": None,
    "unaryNumericMatcherData": None,
    "betweenMatcherData": None,
    "dependencyMatcherData": None,
    "booleanMatcherData": None,
    "stringMatcherData": None,
}
# fmt: on

# ----------------------------------------------------------------- regex selection

# fmt: off
_REGEX_CANDIDATES: tuple[str, ...] = (
    "abc", "^abc", "abc$", "a|b", "^abc|abc$", "ab{2,4}c", "ab{2,}c", "ab*c", "ab+c", "ab?c",
    "a.c", r"a\.c", "[abc]", "[Aa]bc", "[abc]+", "[^abc]+", "(abc){3}", r"abc\b", r"perl\B",
    r"100\s*mk", r"^\d+$", r"^-?\d+$", r"^\d*\.?\d+$", r"^[a-z0-9-]+$", r"^[a-z0-9_-]{3,16}$",
    r"^(19|20)\d{2}$", r"\d\d", r"\w+", r"\W+", "abc[0-9]", "^user", r"split\.io$", "^$",
    r"^([a-z0-9_\.-]+)@([\da-z\.-]+)\.([a-z\.]{2,6})$",
    r"^(?:(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\.){3}(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)$",
    "日本", "é",
)
# fmt: on


def _string_forms(values: Iterable[object]) -> set[str]:
    """Every string a string matcher can see for these inputs (the SDK json.dumps non-strings)."""
    forms: set[str] = set()
    for value in values:
        if isinstance(value, str):
            forms.add(value)
            continue
        try:
            forms.add(json.dumps(value))
        except (TypeError, ValueError):
            continue
    return forms


def _agreeing_regexes(candidates: Sequence[str], inputs: Collection[str]) -> tuple[str, ...]:
    """Keep regexes RE2 compiles and that search identically in RE2 and Python ``re``.

    The regex dialects differ (``$`` before a final newline, Unicode ``\\w``/``\\d``); those
    differences are a documented non-goal, so the generator avoids them instead of testing them.
    """
    kept = []
    for pattern in candidates:
        try:
            compiled = re2.compile(pattern)
        except re2.error:
            continue
        python = re.compile(pattern)
        if all((python.search(s) is None) == (compiled.search(s) is None) for s in inputs):
            kept.append(pattern)
    return tuple(kept)


# ------------------------------------------------------------ attribute value pools


def _ints_near(bases: Sequence[int], deltas: Sequence[int]) -> st.SearchStrategy[int]:
    """Integers on and right beside pool values, so bounds and truncation edges get hit."""
    return st.builds(lambda b, d: b + d, st.sampled_from(bases), st.sampled_from(deltas))


def number_inputs() -> st.SearchStrategy[object]:
    """Inputs for NUMBER matchers: pool ints, int-parsable and junk strings, floats and bools."""
    return st.one_of(
        _ints_near(NUMBERS, (0, 0, 1, -1)),
        st.sampled_from(NUMERIC_STRINGS),
        st.sampled_from(ODD_FLOATS),
        st.booleans(),
    )


def datetime_inputs() -> st.SearchStrategy[object]:
    """Inputs for DATETIME matchers: epoch seconds near the bases, plus ms, strings, floats."""
    seconds = _ints_near(SECOND_BASES, SECOND_DELTAS)
    return st.one_of(
        seconds,
        seconds,
        seconds.map(lambda s: s * 1000),
        seconds.map(str),
        seconds.map(float),
    )


def list_inputs() -> st.SearchStrategy[object]:
    """Inputs for set matchers: lists from the item pool, plus ints, nested lists and strings."""
    items: st.SearchStrategy[object] = st.sampled_from(SET_ITEMS)
    return st.one_of(
        st.lists(items, max_size=4),
        st.lists(items, max_size=4),
        st.lists(st.one_of(items, st.sampled_from((1, True, None, 1.0))), max_size=3),
        st.just([["a"]]),
        st.sampled_from(("abc", "a", "", "ab")),  # the SDK turns a string into its characters
    )


def attribute_value(kind: str) -> st.SearchStrategy[object]:
    """A value of the attribute's own kind, so matchers on it match for real."""
    pools: dict[str, st.SearchStrategy[object]] = {
        "string": st.sampled_from(STRINGS + KEYS_BMP),
        "number": number_inputs(),
        "datetime": datetime_inputs(),
        "list": list_inputs(),
        "boolean": st.sampled_from(BOOL_INPUTS),
        "semver": st.sampled_from(SEMVER_INPUTS),
    }
    return pools[kind]


def any_attribute_value() -> st.SearchStrategy[object]:
    """A value of any kind, so matchers also see wrong types (ints to strings, strings to sets).

    Objects are included because attributes may arrive as nested JSON (a gRPC Struct):
    the SDK json.dumps them for string matchers and iterates their keys for set matchers.
    """
    kinds = sorted(set(ATTRIBUTE_KINDS.values()))
    objects = st.sampled_from([{"a": 1}, {}, {"gold": True, "b": "x"}])
    return st.one_of([*(attribute_value(kind) for kind in kinds), objects])


REGEX_INPUTS: frozenset[str] = frozenset(
    _string_forms(
        [
            *STRINGS,
            *KEYS_BMP,
            *KEYS_ASTRAL,
            *SEMVER_INPUTS,
            *BOOL_INPUTS,
            *NUMERIC_STRINGS,
            *ODD_FLOATS,
            *NUMBERS,
            *SECOND_BASES,
            ["a", "b"],
            [1, "a"],
            [["a"]],
        ]
    ),
)
REGEXES: tuple[str, ...] = _agreeing_regexes(_REGEX_CANDIDATES, REGEX_INPUTS)
REGEX_HITS: dict[str, tuple[str, ...]] = {
    pattern: (*sorted(s for s in REGEX_INPUTS if re.search(pattern, s)), "zzz")
    for pattern in REGEXES
}

# ------------------------------------------------------------------ snapshot model


def one_in(n: int) -> st.SearchStrategy[bool]:
    """True about once in n draws; the rare side is a middle value, not Hypothesis' favourite 0.

    Inside large composites Hypothesis draws the minimal value (0 / first element) about a
    third of the time, so "== 0" would make every "rare" feature (killed, archived, unknown
    flag) common and starve the rest.
    """
    return st.integers(0, n - 1).map(lambda x: x == n // 2)


@dataclass
class _Scope:
    """What a node may reference: only segments and nodes generated before it (no cycles)."""

    segments: list[str]
    flags: list[str] = field(default_factory=list)
    rule_based: list[str] = field(default_factory=list)

    def matcher_types(self) -> list[str]:
        """Matcher types whose references can be satisfied in this scope."""
        missing = set()
        if not self.segments:
            missing.add("IN_SEGMENT")
        if not self.flags:
            missing.add("IN_SPLIT_TREATMENT")
        if not self.rule_based:
            missing.add("IN_RULE_BASED_SEGMENT")
        return [t for t in ALL_MATCHER_TYPES if t not in missing]


@dataclass(frozen=True)
class Case:
    """One evaluation request."""

    key: str
    flag: str
    bucketing_key: str | None
    attributes: dict[str, Any] | None


def segment_maps() -> st.SearchStrategy[dict[str, list[str]]]:
    """Zero to three segments whose members come from the key pool, so IN_SEGMENT hits."""
    members = st.lists(st.sampled_from(KEYS_BMP + KEYS_ASTRAL), unique=True, max_size=5)
    return st.lists(members, max_size=3).map(
        lambda groups: {f"seg_{i}": group for i, group in enumerate(groups)}
    )


def key_selector(attribute: str | None) -> st.SearchStrategy[Json | None]:
    """Every spelling Split uses for "match on the key" or "match on this attribute"."""
    if attribute is not None:
        return st.just({"trafficType": "user", "attribute": attribute})
    key_forms = [None, {"trafficType": "user", "attribute": None}, {"trafficType": "user"}]
    return st.sampled_from(key_forms)


@st.composite
def matcher_input(draw: Draw, matcher_type: str) -> str | None:
    """Pick the attribute a matcher reads: mostly its own kind, sometimes another, or the key."""
    if matcher_type in KEY_MATCHERS:
        # The SDK still looks at a keySelector attribute on some key matchers (IN_SEGMENT
        # requires it to be present); exercise that rarely.
        return draw(st.sampled_from(ATTRIBUTE_NAMES)) if draw(one_in(20)) else None
    choice = draw(st.integers(0, 19))
    if choice >= 17:
        return None  # the matching key itself
    if choice >= 14:
        return str(draw(st.sampled_from(ATTRIBUTE_NAMES)))
    kind = MATCHER_KIND[matcher_type]
    return str(draw(st.sampled_from([n for n, k in ATTRIBUTE_KINDS.items() if k == kind])))


def _datetime_ms() -> st.SearchStrategy[int]:
    """A DATETIME matcher bound in ms, on or just off whole seconds, minutes and days."""
    return st.builds(
        lambda s, off: s * 1000 + off, st.sampled_from(SECOND_BASES), st.sampled_from(MS_OFFSETS)
    )


@st.composite
def numeric_data(draw: Draw, matcher_type: str) -> Json:
    """unaryNumericMatcherData / betweenMatcherData in NUMBER or DATETIME form."""
    data_type = draw(st.sampled_from(["NUMBER", "DATETIME"]))
    values = _datetime_ms() if data_type == "DATETIME" else st.sampled_from(NUMBERS)
    if matcher_type == "BETWEEN":
        start, end = draw(values), draw(values)
        if not draw(one_in(5)):
            start, end = min(start, end), max(start, end)  # mostly a real range
        return {"betweenMatcherData": {"dataType": data_type, "start": start, "end": end}}
    return {"unaryNumericMatcherData": {"dataType": data_type, "value": draw(values)}}


@st.composite
def _whitelist(draw: Draw, pool: Sequence[str]) -> Json:
    """A whitelistMatcherData block from a pool; rarely empty (then ALL_OF/EQUAL_TO_SET quirks)."""
    items = (
        [] if draw(one_in(12)) else draw(st.lists(st.sampled_from(pool), min_size=1, max_size=4))
    )
    return {"whitelistMatcherData": {"whitelist": items}}


@st.composite
def matcher_data(draw: Draw, matcher_type: str, scope: _Scope) -> Json:
    """The type-specific data block of a matcher, referencing only what the scope holds."""
    if matcher_type == "ALL_KEYS":
        return {}
    if matcher_type in ("IN_SEGMENT", "IN_RULE_BASED_SEGMENT"):
        names = scope.segments if matcher_type == "IN_SEGMENT" else scope.rule_based
        return {"userDefinedSegmentMatcherData": {"segmentName": draw(st.sampled_from(names))}}
    if matcher_type == "IN_SPLIT_TREATMENT":
        treatments = draw(
            st.lists(st.sampled_from(TREATMENTS), min_size=1, max_size=3, unique=True)
        )
        split = draw(st.sampled_from(scope.flags))
        return {"dependencyMatcherData": {"split": split, "treatments": treatments}}
    if matcher_type == "WHITELIST":
        return dict(draw(_whitelist(KEYS_BMP + STRINGS)))
    if matcher_type in ("EQUAL_TO", "GREATER_THAN_OR_EQUAL_TO", "LESS_THAN_OR_EQUAL_TO", "BETWEEN"):
        return dict(draw(numeric_data(matcher_type)))
    if MATCHER_KIND[matcher_type] == "list":
        return dict(draw(_whitelist(SET_ITEMS)))
    if matcher_type in ("STARTS_WITH", "ENDS_WITH", "CONTAINS_STRING"):
        return dict(draw(_whitelist(AFFIXES)))
    if matcher_type == "MATCHES_STRING":
        return {"stringMatcherData": draw(st.sampled_from(REGEXES))}
    if matcher_type == "EQUAL_TO_BOOLEAN":
        return {"booleanMatcherData": draw(st.booleans())}
    if matcher_type == "BETWEEN_SEMVER":
        ends = sorted(
            draw(st.lists(st.integers(0, len(VALID_SEMVERS) - 1), min_size=2, max_size=2)),
            reverse=draw(one_in(5)),
        )  # mostly a real range
        start, end = VALID_SEMVERS[ends[0]], VALID_SEMVERS[ends[1]]
        return {"betweenStringMatcherData": {"start": start, "end": end}}
    if matcher_type == "IN_LIST_SEMVER":
        return dict(draw(_whitelist(VALID_SEMVERS)))
    return {"stringMatcherData": draw(st.sampled_from(VALID_SEMVERS))}  # the other semvers


@st.composite
def matchers(draw: Draw, scope: _Scope) -> Json:
    """One matcher of any supported type, possibly negated, in full or minimal JSON form."""
    matcher_type = draw(st.sampled_from(scope.matcher_types()))
    attribute = draw(matcher_input(matcher_type))
    raw: Json = {}
    if draw(st.booleans()):
        raw.update(_NULL_MATCHER_DATA)  # the backend's form: every data field present, null
    selector = draw(key_selector(attribute))
    if selector is not None or draw(st.booleans()):
        raw["keySelector"] = selector
    raw["matcherType"] = matcher_type
    raw["negate"] = draw(one_in(4))
    raw.update(draw(matcher_data(matcher_type, scope)))
    return raw


def matcher_groups(scope: _Scope) -> st.SearchStrategy[Json]:
    """An AND group of one to three matchers."""
    return st.lists(matchers(scope), min_size=1, max_size=3).map(
        lambda ms: {"combiner": "AND", "matchers": ms}
    )


@st.composite
def partitions(draw: Draw) -> list[Json]:
    """One to four distinct treatments whose sizes (0..100 each) sum to exactly 100."""
    treatments = draw(st.lists(st.sampled_from(TREATMENTS), min_size=1, max_size=4, unique=True))
    if len(treatments) == 1 or draw(one_in(6)):
        # single 100% partition (no hashing), or one winner with zero-size companions
        winner = draw(st.integers(0, len(treatments) - 1))
        sizes = [100 if i == winner else 0 for i in range(len(treatments))]
    else:
        cuts = sorted(
            draw(
                st.lists(
                    st.integers(0, 100), min_size=len(treatments) - 1, max_size=len(treatments) - 1
                )
            )
        )
        bounds = [0, *cuts, 100]
        sizes = [bounds[i + 1] - bounds[i] for i in range(len(treatments))]
    return [{"treatment": t, "size": s} for t, s in zip(treatments, sizes, strict=True)]


def _condition_type() -> st.SearchStrategy[str | None]:
    """ROLLOUT, WHITELIST, or None meaning "leave the field out" (the SDK then says WHITELIST)."""
    return st.sampled_from(["ROLLOUT", "ROLLOUT", "WHITELIST", None])


@st.composite
def flag_conditions(draw: Draw, scope: _Scope) -> Json:
    """A flag condition: type, matcher group, partitions and an optional label."""
    condition: Json = {}
    condition_type = draw(_condition_type())
    if condition_type is not None:
        condition["conditionType"] = condition_type
    condition["matcherGroup"] = draw(matcher_groups(scope))
    condition["partitions"] = draw(partitions())
    label = draw(st.sampled_from([*LABELS, None]))
    if label is not None:
        condition["label"] = label
    return condition


@st.composite
def rbs_conditions(draw: Draw, scope: _Scope) -> Json:
    """A rule-based-segment condition: matchers only; partitions are ignored by the SDK."""
    condition: Json = {}
    condition_type = draw(_condition_type())
    if condition_type is not None:
        condition["conditionType"] = condition_type
    condition["matcherGroup"] = draw(matcher_groups(scope))
    if draw(st.booleans()):
        condition["partitions"] = []
    return condition


@st.composite
def default_rule(draw: Draw) -> Json:
    """The catch-all ROLLOUT ALL_KEYS condition Split's UI appends to most flags."""
    return {
        "conditionType": "ROLLOUT",
        "matcherGroup": {
            "combiner": "AND",
            "matchers": [
                {
                    "keySelector": {"trafficType": "user", "attribute": None},
                    "matcherType": "ALL_KEYS",
                    "negate": False,
                }
            ],
        },
        "partitions": draw(partitions()),
        "label": "default rule",
    }


@st.composite
def condition_lists(draw: Draw, scope: _Scope) -> list[Json]:
    """Targeting conditions, often closed by a default rule; sometimes the default rule
    alone (a plain percentage rollout, whose traffic allocation and partitions alone decide
    who gets what); rarely no condition at all."""
    if draw(one_in(12)):
        return []
    if draw(one_in(8)):
        return [draw(default_rule())]
    conditions = draw(st.lists(flag_conditions(scope), min_size=1, max_size=4))
    if draw(st.booleans()):
        conditions.append(draw(default_rule()))
    return list(conditions)


@st.composite
def configurations(draw: Draw) -> dict[str, str] | None:
    """Per-treatment JSON config strings for some treatments (also "control"), or none at all."""
    mode = draw(st.integers(0, 5))
    if mode == 4:
        return None
    if mode == 5:
        return {}
    chosen = draw(st.lists(st.sampled_from(TREATMENTS), unique=True, max_size=5))
    return {t: draw(st.sampled_from(CONFIGS)) for t in chosen}


@st.composite
def prerequisites(draw: Draw, scope: _Scope) -> list[Json] | None:
    """Prerequisites on earlier flags (absent most of the time)."""
    if not scope.flags or not draw(one_in(3)):
        return None
    names = draw(st.lists(st.sampled_from(scope.flags), min_size=1, max_size=2, unique=True))
    return [
        {
            "n": name,
            "ts": draw(st.lists(st.sampled_from(TREATMENTS), min_size=1, max_size=3, unique=True)),
        }
        for name in names
    ]


def traffic_allocations() -> st.SearchStrategy[int]:
    """Mostly 100 (no check); otherwise 0 (nobody in) or any 1..100."""
    return st.integers(0, 9).flatmap(
        lambda c: st.just(100) if c < 6 else st.just(0) if c == 6 else st.integers(1, 100)
    )


def _int32() -> st.SearchStrategy[int]:
    """A Split seed: any signed 32-bit integer."""
    return st.integers(-(2**31), 2**31 - 1)


@st.composite
def flags(draw: Draw, name: str, scope: _Scope) -> Json:
    """A feature flag whose fields cover kill, traffic allocation, algo, configs, prerequisites."""
    flag: Json = {
        "trafficTypeName": "user",
        "name": name,
        "trafficAllocation": draw(traffic_allocations()),
        "trafficAllocationSeed": draw(_int32()),
        "seed": draw(_int32()),
        "status": "ACTIVE",
        "killed": draw(one_in(12)),
        "defaultTreatment": draw(st.sampled_from(TREATMENTS)),
        "changeNumber": draw(st.integers(0, 2**41)),
        "conditions": draw(condition_lists(scope)),
    }
    algo = draw(st.sampled_from([2, 2, 1, None]))
    if algo is not None:
        flag["algo"] = algo
    configs = draw(configurations())
    if configs is not None or draw(st.booleans()):
        flag["configurations"] = configs
    prereqs = draw(prerequisites(scope))
    if prereqs is not None or draw(one_in(4)):
        flag["prerequisites"] = prereqs if prereqs is not None else []
    if draw(one_in(4)):
        flag["sets"] = draw(st.lists(st.sampled_from(["a", "b_set"]), unique=True))
        flag["impressionsDisabled"] = draw(st.booleans())
    return flag


@st.composite
def excluded(draw: Draw, scope: _Scope) -> Json | None:
    """Excluded keys plus standard and earlier rule-based segments (or the block left out)."""
    if draw(one_in(4)):
        return None
    keys = draw(st.lists(st.sampled_from(KEYS_BMP + KEYS_ASTRAL), unique=True, max_size=3))
    refs: list[Json] = [{"name": r, "type": "rule-based"} for r in scope.rule_based]
    # The SDK reads any type but "rule-based" (even null or "large") as a standard segment.
    refs += [{"name": s, "type": t} for s in scope.segments for t in ("standard", "large", None)]
    chosen = (
        draw(st.lists(st.sampled_from(refs), unique_by=lambda r: r["name"], max_size=3))
        if refs
        else []
    )
    return {"keys": keys, "segments": chosen}


@st.composite
def rule_based_segments(draw: Draw, name: str, scope: _Scope) -> Json:
    """A rule-based segment: conditions, exclusions, references only to earlier nodes."""
    rbs: Json = {
        "name": name,
        "trafficTypeName": "user",
        "changeNumber": draw(st.integers(0, 2**41)),
        "status": "ACTIVE",
        "conditions": draw(
            st.lists(rbs_conditions(scope), min_size=int(not draw(one_in(10))), max_size=3)
        ),
    }
    excl = draw(excluded(scope))
    if excl is not None or draw(st.booleans()):
        rbs["excluded"] = excl
    return rbs


def _referenced_flags(nodes: Iterable[Json]) -> set[str]:
    """Flags named by any dependency matcher or prerequisite (those must stay ACTIVE)."""
    names: set[str] = set()
    for node in nodes:
        for prereq in node.get("prerequisites") or []:
            names.add(prereq["n"])
        for condition in node["conditions"]:
            for matcher in condition["matcherGroup"]["matchers"]:
                dependency = matcher.get("dependencyMatcherData")
                if matcher["matcherType"] == "IN_SPLIT_TREATMENT" and dependency:
                    names.add(dependency["split"])
    return names


@st.composite
def chained_exclusions(draw: Draw, scope: _Scope) -> Json:
    """An excluded block naming one to three earlier segments, with excluded keys from the
    same few keys the segments hold.

    Mostly an earlier rule-based segment comes first and something that may exclude the
    same key follows it: the walk's early stop at the first one decides the answer then.
    """
    keys = draw(st.lists(st.sampled_from(HOT_KEYS), unique=True, min_size=1, max_size=2))
    refs: list[Json] = [{"name": r, "type": "rule-based"} for r in scope.rule_based]
    refs += [{"name": s, "type": "standard"} for s in scope.segments]
    first: list[Json] = []
    if scope.rule_based and not draw(one_in(4)):
        first = [{"name": draw(st.sampled_from(scope.rule_based)), "type": "rule-based"}]
    rest = [ref for ref in refs if ref not in first]
    chosen = draw(
        st.lists(
            st.sampled_from(rest),
            unique_by=lambda r: r["name"],
            min_size=1,
            max_size=min(3 - len(first), len(rest)),
        )
    )
    return {"keys": keys, "segments": first + chosen}


def _all_keys_condition() -> Json:
    """A rule-based-segment condition every key meets, so only the exclusions decide."""
    return {
        "conditionType": "ROLLOUT",
        "matcherGroup": {
            "combiner": "AND",
            "matchers": [{"matcherType": "ALL_KEYS", "negate": False}],
        },
    }


@st.composite
def chained_rule_based_segments(draw: Draw, name: str, scope: _Scope) -> Json:
    """A rule-based segment of an exclusion chain: often ALL_KEYS, always excluding something."""
    conditions = (
        [_all_keys_condition()]
        if draw(st.booleans())
        else draw(st.lists(rbs_conditions(scope), min_size=1, max_size=2))
    )
    return {
        "name": name,
        "trafficTypeName": "user",
        "changeNumber": draw(st.integers(0, 2**41)),
        "status": "ACTIVE",
        "conditions": conditions,
        "excluded": draw(chained_exclusions(scope)),
    }


@st.composite
def rule_based_probe(draw: Draw, scope: _Scope) -> Json:
    """A flag condition asking "is the key in this rule-based segment?": mostly the deepest,
    always one that can exclude another (not the first); WHITELIST-typed half the time,
    which the SDK evaluates before the traffic-allocation check."""
    names = scope.rule_based[1:]
    name = names[-1] if draw(st.booleans()) else draw(st.sampled_from(names))
    return {
        "conditionType": draw(st.sampled_from(["ROLLOUT", "WHITELIST"])),
        "matcherGroup": {
            "combiner": "AND",
            "matchers": [
                {
                    "keySelector": {"trafficType": "user", "attribute": None},
                    "matcherType": "IN_RULE_BASED_SEGMENT",
                    "negate": False,
                    "userDefinedSegmentMatcherData": {"segmentName": name},
                }
            ],
        },
        "partitions": draw(partitions()),
        "label": f"in {name}",
    }


@st.composite
def exclusion_chains(draw: Draw) -> Json:
    """Two to four rule-based segments, each excluding earlier ones and standard segments,
    then flags whose first condition asks for one of them.

    The SDK's walk over excluded segments is order-dependent (a key in a nested segment's
    excluded keys ends it with "not excluded", even when a later entry would exclude the
    key); every key here is drawn from HOT_KEYS, so the cases hit those stops.
    """
    members = st.lists(st.sampled_from(HOT_KEYS), unique=True, min_size=2, max_size=3)
    groups = draw(st.lists(members, min_size=1, max_size=2))
    segments = {f"seg_{i}": group for i, group in enumerate(groups)}
    scope = _Scope(segments=sorted(segments))
    rbs_list: list[Json] = []
    for index in range(draw(st.integers(2, 4))):
        name = f"rbs_{index}"
        rbs_list.append(draw(chained_rule_based_segments(name, scope)))
        scope.rule_based.append(name)
    flag_list: list[Json] = []
    for index in range(draw(st.integers(1, 3))):
        name = f"flag_{index}"
        flag = draw(flags(name, scope))
        flag["conditions"].insert(0, draw(rule_based_probe(scope)))
        flag_list.append(flag)
        scope.flags.append(name)
    return {
        "version": draw(st.integers(0, 2**41)),
        "flags": flag_list,
        "segments": segments,
        "ruleBasedSegments": rbs_list,
    }


@st.composite
def snapshots(draw: Draw) -> Json:
    """A whole valid snapshot: segments, then flags and rule-based segments in a random order
    (or, one time in four, an exclusion chain)."""
    if draw(one_in(4)):
        chain: Json = draw(exclusion_chains())
        return chain
    segments = draw(segment_maps())
    n_flags = draw(st.integers(1, 5))
    n_rbs = draw(st.integers(0, 3))
    order = draw(st.permutations(["flag"] * n_flags + ["rbs"] * n_rbs))
    scope = _Scope(segments=sorted(segments))
    flag_list: list[Json] = []
    rbs_list: list[Json] = []
    for kind in order:
        if kind == "flag":
            name = f"flag_{len(flag_list)}"
            flag_list.append(draw(flags(name, scope)))
            scope.flags.append(name)
        else:
            name = f"rbs_{len(rbs_list)}"
            rbs_list.append(draw(rule_based_segments(name, scope)))
            scope.rule_based.append(name)
    referenced = _referenced_flags(flag_list + rbs_list)
    for flag in flag_list:
        if flag["name"] not in referenced and draw(one_in(10)):
            flag["status"] = "ARCHIVED"
    return {
        "version": draw(st.integers(0, 2**41)),
        "flags": flag_list,
        "segments": segments,
        "ruleBasedSegments": rbs_list,
    }


def uses_legacy_hash(document: Json) -> bool:
    """True when any flag hashes with algo 1 (explicit or missing algo)."""
    return any(flag.get("algo") != 2 for flag in document["flags"])


def _all_matchers(document: Json) -> Iterable[Json]:
    """Every matcher of every flag and rule-based segment in the document."""
    for node in [*document["flags"], *document["ruleBasedSegments"]]:
        for condition in node["conditions"]:
            yield from condition["matcherGroup"]["matchers"]


def _near_numbers(matcher: Json) -> list[object]:
    """Inputs on and beside a numeric matcher's bounds (DATETIME bounds come back as seconds)."""
    data = matcher.get("unaryNumericMatcherData") or matcher.get("betweenMatcherData") or {}
    bounds = [data[k] for k in ("value", "start", "end") if k in data]
    if data.get("dataType") == "DATETIME":
        seconds = [b // 1000 for b in bounds]
        return [s + d for s in seconds for d in SECOND_DELTAS]
    return [b + d for b in bounds for d in (0, 1, -1)] + [str(b) for b in bounds]


def _near_strings(matcher: Json) -> list[object]:
    """Inputs that a string, set, boolean or semver matcher accepts, or only just misses."""
    matcher_type = matcher["matcherType"]
    items = list((matcher.get("whitelistMatcherData") or {}).get("whitelist") or [])
    if matcher_type == "EQUAL_TO_BOOLEAN":
        value = matcher["booleanMatcherData"]
        return [value, not value, str(value).upper(), f" {str(value).lower()} "]
    if matcher_type == "BETWEEN_SEMVER":
        data = matcher["betweenStringMatcherData"]
        low, high = VALID_SEMVERS.index(data["start"]), VALID_SEMVERS.index(data["end"])
        inside = list(VALID_SEMVERS[min(low, high) : max(low, high) + 1])
        return [data["start"], data["end"], f"{data['end']}+meta", *inside]
    if matcher_type in (
        "EQUAL_TO_SEMVER",
        "GREATER_THAN_OR_EQUAL_TO_SEMVER",
        "LESS_THAN_OR_EQUAL_TO_SEMVER",
    ):
        value = matcher["stringMatcherData"]
        return [value, f"{value}+meta", f"{value}-rc.1"]
    if MATCHER_KIND.get(matcher_type) == "list":
        return [items, items[:1], [*items, "zz"], items[1:]]
    if matcher_type in ("STARTS_WITH", "ENDS_WITH", "CONTAINS_STRING"):
        return [v for i in items for v in (i, f"{i}x", f"x{i}", f"x{i}x")]
    if matcher_type == "MATCHES_STRING":
        return list(REGEX_HITS[matcher["stringMatcherData"]])
    return items  # WHITELIST, IN_LIST_SEMVER


def _harvest(document: Json) -> dict[str | None, list[object]]:
    """Values the document's matchers look for, per attribute (None = the matching key).

    Drawing inputs from these makes conditions match often enough for the partition,
    traffic-allocation and config paths to be exercised, not only "default rule".
    """
    found: dict[str | None, list[object]] = {None: []}
    for segment in document["segments"].values():
        found[None].extend(segment)
    for rbs in document["ruleBasedSegments"]:
        found[None].extend((rbs.get("excluded") or {}).get("keys") or [])
    for matcher in _all_matchers(document):
        attribute = (matcher.get("keySelector") or {}).get("attribute")
        numeric = "NumericMatcherData" in "".join(matcher) or "betweenMatcherData" in matcher
        values = _near_numbers(matcher) if numeric else _near_strings(matcher)
        found.setdefault(attribute, []).extend(values)
    return found


def _key_pool(document: Json, harvested: list[object]) -> list[str]:
    """Keys to draw from: harvested ones first, then the fixed pool; BMP-only with legacy hash."""
    keys = [k for k in harvested if isinstance(k, str) and k] + list(KEYS_BMP + KEYS_ASTRAL)
    if uses_legacy_hash(document):
        keys = [k for k in keys if all(ord(ch) <= 0xFFFF for ch in k)]
    return list(dict.fromkeys(keys))


@st.composite
def attribute_maps(draw: Draw, harvested: dict[str | None, list[object]]) -> dict[str, Any] | None:
    """Attributes: None, {}, or each attribute harvested, own-kind, absent, null or wrong-kind."""
    mode = draw(st.integers(0, 9))
    if mode == 8:
        return None
    if mode == 9:
        return {}
    attributes: dict[str, Any] = {}
    for name, kind in ATTRIBUTE_KINDS.items():
        pick = draw(st.integers(0, 9))
        if pick < 4 and harvested.get(name):
            attributes[name] = draw(st.sampled_from(harvested[name]))
        elif pick < 6:
            attributes[name] = draw(attribute_value(kind))
        elif pick == 6:
            continue  # absent
        elif pick == 7:
            attributes[name] = None
        else:
            attributes[name] = draw(any_attribute_value())
    return attributes


def _contested_keys(document: Json) -> list[str]:
    """Keys a rule-based segment excludes that are also in a segment or excluded elsewhere:
    the keys for which the order of the exclusion walk decides the answer."""
    excluded = [
        set((rbs.get("excluded") or {}).get("keys") or ()) for rbs in document["ruleBasedSegments"]
    ]
    members = set().union(*document["segments"].values())
    return sorted(
        key
        for index, keys in enumerate(excluded)
        for key in keys
        if key in members or any(key in other for i, other in enumerate(excluded) if i != index)
    )


@st.composite
def cases(draw: Draw, document: Json) -> Case:
    """One request against the snapshot: a known (or unknown) flag, key, bucketing key, attrs.

    Half the keys are contested ones (see _contested_keys) when the snapshot has any.
    """
    harvested = _harvest(document)
    names = [flag["name"] for flag in document["flags"]]
    flag = "no_such_flag" if draw(one_in(20)) else draw(st.sampled_from(names))
    keys = _key_pool(document, harvested[None])
    contested = [k for k in _contested_keys(document) if k in keys]
    key = draw(st.sampled_from(contested if contested and draw(st.booleans()) else keys))
    bucketing = draw(st.one_of(st.none(), st.sampled_from(keys)))
    attributes = draw(attribute_maps(harvested))
    return Case(key=key, flag=flag, bucketing_key=bucketing, attributes=attributes)


@st.composite
def scenarios(draw: Draw, n_cases: int = 12) -> tuple[Json, list[Case]]:
    """A snapshot plus a batch of cases, so each snapshot is built once and evaluated often."""
    document = draw(snapshots())
    batch = draw(st.lists(cases(document), min_size=n_cases, max_size=n_cases))
    return document, batch
