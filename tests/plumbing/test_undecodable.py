"""Undecodable requests to the thread-pool servers (admin port, control plane) are refused
with INVALID_ARGUMENT and never reach the servicer; decodable ones are served as before."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from fader.pb.fader.v1 import controlplane_pb2, snapshot_pb2

from sidecar.config import Address
from sidecar.delivery.apply import Applier
from sidecar.delivery.store import Store
from sidecar.plumbing import undecodable
from sidecar.sources.push import AdminServer

# A length-delimited field 1 whose length runs past the end of the message.
GARBAGE = b"\x0a\xff\x01abc"
CONTROL_PLANE = controlplane_pb2.DESCRIPTOR.services_by_name["ControlPlaneService"]
SYNC = "/fader.v1.ControlPlaneService/Sync"
LIST = "/fader.v1.ControlPlaneService/ListSidecars"


class Recorder:
    """A control-plane servicer that keeps what reached it."""

    def __init__(self) -> None:
        self.seen: list[object] = []

    def ListSidecars(
        self, request: controlplane_pb2.ListSidecarsRequest, context: grpc.ServicerContext
    ) -> controlplane_pb2.ListSidecarsResponse:
        self.seen.append(request)
        return controlplane_pb2.ListSidecarsResponse()

    def Sync(
        self, requests: Iterator[controlplane_pb2.SyncRequest], context: grpc.ServicerContext
    ) -> Iterator[controlplane_pb2.SyncResponse]:
        for request in requests:
            self.seen.append(request)
            yield controlplane_pb2.SyncResponse()


@pytest.fixture
def served() -> Iterator[tuple[grpc.Channel, Recorder]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    recorder = Recorder()
    undecodable.register(server, recorder, CONTROL_PLANE)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel, recorder
    finally:
        channel.close()
        server.stop(0)


def test_a_unary_request_that_does_not_decode_is_invalid_argument(
    served: tuple[grpc.Channel, Recorder],
) -> None:
    channel, recorder = served
    call = channel.unary_unary(LIST)
    with pytest.raises(grpc.RpcError) as raised:
        call(GARBAGE, timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the request does not decode" in (raised.value.details() or "")
    assert recorder.seen == []
    assert call(controlplane_pb2.ListSidecarsRequest().SerializeToString(), timeout=5) == b""
    assert len(recorder.seen) == 1


def test_a_stream_stops_at_the_first_message_that_does_not_decode(
    served: tuple[grpc.Channel, Recorder],
) -> None:
    channel, recorder = served
    good = controlplane_pb2.SyncRequest().SerializeToString()
    stream = channel.stream_stream(SYNC)(iter([good, GARBAGE, good]), timeout=5)
    with pytest.raises(grpc.RpcError) as raised:
        list(stream)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the request does not decode" in (raised.value.details() or "")
    assert len(recorder.seen) == 1


def test_the_admin_port_refuses_an_undecodable_push_and_keeps_serving() -> None:
    store = Store()
    admin = AdminServer(Address("127.0.0.1", 0), Applier(store), None)
    admin.start()
    channel = grpc.insecure_channel(str(admin.address))
    try:
        push = channel.unary_unary("/fader.v1.SnapshotAdminService/PushSnapshot")
        with pytest.raises(grpc.RpcError) as raised:
            push(GARBAGE, timeout=5)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        empty = controlplane_pb2.PushSnapshotRequest(snapshot=snapshot_pb2.Snapshot())
        with pytest.raises(grpc.RpcError) as refused:
            push(empty.SerializeToString(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details() == "snapshot.document is empty"
    finally:
        channel.close()
        admin.stop(0)
