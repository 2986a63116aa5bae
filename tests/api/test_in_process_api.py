"""The two calls of in-process clients over real gRPC: WatchSnapshots cuts a large snapshot's
bytes into chunks that join back to exactly what the sidecar applied, and announces the
sidecar's settings; RecordExposures refuses a malformed batch and acknowledges a repeat."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import grpc
import pytest
from fader._inprocess import versions
from fader.pb.fader.v1 import evaluation_pb2 as pb
from fader.pb.fader.v1 import evaluation_pb2_grpc as pb_grpc
from fader.pb.fader.v1 import telemetry_pb2
from fader.snapshot.loader import build_snapshot

from sidecar.api.fader_v1 import CHUNK_BYTES
from tests.fader.rules.builders import condition, flag, snapshot_doc
from tests.integration.harness import RunningSidecar, loopback_settings, running_sidecar


@pytest.fixture
def sidecar() -> Iterator[RunningSidecar]:
    with running_sidecar(loopback_settings(max_attributes=7, max_batch_items=50)) as running:
        yield running


def test_a_large_snapshot_arrives_in_chunks_then_each_new_version(sidecar: RunningSidecar) -> None:
    segment = [f"member-{i:07d}" for i in range(150_000)]  # about 2.4 MB of keys
    big = build_snapshot({**snapshot_doc(flag("f"), version=5), "segments": {"s": segment}})
    assert big.document is not None and len(big.document.data) > 2 * CHUNK_BYTES
    sidecar.store.swap(big)
    with grpc.insecure_channel(sidecar.tcp_target) as channel:
        stub = pb_grpc.EvaluationServiceStub(channel)
        call = stub.WatchSnapshots(pb.WatchSnapshotsRequest())
        messages = [next(call) for _ in range(3)]
        assert [len(m.chunk) for m in messages[:2]] == [CHUNK_BYTES, CHUNK_BYTES]
        assert {m.version for m in messages} == {5}
        first = messages[0]
        assert (first.payload_size, first.encoding) == (len(big.document.data), "msgpack")
        assert first.settings == pb.InProcessSettings(
            impressions_mode="",  # no collector: clients record nothing
            observer_size=0,
            max_attributes=7,
            max_attribute_size=65_536,
            max_batch_items=50,
        )
        stream = versions(itertools.chain(messages, call))
        version = next(stream)
        assert version.payload == big.document.data and version.version == 5
        small = build_snapshot(snapshot_doc(flag("f", condition(partitions={"v": 100})), version=6))
        sidecar.store.swap(small)
        assert small.document is not None and next(stream).payload == small.document.data
        call.cancel()


def test_record_exposures_refuses_bad_batches_and_acknowledges_repeats(
    sidecar: RunningSidecar,
) -> None:
    impression = telemetry_pb2.Impression(key="u", flag="f", treatment="on", time_ms=1)
    with grpc.insecure_channel(sidecar.tcp_target) as channel:
        stub = pb_grpc.EvaluationServiceStub(channel)
        request = pb.RecordExposuresRequest(batch_id="b-1", impressions=[impression])
        assert not stub.RecordExposures(request, timeout=5).duplicate
        assert stub.RecordExposures(request, timeout=5).duplicate
        bad = pb.RecordExposuresRequest(
            batch_id="b-2", impressions=[impression, telemetry_pb2.Impression(key="u")]
        )
        with pytest.raises(grpc.RpcError) as refused:
            stub.RecordExposures(bad, timeout=5)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details() == "impressions[1].flag: must not be empty"
