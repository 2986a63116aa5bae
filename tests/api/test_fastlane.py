"""The fast-lane server (docs/fastlane.md) spoken to byte for byte over a real Unix socket."""

from __future__ import annotations

import asyncio
import datetime
import random
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from fader import fastlane as fl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.api.uds import SocketError
from sidecar.config import load_settings
from tests.integration.harness import (
    RunningSidecar,
    demo_snapshot,
    loopback_settings,
    running_sidecar,
    short_tmp,
)

MAX_FRAME = 64 * 1024
TREATMENT = {"op": "treatment", "key": "user-1", "flag": "new-checkout"}


@pytest.fixture(scope="module")
def lane() -> Iterator[RunningSidecar]:
    with (
        short_tmp() as tmp,
        running_sidecar(
            loopback_settings(fastlane_uds=tmp / "fl.sock", max_message_bytes=MAX_FRAME),
            demo_snapshot(),
        ) as running,
    ):
        yield running


def lane_path(running: RunningSidecar) -> str:
    assert running.sidecar.fastlane_path is not None
    return str(running.sidecar.fastlane_path)


class Raw:
    """A client that writes exactly the bytes it is given and reads frames."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(path)
        self._frames = fl.FrameBuffer(1 << 30)
        self._bodies: list[bytes] = []

    def greet(self) -> dict[str, Any]:
        self.sock.sendall(fl.PREAMBLE)
        return self.read()

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        self.sock.sendall(fl.encode(request))
        return self.read()

    def read(self) -> dict[str, Any]:
        while not self._bodies:
            data = self.sock.recv(65536)
            assert data, "the server closed the connection"
            self._bodies += self._frames.feed(data)
        return fl.decode(self._bodies.pop(0))

    def read_to_end(self) -> list[dict[str, Any]]:
        """Every frame until the server closes the connection."""
        while data := self.sock.recv(65536):
            self._bodies += self._frames.feed(data)
        bodies, self._bodies = self._bodies, []
        return [fl.decode(body) for body in bodies]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(lane: RunningSidecar) -> Iterator[Raw]:
    client = Raw(lane_path(lane))
    assert client.greet() == {
        "version": fl.VERSION,
        "max_frame_bytes": MAX_FRAME,
        "max_in_flight": fl.MAX_IN_FLIGHT,
    }
    yield client
    client.close()


def expected(running: RunningSidecar, key: str, flag: str, **kwargs: Any) -> dict[str, Any]:
    snap = running.store.current
    assert snap is not None
    result = snap.evaluate(key, flag, kwargs.get("bucketing_key"), kwargs.get("attributes"))
    return {
        "flag": flag,
        "treatment": result.treatment,
        "label": result.label,
        "config": result.config,
        "change_number": result.change_number,
    }


def test_setting_from_flag_and_environment() -> None:
    assert load_settings(["--fastlane-uds", "/run/f.sock"]).fastlane_uds == Path("/run/f.sock")
    environ = {"FADER_FASTLANE_UDS": "/run/e.sock"}
    assert load_settings([], environ).fastlane_uds == Path("/run/e.sock")
    assert load_settings([], {}).fastlane_uds is None


def test_socket_is_0660_and_removed_on_stop() -> None:
    with short_tmp() as tmp:
        path = tmp / "fl.sock"
        with running_sidecar(loopback_settings(fastlane_uds=path), demo_snapshot()):
            assert stat.S_IMODE(path.stat().st_mode) == 0o660
        assert not path.exists()


def test_stale_socket_is_replaced_and_live_one_refused() -> None:
    with short_tmp() as tmp:
        path = tmp / "fl.sock"
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(path))
        stale.close()  # the file stays, nobody answers: a killed process's leftover
        with running_sidecar(loopback_settings(fastlane_uds=path), demo_snapshot()) as running:
            assert Raw(str(path)).greet()["version"] == fl.VERSION
            with (
                pytest.raises(SocketError, match="another server is listening"),
                running_sidecar(loopback_settings(fastlane_uds=path), demo_snapshot()),
            ):
                pass
            assert running.sidecar.fastlane_path == path


def test_treatment(lane: RunningSidecar, raw: Raw) -> None:
    attributes = {"plan": "pro", "age": 30}
    request = {**TREATMENT, "id": 7, "bucketing_key": "acct-9", "attributes": attributes}
    assert raw.ask(request) == {
        "id": 7,
        "version": 1,
        **expected(lane, "user-1", "new-checkout", bucketing_key="acct-9", attributes=attributes),
    }
    assert raw.ask({**TREATMENT, "id": 8, "flag": "missing"}) == {
        "id": 8,
        "version": 1,
        "flag": "missing",
        "treatment": "control",
        "label": "definition not found",
        "config": None,
        "change_number": None,
    }


def test_attribute_types_are_kept_apart(raw: Raw) -> None:
    def treatment(attributes: dict[str, Any]) -> str:
        request = {"id": 1, "op": "treatment", "key": "u", "flag": "pricing-tier"}
        answer: str = raw.ask({**request, "attributes": attributes})["treatment"]
        return answer

    assert treatment({"plan": "pro", "age": 30}) == "premium"
    assert treatment({"plan": "pro", "age": 30.0}) == "standard"
    assert treatment({"plan": "pro", "age": True}) == "standard"
    stamp = msgpack.Timestamp.from_datetime(datetime.datetime.now(datetime.UTC))
    assert treatment({"when": stamp, "tags": ["a", "b"]}) == "standard"


def test_treatments_named_sets_and_all(lane: RunningSidecar, raw: Raw) -> None:
    named = raw.ask({"id": 1, "op": "treatments", "key": "alice", "flags": ["ui-theme", "nope"]})
    assert named == {
        "id": 1,
        "version": 1,
        "evaluations": [expected(lane, "alice", "ui-theme"), expected(lane, "alice", "nope")],
    }
    in_set = raw.ask({"id": 2, "op": "treatments", "key": "alice", "flag_sets": ["checkout"]})
    assert {e["flag"] for e in in_set["evaluations"]} == {"kill-switch-demo", "new-checkout"}
    everything = raw.ask({"id": 3, "op": "treatments", "key": "alice"})
    assert len(everything["evaluations"]) == 5


def test_batch(lane: RunningSidecar, raw: Raw) -> None:
    items: list[dict[str, Any]] = [{"key": f"user-{i}", "flag": "ui-theme"} for i in range(20)]
    items.append({"key": "u", "flag": "pricing-tier", "attributes": {"plan": "pro", "age": 30}})
    answer = raw.ask({"id": 5, "op": "batch", "items": items})
    assert answer["evaluations"] == [
        expected(lane, str(item["key"]), str(item["flag"]), attributes=item.get("attributes"))
        for item in items
    ]
    refused = raw.ask({"id": 6, "op": "batch", "items": [{"key": "", "flag": "f"}]})
    assert refused == {
        "id": 6,
        "error": "INVALID_ARGUMENT",
        "message": "items[0].key: must not be empty",
    }


def test_track(lane: RunningSidecar, raw: Raw) -> None:
    def handed() -> int:  # validated, then refused: this sidecar has no collector
        return lane.sidecar.metrics.merged().track.get("refused_no_collector", 0)

    before = handed()
    event = {"op": "track", "key": "u", "traffic_type": "user", "event_type": "checkout.done"}
    stamp = msgpack.Timestamp(1_700_000_000, 0)
    for index, extra in enumerate(({"value": 4.5, "timestamp": stamp}, {"properties": {"n": 1}})):
        answer = raw.ask({**event, "id": index + 1, **extra})
        assert answer["error"] == "FAILED_PRECONDITION", answer
        assert "no collector" in answer["message"]
    assert handed() == before + 2
    bad = raw.ask({**event, "id": 3, "event_type": "not valid!"})
    assert bad["error"] == "INVALID_ARGUMENT" and bad["message"].startswith("event_type:")
    bad = raw.ask({**event, "id": 4, "properties": {"l": ["a"]}})
    assert bad["error"] == "INVALID_ARGUMENT" and "lists are not allowed" in bad["message"]


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"op": "nope"}, "op: 'nope' is not one of treatment, treatments, batch, track"),
        ({**TREATMENT, "key": 5}, "key: must be a string"),
        ({**TREATMENT, "attributes": {"a": {"b": 1}}}, "attributes['a']: dict is not one of"),
        ({**TREATMENT, "attributes": {"a": 2**64 - 1}}, "does not fit in 64 bits"),
        ({**TREATMENT, "attributes": ["a"]}, "attributes: must be a map or nil"),
        (
            {"op": "batch", "items": [{"key": "k", "flag": "f", "attributes": 3}]},
            "items[0].attributes: must be a map or nil",
        ),
        ({"op": "treatments", "key": "k", "flags": "f"}, "flags: must be an array"),
    ],
)
def test_invalid_requests_keep_the_connection(
    raw: Raw, request_: dict[str, Any], message: str
) -> None:
    answer = raw.ask({**request_, "id": 9})
    assert answer["id"] == 9 and answer["error"] == "INVALID_ARGUMENT"
    assert message in answer["message"]
    assert raw.ask({**TREATMENT, "id": 10})["treatment"] in ("on", "off")


def test_metrics_count_fast_lane_evaluations(lane: RunningSidecar, raw: Raw) -> None:
    def counted() -> int:
        return lane.sidecar.metrics.merged().evaluations.get(("beta-banner", "on"), 0)

    before = counted()
    raw.ask({"id": 1, "op": "treatment", "key": "alice", "flag": "beta-banner"})
    assert counted() == before + 1


def test_pipelined_requests_are_matched_by_id(lane: RunningSidecar, raw: Raw) -> None:
    """Many requests in one write, ids in random order; every answer names its request."""
    ids = random.Random(1).sample(range(2**40), 500)
    raw.sock.sendall(
        b"".join(
            fl.encode({"id": i, "op": "treatment", "key": f"k{i}", "flag": "ui-theme"}) for i in ids
        )
    )
    answers = {}
    for _ in ids:
        answer = raw.read()
        answers[answer["id"]] = answer["treatment"]
    assert answers == {i: expected(lane, f"k{i}", "ui-theme")["treatment"] for i in ids}


@pytest.mark.parametrize(
    ("preamble", "code"),
    [
        (fl.MAGIC + bytes([fl.VERSION + 1]), "UNSUPPORTED_VERSION"),
        (b"GET / HTTP/1.1\r\n", "BAD_FRAME"),
    ],
)
def test_handshake_mismatch_closes(lane: RunningSidecar, preamble: bytes, code: str) -> None:
    client = Raw(lane_path(lane))
    client.sock.sendall(preamble)
    [refusal] = client.read_to_end()
    assert refusal["id"] is None and refusal["error"] == code
    client.close()


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ((MAX_FRAME + 1).to_bytes(4, "big"), "FRAME_TOO_LARGE"),
        (bytes(4), "BAD_FRAME"),
        (b"\x00\x00\x00\x03\x83\xa2i", "BAD_FRAME"),  # a map whose msgpack is cut short
        (fl.encode({"op": "treatment"}), "BAD_FRAME"),  # no id
        (b"\x00\x00\x00\x01\x05", "BAD_FRAME"),  # not a map
    ],
)
def test_bad_frames_get_an_error_and_close(lane: RunningSidecar, data: bytes, code: str) -> None:
    client = Raw(lane_path(lane))
    client.greet()
    client.sock.sendall(fl.encode({**TREATMENT, "id": 1}) + data)
    answer, refusal = client.read_to_end()
    assert answer["id"] == 1
    assert refusal["id"] is None and refusal["error"] == code
    client.close()


def test_truncated_frame_then_hang_up_leaves_the_server_healthy(
    lane: RunningSidecar, raw: Raw
) -> None:
    client = Raw(lane_path(lane))
    client.greet()
    client.sock.sendall(fl.encode({**TREATMENT, "id": 1})[:-2])
    client.close()
    assert raw.ask({**TREATMENT, "id": 2})["id"] == 2


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(garbage=st.binary(min_size=1, max_size=300), greet=st.booleans())
def test_garbage_gets_an_error_frame_or_close(
    lane: RunningSidecar, garbage: bytes, greet: bool
) -> None:
    client = Raw(lane_path(lane))
    client.sock.sendall((fl.PREAMBLE if greet else b"") + garbage)
    client.sock.shutdown(socket.SHUT_WR)
    frames = client.read_to_end()
    client.close()
    for frame in frames[:-1]:
        assert "error" not in frame or frame["id"] is not None
    healthy = Raw(lane_path(lane))
    healthy.greet()
    assert healthy.ask({**TREATMENT, "id": 1})["id"] == 1
    healthy.close()


def test_no_snapshot_is_unavailable() -> None:
    with short_tmp() as tmp, running_sidecar(loopback_settings(fastlane_uds=tmp / "s")) as running:
        client = Raw(lane_path(running))
        client.greet()
        assert client.ask({**TREATMENT, "id": 1}) == {
            "id": 1,
            "error": "UNAVAILABLE",
            "message": "no snapshot is active yet",
        }
        client.close()


def test_shutdown_answers_what_it_read_then_says_so_and_unlinks() -> None:
    with short_tmp() as tmp:
        path = tmp / "fl.sock"
        with running_sidecar(loopback_settings(fastlane_uds=path), demo_snapshot()) as running:
            client = Raw(str(path))
            client.greet()
            requests = b"".join(fl.encode({**TREATMENT, "id": i}) for i in range(2000))
            client.sock.sendall(requests)
            client.read()  # the server is now working through them
            stopping = asyncio.run_coroutine_threadsafe(running.sidecar.stop(1.0), running.loop)
            frames = client.read_to_end()
            stopping.result(5)
            client.close()
        *answers, last = frames
        assert [a["id"] for a in answers] == list(range(1, len(answers) + 1))
        assert all("treatment" in a for a in answers)
        assert last == {"id": None, "error": "SHUTTING_DOWN", "message": "the sidecar is stopping"}
        assert not path.exists()
