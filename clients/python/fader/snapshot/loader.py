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
from fader.rules.compile import CompiledRules, Compiler, compile_rules
from fader.snapshot.codec import (
    MSGPACK,
    Document,
    RawDocument,
    decode,
    decode_flags,
    format_for,
    normalize,
    split_flags,
)
from fader.snapshot.issues import Issue, SnapshotError
from fader.snapshot.limits import SnapshotLimits
from fader.snapshot.snapshot import Snapshot
from fader.snapshot.validate import Report, Validation, validate

__all__ = ["SnapshotError", "build_snapshot", "check_document", "load_bytes", "load_file"]


_gc_lock = threading.Lock()
_gc_holders = 0
_gc_was_enabled = True
_switch_interval = 0.005
# Flags decoded at once by a flag-by-flag load: a few hundred KB of JSON at a time.
FLAG_BATCH = 100
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
    flagd = _flagd_part(doc, _split_names(doc.flags))
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


def _split_names(flags: list[Any]) -> set[str]:
    return {str(raw.get("name")) for raw in flags if isinstance(raw, dict)}


def _flagd_part(doc: Document, split_names: set[str]) -> Built | None:
    """The snapshot's flagd-dialect flags, validated and compiled, with one more rule: a
    name is unique across both dialects (a lookup names a flag, never a dialect)."""
    if doc.flagd is None:
        return None
    built = build_flagd(doc.flagd, doc.flagd_path, doc.version if doc.versioned else None)
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
    flagd = _flagd_part(doc, _split_names(doc.flags))
    errors = [*report.errors, *(flagd.errors if flagd else ())]
    if errors:
        raise SnapshotError(errors)
    try:
        rules = compile_rules(
            doc.flags, doc.segments, doc.rule_based_segments, doc.version, consume=consume
        )
    except Exception as exc:  # a validation gap must refuse the snapshot, never crash
        raise _compile_failed(exc) from exc
    return _snapshot(doc, rules, report, flagd, source)


def _compile_failed(exc: Exception) -> SnapshotError:
    return SnapshotError([Issue(None, "$", f"could not compile: {exc!r}")])


def _build_flag_by_flag(
    document: Any, flags: list[memoryview], source: str, limits: SnapshotLimits | None
) -> Snapshot:
    """``_build`` for a document whose flags are still encoded (``codec.split_flags``):
    flags are decoded ``FLAG_BATCH`` at a time, each validated and compiled before the next
    batch is decoded, so a large snapshot's whole JSON is never held at once (issue 18: a
    10,000-flag snapshot's decoded JSON was most of an in-process client's peak memory,
    which CPython's allocator keeps as RSS once freed).

    The same checks in the same order as ``_build``, and the same report: nothing is
    swapped unless every flag passes; a flag is compiled only while no error was found.
    """
    doc = normalize(document)
    if limits is not None:
        limits.check_document([*flags, *_flagd_keys(doc)], doc.segments)
    validation = Validation(
        doc.segments,
        doc.rule_based_segments,
        rbs_path=doc.rbs_path,
        segments_path=doc.segments_path,
    )
    compiler: Compiler | None = None
    failure: Exception | None = None
    split_names: set[str] = set()
    for index, raw in _decoded(flags):
        if isinstance(raw, dict):
            split_names.add(str(raw.get("name")))
        validation.flag(raw, f"{doc.flags_path}[{index}]")
        if validation.failed or failure is not None:
            continue
        try:
            if compiler is None:
                compiler = Compiler(doc.segments, doc.rule_based_segments, doc.version)
            compiler.flag(raw)
        except Exception as exc:  # a validation gap must refuse the snapshot, never crash
            failure = exc
    report = validation.finish()
    flagd = _flagd_part(doc, split_names)
    errors = [*report.errors, *(flagd.errors if flagd else ())]
    if errors:
        raise SnapshotError(errors)
    if failure is not None:
        raise _compile_failed(failure) from failure
    try:
        rules = (compiler or Compiler(doc.segments, doc.rule_based_segments, doc.version)).rules
    except Exception as exc:  # no flag compiled: the rule-based segments still may not
        raise _compile_failed(exc) from exc
    return _snapshot(doc, rules, report, flagd, source)


def _decoded(flags: list[memoryview]) -> Iterator[tuple[int, Any]]:
    """(index, decoded flag), ``FLAG_BATCH`` flags decoded at a time."""
    for start in range(0, len(flags), FLAG_BATCH):
        yield from enumerate(decode_flags(flags[start : start + FLAG_BATCH]), start)


def _snapshot(
    doc: Document, rules: CompiledRules, report: Report, flagd: Built | None, source: str
) -> Snapshot:
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
        split = split_flags(data) if fmt == MSGPACK else None
        if split is None:
            # The decoded document is ours alone: compile may drop each flag's JSON once done.
            snapshot = _build(decode(data, fmt), source, consume=True, limits=limits)
        elif split[1] is None:  # no flags array: decoded whole already
            snapshot = _build(split[0], source, consume=True, limits=limits)
        else:
            snapshot = _build_flag_by_flag(split[0], split[1], source, limits)
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
