"""The server around the servicer: health, reflection, WatchChanges, readiness, metrics, ports."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from fader.pb.fader.v1 import evaluation_pb2 as pb
from fader.pb.fader.v1 import evaluation_pb2_grpc as pb_grpc
from fader.snapshot.loader import build_snapshot
from fader.snapshot.snapshot import Snapshot
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from sidecar.app.errors import StartupError
from sidecar.config import Address
from sidecar.delivery.store import Store
from tests.fader.rules.builders import flag, snapshot_doc
from tests.integration.harness import (
    RunningSidecar,
    demo_snapshot,
    http_get,
    loopback_settings,
    running_sidecar,
)

TIMEOUT = 5.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Health follows a swap asynchronously (the store notifies the event loop)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def health(target: str, service: str) -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int(
            stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT).status
        )


def test_health_names(target: str) -> None:
    for name in ("", "readiness", "liveness", "fader.v1.EvaluationService"):
        assert health(target, name) == SERVING, name
    with pytest.raises(grpc.RpcError) as info:
        health(target, "no.such.Service")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=TIMEOUT))
    names = {s.name for s in response.list_services_response.service}
    assert names == {
        "fader.v1.EvaluationService",
        "flagd.evaluation.v1.Service",
        "flagd.evaluation.v2.Service",
        "flagd.sync.v1.FlagSyncService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


def test_not_ready_without_a_snapshot_then_ready_after_a_swap() -> None:
    with (
        running_sidecar(loopback_settings()) as running,
        grpc.insecure_channel(running.tcp_target) as channel,
    ):
        stub = pb_grpc.EvaluationServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.GetTreatment(pb.GetTreatmentRequest(key="k", flag="f"), timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert info.value.details() == "no snapshot is active yet"
        assert health(running.tcp_target, "readiness") == NOT_SERVING
        assert health(running.tcp_target, "liveness") == SERVING
        assert http_get(running.mgmt_url + "/readyz")[0] == 503
        assert http_get(running.mgmt_url + "/healthz")[0] == 200
        assert json.loads(http_get(running.mgmt_url + "/status")[1])["state"] == "not ready"

        running.store.swap(demo_snapshot())
        wait_until(lambda: health(running.tcp_target, "readiness") == SERVING)
        assert http_get(running.mgmt_url + "/readyz")[0] == 200
        response = stub.GetTreatment(
            pb.GetTreatmentRequest(key="k", flag="ui-theme"), timeout=TIMEOUT
        )
        assert response.evaluation.treatment == "classic"


def version(n: int, *flags: dict[str, Any]) -> Snapshot:
    return build_snapshot(snapshot_doc(*flags, version=n), source=f"test:{n}")


@pytest.fixture
def watched() -> Iterator[RunningSidecar]:
    with running_sidecar(loopback_settings(), version(1, flag("a"), flag("b"))) as running:
        yield running


def test_watch_changes_reports_versions_and_changed_flags(watched: RunningSidecar) -> None:
    with grpc.insecure_channel(watched.tcp_target) as channel:
        stub = pb_grpc.EvaluationServiceStub(channel)
        stream = stub.WatchChanges(pb.WatchChangesRequest(), timeout=TIMEOUT)
        first = next(stream)
        assert (first.version, list(first.changed_flags), first.source) == (1, ["a", "b"], "test:1")
        watched.store.swap(version(2, flag("a"), flag("b", defaultTreatment="on"), flag("c")))
        second = next(stream)
        assert (second.version, list(second.changed_flags)) == (2, ["b", "c"])
        watched.store.swap(version(3, flag("b", defaultTreatment="on"), flag("c")))
        assert list(next(stream).changed_flags) == ["a"]
        stream.cancel()


def test_watch_changes_filters_flags(watched: RunningSidecar) -> None:
    with grpc.insecure_channel(watched.tcp_target) as channel:
        stub = pb_grpc.EvaluationServiceStub(channel)
        stream = stub.WatchChanges(pb.WatchChangesRequest(flags=["a"]), timeout=TIMEOUT)
        assert list(next(stream).changed_flags) == ["a"]
        watched.store.swap(
            version(2, flag("a"), flag("b", defaultTreatment="on"))
        )  # b only: silent
        watched.store.swap(
            version(3, flag("a", defaultTreatment="on"), flag("b", defaultTreatment="on"))
        )
        message = next(stream)
        assert (message.version, list(message.changed_flags)) == (3, ["a"])
        stream.cancel()


def test_watch_stream_ends_cleanly_on_shutdown() -> None:
    store = Store()
    store.swap(demo_snapshot())
    running = RunningSidecar(loopback_settings(), store)
    with grpc.insecure_channel(running.tcp_target) as channel:
        stream = pb_grpc.EvaluationServiceStub(channel).WatchChanges(
            pb.WatchChangesRequest(), timeout=TIMEOUT
        )
        next(stream)
        stopper = threading.Thread(target=running.stop, kwargs={"grace": 3.0})
        stopper.start()
        assert list(stream) == []  # ended with OK, not cut off by the drain budget
        stopper.join(5)
        assert stream.code() == grpc.StatusCode.OK


def metric(text: str, name: str, **labels: str) -> float:
    """Value of one sample in Prometheus text format (labels in any order)."""
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    raise AssertionError(f"no sample {name}{labels}")


def test_metrics_count_evaluations_and_calls() -> None:
    with running_sidecar(loopback_settings(), demo_snapshot()) as running:
        with grpc.insecure_channel(running.tcp_target) as channel:
            stub = pb_grpc.EvaluationServiceStub(channel)
            for _ in range(3):
                stub.GetTreatment(
                    pb.GetTreatmentRequest(key="anyone", flag="kill-switch-demo"), timeout=TIMEOUT
                )
            stub.GetTreatment(
                pb.GetTreatmentRequest(key="anyone", flag="user-typed-anything"), timeout=TIMEOUT
            )
            items = [pb.BatchItem(key=f"k{i}", flag="kill-switch-demo") for i in range(10)]
            stub.EvaluateBatch(pb.EvaluateBatchRequest(items=items), timeout=TIMEOUT)
            with pytest.raises(grpc.RpcError):
                stub.GetTreatment(pb.GetTreatmentRequest(key="", flag="f"), timeout=TIMEOUT)
        # a call is counted as handled after its status went out: the client may be faster
        url = running.mgmt_url + "/metrics"
        wait_until(lambda: "INVALID_ARGUMENT" in http_get(url)[1])
        status, text = http_get(url)
    assert status == 200
    assert metric(text, "fader_evaluations_total", flag="kill-switch-demo", treatment="safe") == 13
    assert metric(text, "fader_evaluations_total", flag="_unknown", treatment="control") == 1
    assert "user-typed-anything" not in text
    method = {"grpc_service": "fader.v1.EvaluationService", "grpc_method": "GetTreatment"}
    assert metric(text, "grpc_server_started_total", grpc_type="unary", **method) == 5
    assert metric(text, "grpc_server_handled_total", grpc_code="OK", **method) == 4
    assert metric(text, "grpc_server_handled_total", grpc_code="INVALID_ARGUMENT", **method) == 1
    assert metric(text, "grpc_server_handling_seconds_count", **method) == 5
    assert metric(text, "fader_lookup_duration_seconds_count", method="EvaluateBatch") == 1
    assert metric(text, "fader_snapshot_version") == 1
    assert metric(text, "fader_snapshot_flags") == 5
    assert metric(text, "fader_snapshot_age_seconds") >= 0


def test_status_document(demo_sidecar: RunningSidecar) -> None:
    status, body = http_get(demo_sidecar.mgmt_url + "/status")
    document = json.loads(body)
    assert status == 200
    assert (document["state"], document["version"], document["source"], document["flags"]) == (
        "serving",
        1,
        "demo",
        5,
    )
    assert document["listeners"] == {
        "grpc": demo_sidecar.tcp_target,
        "uds": demo_sidecar.uds_target.removeprefix("unix://"),
        "mgmt": demo_sidecar.mgmt_url.removeprefix("http://"),
    }
    assert http_get(demo_sidecar.mgmt_url + "/nope")[0] == 404


def test_second_sidecar_on_the_same_port_fails_loudly(demo_sidecar: RunningSidecar) -> None:
    port = int(demo_sidecar.tcp_target.rsplit(":", 1)[1])
    settings = loopback_settings(grpc_listen=Address("127.0.0.1", port))
    with pytest.raises(StartupError, match=f"cannot listen on 127.0.0.1:{port}"):
        RunningSidecar(settings, Store())


def test_open_reflection_streams_do_not_starve_lookups() -> None:
    """Idle reflection streams (bidirectional, held open) must not keep lookups waiting."""
    release = threading.Event()

    def requests() -> Iterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")
        release.wait(10)

    with (
        running_sidecar(loopback_settings(), demo_snapshot()) as running,
        grpc.insecure_channel(running.tcp_target) as channel,
    ):
        reflection_stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        streams = [reflection_stub.ServerReflectionInfo(requests(), timeout=15) for _ in range(6)]
        assert next(streams[0]).list_services_response.service  # the first one is served
        lookups = pb_grpc.EvaluationServiceStub(channel)
        for _ in range(20):
            response = lookups.GetTreatment(
                pb.GetTreatmentRequest(key="k", flag="ui-theme"), timeout=2
            )
            assert response.evaluation.treatment == "classic"
        release.set()
        for stream in streams:
            stream.cancel()


def test_open_watch_streams_do_not_starve_lookups(watched: RunningSidecar) -> None:
    with grpc.insecure_channel(watched.tcp_target) as channel:
        stub = pb_grpc.EvaluationServiceStub(channel)
        streams = [stub.WatchChanges(pb.WatchChangesRequest(), timeout=15) for _ in range(12)]
        assert all(next(stream).version == 1 for stream in streams)
        for _ in range(20):
            response = stub.GetTreatment(pb.GetTreatmentRequest(key="k", flag="a"), timeout=2)
            assert response.evaluation.treatment == "on"
        watched.store.swap(version(2, flag("a", defaultTreatment="x"), flag("b")))
        assert all(list(next(stream).changed_flags) == ["a"] for stream in streams)
        for stream in streams:
            stream.cancel()
