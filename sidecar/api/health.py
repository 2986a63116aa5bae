"""grpc.health.v1 on the evaluation port, with names for each kind of probe.

- "" (the server as a whole), "readiness" and "fader.v1.EvaluationService": SERVING once a
  snapshot is active, since before that every lookup would fail with UNAVAILABLE.
- "liveness": SERVING while the process runs; never tied to the snapshot or the control plane,
  so a missing snapshot makes kubelet wait rather than restart the container.
On shutdown every name turns NOT_SERVING before the server stops accepting calls.
"""

from __future__ import annotations

import asyncio

from fader.snapshot.snapshot import Snapshot
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from sidecar.delivery.store import Store

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LIVENESS = "liveness"
READINESS_NAMES = ("", "readiness", "fader.v1.EvaluationService")


class Health:
    """Owns the health servicer and keeps readiness in step with the store."""

    def __init__(self, store: Store) -> None:
        self.servicer = HealthServicer()
        self._store = store
        self._loop = asyncio.get_running_loop()
        self._unsubscribe = store.subscribe(self._on_swap)

    async def start(self) -> None:
        await self.servicer.set(LIVENESS, SERVING)
        await self._set_readiness()

    async def shutdown(self) -> None:
        self._unsubscribe()
        await self.servicer.enter_graceful_shutdown()

    async def _set_readiness(self) -> None:
        status = SERVING if self._store.current is not None else NOT_SERVING
        for name in READINESS_NAMES:
            await self.servicer.set(name, status)

    def _on_swap(self, _previous: Snapshot | None, _current: Snapshot) -> None:
        """Called by `Store.swap` from whichever thread swapped."""
        asyncio.run_coroutine_threadsafe(self._set_readiness(), self._loop)
