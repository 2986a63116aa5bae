"""Authentication of the admin and evaluation listeners: TLS, mTLS, rotating bearer tokens.

Real servers with a CA, server and client certificates made for the test; a client either
gets through or is refused at the handshake (no or wrong client certificate) or with
UNAUTHENTICATED (no or stale token)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from fader.pb.fader.v1 import evaluation_pb2 as pb
from fader.pb.fader.v1 import evaluation_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.auth import server_credentials
from sidecar.config import Address, ConfigError, load_settings
from sidecar.controlplane.main import ControlPlane
from sidecar.delivery.apply import Applier
from sidecar.delivery.store import Store
from sidecar.push import push_main
from sidecar.sources.push import AdminServer
from tests.fader.rules.builders import flag, snapshot_doc
from tests.integration.harness import (
    RunningSidecar,
    demo_snapshot,
    loopback_settings,
    running_sidecar,
    serve_process,
    short_tmp,
)
from tests.pki import Pki, make_pki
from tests.waiting import wait_for


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    with short_tmp() as tmp:
        yield make_pki(tmp)


def _channel(target: str, pki: Pki, client: str | None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        pki.read("ca"),
        pki.read(f"{client}_key") if client else None,
        pki.read(f"{client}_cert") if client else None,
    )
    options = [("grpc.ssl_target_name_override", "localhost")]
    return grpc.secure_channel(target, credentials, options=options)


# --- admin: mTLS --------------------------------------------------------------------------


@pytest.fixture
def admin(pki: Pki) -> Iterator[tuple[AdminServer, Store]]:
    store = Store()
    credentials = server_credentials(pki.server_cert, pki.server_key, pki.ca)
    server = AdminServer(Address("127.0.0.1", 0), Applier(store), None, credentials)
    server.start()
    yield server, store
    server.stop(0)


def test_admin_mtls(admin: tuple[AdminServer, Store], pki: Pki, tmp_path: Path) -> None:
    server, store = admin
    snapshot = tmp_path / "snap.json"
    snapshot.write_text(json.dumps(snapshot_doc(flag("f"), version=3)))
    target = f"localhost:{server.address.port}"
    tls = ["--ca", str(pki.ca), "--timeout", "5"]
    assert push_main(["--target", target, *tls, str(snapshot)]) == 1  # no client certificate
    stranger = ["--cert", str(pki.stranger_cert), "--key", str(pki.stranger_key)]
    assert push_main(["--target", target, *tls, *stranger, str(snapshot)]) == 1
    assert push_main(["--target", target, "--timeout", "5", str(snapshot)]) == 1  # plaintext
    assert store.current is None
    client = ["--cert", str(pki.client_cert), "--key", str(pki.client_key)]
    assert push_main(["--target", target, *tls, *client, str(snapshot)]) == 0
    assert store.current is not None and store.current.version == 3


# --- evaluation over TCP: TLS, mTLS, token --------------------------------------------------


@pytest.fixture
def tokens(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text("first-token\n")
    return path


@pytest.fixture
def guarded(pki: Pki, tokens: Path) -> Iterator[RunningSidecar]:
    with short_tmp() as tmp:
        settings = loopback_settings(
            uds=tmp / "eval.sock",
            grpc_tls_cert=pki.server_cert,
            grpc_tls_key=pki.server_key,
            grpc_token_file=tokens,
        )
        with running_sidecar(settings, demo_snapshot()) as running:
            yield running


REQUEST = pb.GetTreatmentRequest(key="user-1", flag="new-checkout")


def _lookup(channel: grpc.Channel, token: str | None) -> grpc.StatusCode:
    metadata = [("authorization", f"Bearer {token}")] if token else None
    try:
        pb_grpc.EvaluationServiceStub(channel).GetTreatment(REQUEST, metadata=metadata, timeout=5)
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def test_evaluation_tls_and_rotating_token(guarded: RunningSidecar, pki: Pki, tokens: Path) -> None:
    port = guarded.sidecar.grpc_address.port  # type: ignore[union-attr]
    with _channel(f"localhost:{port}", pki, None) as channel:
        assert _lookup(channel, "first-token") == grpc.StatusCode.OK
        assert _lookup(channel, None) == grpc.StatusCode.UNAUTHENTICATED
        assert _lookup(channel, "guess") == grpc.StatusCode.UNAUTHENTICATED
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING  # probes need no token
        tokens.write_text("second-token\n")
        stat = tokens.stat()
        os.utime(tokens, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        assert _lookup(channel, "first-token") == grpc.StatusCode.UNAUTHENTICATED
        assert _lookup(channel, "second-token") == grpc.StatusCode.OK
    with grpc.insecure_channel(f"127.0.0.1:{port}") as plaintext:
        assert _lookup(plaintext, "second-token") == grpc.StatusCode.UNAVAILABLE
    with grpc.insecure_channel(guarded.uds_target) as local:  # the socket's file mode guards it
        assert _lookup(local, None) == grpc.StatusCode.OK


def test_evaluation_mtls(pki: Pki) -> None:
    settings = loopback_settings(
        grpc_tls_cert=pki.server_cert, grpc_tls_key=pki.server_key, grpc_client_ca=pki.ca
    )
    with running_sidecar(settings, demo_snapshot()) as running:
        target = f"localhost:{running.sidecar.grpc_address.port}"  # type: ignore[union-attr]
        with _channel(target, pki, "client") as channel:
            assert _lookup(channel, None) == grpc.StatusCode.OK
        for client in (None, "stranger"):
            with _channel(target, pki, client) as channel:
                assert _lookup(channel, None) == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--grpc-tls-cert", "c.pem"], "--grpc-tls-cert and --grpc-tls-key go together"),
        (["--admin-listen", "127.0.0.1:0", "--admin-client-ca", "ca.pem"], "needs --admin-tls"),
        (["--grpc-listen", "off", "--uds", "/tmp/x", "--grpc-token-file", "t"], "need --grpc"),
        (["--demo", "--trusted-keys", "keys"], "the embedded demo is not signed"),
        (["--trusted-keys", "=x"], "is not ID=PATH"),
        (["--control-plane", "h:1", "--control-plane-cert", "c"], "go together"),
        (
            ["--control-plane", "h:1", "--control-plane-cert", "c", "--control-plane-key", "k"],
            "needs --control-plane-ca",
        ),
    ],
)
def test_inconsistent_settings(args: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(args, environ={})


def test_admin_mtls_counts_as_authentication_off_loopback() -> None:
    settings = load_settings(
        [
            "--admin-listen", "0.0.0.0:0", "--admin-tls-cert", "c", "--admin-tls-key", "k",
            "--admin-client-ca", "ca",
        ],
        environ={},
    )  # fmt: skip
    assert settings.admin_client_ca == Path("ca")


# --- control-plane stream: the sidecar's client certificate --------------------------------


def test_sidecar_presents_a_client_certificate_to_the_control_plane(pki: Pki) -> None:
    with short_tmp() as tmp:
        snapshot = tmp / "snap.json"
        snapshot.write_text(json.dumps(snapshot_doc(flag("f"), version=4)))
        credentials = grpc.ssl_server_credentials(
            [(pki.read("server_key"), pki.read("server_cert"))],
            root_certificates=pki.read("ca"),
            require_client_auth=True,
        )
        plane = ControlPlane(snapshot, Address("127.0.0.1", 0), credentials=credentials)
        plane.start()
        base = [
            "--control-plane", f"localhost:{plane.port}", "--control-plane-ca", str(pki.ca),
            "--grpc-listen", "127.0.0.1:0", "--mgmt-listen", "127.0.0.1:0",
        ]  # fmt: skip
        client = ["--control-plane-cert", str(pki.client_cert), "--control-plane-key"]
        try:
            with serve_process([*base, *client, str(pki.client_key)], tmp, log_name="a") as sc:
                sc.wait_listening()
                wait_for(lambda: "applied snapshot version 4" in sc.log, what="v4 over mTLS")
            with serve_process(base, tmp, log_name="b") as sc:
                sc.wait_listening()
                wait_for(lambda: "reconnecting" in sc.log, what="refused without a certificate")
                assert "applied snapshot" not in sc.log
        finally:
            plane.stop(0)
