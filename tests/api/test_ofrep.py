"""OFREP: the handler with a real evaluation core (answers, errors, impressions, ETags,
tokens), and the lane over real HTTP on loopback (content type, keep-alive, 304)."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fader.snapshot.loader import build_snapshot
from fader.snapshot.snapshot import Snapshot

from sidecar.api.ofrep import Ofrep
from sidecar.auth import TokenFile
from sidecar.delivery.store import Store
from sidecar.limits import RequestLimits
from sidecar.plumbing.http import Request
from sidecar.telemetry.impressions import Recorder
from tests.core.builders import core_for
from tests.fader.rules.builders import condition, flag, matcher, snapshot_doc
from tests.integration.harness import LOCAL_ANY_PORT, loopback_settings, running_sidecar

FLAGD_FLAGS = {
    "enabled": {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "on"},
    "greeting": {
        "state": "ENABLED",
        "variants": {"hi": "hello", "yo": "hey"},
        "defaultVariant": "hi",
        "targeting": {"if": [{"==": [{"var": "user.plan"}, "pro"]}, "yo"]},
        "metadata": {"owner": "web"},
    },
    "limit": {"state": "ENABLED", "variants": {"low": 10, "high": 100}, "defaultVariant": "low"},
    "ratio": {"state": "ENABLED", "variants": {"one": 1, "half": 0.5}, "defaultVariant": "one"},
    "style": {
        "state": "ENABLED",
        "variants": {"blue": {"color": "blue"}},
        "defaultVariant": "blue",
    },
    "off-flag": {"state": "DISABLED", "variants": {"on": True}, "defaultVariant": "on"},
    "no-default": {"state": "ENABLED", "variants": {"on": True}},
    "broken": {"state": "ENABLED", "variants": {"on": True}, "targeting": {"nope": []}},
    "clock": {
        "state": "ENABLED",
        "variants": {"past": "p"},
        "defaultVariant": "past",
        "targeting": {"if": [{">": [{"var": "$flagd.timestamp"}, 0]}, "past"]},
    },
}


LIMITS = RequestLimits(max_attributes=10, max_attribute_size=100, max_batch_items=100)


def mixed_snapshot(version: int = 4, banner: str = "on") -> Snapshot:
    pro = matcher("WHITELIST", "plan", whitelistMatcherData={"whitelist": ["pro"]})
    doc = snapshot_doc(
        flag(
            "banner",
            condition(pro, partitions={banner: 100}, label="pro plan"),
            configurations={banner: '{"color": "red"}'},
            defaultTreatment="off",
        ),
        flag("killed", killed=True, defaultTreatment="off"),
        version=version,
    )
    doc["flagd"] = {"flags": FLAGD_FLAGS, "metadata": {"team": "shop"}}
    return build_snapshot(doc)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder(1_000)


@pytest.fixture
def lane(recorder: Recorder) -> Ofrep:
    store = Store()
    store.swap(mixed_snapshot())
    return Ofrep(core_for(store, recorder=recorder, limits=LIMITS))


def post(
    lane: Ofrep, path: str, body: Any = None, **headers: str
) -> tuple[int, Any, dict[str, str]]:
    raw = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = Request(
        "POST", path, "", {k.lower().replace("_", "-"): v for k, v in headers.items()}, raw
    )
    response = lane.handle(request)
    data = json.loads(response.body) if response.body else None
    return response.status, data, dict(response.headers)


def single(lane: Ofrep, key: str, context: dict[str, Any] | None = None, **headers: str):
    body = None if context is None else {"context": context}
    return post(lane, f"/ofrep/v1/evaluate/flags/{key}", body, **headers)


def test_flagd_flags_answer_typed_values(lane: Ofrep) -> None:
    assert single(lane, "enabled")[:2] == (
        200,
        {
            "key": "enabled",
            "reason": "STATIC",
            "variant": "on",
            "value": True,
            "metadata": {"team": "shop"},
        },
    )
    status, body, headers = single(lane, "greeting", {"user": {"plan": "pro"}})
    assert (status, body["value"], body["variant"], body["reason"]) == (
        200,
        "hey",
        "yo",
        "TARGETING_MATCH",
    )
    assert body["metadata"] == {"team": "shop", "owner": "web"}
    assert headers["Content-Type"] == "application/json"
    assert single(lane, "greeting", {"targetingKey": "u"})[1]["reason"] == "DEFAULT"
    assert single(lane, "limit")[1]["value"] == 10
    assert single(lane, "style")[1]["value"] == {"color": "blue"}


def test_a_number_flag_with_a_fraction_sends_floats(lane: Ofrep) -> None:
    status, _, _ = single(lane, "ratio")
    raw = lane.handle(Request("POST", "/ofrep/v1/evaluate/flags/ratio", "", {}, b"")).body
    assert status == 200 and b'"value":1.0' in raw


def test_no_value_answers_still_carry_a_variant(lane: Ofrep) -> None:
    assert single(lane, "off-flag")[1] == {
        "key": "off-flag",
        "reason": "DISABLED",
        "variant": None,
        "metadata": {"team": "shop"},
    }
    _, body, _ = single(lane, "no-default")
    assert body["reason"] == "DEFAULT" and body["variant"] is None and "value" not in body


def test_split_flags_answer_their_treatment(lane: Ofrep) -> None:
    status, body, _ = single(lane, "banner", {"targetingKey": "u1", "plan": "pro"})
    assert (status, body) == (
        200,
        {
            "key": "banner",
            "reason": "TARGETING_MATCH",
            "variant": "on",
            "value": "on",
            "metadata": {"version": 4, "label": "pro plan", "config": '{"color": "red"}'},
        },
    )
    assert single(lane, "killed", {"targetingKey": "u1"})[1]["reason"] == "DISABLED"


def test_errors_follow_the_spec(lane: Ofrep) -> None:
    assert single(lane, "nope", {"targetingKey": "u"})[:2] == (
        404,
        {"key": "nope", "errorCode": "FLAG_NOT_FOUND", "errorDetails": "flag 'nope' not found"},
    )
    status, body, _ = post(lane, "/ofrep/v1/evaluate/flags/enabled", b"{not json")
    assert (status, body["errorCode"]) == (400, "PARSE_ERROR")
    deep = b'{"context": {"a": ' + b"[" * 1100 + b"]" * 1100 + b"}}"
    status, body, _ = post(lane, "/ofrep/v1/evaluate/flags/enabled", deep)
    assert (status, body["errorCode"]) == (400, "PARSE_ERROR")
    assert "nests more than 100 levels deep" in body["errorDetails"]
    lone = b'{"context": {"targetingKey": "a\\ud800"}}'  # would reach the hash and the upload
    status, body, _ = post(lane, "/ofrep/v1/evaluate/flags/enabled", lone)
    assert (status, body["errorCode"]) == (400, "PARSE_ERROR")
    assert "lone UTF-16 surrogate" in body["errorDetails"]
    paired = b'{"context": {"targetingKey": "\\ud83d\\ude00"}}'  # a pair is text
    assert post(lane, "/ofrep/v1/evaluate/flags/enabled", paired)[0] == 200
    status, body, _ = single(lane, "banner", {"plan": "pro"})
    assert (status, body["errorCode"]) == (400, "TARGETING_KEY_MISSING")
    status, body, _ = single(lane, "banner", {"targetingKey": "u", "plan": {"nested": 1}})
    assert (status, body["errorCode"], body["key"]) == (400, "INVALID_CONTEXT", "banner")
    status, body, _ = single(lane, "broken")
    assert (status, body["errorCode"]) == (400, "PARSE_ERROR")
    status, body, _ = single(lane, "enabled", flagd_selector="source=x")
    assert (status, body["errorCode"]) == (400, "GENERAL")
    assert (
        lane.handle(Request("GET", "/ofrep/v1/evaluate/flags/enabled", "", {}, b"")).status == 405
    )
    assert lane.handle(Request("POST", "/elsewhere", "", {}, b"")).status == 404


def test_before_the_first_snapshot_the_answer_is_503() -> None:
    status, body, _ = single(Ofrep(core_for(Store())), "enabled")
    assert status == 503 and "errorDetails" in body


def test_single_calls_are_recorded_bulk_calls_are_not(lane: Ofrep, recorder: Recorder) -> None:
    single(lane, "enabled")
    assert recorder.size == 1
    status, body, _ = post(lane, "/ofrep/v1/evaluate/flags", {"context": {"targetingKey": "u"}})
    assert status == 200 and len(body["flags"]) == 11
    assert recorder.size == 1


def test_bulk_answers_every_flag_and_fails_flags_one_by_one(lane: Ofrep) -> None:
    status, body, _ = post(lane, "/ofrep/v1/evaluate/flags", {"context": {"plan": "pro"}})
    answers = {entry["key"]: entry for entry in body["flags"]}
    assert status == 200 and body["metadata"] == {"version": 4}
    assert answers["banner"]["errorCode"] == "TARGETING_KEY_MISSING"
    assert answers["broken"]["errorCode"] == "PARSE_ERROR"
    assert answers["enabled"]["value"] is True
    status, body, _ = post(lane, "/ofrep/v1/evaluate/flags/", None, flagd_selector="flagSetId=none")
    assert (status, body["flags"]) == (200, [])


def test_bulk_etag_and_304(lane: Ofrep) -> None:
    context = {"context": {"targetingKey": "u", "plan": "pro"}}
    status, body, headers = post(lane, "/ofrep/v1/evaluate/flags", context)
    tag = headers["ETag"]
    assert status == 200 and tag.startswith('"')
    status, body, again = post(lane, "/ofrep/v1/evaluate/flags", context, if_none_match=tag)
    assert (status, body, again["ETag"]) == (304, None, tag)
    other = {"context": {"targetingKey": "v"}}
    assert post(lane, "/ofrep/v1/evaluate/flags", other, if_none_match=tag)[0] == 200


def test_bearer_tokens(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("secret-1\n")
    store = Store()
    store.swap(mixed_snapshot())
    lane = Ofrep(core_for(store), TokenFile(tokens))
    assert single(lane, "enabled")[0] == 401
    assert single(lane, "enabled", authorization="Bearer wrong")[0] == 401
    assert single(lane, "enabled", authorization="Bearer secret-1")[0] == 200


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, int, Any]]:
    settings = loopback_settings(ofrep_listen=LOCAL_ANY_PORT)
    with running_sidecar(settings, mixed_snapshot()) as running:
        address = running.sidecar.ofrep_address
        assert address is not None
        yield address.host, address.port, running


def test_over_http_with_keep_alive(served: tuple[str, int, Any]) -> None:
    host, port, _ = served
    connection = http.client.HTTPConnection(host, port, timeout=5)
    for name, value in (("enabled", True), ("limit", 10), ("greeting", "hello")):
        connection.request("POST", f"/ofrep/v1/evaluate/flags/{name}", b'{"context": {}}')
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type") == "application/json"
        assert json.loads(response.read())["value"] == value
    connection.request("POST", "/ofrep/v1/evaluate/flags", b"")
    response = connection.getresponse()
    tag = response.getheader("ETag") or ""
    response.read()
    connection.request("POST", "/ofrep/v1/evaluate/flags", b"", {"If-None-Match": tag})
    response = connection.getresponse()
    assert (response.status, response.read()) == (304, b"")
    connection.close()


def test_a_swap_changes_the_bulk_etag(served: tuple[str, int, Any]) -> None:
    host, port, running = served
    connection = http.client.HTTPConnection(host, port, timeout=5)
    connection.request("POST", "/ofrep/v1/evaluate/flags", b'{"context": {"targetingKey": "u"}}')
    response = connection.getresponse()
    tag = response.getheader("ETag") or ""
    response.read()
    running.store.swap(mixed_snapshot(version=5, banner="new"))
    connection.request(
        "POST",
        "/ofrep/v1/evaluate/flags",
        b'{"context": {"targetingKey": "u"}}',
        {"If-None-Match": tag},
    )
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("ETag") != tag
    assert json.loads(response.read())["metadata"] == {"version": 5}
    connection.close()


def test_chunked_bodies_are_read_and_malformed_ones_refused(served: tuple[str, int, Any]) -> None:
    host, port, _ = served
    body = b'{"context": {"user": {"plan": "pro"}}}'
    connection = http.client.HTTPConnection(host, port, timeout=5)
    connection.request("POST", "/ofrep/v1/evaluate/flags/greeting", iter([body[:10], body[10:]]))
    response = connection.getresponse()
    assert (response.status, json.loads(response.read())["value"]) == (200, "hey")
    connection.close()
    with socket.create_connection((host, port), timeout=5) as raw:
        raw.sendall(
            b"POST /ofrep/v1/evaluate/flags/enabled HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\nzz\r\n"
        )
        assert raw.recv(100).startswith(b"HTTP/1.1 400 ")
