"""flagd's evaluation API over Connect (HTTP/1.1) on the OFREP listener: unary calls in
protobuf and JSON, errors as Connect codes, ResolveAll, and the EventStream as a Connect
server stream (provider_ready, then a change after a swap)."""

from __future__ import annotations

import http.client
import json
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from fader.pb.flagd.evaluation.v1 import evaluation_pb2 as v1
from fader.pb.flagd.evaluation.v2 import evaluation_pb2 as v2

from sidecar.api.flagd_connect import envelope
from tests.api.test_ofrep import mixed_snapshot
from tests.integration.harness import (
    LOCAL_ANY_PORT,
    RunningSidecar,
    loopback_settings,
    running_sidecar,
)


@pytest.fixture(scope="module")
def sidecar() -> Iterator[RunningSidecar]:
    with running_sidecar(loopback_settings(ofrep_listen=LOCAL_ANY_PORT), mixed_snapshot()) as s:
        yield s


def connection(sidecar: RunningSidecar) -> http.client.HTTPConnection:
    address = sidecar.sidecar.ofrep_address
    assert address is not None
    return http.client.HTTPConnection(address.host, address.port, timeout=5)


def post(sidecar: RunningSidecar, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    conn = connection(sidecar)
    conn.request("POST", path, body, {"Content-Type": content_type})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data


def test_unary_proto(sidecar: RunningSidecar) -> None:
    request = v2.ResolveStringRequest(flag_key="greeting")
    request.context.update({"user": {"plan": "pro"}})
    status, body = post(
        sidecar,
        "/flagd.evaluation.v2.Service/ResolveString",
        request.SerializeToString(),
        "application/proto",
    )
    answer = v2.ResolveStringResponse.FromString(body)
    assert (status, answer.value, answer.variant, answer.reason) == (
        200,
        "hey",
        "yo",
        "TARGETING_MATCH",
    )


def test_unary_json_and_errors(sidecar: RunningSidecar) -> None:
    status, body = post(
        sidecar,
        "/flagd.evaluation.v1.Service/ResolveBoolean",
        b'{"flagKey": "enabled"}',
        "application/json",
    )
    assert (status, json.loads(body)["value"]) == (200, True)
    status, body = post(
        sidecar,
        "/flagd.evaluation.v1.Service/ResolveBoolean",
        b'{"flagKey": "nope"}',
        "application/json",
    )
    assert (status, json.loads(body)["code"]) == (404, "not_found")
    status, body = post(
        sidecar,
        "/flagd.evaluation.v1.Service/ResolveInt",
        b'{"flagKey": "greeting"}',
        "application/json",
    )
    assert (status, json.loads(body)["code"]) == (400, "invalid_argument")
    status, body = post(
        sidecar, "/flagd.evaluation.v1.Service/ResolveInt", b"\xff\xff", "application/proto"
    )
    assert (status, json.loads(body)["code"]) == (400, "invalid_argument")
    deep = b'{"flagKey": "enabled", "context": {"a": ' + b"[" * 1100 + b"]" * 1100 + b"}}"
    status, body = post(
        sidecar, "/flagd.evaluation.v1.Service/ResolveBoolean", deep, "application/json"
    )
    assert (status, json.loads(body)["code"]) == (400, "invalid_argument")
    assert "nests more than 100 levels deep" in json.loads(body)["message"]


def test_resolve_all(sidecar: RunningSidecar) -> None:
    request = v1.ResolveAllRequest()
    request.context.update({"targetingKey": "u1", "plan": "pro"})
    status, body = post(
        sidecar,
        "/flagd.evaluation.v1.Service/ResolveAll",
        request.SerializeToString(),
        "application/proto",
    )
    flags = v1.ResolveAllResponse.FromString(body).flags
    assert status == 200 and flags["banner"].string_value == "on" and flags["enabled"].bool_value


def read_envelope(response: http.client.HTTPResponse) -> tuple[int, bytes]:
    flags, length = struct.unpack(">BI", response.read(5))
    return flags, response.read(length)


def test_event_stream(sidecar: RunningSidecar) -> None:
    conn = connection(sidecar)
    conn.request(
        "POST",
        "/flagd.evaluation.v1.Service/EventStream",
        envelope(0, v1.EventStreamRequest().SerializeToString()),
        {"Content-Type": "application/connect+proto"},
    )
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type") == "application/connect+proto"
    flags, data = read_envelope(response)
    assert (flags, v1.EventStreamResponse.FromString(data).type) == (0, "provider_ready")
    version = sidecar.store.current.version  # type: ignore[union-attr]
    sidecar.store.swap(mixed_snapshot(version=version + 1, banner="new"))
    flags, data = read_envelope(response)
    event: Any = v1.EventStreamResponse.FromString(data)
    assert event.type == "configuration_change"
    assert "banner" in event.data["flags"]
    conn.close()
