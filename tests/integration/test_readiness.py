"""One readiness: gRPC health and /readyz (and /status "state") agree in every state a
sidecar goes through, with real `fader serve` and `fader controlplane` processes.

The walk: no snapshot (control plane down) -> serving -> stale beyond --max-staleness (control
plane stopped) -> fresh again (control plane back) -> draining (SIGTERM)."""

from __future__ import annotations

import json
import queue
import signal
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.fader.rules.builders import flag, snapshot_doc
from tests.integration.harness import ServeProcess, free_port, http_get, serve_process, short_tmp
from tests.waiting import wait_for

READINESS_NAMES = ("", "readiness", "fader.v1.EvaluationService")


@pytest.fixture
def tmp() -> Iterator[Path]:
    with short_tmp() as path:
        yield path


def health(target: str, name: str) -> str:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=2)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def probes(sc: ServeProcess) -> tuple[str, ...]:
    """gRPC health of each readiness name and of liveness, the /readyz code, the /status
    state. Each is read separately, so during a change they may differ for an instant."""
    listening = sc.wait_listening()
    statuses = [health(listening["grpc"], name) for name in (*READINESS_NAMES, "liveness")]
    mgmt = "http://" + listening["mgmt"]
    code = http_get(mgmt + "/readyz")[0]
    state = json.loads(http_get(mgmt + "/status")[1])["state"]
    return (*statuses, str(code), state)


def agree_on(sc: ServeProcess, ready: bool, state: str) -> None:
    """Wait until every probe says ``ready`` (liveness always SERVING), then check that they
    still do: a state that holds, not a passing moment."""
    grpc_status = "SERVING" if ready else "NOT_SERVING"
    expected = (*[grpc_status] * len(READINESS_NAMES), "SERVING", "200" if ready else "503", state)
    wait_for(lambda: probes(sc) == expected, timeout=15, what=state)
    assert probes(sc) == expected


def controlplane(
    snapshot: Path, port: int, log_dir: Path, name: str
) -> AbstractContextManager[ServeProcess]:
    args = ["--listen", f"127.0.0.1:{port}", "--forward", str(snapshot), "--http-listen", "off"]
    return serve_process(args, log_dir, command="controlplane", log_name=name)


def test_grpc_health_and_readyz_agree_in_every_state(tmp: Path) -> None:
    snapshot, port = tmp / "snap.json", free_port()
    snapshot.write_text(json.dumps(snapshot_doc(flag("f"), version=3)))
    args = [
        "--control-plane", f"127.0.0.1:{port}",
        "--max-staleness", "1",
        "--grpc-listen", "127.0.0.1:0",
        "--mgmt-listen", "127.0.0.1:0",
        "--shutdown-grace", "3",
    ]  # fmt: skip
    with serve_process(args, tmp, log_name="sc.log") as sc:
        agree_on(sc, ready=False, state="not ready")  # no snapshot yet

        with controlplane(snapshot, port, tmp, "cp1.log") as cp:
            agree_on(sc, ready=True, state="serving")  # the control plane's snapshot
            cp.signal(signal.SIGTERM)
            assert cp.wait(10) == 0
        agree_on(sc, ready=False, state="stale")  # beyond --max-staleness

        with controlplane(snapshot, port, tmp, "cp2.log"):
            agree_on(sc, ready=True, state="serving")  # fresh again after reconnecting

            # Draining: a Watch opened before SIGTERM hears NOT_SERVING; /readyz answers 503
            # while the drain waits for that stream (the gRPC port takes no new calls).
            target = sc.wait_listening()["grpc"]
            mgmt = "http://" + sc.wait_listening()["mgmt"]
            heard: queue.Queue[str] = queue.Queue()
            channel = grpc.insecure_channel(target)
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="readiness"), timeout=10
            )

            def listen() -> None:
                try:
                    for response in watch:
                        heard.put(
                            health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
                        )
                except grpc.RpcError:
                    heard.put("ended")

            threading.Thread(target=listen, daemon=True).start()
            assert heard.get(timeout=5) == "SERVING"
            sc.signal(signal.SIGTERM)
            assert heard.get(timeout=5) == "NOT_SERVING"
            assert http_get(mgmt + "/readyz")[0] == 503
            assert json.loads(http_get(mgmt + "/status")[1])["state"] == "draining"
            assert sc.wait(15) == 0
            channel.close()
