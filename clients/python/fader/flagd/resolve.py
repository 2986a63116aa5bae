"""Typed resolution of flagd-dialect flags in process: OpenFeature's ``resolve_<type>``
over one snapshot, what ``openfeature-flagd-core``'s evaluator gives the Python in-process
provider, with the same reasons and error codes as the sidecar's flagd and OFREP lanes.

A flag's answer is one of a few ``Decision``s built when the snapshot was compiled (a
variant matched, the default, no default variant, disabled, an error), so the typed answer
of each (``Resolution``: value checked against the type asked for, variant, reason,
metadata) is built once per flag, decision and type, then only looked up. A flag without
targeting has one answer whatever the context: its resolutions are found when the
``Resolver`` is made, and resolving it is a dictionary read.

Errors are values, not exceptions: a ``Resolution`` with ``error_code`` set carries the
caller's default, as OpenFeature's resolution details do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, NamedTuple, Protocol, cast

from fader.flagd import result as flagd_result
from fader.rules.model import CompiledFlag
from fader.rules.result import Decision
from fader.snapshot.snapshot import Snapshot

BOOLEAN: Final = "boolean"
STRING: Final = "string"
INTEGER: Final = "integer"
FLOAT: Final = "float"
OBJECT: Final = "object"

# The JSON types each typed resolve accepts (a boolean is never a number; an integral
# float is an integer; any number is a float).
KINDS: Final[Mapping[str, tuple[type, ...]]] = {
    BOOLEAN: (bool,),
    STRING: (str,),
    INTEGER: (int,),
    FLOAT: (int, float),
    OBJECT: (dict,),
}

FLAG_NOT_FOUND: Final = "FLAG_NOT_FOUND"
TYPE_MISMATCH: Final = "TYPE_MISMATCH"
GENERAL: Final = "GENERAL"
TARGETING_KEY: Final = "targetingKey"


class TypeMismatch(ValueError):
    """A variant's value is not of the type a resolve asked for."""


def typed_value(flag: str, variant: str, value: Any, kind: str) -> Any:
    """``value`` as a ``kind`` resolve answers it; TypeMismatch when it is of another type.
    The one definition of flagd's typing rules, for the lanes and for ``Resolver``."""
    if isinstance(value, float) and kind == INTEGER and value.is_integer():
        value = int(value)
    if value is None or (isinstance(value, bool) and kind != BOOLEAN):
        raise TypeMismatch(f"variant {variant!r} of {flag!r} is not a {kind}")
    if not isinstance(value, KINDS[kind]):
        raise TypeMismatch(f"variant {variant!r} of {flag!r} is not a {kind}")
    return float(cast(float, value)) if kind == FLOAT else value


class Resolution(NamedTuple):
    """One typed answer. ``value`` is the caller's default when there is no variant (a
    disabled flag, no default variant) and with every error; ``error_code`` is one of
    OpenFeature's (``FLAG_NOT_FOUND``, ``TYPE_MISMATCH``, ``PARSE_ERROR``, ``GENERAL``)."""

    value: Any
    variant: str | None
    reason: str
    metadata: Mapping[str, Any]
    error_code: str | None = None
    error_message: str | None = None


def resolution(flag: CompiledFlag, decision: Decision, kind: str) -> Resolution:
    """The typed answer of ``flag`` answering ``decision`` to a ``kind`` resolve, with no
    value where the caller's default goes (``Resolver`` puts it in)."""
    label = decision.label or ""
    metadata = flag.metadata or {}
    error = flagd_result.ERRORS.get(label)
    if error is not None:
        return _error(error, flagd_result.ERROR_MESSAGES[label], metadata)
    reason = flagd_result.REASONS[label]
    if label in flagd_result.WITHOUT_VALUE:
        return Resolution(None, None, reason, metadata)
    values = flag.values or {}
    try:
        value = typed_value(flag.name, decision.treatment, values[decision.treatment], kind)
    except TypeMismatch as err:
        return _error(TYPE_MISMATCH, str(err), metadata)
    return Resolution(value, decision.treatment, reason, metadata)


def _error(code: str, message: str, metadata: Mapping[str, Any], value: Any = None) -> Resolution:
    return Resolution(value, None, flagd_result.ERROR, metadata, code, message)


class ResolveFn(Protocol):
    """(flag key, default, context=None) -> the flag's typed answer; never raises."""

    def __call__(
        self, flag_key: str, default: Any, context: Mapping[str, Any] | None = None, /
    ) -> Resolution: ...


class Resolver:
    """OpenFeature's typed resolves over one snapshot's flagd flags: ``resolve_boolean``,
    ``resolve_string``, ``resolve_integer``, ``resolve_float``, ``resolve_object`` (each
    ``(flag_key, default, context=None) -> Resolution``), and ``for_kind`` for a type chosen
    at run time.

    Made once per snapshot (a new snapshot, a new ``Resolver``), and safe to share between
    threads. The resolves are closures rather than methods (a frame and a bound method less
    on the hot path; ``fader.rules.evaluate`` does the same), each built with its ready
    answers on first use (``__getattr__``): a service asks for one or two types, and a
    type's answers cost ~4 µs per flag to build.
    """

    __slots__ = (
        "resolve_boolean",
        "resolve_float",
        "resolve_integer",
        "resolve_object",
        "resolve_string",
        "snapshot",
    )
    resolve_boolean: ResolveFn
    resolve_float: ResolveFn
    resolve_integer: ResolveFn
    resolve_object: ResolveFn
    resolve_string: ResolveFn

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def for_kind(self, kind: str) -> ResolveFn:
        """The resolve of ``kind`` (``BOOLEAN``, ``STRING``, ``INTEGER``, ``FLOAT``,
        ``OBJECT``); KeyError for another."""
        return getattr(self, _ATTRIBUTES[kind])  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> ResolveFn:
        """Only called while a resolve's slot is empty: builds it, once."""
        kind = _KINDS_OF.get(name)
        if kind is None:
            raise AttributeError(name)
        resolve = _make_resolve(self.snapshot.flags, kind)
        setattr(self, name, resolve)
        return resolve


_ATTRIBUTES: Final = {kind: f"resolve_{kind}" for kind in KINDS}
_KINDS_OF: Final = {name: kind for kind, name in _ATTRIBUTES.items()}


def _make_resolve(flags: Mapping[str, CompiledFlag], kind: str) -> ResolveFn:
    """The ``kind`` resolve over ``flags``. Three paths, cheapest first: a flag without
    targeting has its answer ready; a choice (``CompiledFlag.choice``) picks among its
    ready answers; any other rule runs and its Decision is mapped once, then remembered
    (a flag's Decisions are built when compiling: at most its variants plus four)."""
    static: dict[str, Resolution] = {}
    choices: dict[str, tuple[Callable[[Mapping[str, Any]], int], tuple[Resolution | None, ...]]]
    choices = {}
    for name, flag in flags.items():
        if flag.values is None:
            continue
        if not flag.has_targeting:
            answer = resolution(flag, flag.run("", "", None), kind)
            if answer.variant is not None:  # else the caller's default goes in: general path
                static[name] = answer
        elif flag.choice is not None:
            index, decisions = flag.choice
            # None where the answer takes the caller's default: the general path puts it in
            answers = (resolution(flag, d, kind) for d in decisions)
            choices[name] = (index, tuple(a if a.variant is not None else None for a in answers))
    static_get, choice_get, flag_get = static.get, choices.get, flags.get
    memo: dict[str, dict[Decision, Resolution]] = {}
    empty: Mapping[str, Any] = {}

    def general(flag_key: str, default: Any, context: Mapping[str, Any] | None) -> Resolution:
        flag = flag_get(flag_key)
        if flag is None or flag.values is None:
            return _missing(flag_key, flag, default)
        key = context.get(TARGETING_KEY) if context else None
        key = key if type(key) is str else ""
        try:
            decision = flag.run(key, key, context)
        except Exception:  # a rule that fails on this context: flagd's GENERAL
            decision = flag.exception_result
        answers = memo.get(flag_key)
        if answers is None:
            answers = memo[flag_key] = {}
        answer = answers.get(decision)
        if answer is None:
            answer = answers[decision] = resolution(flag, decision, kind)
        return answer if answer.variant is not None else answer._replace(value=default)

    def resolve(
        flag_key: str, default: Any, context: Mapping[str, Any] | None = None
    ) -> Resolution:
        found = static_get(flag_key)
        if found is not None:
            return found
        choice = choice_get(flag_key)
        if choice is None:
            return general(flag_key, default, context)
        index, answers = choice
        try:
            found = answers[index(context if context is not None else empty)]
        except Exception:  # the general path answers it, as an error
            return general(flag_key, default, context)
        return found if found is not None else general(flag_key, default, context)

    return resolve


def _missing(flag_key: str, flag: CompiledFlag | None, default: Any) -> Resolution:
    if flag is None:
        return _error(FLAG_NOT_FOUND, f"no flag {flag_key!r}", {}, default)
    return _error(
        GENERAL, f"{flag_key!r} is a Split-style flag: ask for its treatment", {}, default
    )
