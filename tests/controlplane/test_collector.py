"""The reference collector inside the control plane, over real gRPC: JSONL output per kind,
idempotent batch ids (also across a collector restart), tokens, refusals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from fader.pb.fader.v1 import telemetry_pb2 as pb
from fader.pb.fader.v1 import telemetry_pb2_grpc

from sidecar.auth import TokenFile
from sidecar.config import Address
from sidecar.controlplane.collector import Outputs
from sidecar.controlplane.main import ControlPlane
from tests.fader.rules.builders import flag, snapshot_doc


@pytest.fixture
def snapshot_file(tmp_path: Path) -> Path:
    path = tmp_path / "snapshot.json"
    path.write_text(json.dumps(snapshot_doc(flag("f"))))
    return path


def outputs(tmp_path: Path, events: bool = True) -> Outputs:
    return Outputs(
        impressions=tmp_path / "out" / "impressions.jsonl",
        counts=tmp_path / "out" / "counts.jsonl",
        unique_keys=tmp_path / "out" / "unique.jsonl",
        events=tmp_path / "out" / "events.jsonl" if events else None,
    )


class Plane:
    def __init__(self, snapshot: Path, out: Outputs, tokens: TokenFile | None = None) -> None:
        self.cp = ControlPlane(snapshot, Address("127.0.0.1", 0), outputs=out, tokens=tokens)
        self.cp.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.cp.port}")
        self.stub = telemetry_pb2_grpc.TelemetryServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        self.cp.stop(0)


@pytest.fixture
def plane(tmp_path: Path, snapshot_file: Path) -> Iterator[Plane]:
    running = Plane(snapshot_file, outputs(tmp_path))
    yield running
    running.close()


def batch(batch_id: str) -> pb.UploadRequest:
    request = pb.UploadRequest(batch_id=batch_id, sidecar_id="pod-a", impressions_mode="debug")
    request.impressions.add(
        key="u1",
        flag="f",
        treatment="on",
        label="default rule",
        change_number=7,
        time_ms=1_000,
        snapshot_version=3,
    )
    request.impressions.add(
        key="u2", bucketing_key="acct", flag="f", treatment="off", time_ms=2_000, previous_time_ms=1
    )
    request.counts.add(flag="f", hour_ms=3_600_000, count=4)
    request.unique_keys.add(flag="g", keys=["a", "b"])
    event = request.events.add(
        key="u1", traffic_type="user", event_type="buy", properties_json='{"sku":"x"}'
    )
    event.value = 9.5
    return request


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_kind_lands_in_its_file(plane: Plane, tmp_path: Path) -> None:
    assert plane.stub.Upload(batch("b1")).duplicate is False
    assert stored(plane) == (1, 0)
    out = tmp_path / "out"
    tag = {"batch_id": "b1", "sidecar_id": "pod-a"}
    assert lines(out / "impressions.jsonl") == [
        {
            "key": "u1",
            "bucketing_key": None,
            "flag": "f",
            "treatment": "on",
            "label": "default rule",
            "change_number": 7,
            "time": 1_000,
            "previous_time": None,
            "snapshot_version": 3,
        }
        | tag,
        {
            "key": "u2",
            "bucketing_key": "acct",
            "flag": "f",
            "treatment": "off",
            "label": None,
            "change_number": 0,
            "time": 2_000,
            "previous_time": 1,
            "snapshot_version": 0,
        }
        | tag,
    ]
    assert lines(out / "counts.jsonl") == [{"flag": "f", "hour": 3_600_000, "count": 4} | tag]
    assert lines(out / "unique.jsonl") == [{"flag": "g", "keys": ["a", "b"]} | tag]
    assert lines(out / "events.jsonl") == [
        {
            "key": "u1",
            "traffic_type": "user",
            "event_type": "buy",
            "value": 9.5,
            "properties": {"sku": "x"},
            "timestamp": 0,
        }
        | tag
    ]


def stored(plane: Plane) -> tuple[int, int]:
    """(batches stored, duplicates received) from the collector's status."""
    status = plane.cp.status()["collector"]
    return status["batches"], status["duplicates"]


def test_a_batch_id_is_stored_once_even_across_a_restart(
    tmp_path: Path, snapshot_file: Path
) -> None:
    """A repeated batch id is stored once but counted as a duplicate received, so a test can
    tell a sidecar that sends a batch twice from one that sends it once."""
    first = Plane(snapshot_file, outputs(tmp_path))
    first.stub.Upload(batch("b1"))
    assert stored(first) == (1, 0)
    assert first.stub.Upload(batch("b1")).duplicate is True
    assert stored(first) == (1, 1)
    first.close()
    with (tmp_path / "out" / "impressions.jsonl").open("a") as handle:
        handle.write('{"key": "torn')  # a crash mid-line
    second = Plane(snapshot_file, outputs(tmp_path))
    try:
        assert second.stub.Upload(batch("b1")).duplicate is True
        assert second.stub.Upload(batch("b2")).duplicate is False
        assert stored(second) == (1, 1)  # b2 stored; b1, known from the files, a duplicate
    finally:
        second.close()
    text = (tmp_path / "out" / "impressions.jsonl").read_text().splitlines()
    assert len(text) == 5  # b1 twice, the torn line, b2 twice: each on a line of its own
    assert [json.loads(line)["batch_id"] for line in text if line != '{"key": "torn'] == [
        "b1",
        "b1",
        "b2",
        "b2",
    ]


def test_kinds_without_an_output_are_discarded_and_counted(
    tmp_path: Path, snapshot_file: Path
) -> None:
    running = Plane(snapshot_file, outputs(tmp_path, events=False))
    try:
        running.stub.Upload(batch("b1"))
        assert running.cp.status()["collector"]["discarded"] == {"events": 1}
        assert running.cp.status()["collector"]["records"]["impressions"] == 2
    finally:
        running.close()


def test_empty_batch_id_is_invalid(plane: Plane) -> None:
    with pytest.raises(grpc.RpcError) as err:
        plane.stub.Upload(pb.UploadRequest())
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_token_is_required_when_configured(tmp_path: Path, snapshot_file: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret\n")
    running = Plane(snapshot_file, outputs(tmp_path), TokenFile(tokens))
    try:
        with pytest.raises(grpc.RpcError) as err:
            running.stub.Upload(batch("b1"))
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
        answer = running.stub.Upload(batch("b1"), metadata=[("authorization", "Bearer s3cret")])
        assert answer.duplicate is False
    finally:
        running.close()


def test_no_outputs_means_no_collector(snapshot_file: Path) -> None:
    running = Plane(snapshot_file, Outputs())
    try:
        with pytest.raises(grpc.RpcError) as err:
            running.stub.Upload(batch("b1"))
        assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED
    finally:
        running.close()
