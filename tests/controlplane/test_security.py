"""The control-plane channel with TLS (a CA made for the test) and a bearer token."""

from __future__ import annotations

import datetime
import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sidecar.auth import TokenFile
from sidecar.config import Address
from sidecar.controlplane.main import ControlPlane
from sidecar.delivery.apply import Applier
from sidecar.delivery.store import Store
from sidecar.sources.controlplane import (
    Backoff,
    ChannelSecurity,
    ControlPlaneSource,
    Identity,
)
from tests.fader.rules.builders import flag, snapshot_doc
from tests.waiting import wait_for

FAST = Backoff(initial=0.05, maximum=0.2)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey, ca: bool,
) -> x509.Certificate:  # fmt: skip
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        alt = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki() -> tuple[bytes, bytes, bytes]:
    """(CA certificate, server certificate, server key) as PEM."""
    ca_key, server_key = _key(), _key()
    ca = _certificate("fader test CA", ca_key, None, ca_key, ca=True)
    server = _certificate("localhost", server_key, ca, ca_key, ca=False)
    pem = serialization.Encoding.PEM
    return ca.public_bytes(pem), server.public_bytes(pem), _pem_key(server_key)


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
    other_ca = _certificate("other CA", _key(), None, _key(), ca=True)
    security = {
        "wrong token": ChannelSecurity(root_certificates=pki[0], token_file=token, tls=True),
        "no token": ChannelSecurity(root_certificates=pki[0], tls=True),
        "plaintext": ChannelSecurity(token_file=token),
        "unknown CA": ChannelSecurity(
            root_certificates=other_ca.public_bytes(serialization.Encoding.PEM), tls=True
        ),
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
