"""A small HTTP/1.1 server on the sidecar's event loop, for lanes that speak JSON over HTTP.

Why not the standard library's server (as management HTTP uses): a lookup lane serves
thousands of small requests a second, and a thread per connection would compete with the
gRPC loop for the GIL. An `asyncio.Protocol` parses requests as bytes arrive and calls the
lane's handler inline, as gRPC lookups run inline on the loop; keep-alive and pipelining
come for free. What it serves is deliberately narrow: bodies with a `Content-Length` or
chunked (as streaming clients send them), bounded header and body sizes (431 and 413),
responses with a body of known length, and streamed responses (chunked) for server-streaming
protocols; while a response streams, the connection's next request waits. Optionally, a
connection that has not sent a whole request within `request_timeout` seconds (of opening, or
of its previous answer) is closed, and connections beyond `max_connections` are closed as
they open: half-sent requests then cost neither memory nor file descriptors for long.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import cast

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024


@dataclass(slots=True)
class Request:
    method: str
    path: str  # without the query string
    query: str
    headers: dict[str, str]  # names in lower case
    body: bytes


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    # a streamed body: sent chunked as it is produced, instead of `body`
    stream: AsyncIterator[bytes] | None = None


Handler = Callable[[Request], Response]


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def encode(response: Response, keep_alive: bool) -> bytes:
    lines = [f"HTTP/1.1 {response.status} {_reason(response.status)}"]
    lines += [f"{name}: {value}" for name, value in response.headers]
    if response.stream is not None:
        lines.append("Transfer-Encoding: chunked")
    else:
        lines.append(f"Content-Length: {len(response.body)}")
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body


@dataclass(frozen=True, slots=True)
class Limits:
    """What one connection may take; None: no limit."""

    request_timeout: float | None = None
    max_connections: int | None = None


class _Connection(asyncio.Protocol):
    def __init__(
        self, handler: Handler, max_body: int, open_: set[_Connection], limits: Limits
    ) -> None:
        self._handler = handler
        self._max_body = max_body
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._open = open_
        self._streaming: asyncio.Task[None] | None = None
        self._limits = limits
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        limit = self._limits.max_connections
        if limit is not None and len(self._open) >= limit:
            log.debug("HTTP connection refused: %d connections are open", len(self._open))
            self._close()
            return
        self._open.add(self)
        self._arm()

    def _arm(self) -> None:
        """(Re)start the time the connection has to send its next whole request."""
        if self._deadline is not None:
            self._deadline.cancel()
        timeout = self._limits.request_timeout
        if timeout is not None and self._transport is not None and self._streaming is None:
            self._deadline = asyncio.get_running_loop().call_later(timeout, self._expire)

    def _expire(self) -> None:
        log.debug(
            "HTTP connection closed: no whole request within %s s", self._limits.request_timeout
        )
        self._deadline = None
        self._close()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._serve_buffered()

    def _serve_buffered(self) -> None:
        while self._transport is not None and self._streaming is None and self._serve_one():
            pass

    def _serve_one(self) -> bool:
        """Serves the first complete request in the buffer; False when there is none."""
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEADER_BYTES:
                self._fail(431, "request headers too large")
            return False
        try:
            request_line, *header_lines = buffer[:end].decode("latin-1").split("\r\n")
            method, target, version = request_line.split(" ")
        except ValueError:
            self._fail(400, "malformed request line")
            return False
        headers: dict[str, str] = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if not sep:
                self._fail(400, "malformed header")
                return False
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            found = self._chunked_body(end + 4)
        else:
            found = self._sized_body(end + 4, headers.get("content-length", "0"))
        if found is None:
            return False
        body, consumed = found
        del buffer[:consumed]
        path, _, query = target.partition("?")
        keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        try:
            response = self._handler(Request(method, path, query, headers, body))
        except Exception:  # a handler bug answers 500, it never kills the connection's loop
            log.exception("HTTP handler failed for %s %s", method, path)
            response = Response(500, b'{"errorDetails":"internal error"}')
        assert self._transport is not None
        self._transport.write(encode(response, keep_alive))
        if response.stream is not None:
            self._streaming = asyncio.ensure_future(self._pump(response.stream, keep_alive))
            self._arm()  # no deadline while the answer streams
            return False
        if not keep_alive:
            self._close()
        self._arm()
        return True

    def _sized_body(self, start: int, length_text: str) -> tuple[bytes, int] | None:
        """(body, bytes consumed) once the whole body is in; None while it is not (or after
        a refusal)."""
        try:
            length = int(length_text)
        except ValueError:
            self._fail(400, "malformed Content-Length")
            return None
        if length < 0 or length > self._max_body:
            self._fail(413, f"the body is over {self._max_body} bytes")
            return None
        if len(self._buffer) < start + length:
            return None
        return bytes(self._buffer[start : start + length]), start + length

    def _chunked_body(self, start: int) -> tuple[bytes, int] | None:
        """A chunked body, once its last chunk is in (trailers are not accepted)."""
        buffer, body, at = self._buffer, bytearray(), start
        while True:
            line_end = buffer.find(b"\r\n", at)
            if line_end < 0:
                return None
            try:
                size = int(bytes(buffer[at:line_end]).split(b";")[0], 16)
            except ValueError:
                self._fail(400, "malformed chunk size")
                return None
            if len(body) + size > self._max_body:
                self._fail(413, f"the body is over {self._max_body} bytes")
                return None
            if size == 0:
                if len(buffer) < line_end + 4:
                    return None
                return bytes(body), line_end + 4
            if len(buffer) < line_end + 2 + size + 2:
                return None
            body += buffer[line_end + 2 : line_end + 2 + size]
            at = line_end + 2 + size + 2

    async def _pump(self, stream: AsyncIterator[bytes], keep_alive: bool) -> None:
        """Sends a streamed body as chunks, then the connection's next request."""
        try:
            async for chunk in stream:
                if self._transport is None:
                    return
                if chunk:
                    self._transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            if self._transport is not None:
                self._transport.write(b"0\r\n\r\n")
        finally:
            self._streaming = None
        if not keep_alive:
            self._close()
        else:
            self._arm()
            self._serve_buffered()

    def _fail(self, status: int, message: str) -> None:
        if self._transport is not None:
            body = f'{{"errorDetails":"{message}"}}'.encode()
            headers = [("Content-Type", "application/json")]
            self._transport.write(encode(Response(status, body, headers), keep_alive=False))
            self._close()

    def _close(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self._open.discard(self)
        if self._streaming is not None:
            self._streaming.cancel()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._transport = None
        self._open.discard(self)
        if self._streaming is not None:
            self._streaming.cancel()


class HttpServer:
    """Serves `handler` on a TCP address; `start` binds, `stop` closes."""

    def __init__(self, handler: Handler, max_body: int, limits: Limits | None = None) -> None:
        self._handler = handler
        self._max_body = max_body
        self._limits = limits or Limits()
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self._handler, self._max_body, self._connections, self._limits),
            host,
            port,
            family=socket.AF_INET6 if ":" in host else socket.AF_INET,
            reuse_address=True,
        )
        bound = self._server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def stop(self) -> None:
        """Stops listening and closes every connection: requests are served whole between
        two reads, so none is ever half-answered here; idle keep-alive clients reconnect."""
        if self._server is None:
            return
        self._server.close()
        for connection in list(self._connections):
            connection._close()
        await self._server.wait_closed()
