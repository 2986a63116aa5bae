"""Certificates made for a test: a CA, a server certificate for localhost/127.0.0.1, a client
certificate from the same CA, and a "stranger" client certificate from another CA."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

PEM = serialization.Encoding.PEM


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
) -> x509.Certificate:
    """Valid from a minute ago for an hour; a leaf is valid for localhost and 127.0.0.1."""
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


@dataclass(frozen=True)
class Pki:
    """PEM files on disk."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # a client certificate from another CA
    stranger_key: Path

    def read(self, name: str) -> bytes:
        return Path(getattr(self, name)).read_bytes()


def make_pki(directory: Path) -> Pki:
    """Writes a fresh CA, server, client and stranger pair into ``directory``."""
    ca_key, other_ca_key = new_key(), new_key()
    ca = certificate("fader test CA", ca_key, None, ca_key, ca=True)
    other_ca = certificate("other CA", other_ca_key, None, other_ca_key, ca=True)
    files: dict[str, bytes] = {"ca": ca.public_bytes(PEM)}
    for name, issuer, issuer_key in (
        ("server", ca, ca_key),
        ("client", ca, ca_key),
        ("stranger", other_ca, other_ca_key),
    ):
        key = new_key()
        leaf = certificate("localhost", key, issuer, issuer_key, ca=False)
        files[f"{name}_cert"] = leaf.public_bytes(PEM)
        files[f"{name}_key"] = pem_key(key)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return Pki(**{name: directory / name for name in files})
