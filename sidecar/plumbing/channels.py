"""How an outgoing gRPC channel is secured: TLS, mutual TLS, a bearer token.

One type for every channel the project dials (the control-plane stream, telemetry uploads,
`fader push`, `fader status`), for both the blocking and the asyncio gRPC APIs, so that a
security option added for one peer works for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

Options = list[tuple[str, int]]
Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ChannelSecurity:
    """TLS verified against ``root_certificates`` (the system roots when None), a client
    certificate for mTLS, and a bearer token.

    The token file is read again for every call that asks for ``metadata()``, so a rotated
    token is used without a restart; ``token`` is a literal one (`fader push --token`).
    """

    tls: bool = False
    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    token_file: Path | None = None
    token: str | None = None

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("a client certificate and its private key go together")
        if self.certificate_chain is not None and not self.tls:
            raise ValueError("a client certificate (mTLS) needs TLS")
        if self.root_certificates is not None and not self.tls:
            raise ValueError("a CA bundle is for TLS: set tls")

    @classmethod
    def from_files(
        cls,
        *,
        ca: Path | None = None,
        cert: Path | None = None,
        key: Path | None = None,
        token_file: Path | None = None,
        token: str | None = None,
    ) -> ChannelSecurity:
        """TLS when a CA bundle is given (mTLS with ``cert`` and ``key``); raises OSError
        when a file cannot be read, ValueError when the combination is wrong."""
        return cls(
            tls=ca is not None,
            root_certificates=ca.read_bytes() if ca else None,
            certificate_chain=cert.read_bytes() if cert else None,
            private_key=key.read_bytes() if key else None,
            token_file=token_file,
            token=token,
        )

    def credentials(self) -> grpc.ChannelCredentials | None:
        """None for a plaintext channel."""
        if not self.tls:
            return None
        return grpc.ssl_channel_credentials(
            self.root_certificates, self.private_key, self.certificate_chain
        )

    def channel(self, target: str, options: Options | None = None) -> grpc.Channel:
        """A blocking-API channel (threads: the control-plane stream, command-line tools)."""
        credentials = self.credentials()
        if credentials is None:
            return grpc.insecure_channel(target, options=options)
        return grpc.secure_channel(target, credentials, options=options)

    def aio_channel(self, target: str, options: Options | None = None) -> grpc.aio.Channel:
        """An asyncio-API channel (the event loop: telemetry uploads)."""
        credentials = self.credentials()
        if credentials is None:
            return grpc.aio.insecure_channel(target, options=options)
        return grpc.aio.secure_channel(target, credentials, options=options)

    def metadata(self) -> Metadata:
        """The authorization header, if any; OSError when the token file cannot be read."""
        token = self.token
        if self.token_file is not None:
            token = self.token_file.read_text(encoding="utf-8").strip()
        if not token:
            return ()
        return (("authorization", f"Bearer {token}"),)
