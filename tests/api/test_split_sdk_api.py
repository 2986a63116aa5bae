"""The Split SDK API over real HTTP on an in-process sidecar: routes with and without /api,
gzip, the SDK-key check, and bad bodies (400 with a message, counted in /metrics)."""

from __future__ import annotations

import gzip
import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fader.snapshot.loader import load_bytes

from tests.fader.rules.builders import flag, snapshot_doc
from tests.integration.harness import (
    LOCAL_ANY_PORT,
    RunningSidecar,
    http_get,
    loopback_settings,
    running_sidecar,
    short_tmp,
)
from tests.waiting import wait_for

KEY = "sdk-key-1"


@pytest.fixture(scope="module")
def sidecar() -> Iterator[RunningSidecar]:
    doc = snapshot_doc(*(flag(f"f{i}") for i in range(40)), version=3, segments={"s": ["u"]})
    snap = load_bytes(json.dumps(doc).encode(), "json", "test")
    with short_tmp() as tmp:
        keys = Path(tmp) / "keys"
        keys.write_text(f"{KEY}\n")
        settings = loopback_settings(split_api_listen=LOCAL_ANY_PORT, split_api_key_file=keys)
        with running_sidecar(settings, snap) as running:
            changes = running.sidecar._split_api
            assert changes is not None and changes.changes.wait_for(3, 5)
            yield running


def request(
    sidecar: RunningSidecar,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    address = sidecar.sidecar.split_api_address
    assert address is not None
    connection = http.client.HTTPConnection(address.host, address.port, timeout=10)
    try:
        sent = {"Authorization": f"Bearer {KEY}", **(headers or {})}
        connection.request(method, path, body=body, headers=sent)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def refused(sidecar: RunningSidecar, route: str, reason: str) -> float:
    text = http_get(f"{sidecar.mgmt_url}/metrics")[1]
    wanted = f'fader_split_api_refused_total{{reason="{reason}",route="{route}"}} '
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(wanted))


@pytest.mark.parametrize("path", ["/api/splitChanges?s=1.3&since=-1", "/splitChanges?since=-1"])
def test_with_and_without_the_api_prefix_gzipped_when_asked(
    sidecar: RunningSidecar, path: str
) -> None:
    status, headers, body = request(sidecar, "GET", path, headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    answer: dict[str, Any] = json.loads(gzip.decompress(body))
    flags = answer["ff"]["d"] if "ff" in answer else answer["splits"]
    assert len(flags) == 40


def test_auth_says_push_is_off_on_every_spelling(sidecar: RunningSidecar) -> None:
    for path in ("/api/auth", "/api/v2/auth", "/auth", "/v2/auth"):
        status, _, body = request(sidecar, "GET", path)
        assert (status, json.loads(body)) == (200, {"pushEnabled": False, "token": ""})


def test_an_unknown_sdk_key_is_refused(sidecar: RunningSidecar) -> None:
    status, _, body = request(
        sidecar, "GET", "/api/splitChanges", headers={"Authorization": "Bearer nope"}
    )
    assert status == 401 and b"SDK key" in body
    beacon = json.dumps({"entries": [], "token": "nope", "sdk": "javascript-1"}).encode()
    assert request(sidecar, "POST", "/api/events/beacon", beacon)[0] == 401


def test_a_malformed_bulk_is_refused_with_a_message_and_counted(sidecar: RunningSidecar) -> None:
    before = refused(sidecar, "testImpressions/bulk", "malformed_body")
    lone_surrogate = b'[{"f": "x", "i": [{"k": "a\\ud800", "t": "on", "m": 1}]}]'
    for body in (b"{not json", b'{"f": "x"}', b'[{"f": "x", "i": 3}]', b"[1]", lone_surrogate):
        status, _, answer = request(sidecar, "POST", "/api/testImpressions/bulk", body)
        assert status == 400, body
        assert json.loads(answer)["error"]
    assert "lone UTF-16 surrogate" in json.loads(answer)["error"]
    wait_for(lambda: refused(sidecar, "testImpressions/bulk", "malformed_body") == before + 5)


def test_bad_records_are_skipped_and_counted_the_rest_kept(sidecar: RunningSidecar) -> None:
    body = json.dumps(
        [
            {"f": "f1", "i": [{"k": "u", "t": "on", "m": 1_700_000_000_000}]},
            {"f": "f1", "i": [{"k": "", "t": "on", "m": 1_700_000_000_000}]},  # empty key
            {"f": "f1", "i": [{"k": "u", "t": "on", "m": "yesterday"}]},
        ]
    ).encode()
    status, _, answer = request(sidecar, "POST", "/api/testImpressions/bulk", body)
    decoded = json.loads(answer)
    assert status == 200 and (decoded["accepted"], decoded["skipped"]) == (1, 2)
    assert any("$[1].i[0].k" in reason for reason in decoded["reasons"])
    assert refused(sidecar, "testImpressions/bulk", "invalid_record") >= 2


def test_events_are_checked_as_track_checks_them(sidecar: RunningSidecar) -> None:
    good = {"key": "u", "trafficTypeName": "user", "eventTypeId": "buy", "timestamp": 1}
    bad = {**good, "eventTypeId": "no spaces allowed"}
    body = json.dumps([good, bad, {**good, "value": "ten"}]).encode()
    status, _, answer = request(sidecar, "POST", "/api/events/bulk", body)
    assert status == 200 and json.loads(answer)["skipped"] == 2


def test_unknown_routes_oversized_bodies_and_runtime_telemetry(sidecar: RunningSidecar) -> None:
    assert request(sidecar, "GET", "/api/nothing/here")[0] == 404
    assert request(sidecar, "POST", "/api/nothing", b"{}")[0] == 404
    assert request(sidecar, "POST", "/api/v1/metrics/usage", b'{"any": 1}')[0] == 200
    too_big = {"Content-Length": str(64 * 1024 * 1024)}
    assert request(sidecar, "POST", "/api/events/bulk", b"", headers=too_big)[0] == 413
    assert request(sidecar, "GET", "/api/splitChanges?s=9.9")[0] == 400
    assert request(sidecar, "GET", "/api/splitChanges?since=soon")[0] == 400
    assert request(sidecar, "GET", "/api/splitChanges?sets=Bad-Name")[0] == 400


def test_segments_and_memberships(sidecar: RunningSidecar) -> None:
    status, _, body = request(sidecar, "GET", "/api/segmentChanges/s?since=-1")
    assert status == 200 and json.loads(body)["added"] == ["u"]
    status, _, body = request(sidecar, "GET", "/api/memberships/u")
    assert status == 200 and json.loads(body)["ms"]["k"] == [{"n": "s"}]
    status, _, body = request(sidecar, "GET", "/api/mySegments/u")
    assert json.loads(body) == {"mySegments": [{"id": "s", "name": "s"}]}
