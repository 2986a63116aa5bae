"""From bytes, files or documents to a Snapshot: decode, validate, compile.

Every source (file, control plane, push, cache) goes through ``build_snapshot``, so
every source gets the same validation and the same error report.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sidecar.rules.compile import compile_rules
from sidecar.snapshot.codec import decode, format_for, normalize
from sidecar.snapshot.issues import Issue, SnapshotError
from sidecar.snapshot.snapshot import Snapshot
from sidecar.snapshot.validate import Report, validate

__all__ = ["SnapshotError", "build_snapshot", "check_document", "load_bytes", "load_file"]


def check_document(document: Any) -> Report:
    """Validate a decoded document without compiling it (``fader validate``)."""
    try:
        doc = normalize(document)
    except SnapshotError as exc:
        return Report(errors=exc.issues)
    return validate(
        doc.flags,
        doc.segments,
        doc.rule_based_segments,
        flags_path=doc.flags_path,
        rbs_path=doc.rbs_path,
        segments_path=doc.segments_path,
    )


def build_snapshot(document: Mapping[str, Any], source: str = "memory") -> Snapshot:
    """Validate the whole document, then compile it; raises SnapshotError listing every issue.

    The snapshot keeps references into ``document`` (it is what the cache persists), so
    the caller hands it over: mutating it afterwards would break immutability.
    """
    doc = normalize(document)
    report = validate(
        doc.flags,
        doc.segments,
        doc.rule_based_segments,
        flags_path=doc.flags_path,
        rbs_path=doc.rbs_path,
        segments_path=doc.segments_path,
    )
    if report.errors:
        raise SnapshotError(report.errors)
    try:
        rules = compile_rules(doc.flags, doc.segments, doc.rule_based_segments, doc.version)
    except Exception as exc:  # a validation gap must refuse the snapshot, never crash
        raise SnapshotError([Issue(None, "$", f"could not compile: {exc!r}")]) from exc
    native = {
        "version": doc.version,
        "flags": doc.flags,
        "segments": doc.segments,
        "ruleBasedSegments": doc.rule_based_segments,
    }
    return Snapshot(
        doc.version,
        rules,
        source=source,
        kind=doc.kind,
        warnings=report.warnings,
        document=native,
    )


def load_bytes(data: bytes, fmt: str, source: str) -> Snapshot:
    """Decode ``data`` (``json`` or ``msgpack``) and build a snapshot from it."""
    return build_snapshot(decode(data, fmt), source)


def load_file(path: str | os.PathLike[str], source: str | None = None) -> Snapshot:
    """Read a .json / .msgpack / .mpk snapshot file."""
    file_path = Path(path)
    try:
        data = file_path.read_bytes()
    except OSError as exc:
        raise SnapshotError(
            [Issue(None, "$", f"cannot read {file_path}: {exc.strerror}")]
        ) from None
    return load_bytes(data, format_for(file_path), source or f"file:{file_path}")
