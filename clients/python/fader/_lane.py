"""The clients' fast-lane transports (`fastlane:///abs/path.sock`, docs/fastlane.md).

`SyncLane` sends one request at a time on one blocking socket (a lock serialises threads);
`AsyncLane` pipelines every caller's requests on one connection and matches the answers by
request id, in whatever order they come. Both connect lazily and reconnect after a failure.
A failed call raises CallFailed carrying the grpc.StatusCode it stands for, so the clients'
"control" fallback treats both transports alike.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections import deque
from typing import Any, cast

import grpc

from fader import fastlane as fl
from fader._calls import Call
from fader._common import CallFailed

SCHEME = "fastlane://"
STATUS_OF_ERROR = {
    fl.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    fl.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    fl.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    fl.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    fl.SHUTTING_DOWN: grpc.StatusCode.UNAVAILABLE,
}
READ_BYTES = 65536


def socket_path(target: str) -> str | None:
    """The socket path of a `fastlane:///abs/path.sock` target; None for gRPC targets."""
    if not target.startswith(SCHEME):
        return None
    path = target[len(SCHEME) :]
    if not path.startswith("/"):
        raise ValueError(f"{target!r}: a fast-lane target is fastlane:// + an absolute path")
    return path


def refusal(response: dict[str, Any]) -> CallFailed:
    code = response.get("error")
    return CallFailed(
        STATUS_OF_ERROR.get(code, grpc.StatusCode.INTERNAL),  # type: ignore[arg-type]
        str(response.get("message")),
    )


def check_hello(response: dict[str, Any]) -> None:
    if "error" in response:
        raise refusal(response)
    if response.get("version") != fl.VERSION:
        raise CallFailed(grpc.StatusCode.UNAVAILABLE, f"unexpected hello frame {response!r}")


class SyncLane:
    """One blocking socket, one request at a time, the way a request handler calls.

    The deadline is the socket's own (SO_SNDTIMEO / SO_RCVTIMEO, set once at connect): each
    send or receive waits at most `timeout`. A socket in Python's timeout mode would instead
    poll() before every send and receive and re-arm its timeout per call, doubling the
    system calls of a round trip that is mostly system calls.
    """

    def __init__(self, path: str, timeout: float) -> None:
        self._path = path
        self._timeout = timeout
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._frames = fl.FrameBuffer(fl.DEFAULT_MAX_FRAME_BYTES)
        self._bodies: deque[bytes] = deque()
        self._next_id = 0
        self._packer = fl.packer()  # used under the lock only

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """The response map; raises CallFailed. A timeout or a broken connection closes the
        socket, so a late answer can never be taken for the next request's. (`fl.encode` and
        the one-whole-frame case of `_read` are inlined: a function call is ~0.1 us of the
        client's few us of Python per round trip.)"""
        with self._lock:
            try:
                sock = self._socket or self._connect()
                self._next_id += 1
                request["id"] = self._next_id
                body = self._packer.pack(request)
                sock.sendall(len(body).to_bytes(fl.LENGTH_BYTES, "big") + body)
                if self._bodies or not self._frames.empty:
                    response = self._read(sock, None)
                else:
                    data = sock.recv(READ_BYTES)
                    if int.from_bytes(data[:4], "big") == len(data) - 4:
                        response = fl.decode(data[4:])  # the usual case: one whole frame
                    else:
                        response = self._read(sock, data)
            except (TimeoutError, BlockingIOError):  # SO_RCVTIMEO expired: EAGAIN
                self.close()
                raise CallFailed(grpc.StatusCode.DEADLINE_EXCEEDED, "no answer in time") from None
            except (OSError, fl.ProtocolError) as err:
                self.close()
                raise CallFailed(grpc.StatusCode.UNAVAILABLE, str(err)) from None
            if response.get("id") is None:  # the server is closing this connection
                self.close()
        if "error" in response:
            raise refusal(response)
        return response

    def send(self, call: Call[Any]) -> dict[str, Any]:
        return self.call(call.request)

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._socket = sock
        self._frames = fl.FrameBuffer(fl.DEFAULT_MAX_FRAME_BYTES)
        self._bodies.clear()
        sock.settimeout(self._timeout)
        sock.connect(self._path)
        sock.settimeout(None)
        seconds = int(self._timeout)
        wait = struct.pack("ll", seconds, int((self._timeout - seconds) * 1e6) or 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, wait)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, wait)
        sock.sendall(fl.PREAMBLE)
        check_hello(self._read(sock, None))
        return sock

    def _read(self, sock: socket.socket, received: bytes | None) -> dict[str, Any]:
        """The next frame; `received` is what `call` has already read for it (None: nothing)."""
        bodies = self._bodies
        while not bodies:
            data = sock.recv(READ_BYTES) if received is None else received
            received = None
            if not data:
                raise ConnectionResetError("the sidecar closed the connection")
            if self._frames.empty and int.from_bytes(data[:4], "big") == len(data) - 4:
                return fl.decode(data[4:])  # the usual case: exactly one whole frame
            bodies.extend(self._frames.feed(data))
        return fl.decode(bodies.popleft())

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class _Connection(asyncio.Protocol):
    """One pipelined connection: waiters by request id, resolved as answers arrive."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.hello: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.waiters: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.closed = False
        self._frames = fl.FrameBuffer(fl.DEFAULT_MAX_FRAME_BYTES)
        self._packer = fl.packer()  # the loop's thread only
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._transport.write(fl.PREAMBLE)

    def data_received(self, data: bytes) -> None:
        try:
            for body in self._frames.feed(data):
                self._deliver(fl.decode(body))
        except fl.ProtocolError as err:
            self._fail(CallFailed(grpc.StatusCode.UNAVAILABLE, str(err)))

    def _deliver(self, response: dict[str, Any]) -> None:
        if not self.hello.done():
            self.hello.set_result(response)
            return
        request_id = response.get("id")
        if request_id is None:  # a connection-level error: the server closes
            self._fail(refusal(response))
            return
        waiter = self.waiters.pop(request_id, None)
        if waiter is not None and not waiter.done():  # None: its caller timed out
            waiter.set_result(response)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(CallFailed(grpc.StatusCode.UNAVAILABLE, "the sidecar closed the connection"))

    def _fail(self, error: CallFailed) -> None:
        self.closed = True
        for waiter in [self.hello, *self.waiters.values()]:
            if not waiter.done():
                waiter.set_exception(error)
        self.waiters.clear()
        self.close()

    def send(self, request_id: int, request: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        assert self._transport is not None
        waiter = asyncio.get_running_loop().create_future()
        self.waiters[request_id] = waiter
        request["id"] = request_id
        self._transport.write(fl.encode(request, self._packer))
        return waiter

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class AsyncLane:
    def __init__(self, path: str, timeout: float) -> None:
        self._path = path
        self._timeout = timeout
        self._connection: _Connection | None = None
        self._connecting = asyncio.Lock()
        self._slots = asyncio.Semaphore(fl.MAX_IN_FLIGHT)
        self._next_id = 0

    async def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """The response map; raises CallFailed. A caller that times out forgets its request
        id, so its late answer is dropped and the connection stays usable."""
        self._next_id += 1
        request_id = self._next_id
        connection: _Connection | None = None
        try:
            async with asyncio.timeout(self._timeout), self._slots:
                connection = self._connection
                if connection is None or connection.closed:
                    connection = await self._connected()
                response = await connection.send(request_id, request)
        except TimeoutError:
            if connection is not None:
                connection.waiters.pop(request_id, None)
            raise CallFailed(grpc.StatusCode.DEADLINE_EXCEEDED, "no answer in time") from None
        except OSError as err:
            raise CallFailed(grpc.StatusCode.UNAVAILABLE, str(err)) from None
        if "error" in response:
            raise refusal(response)
        return response

    async def send(self, call: Call[Any]) -> dict[str, Any]:
        return await self.call(call.request)

    async def _connected(self) -> _Connection:
        async with self._connecting:
            if self._connection is None or self._connection.closed:
                loop = asyncio.get_running_loop()
                _, connection = await loop.create_unix_connection(_Connection, self._path)
                self._connection = connection
                check_hello(await connection.hello)
            return self._connection

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
