"""One way in for every snapshot source: build, swap, persist, report.

The demo, the file watcher, the control-plane stream and direct push all call the
Applier, so they share validation, the forward-only version rule, the last-known-good
cache and the outcome they report (ACK with the applied version, or NACK with every
error). A refusal never touches the active snapshot. (The cache itself is read once at
start, before any source, by ``sidecar.api.sources``.)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sidecar.snapshot import cache
from sidecar.snapshot.codec import decode, normalize
from sidecar.snapshot.issues import Issue, SnapshotError
from sidecar.snapshot.loader import load_bytes
from sidecar.snapshot.snapshot import Snapshot
from sidecar.snapshot.store import StaleVersionError, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one offered snapshot."""

    applied: bool
    version: int | None
    source: str
    errors: tuple[Issue, ...] = ()
    reason: str = "applied"  # applied | invalid | stale

    def summary(self) -> str:
        if self.applied:
            return f"applied version {self.version} from {self.source}"
        details = "; ".join(str(issue) for issue in self.errors)
        return f"refused snapshot from {self.source} ({self.reason}): {details}"


RefusalHook = Callable[[Outcome], None]


@dataclass
class Applier:
    """Applies snapshots to a Store, writing each applied one to the cache directory."""

    store: Store
    cache_dir: Path | None = None
    on_refused: list[RefusalHook] = field(default_factory=list)
    last_refusal: Outcome | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def apply_bytes(self, data: bytes, fmt: str, source: str, *, force: bool = False) -> Outcome:
        """Decode ``data`` (json or msgpack) and apply it."""
        try:
            snapshot = load_bytes(data, fmt, source)
        except SnapshotError as exc:
            return self._refused(source, _offered_version(data, fmt), exc.issues, "invalid")
        return self._apply(snapshot, fmt, data, force=force)

    def _apply(self, snapshot: Snapshot, fmt: str, data: bytes, *, force: bool) -> Outcome:
        """Swap ``snapshot`` in (forward-only unless forced) and persist its bytes."""
        for warning in snapshot.warnings:
            log.warning(
                "snapshot version %d from %s: %s", snapshot.version, snapshot.source, warning
            )
        with self._lock:
            try:
                self.store.swap(snapshot, force=force)
            except StaleVersionError as exc:
                issue = Issue(None, "$.version", str(exc))
                return self._refused(snapshot.source, snapshot.version, [issue], "stale")
            if self.cache_dir is not None:
                self._persist(snapshot, fmt, data)
        log.info(
            "applied snapshot version %d from %s (%d flags)",
            snapshot.version,
            snapshot.source,
            snapshot.flag_count,
        )
        return Outcome(True, snapshot.version, snapshot.source)

    def _persist(self, snapshot: Snapshot, fmt: str, data: bytes) -> None:
        assert self.cache_dir is not None
        try:
            cache.save(self.cache_dir, snapshot, fmt, data)
        except OSError as exc:
            # Serving goes on: the cache is a restart aid, not a reason to refuse a snapshot.
            log.error("could not write the last-known-good cache in %s: %s", self.cache_dir, exc)

    def _refused(
        self, source: str, version: int | None, issues: list[Issue] | tuple[Issue, ...], reason: str
    ) -> Outcome:
        outcome = Outcome(False, version, source, tuple(issues), reason)
        self.last_refusal = outcome
        active = self.store.current
        log.error(
            "%s; still serving version %s",
            outcome.summary(),
            active.version if active else "none",
        )
        for hook in self.on_refused:
            hook(outcome)
        return outcome


def _offered_version(data: bytes, fmt: str) -> int | None:
    """The version a refused snapshot claimed, for the NACK; None when unreadable."""
    try:
        return normalize(decode(data, fmt)).version
    except SnapshotError:
        return None
