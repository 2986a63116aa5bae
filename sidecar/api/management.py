"""Management HTTP: /metrics, /healthz, /readyz, /status on their own port.

It runs in a thread with the standard library's HTTP server, away from the gRPC event loop:
a slow scrape or probe must never delay a lookup, and kubelet and Prometheus need nothing more
than HTTP/1.1 GETs. It only reads shared state (one snapshot reference, plain counters).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sidecar.config import Address
from sidecar.delivery.store import Store
from sidecar.telemetry.metrics import Metrics

log = logging.getLogger(__name__)
# How often the HTTP thread checks for shutdown: the most a stop waits on it.
POLL_SECONDS = 0.05


class _HTTPServerV6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class ManagementServer:
    """`/readyz` and `/status` "state" come from the callables it is given (the sidecar's one
    readiness object), so that they agree with gRPC health."""

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
        server_class = _HTTPServerV6 if ":" in address.host else ThreadingHTTPServer
        self._httpd = server_class((address.host, address.port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(POLL_SECONDS,), name="fader-mgmt", daemon=True
        )

    @property
    def address(self) -> Address:
        host, port = self._httpd.server_address[:2]
        return Address(str(host), int(port))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

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

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(server._metrics.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._send(200, b"ok\n")
                elif path == "/readyz":
                    ready = server.ready()
                    self._send(200 if ready else 503, b"ready\n" if ready else b"not ready\n")
                elif path == "/status":
                    body = json.dumps(server.status(), indent=2).encode() + b"\n"
                    self._send(200, body, "application/json")
                else:
                    self._send(404, b"not found: try /metrics /healthz /readyz /status\n")

            def _send(self, code: int, body: bytes, content_type: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("mgmt %s %s", self.address_string(), format % args)

        return Handler
