"""Real release-control processes for tests: `fader controlplane` with its store, sidecars
connected to it, the `fader flags` / `fader rollout` CLI, and 10,000-key answers from a
sidecar over EvaluateBatch."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from fader.pb.fader.v1 import evaluation_pb2 as pb
from fader.pb.fader.v1 import evaluation_pb2_grpc as pb_grpc

from tests.integration.harness import REPO, ServeProcess, serve_env, serve_process

KEYS = [f"user-{i}" for i in range(10_000)]
_LISTENING = re.compile(r"control plane listening on \S+:(\d+) \(http [^:]+:(\d+),")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Plane:
    """A running `fader controlplane`: its gRPC port and its API URL."""

    process: ServeProcess
    grpc_port: int
    http_port: int

    @property
    def server(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


def wait_plane(process: ServeProcess, timeout: float = 20.0) -> Plane:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = _LISTENING.search(process.log)
        if match:
            return Plane(process, int(match.group(1)), int(match.group(2)))
        if process.process.poll() is not None:
            raise AssertionError(f"fader controlplane exited:\n{process.log}")
        time.sleep(0.05)
    raise AssertionError(f"fader controlplane did not start:\n{process.log}")


@contextlib.contextmanager
def control_plane(
    log_dir: Path, *args: str, name: str = "cp.log", grpc_port: int = 0, http_port: int = 0
) -> Iterator[Plane]:
    """`fader controlplane` on loopback (ports chosen by the kernel unless given)."""
    options = [
        "--listen", f"127.0.0.1:{grpc_port}", "--http-listen", f"127.0.0.1:{http_port}",
        "--rollout-tick", "0.1", *args,
    ]  # fmt: skip
    with serve_process(options, log_dir, command="controlplane", log_name=name) as process:
        yield wait_plane(process)


@contextlib.contextmanager
def sidecar(log_dir: Path, plane_target: str, name: str = "sc.log") -> Iterator[str]:
    """`fader serve` fed by the control plane at ``plane_target``; yields its gRPC target."""
    options = [
        "--control-plane", plane_target, "--grpc-listen", "127.0.0.1:0",
        "--mgmt-listen", "127.0.0.1:0", "--sidecar-id", name.removesuffix(".log"),
    ]  # fmt: skip
    with serve_process(options, log_dir, log_name=name) as process:
        yield process.wait_listening()["grpc"]


def fader(
    server: str, *args: str, token_file: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The `fader` CLI against ``server`` (a real subprocess)."""
    env = serve_env()
    env["FADER_SERVER"] = server
    extra = ["--token-file", str(token_file)] if token_file is not None else []
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args, *extra],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO,
    )


@dataclass(frozen=True)
class Answers:
    version: int
    treatments: dict[str, str]
    labels: set[str]

    def having(self, treatment: str) -> set[str]:
        return {key for key, value in self.treatments.items() if value == treatment}

    def share(self, treatment: str) -> float:
        return 100.0 * len(self.having(treatment)) / len(self.treatments)


def answers(target: str, flag: str, keys: list[str] = KEYS) -> Answers:
    """Every key's treatment from one EvaluateBatch call."""
    request = pb.EvaluateBatchRequest(items=[pb.BatchItem(key=k, flag=flag) for k in keys])
    with grpc.insecure_channel(target) as channel:
        response = pb_grpc.EvaluationServiceStub(channel).EvaluateBatch(request, timeout=10)
    treatments = {k: e.treatment for k, e in zip(keys, response.evaluations, strict=True)}
    labels = {e.label for e in response.evaluations}
    return Answers(int(response.version), treatments, labels)


def served_version(target: str, flag: str) -> int:
    try:
        return answers(target, flag, KEYS[:1]).version
    except grpc.RpcError:
        return -1
