"""Bearer tokens and TLS server credentials for the admin and evaluation listeners.

The token file is re-read whenever its modification time changes, so a rotated Secret
(Kubernetes updates mounted files in place) takes effect on the next call. Comparison is
constant-time, and the token never appears in logs or status output.
"""

from __future__ import annotations

import hmac
import inspect
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

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


HEALTH_PREFIX = "/grpc.health.v1.Health/"
UNIX_PEER_PREFIX = "unix:"


class EvaluationTokens(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Requires a bearer token on the evaluation server's TCP listener.

    Exempt: ``grpc.health.v1`` (kubelet probes cannot send metadata) and calls over the Unix
    socket, which its file mode already restricts. A call with a valid token gets the
    handler unchanged; any other gets a wrapper that lets it through only when it came over
    the Unix socket (the peer is known only once the call runs), else UNAUTHENTICATED.
    """

    def __init__(self, tokens: TokenFile) -> None:
        self._tokens = tokens

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(HEALTH_PREFIX):
            return handler
        metadata = handler_call_details.invocation_metadata
        if self._tokens.allows(metadata):
            return handler
        return _unix_socket_only(handler)


async def _refuse_unless_local(context: grpc.aio.ServicerContext) -> None:
    if not context.peer().startswith(UNIX_PEER_PREFIX):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")


def _unix_socket_only(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """``handler`` behind a check of the caller's transport, for each of the four call kinds."""
    options = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        unary_unary = handler.unary_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await _refuse_unless_local(context)
            return await _maybe_await(unary_unary(request, context))

        return grpc.unary_unary_rpc_method_handler(unary, **options)
    if handler.unary_stream is not None:
        unary_stream = handler.unary_stream

        async def server_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await _refuse_unless_local(context)
            async for response in unary_stream(request, context):
                yield response

        return grpc.unary_stream_rpc_method_handler(server_stream, **options)
    if handler.stream_unary is not None:
        stream_unary = handler.stream_unary

        async def client_stream(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            await _refuse_unless_local(context)
            return await _maybe_await(stream_unary(requests, context))

        return grpc.stream_unary_rpc_method_handler(client_stream, **options)
    stream_stream = handler.stream_stream

    async def bidi(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        await _refuse_unless_local(context)
        async for response in stream_stream(requests, context):
            yield response

    return grpc.stream_stream_rpc_method_handler(bidi, **options)


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value
