"""Bearer tokens and TLS server credentials for the admin and evaluation listeners.

The token file is re-read whenever its modification time changes, so a rotated Secret
(Kubernetes updates mounted files in place) takes effect on the next call. Comparison is
constant-time, and the token never appears in logs or status output.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import grpc

log = logging.getLogger(__name__)

AUTHORIZATION = "authorization"


class TokenFile:
    """The currently valid bearer token(s): one per non-empty line of the file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._mtime: int | None = None
        self._tokens: tuple[bytes, ...] = ()
        self._refresh()
        if not self._tokens:
            raise ValueError(f"token file {self.path} holds no token")

    def _refresh(self) -> None:
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError as exc:
            log.error("cannot stat token file %s: %s; keeping the previous tokens", self.path, exc)
            return
        with self._lock:
            if mtime == self._mtime:
                return
            try:
                lines = self.path.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                log.error("cannot read token file %s: %s", self.path, exc.strerror)
                return
            tokens = tuple(line.strip().encode() for line in lines if line.strip())
            if not tokens:
                log.error("token file %s is empty; keeping the previous tokens", self.path)
                return
            self._tokens, self._mtime = tokens, mtime

    def allows(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> bool:
        """True when the call carries ``authorization: Bearer <a current token>``."""
        self._refresh()
        offered = bearer(metadata)
        if offered is None:
            return False
        # Compare against every token without stopping early: constant time per token.
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(offered, token)
        return matched


def bearer(metadata: Sequence[tuple[str, str | bytes]] | None) -> bytes | None:
    for key, value in metadata or ():
        if key.lower() == AUTHORIZATION:
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip().encode()
    return None


def server_credentials(cert: Path, key: Path, client_ca: Path | None) -> grpc.ServerCredentials:
    """TLS with ``cert``/``key``; with ``client_ca`` also mTLS: clients must present a
    certificate signed by that CA, or the handshake fails before any call is read."""
    try:
        pair = (key.read_bytes(), cert.read_bytes())
        roots = client_ca.read_bytes() if client_ca is not None else None
    except OSError as exc:
        raise OSError(f"cannot read TLS material {exc.filename}: {exc.strerror}") from None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=roots, require_client_auth=roots is not None
    )
