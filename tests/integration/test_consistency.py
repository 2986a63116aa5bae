"""Every answer of a request comes from exactly one snapshot version, through the real lanes.

Every flag of snapshot N answers treatment "vN" with config {"v": N}, and responses carry
the version that answered, so a response mixing two snapshots (or a version label that
disagrees with the rules used) is detectable in every single evaluation.

Two tests: one where a swap lands inside every multi-item request of every lane, at a known
point (a snapshot that swaps itself out as soon as it answers its first item), so a lane
reading the snapshot per item fails every run; and 1,000 swaps while clients hammer the
sidecar over real gRPC (no failed lookup, no mixed answer under load).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
from fader.pb.fader.v1 import evaluation_pb2 as pb
from fader.pb.fader.v1 import evaluation_pb2_grpc as pb_grpc
from fader.pb.flagd.evaluation.v1 import evaluation_pb2 as flagd_pb
from fader.pb.flagd.evaluation.v1 import evaluation_pb2_grpc as flagd_grpc
from fader.rules.result import Decision
from fader.snapshot.loader import build_snapshot
from fader.snapshot.snapshot import Snapshot
from google.protobuf import struct_pb2

from sidecar.delivery.store import Store
from tests.api.test_fastlane import Raw
from tests.fader.rules.builders import condition, flag, snapshot_doc
from tests.integration.harness import RunningSidecar, loopback_settings, running_sidecar, short_tmp

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


def swaps_itself_out(store: Store, snap: Snapshot, successor: Snapshot) -> Snapshot:
    """`snap`, made to swap `store` to `successor` right after it answers its first item
    while active: the swap lands inside the request, between its first and second item,
    every time. A lane that took its snapshot once answers every item from `snap`; one that
    reads the store's snapshot per item answers the rest from `successor` (or later)."""
    answer = snap.evaluate

    def evaluate(
        key: str,
        flag_name: str,
        bucketing_key: str | None = None,
        attributes: dict[str, object] | None = None,
    ) -> Decision:
        decision = answer(key, flag_name, bucketing_key, attributes)
        if store.current is snap:
            store.swap(successor)
        return decision

    snap.evaluate = evaluate
    return snap


# Each lane's multi-item call: (the version the response names, [(treatment, config)...]).
Answers = tuple[int, list[tuple[str, str | None]]]


def via_get_treatments(sidecar: RunningSidecar) -> Answers:
    with grpc.insecure_channel(sidecar.tcp_target) as channel:
        stub = pb_grpc.EvaluationServiceStub(channel)
        response = stub.GetTreatments(pb.GetTreatmentsRequest(key="k", flags=FLAGS), timeout=5)
    return response.version, [(e.treatment, e.config) for e in response.evaluations]


def via_evaluate_batch(sidecar: RunningSidecar) -> Answers:
    items = [pb.BatchItem(key=f"k{i}", flag=name) for i, name in enumerate(FLAGS)]
    with grpc.insecure_channel(sidecar.tcp_target) as channel:
        stub = pb_grpc.EvaluationServiceStub(channel)
        response = stub.EvaluateBatch(pb.EvaluateBatchRequest(items=items), timeout=5)
    return response.version, [(e.treatment, e.config) for e in response.evaluations]


def via_flagd_resolve_all(sidecar: RunningSidecar) -> Answers:
    """flagd's ResolveAll names no version of its own; each flag's metadata carries the
    version of the snapshot the lane used, and its variant is the treatment."""
    context = struct_pb2.Struct()
    context.update({"targetingKey": "k"})
    with grpc.insecure_channel(sidecar.tcp_target) as channel:
        stub = flagd_grpc.ServiceStub(channel)
        response = stub.ResolveAll(flagd_pb.ResolveAllRequest(context=context), timeout=5)
    versions = {int(entry.metadata["version"]) for entry in response.flags.values()}
    assert len(versions) == 1, f"one ResolveAll answered from versions {versions}"
    answers: list[tuple[str, str | None]] = [(response.flags[n].variant, None) for n in FLAGS]
    return versions.pop(), answers


def via_fastlane(operation: str) -> Callable[[RunningSidecar], Answers]:
    def ask(sidecar: RunningSidecar) -> Answers:
        assert sidecar.sidecar.fastlane_path is not None
        client = Raw(str(sidecar.sidecar.fastlane_path))
        try:
            client.greet()
            if operation == "treatments":
                request: dict[str, Any] = {"id": 1, "op": "treatments", "key": "k", "flags": FLAGS}
            else:
                items = [{"key": f"k{i}", "flag": name} for i, name in enumerate(FLAGS)]
                request = {"id": 1, "op": "batch", "items": items}
            response = client.ask(request)
        finally:
            client.close()
        return response["version"], [(e["treatment"], e["config"]) for e in response["evaluations"]]

    return ask


LANES: dict[str, Callable[[RunningSidecar], Answers]] = {
    "fader.v1 GetTreatments": via_get_treatments,
    "fader.v1 EvaluateBatch": via_evaluate_batch,
    "flagd ResolveAll": via_flagd_resolve_all,
    "fast lane treatments": via_fastlane("treatments"),
    "fast lane batch": via_fastlane("batch"),
}


def test_a_swap_inside_every_request_never_mixes_versions() -> None:
    """For each lane: the active snapshot swaps itself out right after answering the
    request's first item (`swaps_itself_out`), and the response must still hold only that
    snapshot's answers and name its version.

    Mutants this catches, every run: the evaluation core or a lane reading the store's
    current snapshot per item (`self.store.current` or `Evaluator.snapshot()` inside the
    item loop) instead of using the one snapshot the request took."""
    with (
        short_tmp() as tmp,
        running_sidecar(loopback_settings(fastlane_uds=tmp / "fl.sock"), versioned(1)) as sidecar,
    ):
        store = sidecar.store
        for name, ask in LANES.items():
            active = store.current
            assert active is not None
            first, second, third = (versioned(active.version + n) for n in (1, 2, 3))
            swaps_itself_out(store, second, third)
            store.swap(swaps_itself_out(store, first, second))
            version, answers = ask(sidecar)
            assert store.current is not first, f"{name}: the swap did not land in the request"
            assert version == first.version, name
            treatments = {treatment for treatment, _ in answers}
            assert len(answers) == len(FLAGS), f"{name}: {answers}"
            assert treatments == {f"v{version}"}, f"{name} mixed versions: {answers}"
            if name != "flagd ResolveAll":  # ResolveAll carries no config
                assert {config for _, config in answers} == {f'{{"v":{version}}}'}, name


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
