"""1,000 snapshot swaps while clients hammer the sidecar over real gRPC: no failed lookup, and
every answer comes from exactly one snapshot version.

Every flag of snapshot N answers treatment "vN" with config {"v": N}, and responses carry
the version that answered, so a response mixing two snapshots (or a version label that
disagrees with the rules used) is detectable in every single evaluation.
"""

from __future__ import annotations

import threading
import time

import grpc
from fader.pb.fader.v1 import evaluation_pb2 as pb
from fader.pb.fader.v1 import evaluation_pb2_grpc as pb_grpc
from fader.snapshot.loader import build_snapshot
from fader.snapshot.snapshot import Snapshot

from tests.fader.rules.builders import condition, flag, snapshot_doc
from tests.integration.harness import loopback_settings, running_sidecar

FLAGS = [f"f{i}" for i in range(10)]
SWAPS = 1000


def versioned(version: int) -> Snapshot:
    flags = [
        flag(
            name,
            condition(partitions={f"v{version}": 100}),
            configurations={f"v{version}": f'{{"v":{version}}}'},
        )
        for name in FLAGS
    ]
    return build_snapshot(snapshot_doc(*flags, version=version))


class Hammer(threading.Thread):
    """Alternates GetTreatments and EvaluateBatch until told to stop, checking each answer."""

    def __init__(self, target: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.target, self.stop = target, stop
        self.calls = 0
        self.failures: list[str] = []
        self.versions: set[int] = set()

    def check(self, version: int, evaluations: list[pb.Evaluation]) -> None:
        self.versions.add(version)
        expected = f"v{version}"
        for evaluation in evaluations:
            if evaluation.treatment != expected or evaluation.config != f'{{"v":{version}}}':
                self.failures.append(f"version {version} answered {evaluation}")

    def run(self) -> None:
        with grpc.insecure_channel(self.target) as channel:
            stub = pb_grpc.EvaluationServiceStub(channel)
            batch = pb.EvaluateBatchRequest(
                items=[pb.BatchItem(key=f"k{i}", flag=FLAGS[i % 10]) for i in range(50)]
            )
            while not self.stop.is_set():
                try:
                    many = stub.GetTreatments(
                        pb.GetTreatmentsRequest(key="k", flags=FLAGS), timeout=5
                    )
                    self.check(many.version, list(many.evaluations))
                    batched = stub.EvaluateBatch(batch, timeout=5)
                    self.check(batched.version, list(batched.evaluations))
                    self.calls += 2
                except grpc.RpcError as err:
                    self.failures.append(f"RPC failed: {err.code()}")


def test_thousand_swaps_under_load_never_mix_versions() -> None:
    snapshots = [versioned(v) for v in range(1, SWAPS + 2)]
    with running_sidecar(loopback_settings(), snapshots[0]) as sidecar:
        stop = threading.Event()
        hammers = [Hammer(sidecar.tcp_target, stop) for _ in range(3)]
        for hammer in hammers:
            hammer.start()
        time.sleep(0.2)
        for snapshot in snapshots[1:]:
            sidecar.store.swap(snapshot)
            time.sleep(0.001)
        time.sleep(0.2)
        stop.set()
        for hammer in hammers:
            hammer.join(10)
        assert sidecar.store.current is snapshots[-1]
    failures = [f for h in hammers for f in h.failures]
    calls = sum(h.calls for h in hammers)
    seen = set().union(*(h.versions for h in hammers))
    assert failures == []
    assert calls > 200, calls
    assert len(seen) > 50, f"lookups saw only {len(seen)} versions: swaps did not overlap them"
