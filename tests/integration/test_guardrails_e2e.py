"""The guardrails end to end, with real processes: `fader controlplane` (flag store, collector,
exposure store, guardrail loop every second), a `fader serve` sidecar fed by it and uploading
to it, and tools/synthetic_service.py looking two flags up and sending `error` and `latency`
events, where one flag's `on` raises the error rate. Rollout plans ramp both.

Acceptance: the harmful flag is killed by the guardrail and the sidecar serves the default
within 5 s of the decision; the healthy flag completes its plan; the webhook hears of both."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from fader.pb.fader.v1 import evaluation_pb2 as pb
from fader.pb.fader.v1 import evaluation_pb2_grpc as pb_grpc

from sidecar.controlplane.apiclient import ApiClient, flag_path
from tests.controlplane.guardrail_world import Webhooks
from tests.fader.rules.builders import condition, flag
from tests.integration.harness import REPO, serve_env, serve_process, short_tmp
from tests.integration.release_processes import control_plane

HARMFUL, HEALTHY = "checkout-v2", "search-v2"
PROBES = [f"probe-{i}" for i in range(40)]
SERVES_DEFAULT_WITHIN = 5.0


@pytest.fixture
def tmp() -> Iterator[Path]:
    with short_tmp() as path:
        yield path


def labels_of(target: str, name: str) -> set[str]:
    """The labels the sidecar answers the probe keys with (empty when it cannot answer)."""
    request = pb.EvaluateBatchRequest(items=[pb.BatchItem(key=k, flag=name) for k in PROBES])
    try:
        with grpc.insecure_channel(target) as channel:
            response = pb_grpc.EvaluationServiceStub(channel).EvaluateBatch(request, timeout=5)
    except grpc.RpcError:
        return set()
    return {e.label for e in response.evaluations}


def release(api: ApiClient, name: str) -> dict[str, Any]:
    result: dict[str, Any] = api.get(f"/api/v1/releases/{name}")
    return result


def configure(api: ApiClient) -> None:
    """Two flags at 0 %, two metrics, guardrails on both, and a plan ramping each."""
    # Each flag its own seed, as Split gives them: with one seed for both, the same keys
    # would get `on` in both, and the healthy flag would carry the harmful one's errors.
    documents = [
        flag(n, condition(partitions={"on": 0, "off": 100}, label="default rule"),
             defaultTreatment="off", seed=seed)
        for n, seed in ((HARMFUL, 1_111_111), (HEALTHY, -987_654_321))
    ]  # fmt: skip
    api.post("/api/v1/apply", {"document": documents, "reason": "e2e", "author": "test"})
    api.put("/api/v1/metrics/errors", {"event": "error", "kind": "conversion",
                                       "direction": "decrease"})  # fmt: skip
    api.put("/api/v1/metrics/latency", {"event": "latency", "kind": "mean",
                                        "direction": "decrease"})  # fmt: skip
    for name in (HARMFUL, HEALTHY):
        api.put(f"/api/v1/guardrails/{name}/errors", {"max_regression": 0.02})
        api.put(f"/api/v1/guardrails/{name}/latency", {"max_regression": 60})
        api.post(flag_path(name, "/rollout"),
                 {"steps": [20, 50, 100], "hold_seconds": 2, "treatment": "on",
                  "reason": "e2e", "author": "test"})  # fmt: skip


def test_a_harmful_release_is_killed_and_a_healthy_one_completes(tmp: Path) -> None:
    hooks = Webhooks().start()
    plane_args = [
        "--data-dir", str(tmp / "data"), "--guardrail-interval", "1", "--min-sample", "150",
        "--window", "1h", "--webhook", hooks.url,
    ]  # fmt: skip
    sidecar_args = [
        "--grpc-listen", "127.0.0.1:0", "--mgmt-listen", "127.0.0.1:0", "--sidecar-id", "e2e",
        "--telemetry-flush-interval", "0.3",
    ]  # fmt: skip
    service: subprocess.Popen[str] | None = None
    try:
        with control_plane(tmp, *plane_args) as plane, serve_process(
            ["--control-plane", plane.target, *sidecar_args], tmp, log_name="sc.log"
        ) as sidecar:  # fmt: skip
            target = sidecar.wait_listening()["grpc"]
            api = ApiClient(plane.server)
            configure(api)
            service = subprocess.Popen(
                [sys.executable, "tools/synthetic_service.py", "--sidecar", target,
                 "--flags", f"{HARMFUL},{HEALTHY}", "--harmful", HARMFUL, "--base-error", "0.05",
                 "--harm", "0.30", "--duration", "50", "--rate", "600", "--report", "1000"],
                cwd=REPO, env=serve_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True,
            )  # fmt: skip
            # Watch the sidecar itself: the first moment every probe key gets the default.
            served_default_at = None
            deadline = time.monotonic() + 45
            while time.monotonic() < deadline and served_default_at is None:
                if labels_of(target, HARMFUL) == {"killed"}:
                    served_default_at = time.time()
                time.sleep(0.05)
            assert served_default_at is not None, (
                f"{HARMFUL} was never killed:\n{plane.process.log}"
            )
            killed = release(api, HARMFUL)
            kill = next(d for d in killed["decisions"] if d["kind"] == "kill")
            breach = next(d for d in killed["decisions"] if d["kind"] == "breach")
            latency = served_default_at - kill["time"]
            print(f"\nkill decision -> sidecar serves the default: {latency:.2f} s")
            assert latency < SERVES_DEFAULT_WITHIN
            assert killed["state"] == "killed" and killed["dial"] == 0
            assert breach["message"].startswith("errors") or "errors" in breach["message"]
            history = api.get(flag_path(HARMFUL, "/history"))["versions"]
            assert history[0]["author"] == "guardrail"
            assert history[0]["reason"].startswith("guardrail ")
            assert "CS [" in history[0]["reason"]
            assert api.get(flag_path(HARMFUL, "/rollout"))["status"] == "killed"

            def completed() -> bool:  # the plan, and the loop's record of it (a look later)
                kinds = [d["kind"] for d in release(api, HEALTHY)["decisions"]]
                return "complete" in kinds

            deadline = time.monotonic() + 40
            while time.monotonic() < deadline and not completed():
                time.sleep(0.2)
            healthy = release(api, HEALTHY)
            assert (healthy["state"], healthy["dial"]) == ("complete", 100), healthy
            assert [d["kind"] for d in healthy["decisions"]].count("advance") == 3
            assert "complete" in [d["kind"] for d in healthy["decisions"]]
            assert all(row["verdict"] != "breach" for row in healthy["metrics"])

            sent = hooks.wait_for(1)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not {"kill", "complete"} <= {
                b["kind"] for b in sent
            }:
                time.sleep(0.1)
                sent = list(hooks.received)
            assert {("kill", HARMFUL), ("complete", HEALTHY)} <= {
                (b["kind"], b["flag"]) for b in sent
            }
            metrics = subprocess.run(
                [sys.executable, "-c", f"import urllib.request as u; print(u.urlopen("
                 f"'{plane.server}/metrics').read().decode())"],
                capture_output=True, text=True, timeout=30,
            ).stdout  # fmt: skip
            assert 'fader_guardrail_decisions_total{kind="kill"} 1' in metrics
    finally:
        if service is not None:
            if service.poll() is None:
                service.send_signal(signal.SIGTERM)
            output = service.communicate(timeout=20)[0]
            final = [json.loads(line) for line in output.splitlines() if '"final"' in line]
            print("synthetic service:", final[-1] if final else output[-2000:])
        hooks.stop()
