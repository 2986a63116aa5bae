"""Fuzzing the fast lane: random request maps through the dispatcher, random byte streams
against a real FastLane on a Unix socket. Every request map is answered with a response or
an error frame (a ProtocolError for a frame the lane cannot attribute to a request), every
garbage stream ends with the lane closing the connection (a connection left hanging fails),
and after any garbage the server still answers a valid request on a new connection."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from fader import fastlane as fl
from hypothesis import given
from hypothesis import strategies as st

from sidecar.api.fastlane import FastLane
from tests.fuzz.fuzzing import fuzz_settings
from tests.integration.harness import (
    RunningSidecar,
    demo_snapshot,
    loopback_settings,
    running_sidecar,
    short_tmp,
)

DISPATCH_INPUTS = 1000
STREAM_INPUTS = 150
MAX_FRAME = 4096
READ_TIMEOUT = 5.0  # seconds without a byte or a close: the lane hangs
TREATMENT = {"op": "treatment", "key": "user-1", "flag": "new-checkout"}


@pytest.fixture(scope="module")
def lane() -> Iterator[RunningSidecar]:
    with (
        short_tmp() as tmp,
        running_sidecar(
            loopback_settings(
                fastlane_uds=tmp / "fl.sock",
                max_message_bytes=MAX_FRAME,
                max_attributes=4,
                mgmt_listen=None,
            ),
            demo_snapshot(),
        ) as running,
    ):
        yield running


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=8)
    | st.sampled_from(("treatment", "treatments", "batch", "track", "new-checkout", "user-1"))
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
FIELDS = ("id", "op", "key", "flag", "flags", "flag_sets", "bucketing_key", "attributes", "items")


@st.composite
def request_maps(draw: st.DrawFn) -> dict[str, Any]:
    request: dict[str, Any] = {
        "id": draw(st.one_of(st.integers(0, 2**64 - 1), values)),
        "op": draw(st.sampled_from(("treatment", "treatments", "batch", "track", "nope"))),
    }
    for field in draw(st.lists(st.sampled_from(FIELDS), max_size=6)):
        request[field] = draw(values)
    return request


def test_dispatch(lane: RunningSidecar) -> None:
    fast_lane = lane.sidecar._fastlane
    assert isinstance(fast_lane, FastLane)
    answers: list[str] = []

    @fuzz_settings(DISPATCH_INPUTS)
    @given(request_maps())
    def run(request: dict[str, Any]) -> None:
        try:
            frame = fast_lane.dispatch(request)
        except fl.ProtocolError as err:
            assert err.code == fl.BAD_FRAME  # no usable id: the connection is closed
            answers.append("protocol")
            return
        answer = fl.decode(frame[fl.LENGTH_BYTES :])
        assert answer["id"] == request["id"]
        answers.append(answer.get("error", "ok"))

    run()
    assert {fl.INVALID_ARGUMENT, "protocol"} <= set(answers)
    answer = fl.decode(fast_lane.dispatch({"id": 1, **TREATMENT})[fl.LENGTH_BYTES :])
    assert answer["treatment"] and "error" not in answer


def _ask(path: str, payload: bytes, timeout: float = READ_TIMEOUT) -> list[dict[str, Any]]:
    """Send ``payload`` on a fresh connection, half-close, read every frame until closed.

    The lane must close the connection (after its answers) once the client has half-closed
    it; ``timeout`` seconds with neither data nor a close is a hang and fails the test.
    """
    frames: list[dict[str, Any]] = []
    buffer = fl.FrameBuffer(1 << 24)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        while data := _recv(sock, payload, frames):
            frames += [fl.decode(body) for body in buffer.feed(data)]
    return frames


def _recv(sock: socket.socket, payload: bytes, frames: list[dict[str, Any]]) -> bytes:
    """The next bytes, or b"" at the end of the stream (a close or a reset after an error)."""
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""
    except TimeoutError:
        raise AssertionError(
            f"the fast lane neither answered nor closed the connection within "
            f"{sock.gettimeout()} s; sent {payload!r}, got {frames!r}"
        ) from None


def test_a_hanging_connection_fails() -> None:
    """The planted bug: a listener that reads everything and never answers or closes. The
    stream check must fail on it instead of taking the silence for the end of the stream."""
    with short_tmp() as tmp, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        path = str(tmp / "hang.sock")
        server.bind(path)
        server.listen(1)
        accepted: list[socket.socket] = []
        acceptor = threading.Thread(target=lambda: accepted.append(server.accept()[0]))
        acceptor.start()
        try:
            with pytest.raises(AssertionError, match="neither answered nor closed"):
                _ask(path, fl.PREAMBLE + b"garbage", timeout=0.5)
        finally:
            acceptor.join(5)
            for conn in accepted:
                conn.close()


def _valid_answer(path: str) -> None:
    frames = _ask(path, fl.PREAMBLE + fl.encode({"id": 7, **TREATMENT}))
    answers = [frame for frame in frames if frame.get("id") == 7]
    assert answers and answers[0]["treatment"], frames


def test_garbage_streams(lane: RunningSidecar) -> None:
    assert lane.sidecar.fastlane_path is not None
    path = str(lane.sidecar.fastlane_path)

    @fuzz_settings(STREAM_INPUTS)
    @given(
        st.sampled_from(("raw", "after-preamble", "frames")),
        st.binary(max_size=300),
        st.lists(request_maps(), max_size=3),
    )
    def run(kind: str, garbage: bytes, requests: list[dict[str, Any]]) -> None:
        if kind == "raw":
            payload = garbage
        elif kind == "after-preamble":
            payload = fl.PREAMBLE + garbage
        else:  # well-framed bodies that are not valid requests, then garbage
            bodies = [msgpack.packb(r, use_bin_type=True) for r in requests]
            framed = b"".join(len(b).to_bytes(fl.LENGTH_BYTES, "big") + b for b in bodies)
            payload = fl.PREAMBLE + framed + garbage
        for frame in _ask(path, payload):
            assert isinstance(frame, dict)
        _valid_answer(path)

    run()
