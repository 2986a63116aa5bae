"""From bytes, files or documents to a Snapshot: decode, validate, compile.

Every source (file, control plane, push, cache) goes through ``build_snapshot``, so
every source gets the same validation and the same error report.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack

from fader.flagd.document import Built, flag_path
from fader.flagd.document import build as build_flagd
from fader.rules.compile import compile_rules
from fader.snapshot.codec import MSGPACK, Document, RawDocument, decode, format_for, normalize
from fader.snapshot.issues import Issue, SnapshotError
from fader.snapshot.limits import SnapshotLimits
from fader.snapshot.snapshot import Snapshot
from fader.snapshot.validate import Report, validate

__all__ = ["SnapshotError", "build_snapshot", "check_document", "load_bytes", "load_file"]


_gc_lock = threading.Lock()
_gc_holders = 0
_gc_was_enabled = True
_switch_interval = 0.005
# While a snapshot builds, threads serving lookups get the GIL back after at most this
# long (the default 5 ms would be the floor of every lookup stall during a load).
BUILD_SWITCH_INTERVAL = 0.0005


@contextmanager
def collector_paused() -> Iterator[None]:
    """Keep Python's cyclic GC out of a snapshot build, then freeze what was built.

    A large snapshot is millions of objects. With the collector running, building one
    triggers repeated full collections (3x slower), and afterwards every full collection
    would walk the whole snapshot again while holding the GIL: a lookup stall of hundreds
    of milliseconds. So collection is paused while building, and ``gc.freeze()`` then moves
    everything alive into the permanent generation, which collections skip. A retired
    snapshot is still freed, by reference counting: compiled rules hold no reference
    cycle (``fader.rules.compile.FlagTable``). The GIL switch interval is shortened
    meanwhile, so lookup threads wait less for the builder. Re-entrant across threads.
    """
    global _gc_holders, _gc_was_enabled, _switch_interval
    with _gc_lock:
        if _gc_holders == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
            _switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(BUILD_SWITCH_INTERVAL)
        _gc_holders += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_holders -= 1
            if _gc_holders == 0:
                gc.freeze()
                sys.setswitchinterval(_switch_interval)
                if _gc_was_enabled:
                    gc.enable()


def check_document(document: Any) -> Report:
    """Validate a decoded document without compiling it (``fader validate``)."""
    try:
        doc = normalize(document)
    except SnapshotError as exc:
        return Report(errors=exc.issues)
    report = _validate(doc)
    flagd = _flagd_part(doc)
    if flagd is not None:
        report.errors.extend(flagd.errors)
        report.warnings.extend(flagd.warnings)
    return report


def _validate(doc: Document) -> Report:
    return validate(
        doc.flags,
        doc.segments,
        doc.rule_based_segments,
        flags_path=doc.flags_path,
        rbs_path=doc.rbs_path,
        segments_path=doc.segments_path,
    )


def _flagd_part(doc: Document) -> Built | None:
    """The snapshot's flagd-dialect flags, validated and compiled, with one more rule: a
    name is unique across both dialects (a lookup names a flag, never a dialect)."""
    if doc.flagd is None:
        return None
    built = build_flagd(doc.flagd, doc.flagd_path, doc.version if doc.versioned else None)
    split_names = {str(raw.get("name")) for raw in doc.flags if isinstance(raw, dict)}
    for key in sorted(split_names.intersection(built.flags)):
        built.errors.append(
            Issue(
                key,
                flag_path(doc.flagd_path, key),
                "a Split flag has the same name (names are unique across both dialects)",
            )
        )
    return built


def build_snapshot(document: Mapping[str, Any], source: str = "memory") -> Snapshot:
    """Validate the whole document, then compile it; raises SnapshotError listing every issue."""
    with collector_paused():
        snapshot = _build(document, source, consume=False)
    # packed, not referenced: the caller may go on to change its document
    snapshot.document = RawDocument(msgpack.packb(document, use_bin_type=True), MSGPACK)
    return snapshot


def _build(
    document: Any, source: str, *, consume: bool, limits: SnapshotLimits | None = None
) -> Snapshot:
    doc = normalize(document)
    if limits is not None:
        limits.check_document([*doc.flags, *_flagd_keys(doc)], doc.segments)
    report = _validate(doc)
    flagd = _flagd_part(doc)
    errors = [*report.errors, *(flagd.errors if flagd else ())]
    if errors:
        raise SnapshotError(errors)
    try:
        rules = compile_rules(
            doc.flags, doc.segments, doc.rule_based_segments, doc.version, consume=consume
        )
    except Exception as exc:  # a validation gap must refuse the snapshot, never crash
        raise SnapshotError([Issue(None, "$", f"could not compile: {exc!r}")]) from exc
    if flagd is not None:
        table = rules.flags
        assert isinstance(table, dict)
        table.update(flagd.flags)
    return Snapshot(
        doc.version,
        rules,
        source=source,
        kind=doc.kind,
        warnings=[*report.warnings, *(flagd.warnings if flagd else ())],
        flagd=flagd.flagd_set if flagd else None,
        versioned=doc.versioned,
    )


def _flagd_keys(doc: Document) -> list[Any]:
    """The flagd flags' keys, counted with the Split flags against --max-flags."""
    flags = doc.flagd.get("flags") if isinstance(doc.flagd, dict) else None
    return list(flags) if isinstance(flags, dict | list) else []


def load_bytes(
    data: bytes, fmt: str, source: str, limits: SnapshotLimits | None = None
) -> Snapshot:
    """Decode ``data`` (``json`` or ``msgpack``) and build a snapshot from it.

    With ``limits``, oversized input is refused (LimitError) before decoding or validating.
    """
    if limits is not None:
        limits.check_bytes(len(data))
    with collector_paused():
        # The decoded document is ours alone: compile may drop each flag's JSON once done.
        snapshot = _build(decode(data, fmt), source, consume=True, limits=limits)
    snapshot.document = RawDocument(data, fmt)
    return snapshot


def load_file(path: str | os.PathLike[str], source: str | None = None) -> Snapshot:
    """Read a .json / .msgpack / .mpk snapshot file."""
    file_path = Path(path)
    with collector_paused():
        try:
            data = file_path.read_bytes()
        except OSError as exc:
            message = f"cannot read {file_path}: {exc.strerror}"
            raise SnapshotError([Issue(None, "$", message)]) from None
        return load_bytes(data, format_for(file_path), source or f"file:{file_path}")
