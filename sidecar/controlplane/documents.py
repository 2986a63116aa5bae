"""Submitted flag documents: recognise their shape, merge them into a set, validate the result.

A team submits flag JSON in whatever shape it keeps it: one Split flag, a list of them, a
snapshot (its ``flagd`` section too), Split's ``splitChanges`` (1.1 or 1.3), or a plain
flagd flags file. Whatever changes, the *resulting* set is validated as a whole, by the
sidecar's own snapshot validation (a flag may depend on one already in the store; a name is
unique across both dialects), but each error is reported where the submitter can find it:
for a submitted item, at the JSON path it has in its own document, exactly as ``fader
validate`` prints it for that file; for an item the submission did not contain, at its path
in the snapshot the store would publish.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fader.flagd.document import build as build_flagd
from fader.flagd.document import flag_path as flagd_flag_path
from fader.snapshot.codec import normalize
from fader.snapshot.issues import Issue, SnapshotError
from fader.snapshot.loader import check_document
from fader.snapshot.validate import validate

from sidecar.controlplane.flagset import (
    EVALUATOR,
    FLAG,
    FLAGD,
    FLAGD_SET,
    FLAGD_SETTINGS,
    RBS,
    FlagSet,
    strip_change_number,
)

# Where an issue about an item that nobody submitted comes from.
SNAPSHOT_SOURCE = "snapshot"


@dataclass(frozen=True, slots=True)
class Located:
    """A validation issue and the document it refers to."""

    issue: Issue
    source: str

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "flag": self.issue.flag,
            "path": self.issue.path,
            "message": self.issue.message,
            "text": str(self.issue),
        }


class InvalidFlags(ValueError):
    """The change would leave an invalid flag set; nothing was written."""

    def __init__(self, errors: Sequence[Located], warnings: Sequence[Located] = ()) -> None:
        self.errors = list(errors)
        self.warnings = list(warnings)
        lines = "; ".join(f"{e.source}: {e.issue}" for e in self.errors[:5])
        super().__init__(f"invalid flags ({len(self.errors)} errors): {lines}")


# Where a snapshot keeps its flagd document.
FLAGD_SECTION = "$.flagd"


@dataclass(frozen=True)
class Part:
    """One submitted document in native form, with the JSON paths its items have in it.

    Its flagd document, if any, is split into items: flags by key (the daemon's array form
    becomes the object form), ``$evaluators`` by name, ``metadata`` and ``fractional``.
    ``single``: the part is one flag (of either dialect) submitted on its own, at ``$``.
    """

    source: str
    flags: list[Any]
    segments: dict[str, Any] = field(default_factory=dict)
    rule_based_segments: list[Any] = field(default_factory=list)
    flags_path: str = "$.flags"
    single: bool = False
    rbs_path: str = "$.ruleBasedSegments"
    segments_path: str = "$.segments"
    flagd_flags: dict[str, Any] = field(default_factory=dict)
    evaluators: dict[str, Any] = field(default_factory=dict)
    flagd_settings: dict[str, Any] = field(default_factory=dict)
    flagd_path: str = FLAGD_SECTION

    def flag_path(self, index: int) -> str:
        return self.flags_path if self.single else f"{self.flags_path}[{index}]"

    def flagd_item_path(self, kind: str, name: str) -> str:
        """Where a flagd item is in this part: a flag, an evaluator or a setting."""
        if self.single and kind == FLAGD:
            return "$"
        return flagd_item_path(self.flagd_path, kind, name)

    def flagd_items(self, kind: str) -> dict[str, Any]:
        if kind == FLAGD:
            return self.flagd_flags
        return self.evaluators if kind == EVALUATOR else self.flagd_settings


def parse_document(document: Any, source: str = "request") -> Part:
    """Recognise one flag, a list of flags, a snapshot, splitChanges or a flagd flags file;
    InvalidFlags if none."""
    if isinstance(document, list):
        return Part(source, list(document), flags_path="$")
    if isinstance(document, dict) and _looks_like_flag(document):
        return Part(source, [document], flags_path="$", single=True)
    try:
        doc = normalize(document)
    except SnapshotError as exc:
        raise InvalidFlags([Located(issue, source) for issue in exc.issues]) from None
    segments = doc.segments if isinstance(doc.segments, dict) else {}
    if not isinstance(doc.segments, dict):
        issue = Issue(None, doc.segments_path, "segments must be an object")
        raise InvalidFlags([Located(issue, source)])
    flagd_flags, evaluators, settings = _flagd_items(doc.flagd, doc.flagd_path, source)
    return Part(
        source,
        doc.flags,
        segments,
        doc.rule_based_segments,
        flags_path=doc.flags_path,
        rbs_path=doc.rbs_path,
        segments_path=doc.segments_path,
        flagd_flags=flagd_flags,
        evaluators=evaluators,
        flagd_settings=settings,
        flagd_path=doc.flagd_path,
    )


def flagd_flag_part(name: str, definition: Any, source: str = "request") -> Part:
    """One flagd flag submitted on its own (its definition at ``$``)."""
    return Part(source, [], single=True, flagd_flags={name: definition})


def is_flagd_flag(definition: Any) -> bool:
    """A flag definition in flagd's dialect (``variants``), not Split's (``conditions``)."""
    return (
        isinstance(definition, dict) and "variants" in definition and "conditions" not in definition
    )


FlagdItems = tuple[dict[str, Any], dict[str, Any], dict[str, Any]]


def _flagd_items(flagd: Any, path: str, source: str) -> FlagdItems:
    """A submitted flagd document as (flags by key, evaluators, settings). A document whose
    shape cannot be taken apart is refused with the sidecar's own errors for it."""
    if flagd is None:
        return {}, {}, {}
    items = _taken_apart(flagd)
    if items is not None:
        # the store's rows say "removed" with null, so a null evaluator cannot be kept (and
        # flagd would read it as a rule that is always false, not as a missing one)
        nulls = sorted(name for name, rule in items[1].items() if rule is None)
        if nulls:
            message = "an evaluator must be a rule, not null (the control plane cannot keep it)"
            raise InvalidFlags(
                [Located(Issue(None, f"{path}.$evaluators.{n}", message), source) for n in nulls]
            )
        return items
    built = build_flagd(flagd, path)
    errors = built.errors or [Issue(None, path, "not a flagd flags document")]
    raise InvalidFlags([Located(i, source) for i in errors])


def _taken_apart(flagd: Any) -> FlagdItems | None:
    if not isinstance(flagd, dict):
        return None
    raw_flags, evaluators = flagd.get("flags"), flagd.get("$evaluators", {})
    if not isinstance(evaluators, dict):
        return None
    if isinstance(raw_flags, dict):
        flags = dict(raw_flags)
    elif isinstance(raw_flags, list):  # the flagd daemon's array form: each flag has "key"
        flags = {}
        for raw in raw_flags:
            key = raw.get("key") if isinstance(raw, dict) else None
            if not isinstance(key, str) or not key or key in flags:
                return None
            flags[key] = {k: v for k, v in raw.items() if k != "key"}
    else:
        return None
    settings = {name: flagd[name] for name in FLAGD_SETTINGS if name in flagd}
    return flags, dict(evaluators), settings


def _looks_like_flag(document: Mapping[str, Any]) -> bool:
    snapshot_keys = ("flags", "version", "ff", "splits")
    return "conditions" in document and not any(key in document for key in snapshot_keys)


def merge(base: FlagSet, parts: Sequence[Part], *, replace: bool = False) -> FlagSet:
    """``base`` with every submitted item put in (or, with ``replace``, only the submitted
    items); validated as a whole, raising InvalidFlags with located issues."""
    return _Merge(base, parts, replace).run()


def check(flagset: FlagSet) -> FlagSet:
    """``flagset`` itself, validated; issues at their paths in the published snapshot."""
    return _Merge(flagset, (), replace=False).run()


def check_flag(flagset: FlagSet, name: str) -> FlagSet:
    """``flagset`` after an edit of flag ``name`` that kept every reference it makes (the
    dimmer, kill, revive): only that flag is validated, next to the flags it names, because
    the rest of the set was valid and no reference, so no cycle, can have appeared.
    Validating 1,000 flags for every dial would cost ~30 ms a write."""
    definition = flagset.flags[name]
    named = sorted(n for n in _flags_named(definition) if n in flagset.flags and n != name)
    stubs = [{"name": n, "seed": 0, "defaultTreatment": "control", "conditions": []} for n in named]
    rbs = [flagset.rule_based_segments[n] for n in sorted(flagset.rule_based_segments)]
    report = validate([definition, *stubs], dict(flagset.segments), rbs)
    position = f"$.flags[{sorted(flagset.flags).index(name)}]"
    errors = [
        Located(
            Issue(issue.flag, position + issue.path.removeprefix("$.flags[0]"), issue.message),
            SNAPSHOT_SOURCE,
        )
        for issue in report.errors
    ]
    if errors:
        raise InvalidFlags(errors)
    return flagset


def check_flagd_flag(flagset: FlagSet, name: str) -> FlagSet:
    """``flagset`` after an edit of flagd flag ``name`` alone (kill, revive): a flagd flag
    names no other flag, so only it is validated, with the set's evaluators and settings."""
    alone = FlagSet(
        flagd_flags={name: flagset.flagd_flags[name]},
        evaluators=flagset.evaluators,
        flagd_settings=flagset.flagd_settings,
    )
    built = build_flagd(alone.flagd_document(), FLAGD_SECTION)
    if built.errors:
        raise InvalidFlags([Located(issue, SNAPSHOT_SOURCE) for issue in built.errors])
    return flagset


def _flags_named(definition: dict[str, Any]) -> set[str]:
    """The flags a definition depends on (dependency matchers and prerequisites)."""
    names: set[str] = set()
    for prerequisite in definition.get("prerequisites") or ():
        if isinstance(prerequisite, dict) and isinstance(prerequisite.get("n"), str):
            names.add(prerequisite["n"])
    for condition in definition.get("conditions") or ():
        group = condition.get("matcherGroup") if isinstance(condition, dict) else None
        for matcher in (group or {}).get("matchers") or ():
            data = matcher.get("dependencyMatcherData") if isinstance(matcher, dict) else None
            if isinstance(data, dict) and isinstance(data.get("split"), str):
                names.add(data["split"])
    return names


# How the flagd compiler locates an issue inside a $ref'd evaluator.
_EVALUATORS = "$evaluators."
_INDEXED = re.compile(r"^\$\.(flags|ruleBasedSegments)\[(\d+)\](.*)$", re.DOTALL)
_SEGMENT = re.compile(r"^\$\.segments\.([^.\[]+)(.*)$", re.DOTALL)


class _Merge:
    """Builds the combined lists in a known order, validates once, maps paths back."""

    def __init__(self, base: FlagSet, parts: Sequence[Part], replace: bool) -> None:
        self.base = base
        self.parts = parts
        self.replace = replace
        # index in a combined list -> (source, path), or (SNAPSHOT_SOURCE, name) for an
        # item nobody submitted, placed once the resulting set is known
        self.origins: dict[str, list[tuple[str, str]]] = {FLAG: [], RBS: []}
        self.segment_origin: dict[str, tuple[str, str]] = {}
        # (kind, name) of a flagd item -> (source, path) of where it came from
        self.flagd_origin: dict[tuple[str, str], tuple[str, str]] = {}
        self.duplicates: list[Located] = []
        self.result = FlagSet()

    def run(self) -> FlagSet:
        flags = self._combined(FLAG)
        rbs = self._combined(RBS)
        segments = self._segments()
        flagd = FlagSet(
            flagd_flags=self._flagd(FLAGD),
            evaluators=self._flagd(EVALUATOR),
            flagd_settings=self._flagd(FLAGD_SET),
        )
        self.result = FlagSet(
            _by_name(flags),
            {name: keys for name, keys in segments.items() if isinstance(keys, list)},
            _by_name(rbs),
            flagd.flagd_flags,
            flagd.evaluators,
            # a null setting is as good as none (a null fractional is refused below)
            {name: v for name, v in flagd.flagd_settings.items() if v is not None},
        )
        document: dict[str, Any] = {
            "version": 1,
            "flags": flags,
            "segments": segments,
            "ruleBasedSegments": rbs,
        }
        if flagd.has_flagd():
            document["flagd"] = flagd.flagd_document()
        # the sidecar's own check: Split rules, flagd rules, names unique across dialects
        report = check_document(document)
        errors = self.duplicates + [self._locate(i) for i in report.errors]
        if errors:
            raise InvalidFlags(errors, [self._locate(i) for i in report.warnings])
        return self.result

    def _combined(self, kind: str) -> list[Any]:
        """Submitted items first (in submission order, duplicates kept so that validation
        reports them), then the base's items not submitted (unless replacing)."""
        items: list[Any] = []
        origin = self.origins[kind]
        names: set[str] = set()
        for part in self.parts:
            raws = part.flags if kind == FLAG else part.rule_based_segments
            for index, raw in enumerate(raws):
                items.append(raw)
                path = part.flag_path(index) if kind == FLAG else f"{part.rbs_path}[{index}]"
                origin.append((part.source, path))
                if isinstance(raw, dict) and isinstance(raw.get("name"), str):
                    names.add(raw["name"])
        if not self.replace:
            table = self.base.table(kind)
            for name in sorted(table):
                if name not in names:
                    items.append(table[name])
                    origin.append((SNAPSHOT_SOURCE, name))
        return items

    def _flagd(self, kind: str) -> dict[str, Any]:
        """The flagd items of ``kind``: the base's (unless replacing), then the submitted
        ones over them; an item submitted twice is an error naming both places."""
        items: dict[str, Any] = {}
        if not self.replace:
            for name, body in self.base.table(kind).items():
                items[name] = body
                published = flagd_item_path(FLAGD_SECTION, kind, name)
                self.flagd_origin[(kind, name)] = (SNAPSHOT_SOURCE, published)
        submitted: dict[str, tuple[str, str]] = {}
        for part in self.parts:
            for name, body in part.flagd_items(kind).items():
                where = (part.source, part.flagd_item_path(kind, name))
                if name in submitted:
                    first = submitted[name]
                    message = f"duplicate: also defined in {first[0]} at {first[1]}"
                    flag = name if kind == FLAGD else None
                    self.duplicates.append(Located(Issue(flag, where[1], message), where[0]))
                submitted[name] = where
                items[name] = body
                self.flagd_origin[(kind, name)] = where
        return items

    def _segments(self) -> dict[str, Any]:
        segments: dict[str, Any] = {} if self.replace else dict(self.base.segments)
        for name in segments:
            self.segment_origin[name] = (SNAPSHOT_SOURCE, f"$.segments.{name}")
        for part in self.parts:
            for name, keys in part.segments.items():
                segments[name] = keys
                self.segment_origin[name] = (part.source, f"{part.segments_path}.{name}")
        return segments

    def _item_path(self, kind: str, index: int) -> tuple[str, str] | None:
        """Where the combined list's item ``index`` is, for the submitter."""
        origin = self.origins[kind]
        if index >= len(origin):
            return None
        source, where = origin[index]
        if source != SNAPSHOT_SOURCE:
            return source, where
        names = sorted(self.result.table(kind))
        key = "flags" if kind == FLAG else "ruleBasedSegments"
        return source, f"$.{key}[{names.index(where)}]"

    def _locate(self, issue: Issue) -> Located:
        if issue.path.startswith(FLAGD_SECTION):
            found = self._flagd_path(issue.path)
            if found is not None:
                source, path = found
                return Located(Issue(issue.flag, path, issue.message), source)
        submitter = self._evaluator_source(issue.path)
        if submitter is not None:  # the library writes these paths from the evaluator, as is
            return Located(issue, submitter)
        match = _INDEXED.match(issue.path)
        if match:
            kind = FLAG if match.group(1) == "flags" else RBS
            found = self._item_path(kind, int(match.group(2)))
            if found is not None:
                source, path = found
                return Located(Issue(issue.flag, path + match.group(3), issue.message), source)
        match = _SEGMENT.match(issue.path)
        if match and match.group(1) in self.segment_origin:
            source, path = self.segment_origin[match.group(1)]
            return Located(Issue(issue.flag, path + match.group(2), issue.message), source)
        source = self.parts[0].source if len(self.parts) == 1 else SNAPSHOT_SOURCE
        return Located(issue, source)

    def _evaluator_source(self, path: str) -> str | None:
        """Who submitted the evaluator an issue at ``$evaluators.NAME...`` is in."""
        if not path.startswith(_EVALUATORS):
            return None
        rest = path[len(_EVALUATORS) :]
        for (kind, name), (source, _) in self.flagd_origin.items():
            tail = rest[len(name) :] if rest.startswith(name) else None
            if kind == EVALUATOR and tail is not None and (not tail or tail[0] in ".["):
                return source
        return None

    def _flagd_path(self, path: str) -> tuple[str, str] | None:
        """(source, path) of a path in the combined flagd section, for the submitter."""
        rest = path[len(FLAGD_SECTION) :]
        flags = '.flags["'
        if rest.startswith(flags):
            try:  # the key is written as a JSON string: .flags["key"]
                key, end = json.JSONDecoder().raw_decode(rest, len(flags) - 1)
            except ValueError:
                return None
            origin = self.flagd_origin.get((FLAGD, key))
            if origin is None or not rest.startswith("]", end):
                return None
            tail = rest[end + 1 :]
            return origin[0], origin[1] + tail
        for name in FLAGD_SETTINGS:
            if rest == f".{name}" or rest.startswith(f".{name}."):
                origin = self.flagd_origin.get((FLAGD_SET, name))
                if origin is not None:
                    return origin[0], origin[1] + rest[len(name) + 1 :]
        return None


def flagd_item_path(section: str, kind: str, name: str) -> str:
    """Where a flagd item (a flag, an evaluator or a setting) is in the flagd document at
    ``section``."""
    if kind == FLAGD:
        return flagd_flag_path(section, name)
    if kind == EVALUATOR:
        return f"{section}.$evaluators.{name}"
    return f"{section}.{name}"


def _by_name(raws: list[Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for raw in raws:
        if isinstance(raw, dict) and isinstance(raw.get("name"), str):
            out[raw["name"]] = strip_change_number(raw)
    return out
