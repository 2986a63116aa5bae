"""Writing a file so that a crash leaves the old one or the new one, never half of one.

The last-known-good cache and the telemetry spool both depend on it: a temporary file in the
same directory, written and fsync'd, renamed over the target, then the directory fsync'd so
that the rename itself survives a power cut.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(target: Path, data: bytes, tmp_prefix: str) -> None:
    """Replaces `target` with `data`; the temporary file (named `tmp_prefix`...) is removed
    if anything fails, so a caller can sweep leftovers of a crash by that prefix."""
    directory = target.parent
    fd, tmp_name = tempfile.mkstemp(prefix=tmp_prefix, dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    fsync_dir(directory)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
