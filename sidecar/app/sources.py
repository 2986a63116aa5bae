"""The snapshot sources of `fader serve`, built from its settings, and what their owner knows.

One of: the embedded demo, a watched file (`--snapshot`), or the control-plane stream
(`--control-plane`); plus, with any of them, direct push on the admin listener and the
last-known-good cache (`--cache-dir`), which is served at once at start when the control
plane cannot be reached. Every source offers to one Applier (the cache too, so that with
`--trusted-keys` a cached snapshot is re-verified like any other). The owner counts refusals
by reason and answers how stale the active snapshot is, for readiness, `/status` and
`/metrics`.
"""

from __future__ import annotations

import importlib.metadata
import logging
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from fader.snapshot.limits import SNAPSHOT_LIMITS
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sidecar.app.errors import StartupError
from sidecar.auth import TokenFile, server_credentials
from sidecar.config import Settings, control_plane_security, sidecar_id
from sidecar.delivery import cache, signing
from sidecar.delivery.apply import Applier, Outcome
from sidecar.delivery.signing import KeyFileError, Verifier
from sidecar.delivery.store import Store
from sidecar.plumbing.channels import ChannelSecurity
from sidecar.sources.base import Source
from sidecar.sources.controlplane import ControlPlaneSource, Identity
from sidecar.sources.file import FileSource
from sidecar.sources.initial import CacheSource, DemoSource
from sidecar.sources.push import AdminServer

log = logging.getLogger(__name__)

SOFTWARE_VERSION = f"fader/{importlib.metadata.version('fader')}"


class SnapshotSources:
    """Owns every source and the Applier they offer to; `load_initial` before the sidecar
    listens, `start` once it does, `stop` first on shutdown."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.refusals: Counter[str] = Counter()
        self.verifier: Verifier | None = None
        if settings.trusted_keys:
            try:
                self.verifier = signing.load_verifier(settings.trusted_keys)
            except KeyFileError as exc:
                raise StartupError(str(exc)) from None
            log.info("signed snapshots required; trusted key ids: %s", self.verifier.key_ids)
        self.applier = Applier(
            store,
            cache_dir=settings.cache_dir,
            on_refused=[self._refused],
            verifier=self.verifier,
            limits=settings.snapshot_limits(),
        )
        self.demo: DemoSource | None = None
        self.cache: CacheSource | None = None
        self.file: FileSource | None = None
        self.control_plane: ControlPlaneSource | None = None
        self.admin: AdminServer | None = None
        self._started_at = time.time()
        self._was_fresh = True

    def _refused(self, outcome: Outcome) -> None:
        self.refusals[outcome.reason] += 1

    def sources(self) -> dict[str, Source]:
        """The configured sources by the name `/status` shows them under."""
        named: dict[str, Source | None] = {
            "demo": self.demo,
            "cache": self.cache,
            "file": self.file,
            "control_plane": self.control_plane,
            "push": self.admin,
        }
        return {name: source for name, source in named.items() if source is not None}

    # --- start-up ------------------------------------------------------------------------

    def load_initial(self) -> None:
        """Load what can be served right away; StartupError when a given file is unusable."""
        settings = self.settings
        if settings.cache_dir is not None:
            for leftover in cache.sweep(settings.cache_dir):
                log.warning("removed %s, left by a crash while the cache was written", leftover)
        if settings.demo:
            self.demo = DemoSource(self.applier)
            self.demo.load()
            return
        if settings.cache_dir is not None:
            self.cache = CacheSource(settings.cache_dir, self.applier)
            self.cache.load()
            if self.cache.error is not None:
                self.refusals["corrupt_cache"] += 1
        if settings.snapshot is not None:
            self.file = FileSource(settings.snapshot, self.applier)
            outcome = self.file.load()
            if self.store.current is None:
                reason = "the file is missing" if outcome is None else "refused (errors above)"
                raise StartupError(f"cannot load the snapshot {settings.snapshot}: {reason}")
        if settings.control_plane is not None:
            self.control_plane = ControlPlaneSource(
                settings.control_plane,
                self.applier,
                self._identity(),
                security=self._security(),
            )

    def _identity(self) -> Identity:
        settings = self.settings
        return Identity(sidecar_id(settings), dict(settings.sidecar_labels), SOFTWARE_VERSION)

    def _security(self) -> ChannelSecurity:
        try:
            return control_plane_security(self.settings)
        except OSError as exc:
            raise StartupError(f"cannot read {exc.filename}: {exc.strerror}") from None

    # --- running -------------------------------------------------------------------------

    def start(self) -> None:
        """Start every source; the admin listener binds here (OSError when it cannot)."""
        settings = self.settings
        if settings.admin_listen is not None:
            tokens = TokenFile(settings.admin_token_file) if settings.admin_token_file else None
            credentials = None
            if settings.admin_tls_cert is not None and settings.admin_tls_key is not None:
                credentials = server_credentials(
                    settings.admin_tls_cert, settings.admin_tls_key, settings.admin_client_ca
                )
            self.admin = AdminServer(settings.admin_listen, self.applier, tokens, credentials)
        for source in self.sources().values():
            source.start()
        if self.admin is not None:
            log.info("admin API (PushSnapshot) on %s", self.admin.address)

    def stop(self) -> None:
        """Stop taking snapshots in (first thing on shutdown), the last started first."""
        for source in reversed(self.sources().values()):
            source.stop()

    # --- freshness -----------------------------------------------------------------------

    def stale_seconds(self) -> float:
        """Seconds since the snapshot's source was last known to agree with it.

        The control plane agrees while its stream is up; a file or the demo always does.
        """
        source = self.control_plane
        if source is None or source.connected:
            return 0.0
        since = source.disconnected_since or self._started_at
        return max(0.0, time.time() - since)

    def fresh(self) -> bool:
        """False once stale beyond --max-staleness (never when it is 0); logs each change."""
        limit = self.settings.max_staleness
        stale = self.stale_seconds()
        fresh = limit <= 0 or stale <= limit
        if fresh != self._was_fresh:
            self._was_fresh = fresh
            if fresh:
                log.info("snapshot source confirmed again: ready")
            else:
                log.warning(
                    "no contact with the snapshot's source for %.0f s (--max-staleness %.0f s): "
                    "not ready; still serving version %s",
                    stale,
                    limit,
                    self.store.current.version if self.store.current else "none",
                )
        return fresh

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "stale_seconds": round(self.stale_seconds(), 3),
            "max_staleness_seconds": self.settings.max_staleness or None,
            "refusals": dict(self.refusals),
            # key ids only: public keys are not secret, but nothing key-like goes out here
            "signing": {"required": True, "trusted_key_ids": list(self.verifier.key_ids)}
            if self.verifier is not None
            else {"required": False},
            "last_refusal": None,
            "sources": {name: source.status() for name, source in self.sources().items()},
        }
        last = self.applier.last_refusal
        if last is not None:
            body["last_refusal"] = {
                "source": last.source,
                "version": last.version,
                "reason": last.reason,
                "errors": [str(issue) for issue in last.errors[:20]],
            }
        if self.settings.cache_dir is not None:
            serving = self.store.current.version if self.store.current is not None else None
            body["last_known_good"] = {
                "dir": str(self.settings.cache_dir),
                **self.applier.cache_writes.status(serving),
            }
        # where they were before every source had a status: kept for dashboards and scripts
        if self.control_plane is not None:
            body["control_plane"] = self.control_plane.status()
        if self.admin is not None:
            body["listeners_admin"] = str(self.admin.address)
        return body


class SourcesCollector(Collector):
    """Prometheus view of the sources: staleness, refusals, control-plane connection."""

    def __init__(self, sources: SnapshotSources) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        sources = self._sources
        yield GaugeMetricFamily(
            "fader_snapshot_stale_seconds",
            "Seconds since the snapshot's source was last known to agree with it.",
            value=sources.stale_seconds(),
        )
        refused = CounterMetricFamily(
            "fader_snapshot_refusals",
            "Snapshots refused, by reason: invalid, stale, corrupt_cache, a signature "
            "problem (unsigned, bad_signature, ...) or a size limit (too_large, ...).",
            labels=("reason",),
        )
        reasons = ("invalid", "stale", "corrupt_cache", *signing.REASONS, *SNAPSHOT_LIMITS)
        for reason in reasons:
            refused.add_metric((reason,), sources.refusals.get(reason, 0))
        yield refused
        if sources.settings.cache_dir is not None:
            writes = sources.applier.cache_writes
            current = sources.store.current
            yield CounterMetricFamily(
                "fader_snapshot_cache_write_failures",
                "Applied snapshots that could not be written to the last-known-good cache.",
                value=writes.failures,
            )
            yield GaugeMetricFamily(
                "fader_snapshot_cache_behind",
                "1 while the last-known-good cache holds another version than the one served: "
                "a restart without a source would serve that one.",
                value=1 if writes.behind(current.version if current else None) else 0,
            )
        source = sources.control_plane
        if source is not None:
            yield GaugeMetricFamily(
                "fader_controlplane_connected",
                "1 while the control-plane stream is up.",
                value=1 if source.connected else 0,
            )
            yield CounterMetricFamily(
                "fader_controlplane_reconnects",
                "Control-plane stream reconnects.",
                value=source.reconnects,
            )
