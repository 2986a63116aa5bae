"""Management HTTP: /metrics, /healthz, /readyz, /status on their own port.

It runs in its own thread, on an event loop of its own (sidecar.plumbing.http), away from the
gRPC event loop: a slow scrape or probe must never delay a lookup, and kubelet and Prometheus
need nothing more than HTTP/1.1 GETs. It only reads shared state (one snapshot reference,
plain counters).

A thread per connection, as the standard library's server has, let 248 half-sent requests
hold 248 threads for as long as their clients liked, and a client leaving mid-answer printed
a raw BrokenPipeError traceback. Here a connection costs no thread, must send a whole request
within REQUEST_TIMEOUT_SECONDS, and there are at most MAX_CONNECTIONS at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sidecar.config import Address
from sidecar.delivery.store import Store
from sidecar.plumbing.http import HttpServer, Limits, Request, Response
from sidecar.telemetry.metrics import Metrics

log = logging.getLogger(__name__)
# A client has this long to send a whole request (and an idle keep-alive connection is
# closed after it): probes and scrapes send theirs at once.
REQUEST_TIMEOUT_SECONDS = 5.0
MAX_CONNECTIONS = 256
_START_SECONDS = 10.0
_NOT_FOUND = b"not found: try /metrics /healthz /readyz /status\n"


class ManagementServer:
    """`/readyz` and `/status` "state" come from the callables it is given (the sidecar's one
    readiness object), so that they agree with gRPC health. It serves from construction on
    (a busy port is a start-up error) until `stop`."""

    def __init__(
        self,
        address: Address,
        store: Store,
        metrics: Metrics,
        status_extra: Callable[[], dict[str, Any]],
        *,
        state: Callable[[], str],
        ready: Callable[[], bool],
    ) -> None:
        self._store = store
        self._state = state
        self._ready = ready
        self._metrics = metrics
        self._status_extra = status_extra
        self._http = HttpServer(self._answer, 0, Limits(REQUEST_TIMEOUT_SECONDS, MAX_CONNECTIONS))
        self._loop = asyncio.new_event_loop()
        self._bound: concurrent.futures.Future[tuple[str, int]] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(address,), name="fader-mgmt", daemon=True
        )
        self._thread.start()
        host, port = self._bound.result(_START_SECONDS)  # raises OSError when it cannot bind
        self.address = Address(host, port)

    def _run(self, address: Address) -> None:
        """The management thread: bind (serving at once), then serve until `stop`."""
        asyncio.set_event_loop(self._loop)
        try:
            try:
                bound = self._loop.run_until_complete(self._http.start(address.host, address.port))
            except BaseException as err:
                self._bound.set_exception(err)
                return
            self._bound.set_result(bound)
            self._loop.run_forever()
            self._loop.run_until_complete(self._http.stop())
        finally:
            self._loop.close()

    def stop(self) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_START_SECONDS)

    def ready(self) -> bool:
        return self._ready()

    def status(self) -> dict[str, Any]:
        snap = self._store.current
        body: dict[str, Any] = {
            "state": self._state(),
            "version": None,
            "source": None,
            "loaded_at": None,
            "age_seconds": None,
            "flags": None,
        }
        if snap is not None:
            body.update(
                version=snap.version,
                source=snap.source,
                loaded_at=snap.loaded_at,
                age_seconds=round(max(0.0, time.time() - snap.loaded_at), 3),
                flags=snap.flag_count,
            )
        body.update(self._status_extra())
        return body

    def _answer(self, request: Request) -> Response:
        if request.method != "GET":
            return Response(405, b"only GET\n", [("Content-Type", "text/plain")])
        path = request.path
        if path == "/metrics":
            return _ok(generate_latest(self._metrics.registry), CONTENT_TYPE_LATEST)
        if path == "/healthz":
            return _ok(b"ok\n")
        if path == "/readyz":
            ready = self.ready()
            body = b"ready\n" if ready else b"not ready\n"
            return Response(200 if ready else 503, body, [("Content-Type", "text/plain")])
        if path == "/status":
            return _ok(json.dumps(self.status(), indent=2).encode() + b"\n", "application/json")
        return Response(404, _NOT_FOUND, [("Content-Type", "text/plain")])


def _ok(body: bytes, content_type: str = "text/plain") -> Response:
    return Response(200, body, [("Content-Type", content_type)])
