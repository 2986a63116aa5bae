"""Size limits on one snapshot, checked before validation walks it.

A snapshot far larger than any real flag set is either a mistake or an attack on the memory
and CPU of whoever loads it (the sidecar, the control plane, an in-process client); it is
refused early with an error that names the limit and its value. The reason names double as
refusal reasons in the sidecar's metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from fader.snapshot.issues import Issue, SnapshotError

SNAPSHOT_BYTES: Final = "too_large"
FLAGS: Final = "too_many_flags"
SEGMENT_KEYS: Final = "too_many_segment_keys"
DEPTH: Final = "too_deep"
SNAPSHOT_LIMITS: Final = (SNAPSHOT_BYTES, FLAGS, SEGMENT_KEYS, DEPTH)


@dataclass(frozen=True, slots=True)
class SnapshotLimits:
    """Upper bounds on one snapshot; the defaults are far above any real flag set."""

    max_snapshot_bytes: int = 256 * 1024 * 1024
    max_flags: int = 50_000
    max_segment_keys: int = 5_000_000

    def check_bytes(self, size: int) -> None:
        if size > self.max_snapshot_bytes:
            raise LimitError(
                SNAPSHOT_BYTES,
                f"snapshot is {size} bytes, more than --max-snapshot-bytes "
                f"{self.max_snapshot_bytes}",
            )

    def check_document(self, flags: list[Any], segments: Any) -> None:
        """Counts checked right after decoding, before validation walks the document."""
        if len(flags) > self.max_flags:
            raise LimitError(
                FLAGS, f"snapshot has {len(flags)} flags, more than --max-flags {self.max_flags}"
            )
        if isinstance(segments, dict):
            keys = sum(len(v) for v in segments.values() if isinstance(v, list))
            if keys > self.max_segment_keys:
                raise LimitError(
                    SEGMENT_KEYS,
                    f"snapshot has {keys} segment keys, more than --max-segment-keys "
                    f"{self.max_segment_keys}",
                )


class LimitError(SnapshotError):
    """A snapshot refused for its size; ``reason`` is one of ``SNAPSHOT_LIMITS``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__([Issue(None, "$", message)])
        self.reason = reason
