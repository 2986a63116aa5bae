"""One way in for every snapshot source: build, swap, persist, report.

The demo, the file watcher, the control-plane stream and direct push all call the
Applier, so they share validation, the forward-only version rule, the last-known-good
cache and the outcome they report (ACK with the applied version, or NACK with every
error). A refusal never touches the active snapshot. The cache itself is read once at
start, before any source, by ``sidecar.sources.initial``, and applied through here too.

With a ``Verifier`` (trusted keys configured), every snapshot must carry a valid detached
signature (``sidecar.delivery.signing``), whatever its source. The signature is checked
before anything is decoded, so a refusal costs a hash and a signature check; a signed
version that is not newer than the active one is refused as a replay, and ``force`` does
not override that (roll back by signing the old content with a new version).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fader.snapshot.codec import decode, normalize
from fader.snapshot.issues import Issue, SnapshotError
from fader.snapshot.limits import SNAPSHOT_LIMITS, LimitError, SnapshotLimits
from fader.snapshot.loader import load_bytes
from fader.snapshot.snapshot import Snapshot

from sidecar import limits
from sidecar.delivery import cache, signing
from sidecar.delivery.signing import SignatureError, Verified, Verifier
from sidecar.delivery.store import StaleVersionError, Store

log = logging.getLogger(__name__)
# The longest a writer waits for replaced snapshots to be freed before building another
# (freeing takes about a tenth of building: this is reached only if something is wrong).
SETTLE_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one offered snapshot."""

    applied: bool
    version: int | None
    source: str
    errors: tuple[Issue, ...] = ()
    # applied | invalid | stale | a signing.REASONS entry | a limits.SNAPSHOT_LIMITS entry
    reason: str = "applied"
    # what an applied snapshot did not get (not written to the cache, say)
    warnings: tuple[str, ...] = ()

    def summary(self) -> str:
        if self.applied:
            return f"applied version {self.version} from {self.source}"
        details = "; ".join(str(issue) for issue in self.errors)
        return f"refused snapshot from {self.source} ({self.reason}): {details}"


RefusalHook = Callable[[Outcome], None]


@dataclass
class CacheWrites:
    """How the last-known-good cache keeps up with what is served: a cache that stays
    behind would be a silent rollback at the next restart without a source."""

    version: int | None = None  # the version on disk (read at start, or written since)
    failures: int = 0
    last_error: str | None = None

    def behind(self, serving: int | None) -> bool:
        return serving is not None and self.version != serving

    def status(self, serving: int | None) -> dict[str, object]:
        return {
            "version": self.version,
            "behind": self.behind(serving),
            "write_failures": self.failures,
            "last_write_error": self.last_error,
        }


@dataclass
class Applier:
    """Applies snapshots to a Store, writing each applied one to the cache directory."""

    store: Store
    cache_dir: Path | None = None
    on_refused: list[RefusalHook] = field(default_factory=list)
    last_refusal: Outcome | None = None
    verifier: Verifier | None = None
    limits: SnapshotLimits = field(default_factory=SnapshotLimits)
    cache_writes: CacheWrites = field(default_factory=CacheWrites)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def apply_bytes(
        self,
        data: bytes,
        fmt: str,
        source: str,
        *,
        force: bool = False,
        signature: bytes | None = None,
        persist: bool = True,
    ) -> Outcome:
        """Verify ``data`` (json or msgpack) against ``signature`` if signing is on, decode
        and apply it; ``persist`` False for the snapshot just read from the cache."""
        verified: Verified | None = None
        if self.verifier is not None:
            try:
                verified = self.verifier.verify(data, signature)
            except SignatureError as exc:
                return self._refused(source, _signed_version(signature), [_issue(exc)], exc.reason)
            active = self.store.current
            if active is not None and verified.version <= active.version:
                issue = Issue(
                    None,
                    "$.version",
                    f"replayed or stale signed snapshot: version {verified.version} is not newer "
                    f"than the active version {active.version} (signed snapshots only move "
                    "forward, even when forced)",
                )
                return self._refused(source, verified.version, [issue], "stale")
        if not self.store.settle(SETTLE_SECONDS):
            log.warning("replaced snapshots are not freed yet; building the next one anyway")
        try:
            snapshot = load_bytes(data, fmt, source, self.limits)
        except LimitError as exc:
            return self._refused(source, _signed_version(signature), exc.issues, exc.reason)
        except SnapshotError as exc:
            return self._refused(source, _offered_version(data, fmt), exc.issues, "invalid")
        if verified is not None:
            try:
                signing.check_version(verified, snapshot.version)
            except SignatureError as exc:
                return self._refused(source, snapshot.version, [_issue(exc)], exc.reason)
        return self._apply(
            snapshot,
            fmt,
            data,
            signature,
            force=force and verified is None,
            persist=persist,
        )

    def _apply(
        self,
        snapshot: Snapshot,
        fmt: str,
        data: bytes,
        signature: bytes | None,
        *,
        force: bool,
        persist: bool,
    ) -> Outcome:
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
            warnings: tuple[str, ...] = ()
            if self.cache_dir is not None:
                if persist:
                    warnings = self._persist(snapshot, fmt, data, signature)
                else:  # it was just read from the cache
                    self.cache_writes.version = snapshot.version
        log.info(
            "applied snapshot version %d from %s (%d flags)",
            snapshot.version,
            snapshot.source,
            snapshot.flag_count,
        )
        return Outcome(True, snapshot.version, snapshot.source, warnings=warnings)

    def _persist(
        self, snapshot: Snapshot, fmt: str, data: bytes, signature: bytes | None
    ) -> tuple[str, ...]:
        """Write the cache; on failure, the warning the ACK carries (nothing is refused:
        the cache is a restart aid, and the snapshot is served either way)."""
        assert self.cache_dir is not None
        writes = self.cache_writes
        try:
            cache.save(self.cache_dir, snapshot, fmt, data, signature)
        except OSError as exc:
            writes.failures += 1
            writes.last_error = f"{exc.strerror or exc}"
            on_disk = "none" if writes.version is None else f"version {writes.version}"
            warning = (
                f"version {snapshot.version} is served but not persisted: cannot write the "
                f"last-known-good cache in {self.cache_dir} ({writes.last_error}); a restart "
                f"without a source would serve {on_disk}"
            )
            log.error("%s", warning)
            return (warning,)
        writes.version = snapshot.version
        return ()

    def _refused(
        self, source: str, version: int | None, issues: list[Issue] | tuple[Issue, ...], reason: str
    ) -> Outcome:
        outcome = Outcome(False, version, source, tuple(issues), reason)
        self.last_refusal = outcome
        if reason in SNAPSHOT_LIMITS:
            limits.REFUSALS.count(reason)
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


def _signed_version(signature: bytes | None) -> int | None:
    """The version a signature document claims, for a NACK without decoding the snapshot."""
    if not signature:
        return None
    try:
        return signing.parse_document(signature).version
    except SignatureError:
        return None


def _issue(exc: SignatureError) -> Issue:
    return Issue(None, "$signature", str(exc))
