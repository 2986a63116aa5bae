"""The control-plane channel with TLS (a CA made for the test) and a bearer token."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from sidecar.auth import TokenFile
from sidecar.config import Address
from sidecar.controlplane.main import ControlPlane
from sidecar.delivery.apply import Applier
from sidecar.delivery.store import Store
from sidecar.plumbing.backoff import Backoff
from sidecar.plumbing.channels import ChannelSecurity
from sidecar.sources.controlplane import ControlPlaneSource, Identity
from tests.fader.rules.builders import flag, snapshot_doc
from tests.integration.harness import short_tmp
from tests.pki import PEM, certificate, make_pki, new_key
from tests.waiting import wait_for

FAST = Backoff(initial=0.05, maximum=0.2)


@pytest.fixture(scope="module")
def pki() -> Iterator[tuple[bytes, bytes, bytes]]:
    """(CA certificate, server certificate, server key) as PEM."""
    with short_tmp() as tmp:
        made = make_pki(tmp)
        yield made.read("ca"), made.read("server_cert"), made.read("server_key")


@pytest.fixture
def secure_plane(tmp_path: Path, pki: tuple[bytes, bytes, bytes]) -> Iterator[ControlPlane]:
    _, cert, key = pki
    snapshot = tmp_path / "snap.json"
    snapshot.write_text(json.dumps(snapshot_doc(flag("f"), version=5)))
    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret\n")
    plane = ControlPlane(
        snapshot,
        Address("127.0.0.1", 0),
        credentials=grpc.ssl_server_credentials([(key, cert)]),
        tokens=TokenFile(tokens),
    )
    plane.start()
    yield plane
    plane.stop(0)


def _source(port: int, security: ChannelSecurity, store: Store) -> ControlPlaneSource:
    source = ControlPlaneSource(
        f"localhost:{port}", Applier(store), Identity("tls-pod"), security=security, backoff=FAST
    )
    source.start()
    return source


def test_tls_and_token_connect(
    secure_plane: ControlPlane, pki: tuple[bytes, bytes, bytes], tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret")
    store = Store()
    security = ChannelSecurity(root_certificates=pki[0], token_file=token, tls=True)
    source = _source(secure_plane.port, security, store)
    try:
        wait_for(lambda: store.current is not None and store.current.version == 5, what="v5")
        assert source.connected
    finally:
        source.stop()


@pytest.mark.parametrize("case", ["wrong token", "no token", "plaintext", "unknown CA"])
def test_refused_channels(
    secure_plane: ControlPlane, pki: tuple[bytes, bytes, bytes], tmp_path: Path, case: str
) -> None:
    token = tmp_path / "token"
    token.write_text("guess")
    other_key = new_key()
    other_ca = certificate("other CA", other_key, None, other_key, ca=True)
    security = {
        "wrong token": ChannelSecurity(root_certificates=pki[0], token_file=token, tls=True),
        "no token": ChannelSecurity(root_certificates=pki[0], tls=True),
        "plaintext": ChannelSecurity(token_file=token),
        "unknown CA": ChannelSecurity(root_certificates=other_ca.public_bytes(PEM), tls=True),
    }[case]
    store = Store()
    source = _source(secure_plane.port, security, store)
    try:
        wait_for(lambda: source.reconnects >= 2, what="failed attempts")
        assert store.current is None and not source.connected
        if case.endswith("token"):
            assert source.last_error is not None and "UNAUTHENTICATED" in source.last_error
    finally:
        source.stop()
