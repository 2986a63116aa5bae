"""The rules every lane applies to the plain fields of a lookup: keys, names, flag selection.

Each check takes `where`, the field's name in the caller's own wire form, so that the
refusal says exactly what to fix (`items[3].key: must not be empty`). Messages are built only
on the refusal path.
"""

from __future__ import annotations

from collections.abc import Sequence

from fader.snapshot.snapshot import Snapshot

from sidecar.core.refusals import BadRequest

# Split's SDKs refuse keys longer than this; so do we, instead of answering differently.
MAX_KEY_LENGTH = 250
MAX_NAME_LENGTH = 1024


def check_key(key: str, where: str) -> None:
    if not key:
        raise BadRequest(f"{where}: must not be empty")
    if len(key) > MAX_KEY_LENGTH:
        raise BadRequest(f"{where}: {len(key)} characters, at most {MAX_KEY_LENGTH} allowed")


def optional_key(key: str | None, where: str) -> str | None:
    """An optional key (empty or absent means none); same length rule as a key."""
    if not key:
        return None
    check_key(key, where)
    return key


def check_name(name: str, where: str) -> None:
    if not name:
        raise BadRequest(f"{where}: must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise BadRequest(f"{where}: {len(name)} characters, at most {MAX_NAME_LENGTH} allowed")


def check_items(count: int, max_items: int, where: str) -> None:
    if count > max_items:
        raise BadRequest(f"{where}: {count} given, at most {max_items} allowed")


def select_flags(
    snap: Snapshot, flags: Sequence[str], flag_sets: Sequence[str], max_items: int
) -> list[str]:
    """GetTreatments' selection: named flags in request order, then flag-set members by name,
    no duplicates; none named means every flag."""
    requested = len(flags) + len(flag_sets)
    check_items(requested, max_items, "flags + flag_sets")
    for index, flag in enumerate(flags):
        check_name(flag, f"flags[{index}]")
    for index, name in enumerate(flag_sets):
        check_name(name, f"flag_sets[{index}]")
    if not requested:
        return list(snap.flag_names())
    selected = dict.fromkeys(flags)
    if flag_sets:
        selected.update(dict.fromkeys(snap.flags_in_sets(flag_sets)))
    return list(selected)
