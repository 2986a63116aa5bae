"""Readiness: should traffic come to this sidecar now? One answer for gRPC health, `/readyz`
and `/status`, so that no probe can say yes while another says no.

Ready = a snapshot is active, the sidecar is not draining, and the snapshot's source was heard
from within `--max-staleness` (when set). Liveness is not decided here: it is "the process
is up", so that a missing or stale snapshot makes kubelet wait rather than restart the pod.
"""

from __future__ import annotations

from collections.abc import Callable

from sidecar.delivery.store import Store

NOT_READY = "not ready"
SERVING = "serving"
STALE = "stale"
DRAINING = "draining"


class Readiness:
    """Read from any thread (the management HTTP thread, the event loop): it only reads a
    snapshot reference, a flag and the sources' clocks."""

    def __init__(self, store: Store, fresh: Callable[[], bool] | None = None) -> None:
        self._store = store
        self._fresh = fresh or (lambda: True)
        self._draining = False

    def drain(self) -> None:
        """Shutdown has begun: not ready from now on, whatever else holds."""
        self._draining = True

    def state(self) -> str:
        """One of "not ready" (no snapshot yet), "serving", "stale" (beyond
        --max-staleness, still answering from the last snapshot) or "draining"."""
        if self._draining:
            return DRAINING
        if self._store.current is None:
            return NOT_READY
        return SERVING if self._fresh() else STALE

    def ready(self) -> bool:
        return self.state() == SERVING
