"""Real sidecars for tests: in this process (event loop in a thread), or as `fader serve`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import uvloop
from fader.pb.fader.v1 import evaluation_pb2 as pb
from fader.pb.fader.v1 import evaluation_pb2_grpc as pb_grpc
from fader.snapshot.snapshot import Snapshot

from sidecar.app.sidecar import Sidecar
from sidecar.config import Address, Settings
from sidecar.delivery.store import Store
from sidecar.sources.initial import demo_snapshot as demo_snapshot  # re-exported for tests
from tests.fader.rules.builders import condition, flag, snapshot_doc

REPO = Path(__file__).resolve().parents[2]
LOCAL_ANY_PORT = Address("127.0.0.1", 0)


def loopback_settings(uds: Path | None = None, **overrides: Any) -> Settings:
    """Loopback on kernel-chosen ports, a short drain: nothing collides between tests."""
    base = Settings(
        grpc_listen=LOCAL_ANY_PORT,
        mgmt_listen=LOCAL_ANY_PORT,
        uds=uds,
        shutdown_grace=1.0,
        sync_listen=None,  # their own ports only where a test asks (LOCAL_ANY_PORT)
        ofrep_listen=None,
    )
    return replace(base, **overrides)


def free_port() -> int:
    """A TCP port free right now on loopback, for a process that must listen on a known one."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def short_tmp() -> Iterator[Path]:
    """A short temporary directory: socket paths must stay under 106 bytes."""
    path = Path(tempfile.mkdtemp(prefix="fdr", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class RunningSidecar:
    """A started Sidecar whose uvloop event loop runs in a thread of the test process."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.store = store
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.sidecar = Sidecar(settings, store)
        try:
            self.call(self.sidecar.start())
        except BaseException:
            self._close_loop()
            raise

    def call(self, coroutine: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    @property
    def tcp_target(self) -> str:
        assert self.sidecar.grpc_address is not None
        return str(self.sidecar.grpc_address)

    @property
    def uds_target(self) -> str:
        assert self.sidecar.uds_path is not None
        return f"unix://{self.sidecar.uds_path}"

    @property
    def mgmt_url(self) -> str:
        assert self.sidecar.mgmt_address is not None
        return f"http://{self.sidecar.mgmt_address}"

    def stop(self, grace: float = 0.0) -> None:
        self.call(self.sidecar.stop(grace))
        self._close_loop()

    def _close_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


@contextlib.contextmanager
def running_sidecar(
    settings: Settings, snapshot: Snapshot | None = None
) -> Iterator[RunningSidecar]:
    store = Store()
    if snapshot is not None:
        store.swap(snapshot)
    running = RunningSidecar(settings, store)
    try:
        yield running
    finally:
        running.stop()


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@dataclass
class ServeProcess:
    """`python -m sidecar serve ...` with its stderr collected in a file."""

    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait_listening(self, timeout: float = 20.0) -> dict[str, str]:
        """The addresses from the 'listening grpc=... uds=... mgmt=...' line."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(r"listening grpc=(\S+) uds=(\S+) mgmt=(\S+)", self.log)
            if match:
                return dict(zip(("grpc", "uds", "mgmt"), match.groups(), strict=True))
            if self.process.poll() is not None:
                raise AssertionError(f"fader serve exited {self.process.returncode}:\n{self.log}")
            time.sleep(0.05)
        raise AssertionError(f"fader serve did not start in {timeout}s:\n{self.log}")

    def signal(self, signum: signal.Signals = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)


def serve_env() -> dict[str, str]:
    paths = [str(REPO), str(REPO / "clients" / "python"), os.environ.get("PYTHONPATH", "")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FADER_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    # off unless a test passes --sync-listen / --ofrep-listen: the fixed default ports
    # would collide between the sidecars a test runs at once
    env["FADER_SYNC_LISTEN"] = env["FADER_OFREP_LISTEN"] = "off"
    return env


@contextlib.contextmanager
def serve_process(
    args: list[str],
    log_dir: Path,
    env: dict[str, str] | None = None,
    *,
    command: str = "serve",
    log_name: str = "serve.log",
) -> Iterator[ServeProcess]:
    """Starts `fader COMMAND ARGS` (umask 022, the usual default); kills it if a test fails."""
    log_path = log_dir / log_name
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "sidecar", command, *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env or serve_env(),
            cwd=REPO,
            umask=0o022,
        )
    try:
        yield ServeProcess(process, log_path)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


SIDECAR_ARGS = ["--grpc-listen", "127.0.0.1:0", "--mgmt-listen", "127.0.0.1:0"]


def write_snapshot(path: Path, version: int, **fields: Any) -> None:
    """Atomically write a one-flag snapshot ("f") whose every key gets treatment
    "v<version>", so an answer names the snapshot it came from."""
    doc = snapshot_doc(
        flag("f", condition(partitions={f"v{version}": 100}), **fields), version=version
    )
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def treatment(target: str) -> str | None:
    """Flag "f" for key "u" from the fader.v1 server at ``target``; None if it cannot answer."""
    try:
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.EvaluationServiceStub(channel)
            response = stub.GetTreatment(pb.GetTreatmentRequest(key="u", flag="f"), timeout=2)
    except grpc.RpcError:
        return None
    return str(response.evaluation.treatment)


def start_sidecar(
    args: list[str], log_dir: Path, name: str
) -> contextlib.AbstractContextManager[ServeProcess]:
    """`fader serve ARGS` on ephemeral loopback gRPC and management ports, logging to ``name``."""
    return serve_process([*args, *SIDECAR_ARGS], log_dir, log_name=name)


def sc_mgmt(serve: ServeProcess) -> str:
    """The base URL of a started sidecar's management HTTP listener."""
    return "http://" + serve.wait_listening()["mgmt"]
