"""Faults around a real `fader serve`, each reproduced as it was found: a control plane that
comes back after an outage, a full cache disk, a crash's leftovers, a management port held by
half-sent requests, malformed protobuf."""

from __future__ import annotations

import json
import select
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from sidecar.api.management import REQUEST_TIMEOUT_SECONDS
from tests.fader.rules.builders import flag, snapshot_doc
from tests.integration.churn import (
    Gate,
    Pusher,
    big_snapshot,
    metric,
    sidecar_with_small_disk,
    threads,
)
from tests.integration.harness import (
    SIDECAR_ARGS,
    free_port,
    http_get,
    sc_mgmt,
    serve_process,
    short_tmp,
    start_sidecar,
    treatment,
    write_snapshot,
)
from tests.waiting import wait_for

# The sidecar's backoff after a delivered stream: 0.5, 1, 2, 4, 8 s (±20 %). Down this long,
# it had made its fourth attempt (6.0-9.0 s) and slept until the fifth (12.4-18.6 s).
OUTAGE_SECONDS = 9.0


@pytest.fixture
def tmp() -> Iterator[Path]:
    with short_tmp() as path:
        yield path


def test_a_kill_published_during_an_outage_arrives_as_the_control_plane_comes_back(
    tmp: Path,
) -> None:
    """Before the fix the sidecar slept out its grown backoff: the kill arrived 3.4-9.6 s
    after the control plane was back. Now it watches the port while it waits."""
    snapshot, upstream = tmp / "snap.json", free_port()
    gate = Gate(free_port(), upstream)
    write_snapshot(snapshot, 1)
    cp_args = ["--listen", f"127.0.0.1:{upstream}", "--forward", str(snapshot)]
    with serve_process([*cp_args, "--http-listen", "off"], tmp, command="controlplane",
                       log_name="cp.log"):  # fmt: skip
        gate.open()
        with start_sidecar(["--control-plane", f"127.0.0.1:{gate.port}"], tmp, "sc.log") as sc:
            target = sc.wait_listening()["grpc"]
            wait_for(lambda: treatment(target) == "v1", timeout=20, what="v1 served")
            gate.shut()
            down = time.monotonic()
            write_snapshot(snapshot, 2, killed=True, defaultTreatment="killed")
            time.sleep(OUTAGE_SECONDS - (time.monotonic() - down))
            gate.open()
            back = time.monotonic()
            wait_for(lambda: treatment(target) == "killed", timeout=30, what="the kill")
            latency = time.monotonic() - back
            gate.shut()
    print(f"\n[kill after an outage of {OUTAGE_SECONDS:.0f} s] served {latency:.2f} s after the "
          "control plane came back")  # fmt: skip
    assert latency < 3.0


MALFORMED = {
    "not UTF-8 in a string": b"\x0a\x02\xff\xfe",
    "garbage": b"\xff\xff\xff\xff\xff",
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_protobuf_is_invalid_argument_without_a_traceback(tmp: Path, body: bytes) -> None:
    """Before the fix: UNKNOWN, and an ERROR traceback in the log for each request."""
    methods = {
        "/fader.v1.EvaluationService/GetTreatment": False,
        "/fader.v1.EvaluationService/EvaluateBatch": False,
        "/fader.v1.EvaluationService/Track": False,
        "/fader.v1.EvaluationService/WatchChanges": True,
        "/flagd.evaluation.v1.Service/ResolveBoolean": False,
        "/grpc.health.v1.Health/Check": False,
        "/grpc.health.v1.Health/Watch": True,
    }
    reflection = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    with start_sidecar(["--demo"], tmp, "sc.log") as sc:
        target = sc.wait_listening()["grpc"]
        with grpc.insecure_channel(target) as channel:
            for method, streaming in methods.items():
                call = (channel.unary_stream if streaming else channel.unary_unary)(method)
                with pytest.raises(grpc.RpcError) as caught:
                    answer = call(body, timeout=5)
                    if streaming:
                        list(answer)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
                assert "does not decode" in str(caught.value.details()), method
            with pytest.raises(grpc.RpcError) as caught:  # a stream of requests
                list(channel.stream_stream(reflection)(iter([body]), timeout=5))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, reflection
            assert "does not decode" in str(caught.value.details()), reflection
        assert treatment(target) is not None  # still answering
        metrics = http_get(sc_mgmt(sc) + "/metrics")[1]
        sc.signal(signal.SIGTERM)
        assert sc.wait(10) == 0
    assert "Traceback" not in sc.log and " ERROR " not in sc.log, sc.log
    handled = 'grpc_server_handled_total{grpc_code="INVALID_ARGUMENT",grpc_method="GetTreatment"'
    assert handled in metrics


HALF_SENT = 200


def test_half_sent_management_requests_hold_no_thread_and_are_dropped(tmp: Path) -> None:
    """Before the fix: a thread per half-sent request for as long as its client liked, new
    connections accepted at ~6/s, and a BrokenPipeError traceback per client that left
    mid-answer."""
    with start_sidecar(["--demo"], tmp, "sc.log") as sc:
        mgmt = sc.wait_listening()["mgmt"]
        host, port = mgmt.rsplit(":", 1)
        address = (host, int(port))
        assert http_get(f"http://{mgmt}/healthz")[0] == 200
        before = threads(sc.process.pid)
        held = [socket.create_connection(address) for _ in range(HALF_SENT)]
        for connection in held:
            connection.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finished
        started = time.monotonic()
        for _ in range(20):
            assert http_get(f"http://{mgmt}/readyz")[0] == 200
        probes = time.monotonic() - started
        during = threads(sc.process.pid)
        for _ in range(50):  # clients that leave before the answer is written
            with socket.create_connection(address) as leaving:
                leaving.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                leaving.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(REQUEST_TIMEOUT_SECONDS + 1.0)
        dropped = _closed_by_peer(held)
        for connection in held:
            connection.close()
        assert http_get(f"http://{mgmt}/healthz")[0] == 200
        sc.signal(signal.SIGTERM)
        assert sc.wait(10) == 0
    print(
        f"\n[management] {HALF_SENT} half-sent requests: threads {before} -> {during}, "
        f"20 probes in {probes:.2f} s, {dropped} dropped after {REQUEST_TIMEOUT_SECONDS:.0f} s"
    )
    assert during <= before + 1
    assert probes < 2.0
    assert dropped == HALF_SENT
    assert "Traceback" not in sc.log and "BrokenPipe" not in sc.log, sc.log


def _closed_by_peer(connections: list[socket.socket]) -> int:
    """How many of ``connections`` the other end has closed (their read end is at EOF)."""
    readable, _, _ = select.select(connections, [], [], 1.0)
    closed = 0
    for connection in readable:
        try:
            closed += connection.recv(1) == b""
        except ConnectionResetError:
            closed += 1
    return closed


def test_a_cache_write_that_fails_is_in_the_ack_the_status_and_the_metrics(tmp: Path) -> None:
    """Before the fix the push was ACKed as if all were well and only an ERROR line said the
    cache stayed at version 1: a restart without a source then served version 1."""
    cache_dir, admin = tmp / "cache", f"127.0.0.1:{free_port()}"
    args = ["--admin-listen", admin, "--cache-dir", str(cache_dir), *SIDECAR_ARGS]
    small = json.dumps(snapshot_doc(flag("f"), version=1)).encode()
    with sidecar_with_small_disk(args, tmp, max_file_bytes=64 << 10) as sc:
        mgmt = sc_mgmt(sc)
        pusher = Pusher(admin)
        try:
            first = pusher.push_bytes(1, small, "json")
            assert not first.warnings
            second = pusher.push(2, big_snapshot(2, 200))  # ~200 KiB: more than the disk takes
        finally:
            pusher.close()
        status = json.loads(http_get(mgmt + "/status")[1])
        metrics = http_get(mgmt + "/metrics")[1]
    print(f"\n[cache write failed] ACK warnings: {list(second.warnings)}")
    assert second.accepted and status["version"] == 2  # served all the same
    assert len(second.warnings) == 1 and "not persisted" in second.warnings[0]
    assert "serve version 1" in second.warnings[0]
    lkg = status["last_known_good"]
    assert lkg["version"] == 1 and lkg["behind"] is True and lkg["write_failures"] == 1
    assert "too large" in lkg["last_write_error"].lower()
    assert metric(metrics, "fader_snapshot_cache_behind") == 1
    assert metric(metrics, "fader_snapshot_cache_write_failures_total") == 1


def test_a_crash_s_temporary_cache_files_are_swept_at_start(tmp: Path) -> None:
    """Before the fix a `.lkg-*` file left by a crash mid-write (up to a snapshot's size)
    stayed for ever."""
    cache_dir = tmp / "cache"
    cache_dir.mkdir()
    leftover = cache_dir / ".lkg-k3v9x2"
    leftover.write_bytes(b"\0" * (1 << 20))
    with start_sidecar(["--demo", "--cache-dir", str(cache_dir)], tmp, "sc.log") as sc:
        sc.wait_listening()
        wait_for(lambda: (cache_dir / "last-known-good.fader").exists(), what="the cache")
    assert not leftover.exists()
    assert sorted(path.name for path in cache_dir.iterdir()) == ["last-known-good.fader"]
    assert f"removed {leftover}" in sc.log
