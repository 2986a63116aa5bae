"""ChannelSecurity: the token is re-read for every use, TLS options that do not go together
are refused, and both channel kinds reach a real TLS server (mTLS included)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from sidecar.auth import server_credentials
from sidecar.plumbing.channels import ChannelSecurity
from tests.integration.harness import short_tmp
from tests.pki import Pki, make_pki


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    with short_tmp() as tmp:
        yield make_pki(tmp)


@pytest.fixture(scope="module")
def mtls_server(pki: Pki) -> Iterator[str]:
    """A gRPC server (health only) that requires a client certificate from the test CA."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_secure_port(
        "127.0.0.1:0", server_credentials(pki.server_cert, pki.server_key, pki.ca)
    )
    server.start()
    yield f"localhost:{port}"
    server.stop(0)


def test_token_file_is_read_for_every_use(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    security = ChannelSecurity(token_file=token)
    assert security.metadata() == (("authorization", "Bearer first"),)
    token.write_text("second")
    assert security.metadata() == (("authorization", "Bearer second"),)
    token.unlink()
    with pytest.raises(OSError):
        security.metadata()


def test_literal_token_and_none() -> None:
    assert ChannelSecurity(token="t").metadata() == (("authorization", "Bearer t"),)
    assert ChannelSecurity().metadata() == ()
    assert ChannelSecurity().credentials() is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tls": True, "certificate_chain": b"c"}, "go together"),
        ({"certificate_chain": b"c", "private_key": b"k"}, "needs TLS"),
        ({"root_certificates": b"ca"}, "is for TLS"),
    ],
)
def test_options_that_do_not_go_together(fields: dict[str, bytes], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ChannelSecurity(**fields)  # type: ignore[arg-type]


def test_from_files_reads_the_pem_files(pki: Pki) -> None:
    security = ChannelSecurity.from_files(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    assert security.tls and security.root_certificates == pki.read("ca")
    assert security.certificate_chain == pki.read("client_cert")
    assert ChannelSecurity.from_files().tls is False
    with pytest.raises(OSError):
        ChannelSecurity.from_files(ca=pki.ca.with_name("missing"))


def _check(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status)


async def _aio_check(security: ChannelSecurity, target: str) -> int:
    async with security.aio_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        return int(response.status)


def test_blocking_and_asyncio_channels_present_the_client_certificate(
    pki: Pki, mtls_server: str
) -> None:
    with_cert = ChannelSecurity.from_files(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    serving = health_pb2.HealthCheckResponse.SERVING
    with with_cert.channel(mtls_server) as channel:
        assert _check(channel) == serving
    assert asyncio.run(_aio_check(with_cert, mtls_server)) == serving

    without = ChannelSecurity.from_files(ca=pki.ca)
    with without.channel(mtls_server) as channel, pytest.raises(grpc.RpcError) as refused:
        _check(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError):
        asyncio.run(_aio_check(without, mtls_server))
