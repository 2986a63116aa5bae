"""Direct push of one snapshot (SnapshotAdminService.PushSnapshot) on the admin listener, with
the control-plane stream's validation and answer.

Whoever can push a snapshot controls production, so the admin listener is off unless
configured, and on any address but loopback it requires a bearer token or mTLS (both may
be on: then a call needs a client certificate and a token).
"""

from __future__ import annotations

from concurrent import futures
from typing import Any

import grpc
from fader.pb.fader.v1 import controlplane_pb2, controlplane_pb2_grpc, snapshot_pb2

from sidecar.auth import TokenFile
from sidecar.config import Address
from sidecar.delivery.apply import Applier
from sidecar.delivery.messages import WireError, ack_for, format_of
from sidecar.plumbing import undecodable

SNAPSHOT_ADMIN = controlplane_pb2.DESCRIPTOR.services_by_name["SnapshotAdminService"]


class SnapshotAdminServicer(controlplane_pb2_grpc.SnapshotAdminServiceServicer):
    def __init__(self, applier: Applier, tokens: TokenFile | None) -> None:
        self._applier = applier
        self._tokens = tokens

    def PushSnapshot(
        self, request: controlplane_pb2.PushSnapshotRequest, context: grpc.ServicerContext
    ) -> snapshot_pb2.SnapshotAck:
        if self._tokens is not None and not self._tokens.allows(context.invocation_metadata()):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
        if not request.HasField("snapshot") or not request.snapshot.document:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "snapshot.document is empty")
        try:
            fmt = format_of(request.snapshot)
        except WireError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        outcome = self._applier.apply_bytes(
            request.snapshot.document,
            fmt,
            f"push:{context.peer()}",
            force=request.force,
            signature=request.snapshot.signature or None,
        )
        return ack_for(outcome, request.snapshot.version)


class AdminServer:
    """The admin listener, a snapshot source: its own small thread-pool gRPC server, apart
    from lookups.

    Pushes are rare and each one validates and compiles a whole snapshot; a separate
    server keeps them off the lookup event loop and lets the admin port have its own
    address and authentication. The port is bound when constructed (so a busy port is a
    start-up error), served from `start`.
    """

    def __init__(
        self,
        address: Address,
        applier: Applier,
        tokens: TokenFile | None,
        credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="fader-admin"),
            options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 256 << 20)],
        )
        undecodable.register(self._server, SnapshotAdminServicer(applier, tokens), SNAPSHOT_ADMIN)
        try:
            if credentials is None:
                port = self._server.add_insecure_port(str(address))
            else:
                port = self._server.add_secure_port(str(address), credentials)
        except RuntimeError:
            raise OSError(f"cannot listen on {address} for the admin API") from None
        self.address = Address(address.host, port)

    def start(self) -> None:
        self._server.start()

    def stop(self, grace: float = 1.0) -> None:
        self._server.stop(grace).wait()

    def status(self) -> dict[str, Any]:
        return {"listen": str(self.address)}
