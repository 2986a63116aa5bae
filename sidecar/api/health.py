"""grpc.health.v1 on the evaluation port, with names for each kind of probe.

- "" (the server as a whole), "readiness" and "fader.v1.EvaluationService": SERVING while the
  sidecar is ready (the `ready` callable it is given: `sidecar.app.readiness`), the same
  answer `/readyz` gives.
- "liveness": SERVING while the process runs; never tied to the snapshot or the control plane,
  so a missing snapshot makes kubelet wait rather than restart the container.
On shutdown every name turns NOT_SERVING before the server stops accepting calls.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LIVENESS = "liveness"
READINESS_NAMES = ("", "readiness", "fader.v1.EvaluationService")
# Readiness can change with nothing happening (a source falls silent past --max-staleness),
# so it is also re-read at this interval: a Watch sees the change at most this late.
POLL_SECONDS = 0.25


class Health:
    """Owns the health servicer and keeps the readiness names in step with `ready()`."""

    def __init__(self, ready: Callable[[], bool], poll_seconds: float = POLL_SECONDS) -> None:
        self.servicer = HealthServicer()
        self._ready = ready
        self._poll_seconds = poll_seconds
        self._loop = asyncio.get_running_loop()
        self._serving: bool | None = None
        self._poller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.servicer.set(LIVENESS, SERVING)
        await self.refresh()
        self._poller = asyncio.create_task(self._poll())

    async def shutdown(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self.servicer.enter_graceful_shutdown()

    async def refresh(self) -> None:
        """Publish readiness if it changed (a Watch hears of changes only)."""
        serving = self._ready()
        if serving == self._serving:
            return
        self._serving = serving
        status = SERVING if serving else NOT_SERVING
        for name in READINESS_NAMES:
            await self.servicer.set(name, status)

    def changed(self) -> None:
        """Something readiness depends on changed (a snapshot swapped in); callable from any
        thread, so that a new snapshot is published at once rather than at the next poll."""
        asyncio.run_coroutine_threadsafe(self.refresh(), self._loop)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_seconds)
            await self.refresh()
