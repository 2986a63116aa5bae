"""Submitted flag documents: recognise their shape, merge them into a set, validate the result.

A team submits Split flag JSON in whatever shape it keeps it: one flag, a list of flags, a
snapshot, or Split's ``splitChanges`` (1.1 or 1.3). Whatever changes, the *resulting* set
is validated as a whole (a flag may depend on one already in the store), but each error is
reported where the submitter can find it: for a submitted flag, at the JSON path it has in
its own document, exactly as ``fader validate`` prints it for that file; for an item the
submission did not contain, at its path in the snapshot the store would publish.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fader.snapshot.codec import normalize
from fader.snapshot.issues import Issue, SnapshotError
from fader.snapshot.validate import validate

from sidecar.controlplane.flagset import FLAG, RBS, FlagSet, strip_change_number

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


@dataclass(frozen=True)
class Part:
    """One submitted document in native form, with the JSON paths its items have in it."""

    source: str
    flags: list[Any]
    segments: dict[str, Any] = field(default_factory=dict)
    rule_based_segments: list[Any] = field(default_factory=list)
    flags_path: str = "$.flags"
    single: bool = False
    rbs_path: str = "$.ruleBasedSegments"
    segments_path: str = "$.segments"

    def flag_path(self, index: int) -> str:
        return self.flags_path if self.single else f"{self.flags_path}[{index}]"


def parse_document(document: Any, source: str = "request") -> Part:
    """Recognise one flag, a list of flags, a snapshot or splitChanges; InvalidFlags if none."""
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
    return Part(
        source,
        doc.flags,
        segments,
        doc.rule_based_segments,
        flags_path=doc.flags_path,
        rbs_path=doc.rbs_path,
        segments_path=doc.segments_path,
    )


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
        self.result = FlagSet()

    def run(self) -> FlagSet:
        flags = self._combined(FLAG)
        rbs = self._combined(RBS)
        segments = self._segments()
        report = validate(flags, segments, rbs)
        self.result = FlagSet(
            _by_name(flags),
            {name: keys for name, keys in segments.items() if isinstance(keys, list)},
            _by_name(rbs),
        )
        if report.errors:
            raise InvalidFlags(
                [self._locate(i) for i in report.errors], [self._locate(i) for i in report.warnings]
            )
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


def _by_name(raws: list[Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for raw in raws:
        if isinstance(raw, dict) and isinstance(raw.get("name"), str):
            out[raw["name"]] = strip_change_number(raw)
    return out
