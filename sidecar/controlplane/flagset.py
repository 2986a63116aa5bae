"""The flag set the control plane keeps, and what changed between two of them.

A flag set is everything a sidecar snapshot carries, each item by name: Split flags,
segments and rule-based segments in Split's JSON model, and flagd-dialect flags with the
rest of a flagd flags document (its ``$evaluators``, and the set-wide ``metadata`` and
``fractional`` generation as the two items of the ``flagd-set`` kind). Every change the
control plane makes is a new version of the whole set; this module is the pure part of
that: the value, its snapshot document (flagd items in its ``flagd`` section), and the diff
recorded with each version. A flag name belongs to one dialect at a time.

``changeNumber`` is not part of a stored definition: the store sets it, in the snapshot,
to the version in which the flag last changed, so that a re-applied file that differs only
there is no change at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

FLAG: Final = "flag"
SEGMENT: Final = "segment"
RBS: Final = "rbs"
FLAGD: Final = "flagd"  # a flagd-dialect flag, by its key
EVALUATOR: Final = "evaluator"  # a flagd ``$evaluators`` rule, by its name
FLAGD_SET: Final = "flagd-set"  # the flagd document's own settings: METADATA, FRACTIONAL
KINDS: Final = (FLAG, SEGMENT, RBS, FLAGD, EVALUATOR, FLAGD_SET)
# The kinds that are flags (a name is in at most one of them).
FLAG_KINDS: Final = (FLAG, FLAGD)
# The items of the FLAGD_SET kind: keys of a flagd document.
METADATA: Final = "metadata"
FRACTIONAL: Final = "fractional"
FLAGD_SETTINGS: Final = (METADATA, FRACTIONAL)

_TABLES: Final = {
    FLAG: "flags",
    SEGMENT: "segments",
    RBS: "rule_based_segments",
    FLAGD: "flagd_flags",
    EVALUATOR: "evaluators",
    FLAGD_SET: "flagd_settings",
}

# Stored definitions never carry it; the snapshot gets it from the version history.
CHANGE_NUMBER: Final = "changeNumber"

ADDED: Final = "added"
CHANGED: Final = "changed"
REMOVED: Final = "removed"


def strip_change_number(body: Any) -> Any:
    """A flag or rule-based segment definition as stored (without ``changeNumber``)."""
    if isinstance(body, dict) and CHANGE_NUMBER in body:
        return {k: v for k, v in body.items() if k != CHANGE_NUMBER}
    return body


@dataclass(frozen=True)
class FlagSet:
    """Flags, segments (name -> keys), rule-based segments, flagd flags, flagd evaluators
    and flagd settings, each by name.

    Bodies are decoded JSON and are never mutated once in a FlagSet: edits copy the one
    definition they change (``with_item``) and share the rest.
    """

    flags: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    segments: Mapping[str, list[str]] = field(default_factory=dict)
    rule_based_segments: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    flagd_flags: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    evaluators: Mapping[str, Any] = field(default_factory=dict)
    flagd_settings: Mapping[str, Any] = field(default_factory=dict)

    def table(self, kind: str) -> Mapping[str, Any]:
        if kind not in _TABLES:
            raise ValueError(f"unknown kind {kind!r}")
        table: Mapping[str, Any] = getattr(self, _TABLES[kind])
        return table

    def dialect(self, name: str) -> str | None:
        """FLAG or FLAGD: the kind of the flag called ``name`` (None: no such flag)."""
        if name in self.flags:
            return FLAG
        if name in self.flagd_flags:
            return FLAGD
        return None

    def flag_names(self) -> list[str]:
        """Every flag of either dialect, sorted."""
        return sorted([*self.flags, *self.flagd_flags])

    def has_flagd(self) -> bool:
        return bool(self.flagd_flags or self.evaluators or self.flagd_settings)

    def items(self) -> Iterator[tuple[str, str, Any]]:
        """(kind, name, body) of everything in the set, in kind then name order."""
        for kind in KINDS:
            table = self.table(kind)
            for name in sorted(table):
                yield kind, name, table[name]

    def get(self, kind: str, name: str) -> Any:
        return self.table(kind).get(name)

    def with_item(self, kind: str, name: str, body: Any | None) -> FlagSet:
        """A copy where ``kind``/``name`` is ``body`` (None removes it)."""
        tables = {k: dict(self.table(k)) for k in KINDS}
        if body is None:
            tables[kind].pop(name, None)
        else:
            tables[kind][name] = body
        return _from_tables(tables)

    def with_changes(self, changes: Mapping[tuple[str, str], Any | None]) -> FlagSet:
        """A copy with every (kind, name) -> body applied (None removes)."""
        tables = {k: dict(self.table(k)) for k in KINDS}
        for (kind, name), body in changes.items():
            if body is None:
                tables[kind].pop(name, None)
            else:
                tables[kind][name] = body
        return _from_tables(tables)

    def document(
        self, version: int, change_numbers: Mapping[tuple[str, str], int]
    ) -> dict[str, Any]:
        """The sidecar snapshot document (native format) of this set at ``version``."""
        flags = []
        for name in sorted(self.flags):
            body = dict(self.flags[name])
            body[CHANGE_NUMBER] = change_numbers.get((FLAG, name), version)
            flags.append(body)
        rbs = []
        for name in sorted(self.rule_based_segments):
            body = dict(self.rule_based_segments[name])
            body[CHANGE_NUMBER] = change_numbers.get((RBS, name), version)
            rbs.append(body)
        document: dict[str, Any] = {
            "version": version,
            "flags": flags,
            "segments": {name: self.segments[name] for name in sorted(self.segments)},
            "ruleBasedSegments": rbs,
        }
        if self.has_flagd():
            document["flagd"] = self.flagd_document()
        return document

    def flagd_document(self) -> dict[str, Any]:
        """The flagd flags document of the flagd items (a snapshot's ``flagd`` section)."""
        document: dict[str, Any] = {
            "flags": {name: self.flagd_flags[name] for name in sorted(self.flagd_flags)}
        }
        if self.evaluators:
            document["$evaluators"] = {
                name: self.evaluators[name] for name in sorted(self.evaluators)
            }
        for name in FLAGD_SETTINGS:
            if name in self.flagd_settings:
                document[name] = self.flagd_settings[name]
        return document


def _from_tables(tables: Mapping[str, Mapping[str, Any]]) -> FlagSet:
    return FlagSet(**{_TABLES[kind]: table for kind, table in tables.items()})


def encode(body: Any) -> str:
    """Compact JSON text of one stored body (key order kept as submitted)."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


# --- diff -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldChange:
    path: str
    before: Any
    after: Any

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "before": self.before, "after": self.after}


@dataclass(frozen=True, slots=True)
class Change:
    """One item added, changed or removed; ``fields`` say how a changed one changed."""

    kind: str
    name: str
    op: str
    fields: tuple[FieldChange, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "op": self.op,
            "fields": [f.to_json() for f in self.fields],
        }

    @staticmethod
    def from_json(raw: Mapping[str, Any]) -> Change:
        fields = tuple(FieldChange(f["path"], f["before"], f["after"]) for f in raw["fields"])
        return Change(raw["kind"], raw["name"], raw["op"], fields)


def diff(old: FlagSet, new: FlagSet) -> list[Change]:
    """Every item that differs between ``old`` and ``new``, in kind then name order."""
    changes: list[Change] = []
    for kind in KINDS:
        before, after = old.table(kind), new.table(kind)
        for name in sorted(set(before) | set(after)):
            if name not in after:
                changes.append(Change(kind, name, REMOVED))
            elif name not in before:
                changes.append(Change(kind, name, ADDED))
            elif before[name] is not after[name] and before[name] != after[name]:
                fields = tuple(_field_changes(before[name], after[name], "$"))
                changes.append(Change(kind, name, CHANGED, fields))
    return changes


def changed_keys(old: FlagSet, new: FlagSet) -> dict[tuple[str, str], Any | None]:
    """(kind, name) -> new body (None when removed) for every item that differs."""
    out: dict[tuple[str, str], Any | None] = {}
    for kind in KINDS:
        before, after = old.table(kind), new.table(kind)
        for name in set(before) | set(after):
            old_body, new_body = before.get(name), after.get(name)
            if old_body is not new_body and old_body != new_body:
                out[(kind, name)] = after.get(name)
    return out


def _field_changes(before: Any, after: Any, path: str) -> Iterator[FieldChange]:
    """The smallest differing parts: objects by key, lists of equal length by index."""
    if before == after and type(before) is type(after):
        return
    if isinstance(before, dict) and isinstance(after, dict):
        for key in list(before) + [k for k in after if k not in before]:
            sub = f"{path}.{key}"
            if key not in after:
                yield FieldChange(sub, before[key], None)
            elif key not in before:
                yield FieldChange(sub, None, after[key])
            else:
                yield from _field_changes(before[key], after[key], sub)
        return
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        for index, (b, a) in enumerate(zip(before, after, strict=True)):
            yield from _field_changes(b, a, f"{path}[{index}]")
        return
    yield FieldChange(path, before, after)


def describe(change: Change, limit: int = 8) -> list[str]:
    """Human lines for one change: ``~ flag f: $.killed false -> true``."""
    mark = {ADDED: "+", CHANGED: "~", REMOVED: "-"}[change.op]
    head = f"{mark} {change.kind} {change.name}"
    if change.op != CHANGED:
        return [f"{head} ({change.op})"]
    lines = [f"{head}:"]
    for item in change.fields[:limit]:
        lines.append(f"    {item.path}: {_short(item.before)} -> {_short(item.after)}")
    if len(change.fields) > limit:
        lines.append(f"    ... and {len(change.fields) - limit} more")
    return lines


def _short(value: Any, width: int = 60) -> str:
    text = "(none)" if value is None else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 3] + "..."
