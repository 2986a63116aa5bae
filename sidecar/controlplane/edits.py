"""The changes a release makes, as pure functions from one flag set to the next.

Each edit takes the current set and returns the new one, already validated as a whole
(``documents.merge``/``check``), or raises: ``UnknownFlag`` (nothing by that name) or
``InvalidFlags`` (the result would not validate; nothing is written). The store runs an
edit inside its write transaction, so an edit always sees the newest version.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fader.snapshot.issues import Issue

from sidecar.controlplane import dimmer
from sidecar.controlplane.documents import InvalidFlags, Located, Part, check, check_flag, merge
from sidecar.controlplane.flagset import FLAG, FlagSet, strip_change_number

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
    """Create or replace one flag; its ``name`` must be the one addressed."""

    def edit(current: FlagSet) -> Edited:
        if isinstance(definition, dict) and definition.get("name") != name:
            issue = Issue(name, "$.name", f"name must be {name!r}, got {definition.get('name')!r}")
            raise InvalidFlags([Located(issue, "request")])
        part = Part("request", [definition], flags_path="$", single=True)
        return Edited(merge(current, [part]))

    return edit


def dial(name: str, percent: int, treatment: str | None = None) -> Edit:
    """The dimmer (see ``dimmer``): ``treatment`` gets ``percent`` % of the default rule."""

    def edit(current: FlagSet) -> Edited:
        flag = _flag(current, name)
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
    """Kill (every key gets the default treatment) or revive a flag."""

    def edit(current: FlagSet) -> Edited:
        flag = dict(_flag(current, name))
        flag["killed"] = killed
        return Edited(check_flag(current.with_item(FLAG, name, flag), name))

    return edit


def delete(name: str) -> Edit:
    """Remove a flag; refused (InvalidFlags) while another flag depends on it."""

    def edit(current: FlagSet) -> Edited:
        _flag(current, name)
        return Edited(check(current.with_item(FLAG, name, None)))

    return edit


def restore(name: str, definition: dict[str, Any], version: int) -> Edit:
    """Rollback: the flag's definition as it was at ``version``, as a new version."""

    def edit(current: FlagSet) -> Edited:
        body = strip_change_number(copy.deepcopy(definition))
        return Edited(
            check(current.with_item(FLAG, name, body)), (f"restored from version {version}",)
        )

    return edit


def _flag(current: FlagSet, name: str) -> dict[str, Any]:
    flag = current.flags.get(name)
    if flag is None:
        raise UnknownFlag(name)
    return flag
