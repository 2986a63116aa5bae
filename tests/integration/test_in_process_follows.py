"""An in-process client follows the snapshots pushed to a real `fader serve` process: each
version answers in the client within a second of the push being applied."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from fader import Client
from fader.pb.fader.v1 import controlplane_pb2, controlplane_pb2_grpc, snapshot_pb2

from tests.fader.rules.builders import condition, flag, snapshot_doc
from tests.integration.harness import free_port, short_tmp, start_sidecar

PUSHES = 5
FOLLOW_SECONDS = 1.0


@pytest.fixture
def tmp() -> Iterator[Path]:
    with short_tmp() as path:
        yield path


def push(admin: controlplane_pb2_grpc.SnapshotAdminServiceStub, version: int) -> None:
    """Pushes a snapshot whose flag "f" answers "v<version>"; returns once it is applied."""
    doc = snapshot_doc(flag("f", condition(partitions={f"v{version}": 100})), version=version)
    snapshot = snapshot_pb2.Snapshot(
        version=version,
        encoding=snapshot_pb2.SNAPSHOT_ENCODING_JSON,
        document=json.dumps(doc).encode(),
    )
    ack = admin.PushSnapshot(controlplane_pb2.PushSnapshotRequest(snapshot=snapshot), timeout=10)
    assert ack.accepted, ack.errors


def test_the_in_process_client_follows_each_push_within_a_second(tmp: Path) -> None:
    admin_address = f"127.0.0.1:{free_port()}"
    with start_sidecar(["--demo", "--admin-listen", admin_address], tmp, "sc.log") as sc:
        target = sc.wait_listening()["grpc"]
        with (
            grpc.insecure_channel(admin_address) as channel,
            Client(target, timeout=5.0, mode="in-process") as client,
        ):
            admin = controlplane_pb2_grpc.SnapshotAdminServiceStub(channel)
            assert client.in_process is not None and client.in_process.ready.wait(10)
            lags = []
            for version in range(2, 2 + PUSHES):
                push(admin, version)
                applied = time.monotonic()
                while client.get_treatment("u", "f") != f"v{version}":
                    assert time.monotonic() - applied < 10, f"version {version} never came"
                    time.sleep(0.001)
                lags.append(time.monotonic() - applied)
            assert client.in_process.remote_lookups == 0  # every answer was local
    assert max(lags) < FOLLOW_SECONDS, f"lags after each push: {lags}"
