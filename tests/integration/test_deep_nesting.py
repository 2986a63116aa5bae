"""A document nested far too deep, in every entry point, with real processes: a clear
refusal naming the nesting limit, counted, never a traceback or a dead process."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import msgpack
import pytest
from fader.pb.fader.v1 import controlplane_pb2, controlplane_pb2_grpc
from fader.snapshot.loader import load_bytes

from sidecar.app.sources import SnapshotSources
from sidecar.config import Settings
from sidecar.delivery import cache
from sidecar.delivery.apply import Applier
from sidecar.delivery.messages import to_message
from sidecar.delivery.store import Store
from sidecar.sources.controlplane import ControlPlaneSource, Identity
from tests.integration.harness import (
    REPO,
    free_port,
    http_get,
    sc_mgmt,
    serve_env,
    serve_process,
    short_tmp,
    start_sidecar,
    treatment,
    write_snapshot,
)
from tests.waiting import wait_for

LEVELS = 1100  # the 2 KB file: deeper than Python's recursion limit
LIMIT = "nests more than 100 levels deep (the nesting limit)"


@pytest.fixture
def tmp() -> Iterator[Path]:
    with short_tmp() as path:
        yield path


def deep_json() -> bytes:
    return b'{"version":2,"flags":' + b"[" * LEVELS + b"]" * LEVELS + b"}"


def deep_msgpack() -> bytes:
    header = msgpack.packb({"version": 2, "flags": None})[:-1]  # drop the nil
    return bytes(header + b"\x91" * LEVELS + b"\x90")


def fader(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=serve_env(),
        cwd=REPO,
        input=stdin,
    )


def assert_clear(proc: subprocess.CompletedProcess[str]) -> None:
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output and "RecursionError" not in output, output
    assert proc.returncode != 0, output
    assert LIMIT in output, output


def test_validate_sign_push_and_evaluate_refuse_a_deep_file(tmp: Path) -> None:
    for name, data in (("deep.json", deep_json()), ("deep.msgpack", deep_msgpack())):
        path = tmp / name
        path.write_bytes(data)
        assert_clear(fader("validate", str(path)))
        assert_clear(fader("push", "--target", f"127.0.0.1:{free_port()}", str(path)))
        assert_clear(fader("evaluate", "--snapshot", str(path), stdin='{"key":"u","flag":"f"}\n'))
    keygen = fader("keygen", "--out", str(tmp / "keys"), "--key-id", "k")
    assert keygen.returncode == 0, keygen.stderr
    key = str(tmp / "keys" / "k.key")
    assert_clear(fader("sign", "--key", key, "--key-id", "k", str(tmp / "deep.json")))


def test_control_plane_refuses_a_deep_file_without_dying(tmp: Path) -> None:
    snapshot = tmp / "snap.json"
    snapshot.write_bytes(deep_json())
    args = ["--listen", f"127.0.0.1:{free_port()}", "--forward", str(snapshot)]
    with serve_process([*args, "--http-listen", "off"], tmp, command="controlplane") as cp:
        wait_for(lambda: LIMIT in cp.log, what="the deep file refused")
        assert cp.process.poll() is None, cp.log  # still running, offering nothing
    assert "Traceback" not in cp.log, cp.log


def refusals(mgmt: str) -> float:
    _, text = http_get(mgmt + "/metrics")
    for line in text.splitlines():
        if line.startswith('fader_limit_refusals_total{limit="too_deep"}'):
            return float(line.split()[-1])
    return 0.0


def test_serve_refuses_a_deep_file_at_start_with_a_clear_message(tmp: Path) -> None:
    snapshot = tmp / "snap.json"
    snapshot.write_bytes(deep_json())
    with start_sidecar(["--snapshot", str(snapshot)], tmp, "sc.log") as sc:
        assert sc.wait(30) == 1
    assert "Traceback" not in sc.log and LIMIT in sc.log, sc.log


def test_serve_watch_and_push_count_deep_refusals_and_keep_serving(tmp: Path) -> None:
    snapshot = tmp / "snap.json"
    write_snapshot(snapshot, 3)
    admin = f"127.0.0.1:{free_port()}"
    args = ["--snapshot", str(snapshot), "--admin-listen", admin]
    with start_sidecar(args, tmp, "sc.log") as sc:
        mgmt = sc_mgmt(sc)
        target = sc.wait_listening()["grpc"]
        wait_for(lambda: treatment(target) == "v3", what="v3 served")
        snapshot.write_bytes(deep_json())
        wait_for(lambda: refusals(mgmt) == 1, what="the watched deep file refused and counted")
        with grpc.insecure_channel(admin) as channel:
            stub = controlplane_pb2_grpc.SnapshotAdminServiceStub(channel)
            for data, fmt in ((deep_json(), "json"), (deep_msgpack(), "msgpack")):
                message = to_message(data, fmt, 4)
                request = controlplane_pb2.PushSnapshotRequest(snapshot=message)
                reply = stub.PushSnapshot(request, timeout=10)
                assert not reply.accepted
                assert LIMIT in json.dumps([str(e) for e in reply.errors]), reply
        assert refusals(mgmt) == 3
        assert treatment(target) == "v3"
    assert "Traceback" not in sc.log and "RecursionError" not in sc.log, sc.log


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_a_deep_snapshot_from_the_stream_or_the_cache_is_a_counted_refusal(
    tmp: Path, fmt: str
) -> None:
    """The two entry points the tests above cannot reach with a file: a control plane's
    stream (a control plane that is not Fader's, or a compromised one: Fader's refuses to
    offer it) and a last-known-good cache written by someone else."""
    data = deep_json() if fmt == "json" else deep_msgpack()
    refused: list[str] = []
    applier = Applier(Store())
    applier.on_refused.append(lambda outcome: refused.append(outcome.reason))
    stream = ControlPlaneSource(f"127.0.0.1:{free_port()}", applier, Identity("pod-a"))
    ack = stream._apply(to_message(data, fmt, 4))  # what a SyncResponse's snapshot gets
    assert not ack.accepted
    assert LIMIT in " ".join(ack.errors), ack
    assert refused == ["too_deep"]

    demo = (REPO / "sidecar" / "demo" / "demo.json").read_bytes()
    cache.save(tmp / "cache", load_bytes(demo, "json", "elsewhere"), fmt, data)
    sources = SnapshotSources(Settings(cache_dir=tmp / "cache"), Store())
    sources.load_initial()
    assert sources.store.current is None
    assert sources.refusals == {"too_deep": 1}
    assert LIMIT in " ".join(sources.status()["last_refusal"]["errors"])
