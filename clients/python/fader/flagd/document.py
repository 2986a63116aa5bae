"""A flagd flags document -> validated, compiled flags, in one pass.

The document is flagd's own (flagd.dev/schema/v0/flags.json): ``flags`` (an object of
flag key -> flag; the daemon's array form with ``key`` is read too), ``$evaluators``
(shared rules used with ``{"$ref": name}``), ``metadata`` (the flag set's: ``flagSetId``,
``version``...). Fader adds one optional key, ``fractional``: ``"v2"`` (default) or
``"v3"`` (see ``fader.flagd.operators``).

Each flag becomes a ``CompiledFlag`` whose ``run`` answers the engine's ``Decision``
(``fader.flagd.result`` says how), with every reachable Decision built here, once.

Errors (the snapshot is refused, each naming the flag and the JSON path): a flag that is
not an object, an unknown ``state``, no variants or variants of mixed types, a
``defaultVariant`` that is not a variant, metadata values that are not scalars, targeting
that is not an object or is over the depth or size limits. Warnings (the flag then answers
PARSE_ERROR, as under flagd): an unknown operator or a ``$ref`` to a missing evaluator.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from fader.flagd import result as flagd_result
from fader.flagd.jsonlogic import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_NODES,
    FLAGD,
    REF,
    Compiler,
    Node,
    TargetingProblem,
    TooComplex,
)
from fader.flagd.operators import TARGETING_KEY, Fractional, operators
from fader.flagd.values import number_text
from fader.rules.compile import definition_digest
from fader.rules.model import Attributes, Choice, CompiledFlag, EvalFn
from fader.rules.result import CONTROL, LABEL_EXCEPTION, Decision
from fader.snapshot.issues import Issue

ENABLED: Final = "ENABLED"
DISABLED: Final = "DISABLED"
FLAG_SET_ID: Final = "flagSetId"
KNOWN_KEYS: Final = frozenset(("$schema", "flags", "$evaluators", "metadata", "fractional"))


@dataclass(frozen=True, slots=True)
class FlagdLimits:
    """Bounds on one flag's targeting, after ``$ref`` substitution."""

    max_depth: int = DEFAULT_MAX_DEPTH
    max_nodes: int = DEFAULT_MAX_NODES


@dataclass(slots=True)
class FlagdSet:
    """The flagd-dialect flags of one snapshot as in-process providers read them over
    flagd sync: each flag's JSON with its ``$ref``s substituted, and the set's metadata."""

    flags: Mapping[str, Mapping[str, Any]]
    metadata: Mapping[str, Any]
    fractional: Fractional
    flag_sets: Mapping[str, str | None]  # flag key -> its flagSetId
    # flags whose answer may change with time alone (they read $flagd.timestamp)
    clocked: frozenset[str] = frozenset()
    _payloads: dict[str | None, str] = field(default_factory=dict)

    def clock_free(self, keys: list[str]) -> bool:
        """True when none of `keys` reads the time: the same context, the same answers."""
        return self.clocked.isdisjoint(keys)

    def keys(self, flag_set: str | None = None) -> list[str]:
        return sorted(k for k in self.flags if flag_set is None or self.flag_sets[k] == flag_set)

    def payload(self, flag_set: str | None = None) -> str:
        """flagd sync's ``flag_configuration``: ``{"flags": {...}, "metadata": {...}}`` for
        one flag set (None: all), built once per set and snapshot."""
        text = self._payloads.get(flag_set)
        if text is None:
            flags = {key: self.flags[key] for key in self.keys(flag_set)}
            document: dict[str, Any] = {"flags": flags}
            if self.metadata:
                document["metadata"] = dict(self.metadata)
            text = self._payloads[flag_set] = json.dumps(document, separators=(",", ":"))
        return text


@dataclass
class Built:
    flags: dict[str, CompiledFlag]
    flagd_set: FlagdSet
    errors: list[Issue]
    warnings: list[Issue]


def build(
    doc: Any,
    path: str = "$",
    change_number: int | None = None,
    limits: FlagdLimits = FlagdLimits(),
    *,
    specialise: bool = True,
) -> Built:
    """Validate and compile a whole flagd document; problems are collected, never raised.
    ``specialise=False`` compiles targeting with the general closures only (see
    ``fader.flagd.jsonlogic``), which the tests compare the specialised ones with."""
    builder = _Builder(path, change_number, limits, specialise)
    builder.document(doc)
    flagd_set = FlagdSet(
        builder.inlined,
        builder.set_metadata,
        builder.fractional,
        builder.sets,
        frozenset(builder.clocked),
    )
    return Built(builder.compiled, flagd_set, builder.errors, builder.warnings)


def flag_path(path: str, key: str) -> str:
    return f"{path}.flags[{json.dumps(key)}]"


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | bool | int | float)


def _kind(value: Any) -> str | None:
    """flagd's variant types: boolean, string, number, object."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, dict | list):
        return "object"
    return None


class _Builder:
    def __init__(
        self, path: str, change_number: int | None, limits: FlagdLimits, specialise: bool
    ) -> None:
        self.path = path
        self.specialise = specialise
        self.change_number = change_number
        self.limits = limits
        self.errors: list[Issue] = []
        self.warnings: list[Issue] = []
        self.compiled: dict[str, CompiledFlag] = {}
        self.inlined: dict[str, Mapping[str, Any]] = {}
        self.sets: dict[str, str | None] = {}
        self.set_metadata: dict[str, Any] = {}
        self.fractional = Fractional.V2
        self.evaluators: Mapping[str, Any] = {}
        self.clocked: set[str] = set()

    def error(self, flag: str | None, path: str, message: str) -> None:
        self.errors.append(Issue(flag, path, message))

    def document(self, doc: Any) -> None:
        path = self.path
        if not isinstance(doc, dict):
            self.error(None, path, "a flagd document must be an object")
            return
        for key in doc:
            if key not in KNOWN_KEYS:
                self.warnings.append(Issue(None, f"{path}.{key}", "unknown key, ignored"))
        generation = doc.get("fractional", Fractional.V2.value)
        if generation not in (Fractional.V2.value, Fractional.V3.value):
            self.error(None, f"{path}.fractional", f"must be 'v2' or 'v3', got {generation!r}")
        else:
            self.fractional = Fractional(generation)
        evaluators = doc.get("$evaluators")
        if evaluators is not None and not isinstance(evaluators, dict):
            self.error(None, f"{path}.$evaluators", "must be an object of name -> rule")
        self.evaluators = evaluators if isinstance(evaluators, dict) else {}
        self.set_metadata = self.metadata(doc.get("metadata"), None, f"{path}.metadata")
        for key, raw in self.flag_items(doc.get("flags")):
            self.flag(key, raw)

    def flag_items(self, flags: Any) -> list[tuple[str, Any]]:
        path = f"{self.path}.flags"
        if isinstance(flags, dict):
            return list(flags.items())
        if isinstance(flags, list):  # the flagd daemon's array form: each flag has "key"
            items = []
            for index, raw in enumerate(flags):
                key = raw.get("key") if isinstance(raw, dict) else None
                if not isinstance(key, str) or not key:
                    self.error(None, f"{path}[{index}].key", "a flag in the array needs a key")
                    continue
                items.append((key, {k: v for k, v in raw.items() if k != "key"}))
            keys = [key for key, _ in items]
            for key in {k for k in keys if keys.count(k) > 1}:
                self.error(key, path, "duplicate flag key")
            return items
        self.error(None, path, "must be an object of flag key -> flag definition")
        return []

    def metadata(self, raw: Any, flag: str | None, path: str) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.error(flag, path, "metadata must be an object")
            return {}
        for key, value in raw.items():
            if not _is_scalar(value):
                self.error(
                    flag, f"{path}.{key}", "metadata values are strings, numbers or booleans"
                )
        return dict(raw)

    def flag(self, key: str, raw: Any) -> None:
        path = flag_path(self.path, key)
        if not key:
            self.error(None, path, "a flag key must not be empty")
            return
        if not isinstance(raw, dict):
            self.error(key, path, "a flag must be an object")
            return
        errors_before = len(self.errors)
        state = raw.get("state")
        if state not in (ENABLED, DISABLED):
            self.error(key, f"{path}.state", f"state must be ENABLED or DISABLED, got {state!r}")
        variants = raw.get("variants")
        if not isinstance(variants, dict) or not variants:
            self.error(
                key, f"{path}.variants", "variants must be an object with at least one variant"
            )
            variants = {}
        kinds = {_kind(value) for value in variants.values()}
        if None in kinds or len(kinds) > 1:
            self.error(
                key,
                f"{path}.variants",
                "variants must all be booleans, all strings, all numbers or all objects",
            )
        default = raw.get("defaultVariant")
        if default is not None and (not isinstance(default, str) or default not in variants):
            self.error(key, f"{path}.defaultVariant", f"{default!r} is not one of the variants")
        flag_metadata = self.metadata(raw.get("metadata"), key, f"{path}.metadata")
        targeting = raw.get("targeting")
        if targeting is not None and not isinstance(targeting, dict):
            self.error(key, f"{path}.targeting", "targeting must be a JsonLogic object")
            targeting = None
        if len(self.errors) > errors_before:
            return
        metadata = {**self.set_metadata, **flag_metadata}
        flag_set = metadata.get(FLAG_SET_ID)
        self.sets[key] = flag_set if isinstance(flag_set, str) else None
        self.inlined[key] = (
            {**raw, "targeting": inline_refs(targeting, self.evaluators)} if targeting else raw
        )
        self.compiled[key] = self.compile(
            key, raw, variants, default, targeting or None, metadata, path
        )

    def compile(
        self,
        key: str,
        raw: Mapping[str, Any],
        variants: Mapping[str, Any],
        default: str | None,
        targeting: Mapping[str, Any] | None,
        metadata: Mapping[str, Any],
        path: str,
    ) -> CompiledFlag:
        cn = self.change_number
        configs = {
            name: json.dumps(value, separators=(",", ":")) for name, value in variants.items()
        }

        def decision(variant: str | None, label: str) -> Decision:
            if variant is None:
                return Decision(CONTROL, label, None, cn)
            return Decision(variant, label, configs[variant], cn)

        disabled = raw.get("state") == DISABLED
        run: EvalFn
        choice: Choice | None = None
        if disabled:
            run = _fixed(decision(None, flagd_result.LABEL_DISABLED))
        elif targeting is None:
            label = (
                flagd_result.LABEL_STATIC
                if default is not None
                else flagd_result.LABEL_NO_DEFAULT_VARIANT
            )
            run = _fixed(decision(default, label))
        else:
            run, choice = self.targeted(key, targeting, default, variants, decision, path)
        sets = self.sets[key]
        return CompiledFlag(
            name=key,
            change_number=cn or 0,
            default_treatment=default if default is not None else CONTROL,
            treatments=tuple(sorted(variants)),
            sets=frozenset((sets,)) if sets else frozenset(),
            impressions_disabled=False,
            traffic_type=None,
            killed=disabled,
            has_targeting=targeting is not None,
            run=run,
            exception_result=Decision(CONTROL, LABEL_EXCEPTION, None, cn),
            digest=definition_digest(
                {
                    "flag": self.inlined[key],
                    "metadata": metadata,
                    "fractional": self.fractional.value,
                }
            ),
            segment_names=frozenset(),
            values=dict(variants),
            metadata=metadata,
            choice=choice,
        )

    def targeted(
        self,
        key: str,
        targeting: Mapping[str, Any],
        default: str | None,
        variants: Mapping[str, Any],
        decision: Callable[[str | None, str], Decision],
        path: str,
    ) -> tuple[EvalFn, Choice | None]:
        """The targeted flag's ``run``, and its choice when it is one (``CompiledFlag``)."""
        compiler = Compiler(
            key,
            self.evaluators,
            operators(self.fractional),
            max_depth=self.limits.max_depth,
            max_nodes=self.limits.max_nodes,
            specialise=self.specialise,
        )
        try:
            node = compiler.compile(dict(targeting), f"{path}.targeting")
        except TooComplex as problem:
            self.error(key, problem.path, problem.message)
            return _fixed(decision(None, LABEL_EXCEPTION)), None
        except TargetingProblem as problem:
            self.warnings.append(
                Issue(key, problem.path, f"{problem.message}: the flag answers PARSE_ERROR")
            )
            return _fixed(decision(None, flagd_result.LABEL_TARGETING_ERROR)), None
        if compiler.reads_time or compiler.uses_whole_data:
            self.clocked.add(key)
        default_answer = decision(
            default,
            flagd_result.LABEL_DEFAULT_VARIANT
            if default is not None
            else flagd_result.LABEL_NO_DEFAULT_VARIANT,
        )
        matches = {name: decision(name, flagd_result.LABEL_TARGETING_MATCH) for name in variants}
        unknown = decision(None, flagd_result.LABEL_UNKNOWN_VARIANT)
        return _targeting_run(
            node,
            key,
            compiler.uses_whole_data,
            compiler.reads_key,
            matches,
            default_answer,
            unknown,
        )


def _fixed(answer: Decision) -> EvalFn:
    return lambda key, bk, attrs: answer


def _variant_name(value: Any) -> str | None:
    """What flagd makes of a targeting result: booleans name the "true"/"false" variants,
    numbers their JSON text; None for anything else (a list, an object)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return number_text(value)
    return None


def _targeting_run(
    rule: Node,
    flag_key: str,
    whole_data: bool,
    reads_key: bool,
    matches: Mapping[str, Decision],
    default_answer: Decision,
    unknown: Decision,
) -> tuple[EvalFn, Choice | None]:
    """The run closure of a targeted flag, and its choice when it is one. The evaluation
    data is the attributes, with the lookup's key as ``targetingKey`` unless the attributes
    carry one (the flagd lanes pass the context whole); ``$flagd`` is added only for rules
    that read the data as a whole (constant ``$flagd.*`` paths were resolved when
    compiling). The attributes are copied only for a rule that reads the targeting key. A
    rule that is a choice between literals (``Node.index``) has each literal's answer found
    here, once."""
    get_match = matches.get

    def answer(value: Any) -> Decision:
        if value is None:
            return default_answer
        name = value if type(value) is str else _variant_name(value)
        found = get_match(name) if name is not None else None
        return unknown if found is None else found

    fn, index = rule.fn, rule.index
    answers = tuple(map(answer, rule.choices)) if rule.choices is not None else ()
    if index is not None and not reads_key and not whole_data:

        def chosen(key: str, bk: str, attrs: Attributes | None) -> Decision:
            return answers[index(attrs if attrs is not None else {})]

        return chosen, (index, answers)

    def run(key: str, bk: str, attrs: Attributes | None) -> Decision:
        data: Any = attrs if attrs is not None else {}
        if reads_key and key and TARGETING_KEY not in data:
            data = {**data, TARGETING_KEY: key}
        if whole_data:
            data = {**data, FLAGD: {"flagKey": flag_key, "timestamp": int(time.time())}}
        if index is not None:
            return answers[index(data)]
        return answer(fn(data))

    return run, None


def inline_refs(node: Any, evaluators: Mapping[str, Any]) -> Any:
    """``{"$ref": name}`` replaced by the evaluator's rule (one level, as flagd does), so the
    flags sent over sync stand alone; an unknown ref stays as it is."""
    if isinstance(node, list):
        return [inline_refs(item, evaluators) for item in node]
    if isinstance(node, dict):
        if len(node) == 1 and REF in node:
            name = node[REF]
            if isinstance(name, str) and name in evaluators:
                return evaluators[name]
            return node
        return {k: inline_refs(v, evaluators) for k, v in node.items()}
    return node
