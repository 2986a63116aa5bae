"""Snapshots in motion with real processes: control plane -> sidecar (ACK, NACK, restarts),
the last-known-good cache, the watched file, direct push with a bearer token."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.delivery import cache
from tests.integration.harness import (
    REPO,
    ServeProcess,
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


@pytest.fixture
def tmp() -> Iterator[Path]:
    with short_tmp() as path:
        yield path


def fader(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=serve_env(),
        cwd=REPO,
    )


def fleet(port: int) -> dict[str, Any]:
    proc = fader("status", "--control-plane", f"127.0.0.1:{port}", "--json")
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def sidecar_record(port: int, sidecar_id: str) -> dict[str, Any]:
    for item in fleet(port).get("sidecars", []):
        if item["identity"]["id"] == sidecar_id:
            return dict(item)
    return {}


def controlplane(snapshot: Path, port: int, log_dir: Path, name: str = "cp.log") -> Any:
    args = ["--listen", f"127.0.0.1:{port}", "--forward", str(snapshot), "--http-listen", "off"]
    return serve_process(args, log_dir, command="controlplane", log_name=name)


def test_control_plane_push_ack_nack_and_restarts(tmp: Path) -> None:
    snapshot, port, cache_dir = tmp / "snap.json", free_port(), tmp / "cache"
    write_snapshot(snapshot, 1)
    sidecar_args = [
        "--control-plane", f"127.0.0.1:{port}", "--cache-dir", str(cache_dir),
        "--sidecar-id", "pod-a", "--sidecar-labels", "app=shop",
    ]  # fmt: skip
    with controlplane(snapshot, port, tmp) as cp, start_sidecar(sidecar_args, tmp, "a.log") as sc:
        target = sc.wait_listening()["grpc"]
        wait_for(lambda: treatment(target) == "v1", what="v1 served")
        wait_for(lambda: sidecar_record(port, "pod-a").get("acked_version") == 1, what="ACK 1")
        assert sidecar_record(port, "pod-a")["identity"]["labels"] == {"app": "shop"}

        write_snapshot(snapshot, 2)
        wait_for(lambda: treatment(target) == "v2", what="v2 served")
        wait_for(lambda: sidecar_record(port, "pod-a").get("acked_version") == 2, what="ACK 2")

        write_snapshot(snapshot, 3, algo=9)  # invalid: NACKed, v2 keeps serving
        wait_for(lambda: sidecar_record(port, "pod-a").get("nacked_version") == 3, what="NACK")
        record = sidecar_record(port, "pod-a")
        assert any("$.flags[0].algo" in error for error in record["nack_errors"]), record
        assert record["acked_version"] == 2
        assert treatment(target) == "v2"
        assert "refused snapshot" in sc.log

        cp.signal(signal.SIGTERM)  # control plane restart: the sidecar reconnects, resyncs
        assert cp.wait(10) == 0
        write_snapshot(snapshot, 4)
        wait_for(lambda: not _connected(sc), what="sidecar sees the control plane gone")
        assert treatment(target) == "v2"
        with controlplane(snapshot, port, tmp, "cp2.log"):
            wait_for(lambda: treatment(target) == "v4", what="v4 after reconnect")
            wait_for(lambda: _connected(sc), what="reconnected")
            status = json.loads(http_get(sc_mgmt(sc) + "/status")[1])
            assert status["control_plane"]["reconnects"] >= 1
        sc.signal(signal.SIGTERM)
        assert sc.wait(10) == 0

    # The sidecar restarts while the control plane is down: it serves its cache at once.
    with start_sidecar([*sidecar_args, "--max-staleness", "1"], tmp, "b.log") as sc:
        target = sc.wait_listening()["grpc"]
        assert treatment(target) == "v4"
        status = json.loads(http_get(sc_mgmt(sc) + "/status")[1])
        assert status["source"].startswith(f"cache:{cache_dir}")
        assert status["control_plane"]["connected"] is False
        # never reached its source: stale beyond --max-staleness, so not ready
        wait_for(lambda: http_get(sc_mgmt(sc) + "/readyz")[0] == 503, what="stale -> not ready")
        assert "not ready; still serving version 4" in sc.log
        assert "fader_snapshot_stale_seconds" in http_get(sc_mgmt(sc) + "/metrics")[1]

    # A corrupt cache is refused, never served.
    cache_file = cache.path_in(cache_dir)
    cache_file.write_bytes(cache_file.read_bytes()[:-20])
    with start_sidecar(sidecar_args, tmp, "c.log") as sc:
        sc.wait_listening()
        assert http_get(sc_mgmt(sc) + "/readyz")[0] == 503
        assert "last-known-good cache refused" in sc.log
        status = json.loads(http_get(sc_mgmt(sc) + "/status")[1])
        assert status["version"] is None and status["refusals"] == {"corrupt_cache": 1}


def _connected(serve: ServeProcess) -> bool:
    status = json.loads(http_get(sc_mgmt(serve) + "/status")[1])
    return bool(status["control_plane"]["connected"])


def test_watched_file_reloads_and_refuses_bad_content(tmp: Path) -> None:
    snapshot = tmp / "snap.json"
    write_snapshot(snapshot, 1)
    with start_sidecar(["--snapshot", str(snapshot)], tmp, "s.log") as sc:
        target = sc.wait_listening()["grpc"]
        assert treatment(target) == "v1"
        write_snapshot(snapshot, 2)
        wait_for(lambda: treatment(target) == "v2", what="reload")
        snapshot.write_text('{"version": 3, "flags": [{"name": "f", "seed": "x"}]}')
        wait_for(lambda: "refused snapshot" in sc.log, what="refusal logged")
        assert treatment(target) == "v2"
        status = json.loads(http_get(sc_mgmt(sc) + "/status")[1])
        assert status["last_refusal"]["reason"] == "invalid"
        assert any("$.flags[0].seed" in e for e in status["last_refusal"]["errors"])


def test_push_with_rotating_token(tmp: Path) -> None:
    tokens = tmp / "tokens"
    tokens.write_text("first-secret\n")
    admin = f"127.0.0.1:{free_port()}"
    args = ["--demo", "--admin-listen", admin, "--admin-token-file", str(tokens)]
    snapshot = tmp / "push.json"
    with start_sidecar(args, tmp, "p.log") as sc:
        target = sc.wait_listening()["grpc"]
        write_snapshot(snapshot, 2)
        denied = fader("push", "--target", admin, str(snapshot))
        assert denied.returncode == 1 and "UNAUTHENTICATED" in denied.stderr
        secret = tmp / "secret"
        secret.write_text("first-secret")
        ok = fader("push", "--target", admin, "--token-file", str(secret), str(snapshot))
        assert ok.returncode == 0 and "applied version 2" in ok.stdout, ok.stderr
        assert treatment(target) == "v2"
        stale = fader("push", "--target", admin, "--token-file", str(secret), str(snapshot))
        assert stale.returncode == 1 and "not newer" in stale.stderr
        write_snapshot(snapshot, 3, trafficAllocation=500)
        bad = fader("push", "--target", admin, "--token-file", str(secret), str(snapshot))
        assert bad.returncode == 1 and "$.flags[0].trafficAllocation" in bad.stderr
        assert treatment(target) == "v2"
        time.sleep(0.01)
        tokens.write_text("second-secret\n")  # rotated without a restart
        write_snapshot(snapshot, 4)
        old = fader("push", "--target", admin, "--token-file", str(secret), str(snapshot))
        assert old.returncode == 1 and "UNAUTHENTICATED" in old.stderr
        secret.write_text("second-secret")
        new = fader("push", "--target", admin, "--token-file", str(secret), str(snapshot))
        assert new.returncode == 0, new.stderr
        assert treatment(target) == "v4"
        assert "second-secret" not in sc.log and "first-secret" not in sc.log


def test_admin_off_loopback_without_token_refuses_to_start(tmp: Path) -> None:
    with start_sidecar(["--demo", "--admin-listen", "0.0.0.0:0"], tmp, "x.log") as sc:
        assert sc.wait(20) == 2
        assert re.search(r"admin-token-file is required", sc.log)
