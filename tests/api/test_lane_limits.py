"""Every lane applies every request limit the same way, through the one attribute policy of
the evaluation core: the same refusal, the same message, the same counter.

Before the core, the fast lane never applied --max-attribute-size (a 5,000-character
attribute over a 1,000 limit was evaluated while gRPC refused it) and never counted its
refusals; these tests are per lane and per limit so that such drift cannot come back.
Limits that do not exist on a lane are named in each test's docstring.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grpc
import pytest
from fader import fastlane as fl
from fader.pb.fader.v1 import evaluation_pb2 as pb
from fader.pb.fader.v1 import evaluation_pb2_grpc as pb_grpc
from fader.pb.flagd.evaluation.v2 import evaluation_pb2 as flagd
from fader.pb.flagd.evaluation.v2 import evaluation_pb2_grpc as flagd_grpc
from google.protobuf import struct_pb2

from tests.integration.harness import (
    RunningSidecar,
    demo_snapshot,
    http_get,
    loopback_settings,
    running_sidecar,
    short_tmp,
)

MAX_MESSAGE = 64 * 1024
Answer = tuple[str, str]  # (status or error-frame code, message)


@pytest.fixture(scope="module")
def limited() -> Iterator[RunningSidecar]:
    with short_tmp() as tmp:
        settings = loopback_settings(
            fastlane_uds=tmp / "fl.sock",
            max_attributes=2,
            max_attribute_size=10,
            max_batch_items=3,
            max_watch_streams=2,
            max_message_bytes=MAX_MESSAGE,
        )
        with running_sidecar(settings, demo_snapshot()) as running:
            yield running


def refusals(running: RunningSidecar, limit: str) -> float:
    text = http_get(running.mgmt_url + "/metrics")[1]
    match = re.search(rf'fader_limit_refusals_total{{limit="{limit}"}} (\S+)', text)
    assert match, text
    return float(match.group(1))


def fast_lane_ask(running: RunningSidecar, request: dict[str, Any]) -> dict[str, Any]:
    """One request on a fresh fast-lane connection; the answer frame."""
    assert running.sidecar.fastlane_path is not None
    frames = fl.FrameBuffer(1 << 24)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(running.sidecar.fastlane_path))
        sock.sendall(fl.PREAMBLE + fl.encode({"id": 1, **request}))
        bodies: list[bytes] = []
        while len(bodies) < 2:  # the hello, then the answer
            data = sock.recv(65536)
            assert data, "the fast lane closed the connection"
            bodies += frames.feed(data)
    return fl.decode(bodies[1])


def _grpc_answer(call: Callable[[], Any]) -> Answer:
    try:
        call()
    except grpc.RpcError as err:
        return err.code().name, str(err.details())
    return "OK", ""


def fader_v1_lookup(running: RunningSidecar, attributes: Mapping[str, object]) -> Answer:
    values = {name: _value(value) for name, value in attributes.items()}
    with grpc.insecure_channel(running.tcp_target) as channel:
        stub = pb_grpc.EvaluationServiceStub(channel)
        request = pb.GetTreatmentRequest(key="u", flag="new-checkout", attributes=values)
        return _grpc_answer(lambda: stub.GetTreatment(request, timeout=5))


def flagd_lookup(running: RunningSidecar, attributes: Mapping[str, object]) -> Answer:
    context = struct_pb2.Struct()
    context.update({"targetingKey": "u"})
    context.update(dict(attributes))  # type: ignore[arg-type]
    with grpc.insecure_channel(running.tcp_target) as channel:
        stub = flagd_grpc.ServiceStub(channel)
        request = flagd.ResolveStringRequest(flag_key="new-checkout", context=context)
        return _grpc_answer(lambda: stub.ResolveString(request, timeout=5))


def fast_lane_lookup(running: RunningSidecar, attributes: Mapping[str, object]) -> Answer:
    request = {"op": "treatment", "key": "u", "flag": "new-checkout", "attributes": attributes}
    answer = fast_lane_ask(running, request)
    return answer.get("error", "OK"), answer.get("message", "")


def _value(value: object) -> pb.AttributeValue:
    if isinstance(value, list):
        return pb.AttributeValue(string_list_value=pb.StringList(values=value))
    assert isinstance(value, str)
    return pb.AttributeValue(string_value=value)


LANES = {"fader.v1": fader_v1_lookup, "flagd": flagd_lookup, "fast lane": fast_lane_lookup}
WHERE = {"fader.v1": "attributes", "flagd": "context", "fast lane": "attributes"}


@pytest.mark.parametrize("lane", LANES)
@pytest.mark.parametrize(
    ("limit", "attributes", "message"),
    [
        ("attributes", {"a": "", "b": "", "c": ""}, ": 3 entries, at most 2 allowed"),
        ("attribute_size", {"a": "x" * 11}, "['a']: 11 characters, at most 10 allowed"),
        ("attribute_size", {"l": ["x" * 6, "y" * 6]}, "['l']: 12 characters, at most 10 allowed"),
    ],
)
def test_attribute_limits(
    limited: RunningSidecar, lane: str, limit: str, attributes: dict[str, object], message: str
) -> None:
    """Attribute count and size (a string, or a string list in all) on every lane: refused as
    INVALID_ARGUMENT (gRPC status or fast-lane error frame), the same message, counted."""
    assert LANES[lane](limited, {"a": "x" * 10, "b": ["y" * 5, "z" * 5]}) == ("OK", "")
    before = refusals(limited, limit)
    code, details = LANES[lane](limited, attributes)
    assert code == "INVALID_ARGUMENT"
    assert details == WHERE[lane] + message
    assert refusals(limited, limit) == before + 1


def test_batch_items_on_fader_v1(limited: RunningSidecar) -> None:
    """--max-batch-items bounds EvaluateBatch items and GetTreatments flags. (flagd has no
    request with a list of lookups: ResolveAll evaluates the flag set the snapshot holds.)"""
    with grpc.insecure_channel(limited.tcp_target) as channel:
        stub = pb_grpc.EvaluationServiceStub(channel)
        items = [pb.BatchItem(key="u", flag="new-checkout")] * 4
        batch = pb.EvaluateBatchRequest(items=items)
        assert _grpc_answer(lambda: stub.EvaluateBatch(batch, timeout=5)) == (
            "INVALID_ARGUMENT",
            "items: 4 given, at most 3 allowed",
        )
        many = pb.GetTreatmentsRequest(key="u", flags=["a", "b", "c", "d"])
        assert _grpc_answer(lambda: stub.GetTreatments(many, timeout=5)) == (
            "INVALID_ARGUMENT",
            "flags + flag_sets: 4 given, at most 3 allowed",
        )


def test_batch_items_on_the_fast_lane(limited: RunningSidecar) -> None:
    items = [{"key": "u", "flag": "new-checkout"}] * 4
    assert fast_lane_ask(limited, {"op": "batch", "items": items})["message"] == (
        "items: 4 given, at most 3 allowed"
    )
    treatments = {"op": "treatments", "key": "u", "flags": ["a", "b", "c", "d"]}
    assert fast_lane_ask(limited, treatments)["message"] == (
        "flags + flag_sets: 4 given, at most 3 allowed"
    )


def test_message_size_on_every_lane(limited: RunningSidecar) -> None:
    """--max-message-bytes: gRPC refuses a larger request itself (RESOURCE_EXHAUSTED, before
    any handler runs, so fader_limit_refusals_total does not see it); the fast lane answers
    FRAME_TOO_LARGE and closes the connection."""
    big = {"a": "x" * (MAX_MESSAGE + 1)}
    assert fader_v1_lookup(limited, big)[0] == "RESOURCE_EXHAUSTED"
    assert flagd_lookup(limited, big)[0] == "RESOURCE_EXHAUSTED"
    answer = fast_lane_ask(limited, {"op": "treatment", "key": "u", "flag": "f", "attributes": big})
    assert answer["error"] == "FRAME_TOO_LARGE"


def test_event_properties_follow_the_attribute_policy(limited: RunningSidecar) -> None:
    """Track's properties go through the same policy on fader.v1 and the fast lane. (flagd has
    no Track.)"""
    with grpc.insecure_channel(limited.tcp_target) as channel:
        stub = pb_grpc.EvaluationServiceStub(channel)
        request = pb.TrackRequest(
            key="u", traffic_type="user", event_type="e", properties={"p": _value("x" * 11)}
        )
        assert _grpc_answer(lambda: stub.Track(request, timeout=5)) == (
            "INVALID_ARGUMENT",
            "properties['p']: 11 characters, at most 10 allowed",
        )
    track = {"op": "track", "key": "u", "traffic_type": "user", "event_type": "e"}
    answer = fast_lane_ask(limited, {**track, "properties": {"p": "x" * 11}})
    assert (answer["error"], answer["message"]) == (
        "INVALID_ARGUMENT",
        "properties['p']: 11 characters, at most 10 allowed",
    )
