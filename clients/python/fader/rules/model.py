"""Compiled, immutable forms of flags and rule-based segments.

Compilation turns Split's JSON into closures and lookup tables once per snapshot,
so that a lookup never re-reads JSON: a condition is one ``match`` callable plus a
100-entry bucket table of prebuilt results.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, overload

from fader.rules.result import Decision

Attributes = Mapping[str, Any]
# A segment's keys. A dict with None values, not a set: for the same keys it takes about
# 40 % less memory (compact entries), and membership tests cost the same.
Members = Mapping[str, None]
# (matching key, bucketing key, attributes) -> matched?
MatchFn = Callable[[str, str, "Attributes | None"], bool]
# (matching key, bucketing key, attributes) -> result
EvalFn = Callable[[str, str, "Attributes | None"], Decision]
# A flag whose answer is one of a few, told apart by the attributes alone: (index, answers),
# the answer being ``answers[index(attributes)]`` (``{}`` for no attributes)
Choice = tuple[Callable[[Attributes], int], tuple[Decision, ...]]


@overload
def text(value: str) -> str: ...
@overload
def text(value: None) -> None: ...
def text(value: str | None) -> str | None:
    """A string from a snapshot, interned: treatment names, labels, configurations and
    attribute names recur across thousands of flags and are then held once (decoders
    make a new string object for every occurrence). None (or a str subclass) as is."""
    return sys.intern(value) if type(value) is str else value


@dataclass(slots=True, weakref_slot=True)
class CompiledFlag:
    """A flag ready to evaluate; ``run`` holds the whole decision procedure.

    Never modified after compilation (not ``frozen``: a frozen dataclass's ``__init__``
    costs several times more, paid 10,000 times per large snapshot).
    """

    name: str
    change_number: int
    default_treatment: str
    treatments: tuple[str, ...]
    sets: frozenset[str]
    impressions_disabled: bool
    traffic_type: str | None
    killed: bool
    has_targeting: bool
    run: EvalFn
    exception_result: Decision
    # Identifies the definition (to tell which flags a new snapshot changed) without
    # keeping the flag's JSON alive: a large snapshot's raw JSON costs more than its rules.
    digest: bytes
    segment_names: frozenset[str]
    # Typed flags (flagd's dialect): each variant's JSON value, and the flag's metadata
    # (flag-set metadata under the flag's own). None for Split flags, whose treatments are
    # plain names with an optional config.
    values: Mapping[str, Any] | None = None
    metadata: Mapping[str, Any] | None = None
    # Set when ``run`` is such a choice (flagd targeting that picks between literals and
    # reads neither the targeting key nor the time), so a typed resolve can hold one typed
    # answer per choice (``fader.flagd.resolve``) instead of mapping a Decision per call.
    choice: Choice | None = None


@dataclass(frozen=True, slots=True)
class CompiledRuleBasedSegment:
    """A rule-based segment: excluded keys, excluded segments, and OR-ed matcher groups."""

    name: str
    excluded_keys: frozenset[str]
    # (is_rule_based, name) in declaration order; standard ones are checked in ``segments``.
    excluded_segments: tuple[tuple[bool, str], ...]
    conditions: tuple[MatchFn, ...]
