"""Uploads to a collector that requires a client certificate, with real `fader controlplane`
(--tls-client-ca) and `fader serve` processes: the sidecar's fallback to the control plane as
its collector presents the control plane's certificate; --collector-cert/--collector-key do
the same for a separate --collector; without a certificate the handshake is refused."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from fader.pb.fader.v1 import evaluation_pb2 as pb
from fader.pb.fader.v1 import evaluation_pb2_grpc as pb_grpc

from tests.fader.rules.builders import flag, snapshot_doc
from tests.integration.harness import ServeProcess, free_port, http_get, serve_process, short_tmp
from tests.pki import Pki, make_pki
from tests.waiting import wait_for

FAST = ["--telemetry-flush-interval", "0.2", "--impressions-mode", "debug"]
LISTEN = ["--grpc-listen", "127.0.0.1:0", "--mgmt-listen", "127.0.0.1:0"]


@pytest.fixture
def tmp() -> Iterator[Path]:
    with short_tmp() as path:
        yield path


def stored(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def metric(sc: ServeProcess, name: str) -> float | None:
    text = http_get("http://" + sc.wait_listening()["mgmt"] + "/metrics")[1]
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def look_up(sc: ServeProcess, key: str) -> str | None:
    try:
        with grpc.insecure_channel(sc.wait_listening()["grpc"]) as channel:
            stub = pb_grpc.EvaluationServiceStub(channel)
            answer = stub.GetTreatment(pb.GetTreatmentRequest(key=key, flag="f"), timeout=2)
    except grpc.RpcError:
        return None
    return str(answer.evaluation.treatment)


@pytest.fixture
def mtls_plane(tmp: Path) -> Iterator[tuple[int, Pki, Path, Path]]:
    """A control plane and collector on TLS that requires a client certificate from the CA:
    (port, PKI, snapshot file, impressions JSONL)."""
    pki, port = make_pki(tmp), free_port()
    snapshot, out = tmp / "snap.json", tmp / "impressions.jsonl"
    snapshot.write_text(json.dumps(snapshot_doc(flag("f"), version=4)))
    args = [
        "--listen", f"127.0.0.1:{port}",
        "--snapshot", str(snapshot),
        "--status-listen", "off",
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
        "--tls-client-ca", str(pki.ca),
        "--impressions-out", str(out),
    ]  # fmt: skip
    with serve_process(args, tmp, command="controlplane", log_name="cp.log") as cp:
        wait_for(lambda: "control plane listening" in cp.log, what="control plane up")
        yield port, pki, snapshot, out


def test_control_plane_as_collector_over_mtls(mtls_plane: tuple[int, Pki, Path, Path]) -> None:
    port, pki, _, out = mtls_plane
    tmp = out.parent
    base = [
        "--control-plane", f"localhost:{port}", "--control-plane-ca", str(pki.ca),
        *LISTEN, *FAST,
    ]  # fmt: skip
    client = ["--control-plane-cert", str(pki.client_cert), "--control-plane-key"]
    args = [*base, *client, str(pki.client_key), "--sidecar-id", "with-cert"]
    with serve_process(args, tmp, log_name="a.log") as sc:
        wait_for(lambda: look_up(sc, "user-1") == "on", what="the snapshot over mTLS")
        wait_for(
            lambda: any(line["key"] == "user-1" for line in stored(out)),
            what="impressions uploaded over mTLS",
        )
        assert {line["sidecar_id"] for line in stored(out)} == {"with-cert"}
        assert metric(sc, "fader_telemetry_upstream_up") == 1

    # Only the CA: the control plane refuses the handshake, for the stream and for uploads.
    with serve_process([*base, "--sidecar-id", "no-cert"], tmp, log_name="b.log") as sc:
        sc.wait_listening()
        wait_for(lambda: "reconnecting" in sc.log, what="stream refused without a certificate")
        assert "applied snapshot" not in sc.log
        assert look_up(sc, "user-2") is None


def test_collector_flags_with_a_client_certificate(
    mtls_plane: tuple[int, Pki, Path, Path],
) -> None:
    port, pki, snapshot, out = mtls_plane
    tmp = out.parent
    base = [
        "--snapshot", str(snapshot),
        "--collector", f"localhost:{port}", "--collector-ca", str(pki.ca),
        *LISTEN, *FAST,
    ]  # fmt: skip
    client = ["--collector-cert", str(pki.client_cert), "--collector-key", str(pki.client_key)]
    with serve_process([*base, *client, "--sidecar-id", "cert"], tmp, log_name="a.log") as sc:
        assert look_up(sc, "with-cert") == "on"
        wait_for(lambda: [line["key"] for line in stored(out)] == ["with-cert"], what="upload")
        assert metric(sc, "fader_telemetry_upstream_up") == 1

    stranger = ["--collector-cert", str(pki.stranger_cert), "--collector-key"]
    for name, extra in (("none", []), ("stranger", [*stranger, str(pki.stranger_key)])):
        with serve_process([*base, *extra, "--sidecar-id", name], tmp, log_name=name) as sc:
            assert look_up(sc, name) == "on"
            wait_for(lambda: metric(sc, "fader_telemetry_upstream_up") == 0, what="refused")
            assert [line["key"] for line in stored(out)] == ["with-cert"]
