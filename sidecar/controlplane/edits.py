"""The changes a release makes, as pure functions from one flag set to the next.

Each edit takes the current set and returns the new one, already validated as a whole
(``documents.merge``/``check``), or raises: ``UnknownFlag`` (nothing by that name),
``InvalidFlags`` (the result would not validate; nothing is written) or ``SplitOnly`` (the
dimmer asked of a flagd-dialect flag). The store runs an edit inside its write transaction,
so an edit always sees the newest version.

Both dialects are put, killed, revived, deleted and rolled back alike; a flagd flag is
killed flagd's way, ``state: DISABLED`` (every evaluation answers the caller's default),
and revived with ``state: ENABLED``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fader.snapshot.issues import Issue

from sidecar.controlplane import dimmer
from sidecar.controlplane.documents import (
    InvalidFlags,
    Located,
    Part,
    check,
    check_flag,
    check_flagd_flag,
    flagd_flag_part,
    is_flagd_flag,
    merge,
)
from sidecar.controlplane.flagset import FLAG, FLAG_KINDS, FLAGD, FlagSet, strip_change_number

# The source named in issues about a flag's stored definition.
STORED = "store"


class UnknownFlag(KeyError):
    """No flag by that name (in the current set, or at the version asked for)."""

    def __init__(self, name: str, detail: str = "") -> None:
        super().__init__(name)
        self.name = name
        self.detail = detail or f"no flag named {name!r}"

    def __str__(self) -> str:
        return self.detail


class SplitOnly(ValueError):
    """An operation on a Split flag's default rule (the dimmer, rollout plans, guardrails)
    asked of a flagd-dialect flag, which has variants and targeting instead."""

    def __init__(self, name: str, operation: str) -> None:
        super().__init__(
            f"{name!r} is a flagd-dialect flag: {operation} works on a Split flag's default"
            " rule (its partitions); change a flagd flag's targeting (e.g. its fractional"
            " split) with put or apply instead"
        )
        self.name = name


@dataclass(frozen=True)
class Edited:
    """The new set, and what the submitter should know about it (e.g. a re-bucketing)."""

    flags: FlagSet
    notes: tuple[str, ...] = ()


Edit = Callable[[FlagSet], Edited]


def apply_documents(parts: Sequence[Part], *, replace: bool = False) -> Edit:
    """Put every submitted item in; with ``replace`` the submission is the whole set."""

    def edit(current: FlagSet) -> Edited:
        return Edited(merge(current, parts, replace=replace))

    return edit


def put_flag(name: str, definition: Any) -> Edit:
    """Create or replace one flag; a Split flag's ``name`` must be the one addressed, a flagd
    flag (``variants``, no ``conditions``) is named by the address alone."""

    def edit(current: FlagSet) -> Edited:
        if is_flagd_flag(definition):
            return Edited(merge(current, [flagd_flag_part(name, definition)]))
        if isinstance(definition, dict) and definition.get("name") != name:
            issue = Issue(name, "$.name", f"name must be {name!r}, got {definition.get('name')!r}")
            raise InvalidFlags([Located(issue, "request")])
        part = Part("request", [definition], flags_path="$", single=True)
        return Edited(merge(current, [part]))

    return edit


def dial(name: str, percent: int, treatment: str | None = None) -> Edit:
    """The dimmer (see ``dimmer``): ``treatment`` gets ``percent`` % of the default rule."""

    def edit(current: FlagSet) -> Edited:
        flag = split_flag(current, name, "the dimmer")
        try:
            dialed = dimmer.dial(flag, percent, treatment)
        except dimmer.DialError as exc:
            raise InvalidFlags([Located(Issue(name, exc.path, exc.message), STORED)]) from None
        notes = []
        if dialed.rebucketed:
            notes.append(
                f"the {dialed.treatment!r} partition moved to the front of the default rule: "
                "this once, keys were re-bucketed; from now on the dial only adds or removes"
            )
        if flag.get("killed"):
            notes.append(f"{name} is killed: sidecars serve its default treatment until revived")
        return Edited(check_flag(current.with_item(FLAG, name, dialed.flag), name), tuple(notes))

    return edit


def set_killed(name: str, killed: bool) -> Edit:
    """Kill (every key gets the default treatment; a flagd flag is DISABLED) or revive."""

    def edit(current: FlagSet) -> Edited:
        kind = _kind(current, name)
        flag = dict(current.table(kind)[name])
        if kind == FLAGD:
            flag["state"] = "DISABLED" if killed else "ENABLED"
            return Edited(check_flagd_flag(current.with_item(FLAGD, name, flag), name))
        flag["killed"] = killed
        return Edited(check_flag(current.with_item(FLAG, name, flag), name))

    return edit


def delete(name: str) -> Edit:
    """Remove a flag; refused (InvalidFlags) while another flag depends on it."""

    def edit(current: FlagSet) -> Edited:
        kind = _kind(current, name)
        removed = current.with_item(kind, name, None)
        # nothing can name a flagd flag, so removing one cannot break a reference
        return Edited(removed if kind == FLAGD else check(removed))

    return edit


def restore(name: str, kind: str, definition: dict[str, Any], version: int) -> Edit:
    """Rollback: the flag's definition (of dialect ``kind``) as it was at ``version``, as a
    new version; the flag leaves the other dialect if it is there now."""

    def edit(current: FlagSet) -> Edited:
        body = strip_change_number(copy.deepcopy(definition))
        restored = current.with_changes({(k, name): None for k in FLAG_KINDS if k != kind})
        return Edited(
            check(restored.with_item(kind, name, body)), (f"restored from version {version}",)
        )

    return edit


def _kind(current: FlagSet, name: str) -> str:
    kind = current.dialect(name)
    if kind is None:
        raise UnknownFlag(name)
    return kind


def split_flag(current: FlagSet, name: str, operation: str) -> dict[str, Any]:
    """The Split flag ``name``; SplitOnly for a flagd flag, UnknownFlag for neither."""
    if _kind(current, name) == FLAGD:
        raise SplitOnly(name, operation)
    return current.flags[name]
