"""The telemetry service of a control plane that keeps no telemetry.

A control plane forwarding a file (``--forward``) with no ``--impressions-out``,
``--events-out``, ``--counts-out`` or ``--unique-keys-out`` has nowhere to put an upload.
Without this service gRPC would answer a bare UNIMPLEMENTED and log nothing, while every
sidecar pointed here (the collector defaults to the control plane) drops every batch. This
service answers the same code, which sidecars treat as "refused for good", with a detail
that says how to fix it, logs a warning on the first upload, and counts the refusals for
``/status``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import grpc
from fader.pb.fader.v1 import telemetry_pb2 as pb
from fader.pb.fader.v1 import telemetry_pb2_grpc

log = logging.getLogger(__name__)

DETAIL = (
    "this control plane keeps no telemetry: start it with --impressions-out, --events-out, "
    "--counts-out or --unique-keys-out (or with a flag store, which keeps exposures under "
    "--data-dir), or point the sidecars' --collector elsewhere"
)


class NoCollector(telemetry_pb2_grpc.TelemetryServiceServicer):
    """Refuses every upload with a detail that says why, and says so in the log once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.refused = 0

    def Upload(self, request: pb.UploadRequest, context: grpc.ServicerContext) -> pb.UploadResponse:
        with self._lock:
            self.refused += 1
            first = self.refused == 1
        if first:
            log.warning("refusing telemetry from %s: %s", context.peer(), DETAIL)
        context.abort(grpc.StatusCode.UNIMPLEMENTED, DETAIL)
        raise AssertionError("unreachable: abort raises")

    def status(self) -> dict[str, Any]:
        return {"kept": False, "refused_uploads": self.refused, "detail": DETAIL}
