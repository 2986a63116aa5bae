"""Nothing an SDK (or anything else) sends to the Split SDK API crashes the sidecar: random
methods, paths, queries, headers and bodies (JSON of the right shape with wrong values,
JSON of any shape, raw bytes, bad gzip) get an answer from a fixed set of statuses, never a
500, and the API and the sidecar keep serving afterwards."""

from __future__ import annotations

import gzip
import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fader.snapshot.loader import load_bytes
from hypothesis import given
from hypothesis import strategies as st

from tests.fader.rules.builders import flag, snapshot_doc
from tests.fuzz.fuzzing import fuzz_settings
from tests.integration.harness import (
    LOCAL_ANY_PORT,
    RunningSidecar,
    http_get,
    loopback_settings,
    running_sidecar,
)

EXAMPLES = 400
ALLOWED = {200, 400, 401, 404, 405, 411, 413, 429, 501, 503}
ROUTES = (
    "splitChanges", "segmentChanges/s", "memberships/u", "mySegments/u", "auth", "v2/auth",
    "testImpressions/bulk", "testImpressions/count", "events/bulk", "keys/ss", "keys/cs",
    "v1/keys/ss", "v1/metrics/usage", "events/beacon", "testImpressions/beacon", "",
)  # fmt: skip
FIELDS = (
    "f", "i", "k", "t", "m", "c", "r", "b", "pt", "pf", "rc", "keys", "ks", "fs", "key",
    "trafficTypeName", "eventTypeId", "value", "timestamp", "properties", "entries",
)  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.sampled_from(["", "on", "u", "f", "x" * 300]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5), inner, max_size=5),
    ),
    max_leaves=30,
)
bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    json_values.map(lambda v: gzip.compress(json.dumps(v).encode())),
)
queries = st.lists(
    st.tuples(
        st.sampled_from(["s", "since", "rbSince", "sets", "till", "x"]),
        st.one_of(st.sampled_from(["-1", "1.3", "1.1", "a,b", "", "99999999999999999999"]),
                  st.text(alphabet="abc,-19.%", max_size=8)),
    ),
    max_size=3,
)  # fmt: skip


@pytest.fixture(scope="module")
def sidecar() -> Iterator[RunningSidecar]:
    doc = snapshot_doc(flag("f"), version=2, segments={"s": ["u"]})
    snap = load_bytes(json.dumps(doc).encode(), "json", "fuzz")
    with running_sidecar(loopback_settings(split_api_listen=LOCAL_ANY_PORT), snap) as running:
        yield running


def send(
    sidecar: RunningSidecar, method: str, path: str, body: bytes, headers: dict[str, str]
) -> int:
    address = sidecar.sidecar.split_api_address
    assert address is not None
    connection = http.client.HTTPConnection(address.host, address.port, timeout=10)
    try:
        connection.request(method, path, body=body if method == "POST" else None, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@fuzz_settings(EXAMPLES)
@given(
    method=st.sampled_from(["GET", "POST", "POST", "PUT"]),
    prefix=st.sampled_from(["/api/", "/", "/api/v1/", "//api//"]),
    route=st.sampled_from(ROUTES) | st.text(alphabet="ab/%.", max_size=12),
    query=queries,
    body=bodies,
    gzipped=st.booleans(),
    extra=st.dictionaries(
        st.sampled_from(["SplitSDKVersion", "SplitSDKImpressionsMode", "Accept-Encoding"]),
        st.text(alphabet="abcgzip-.0123456789 ", max_size=12),
        max_size=3,
    ),
)
def test_every_request_gets_a_deliberate_answer(
    sidecar: RunningSidecar,
    method: str,
    prefix: str,
    route: str,
    query: list[tuple[str, str]],
    body: bytes,
    gzipped: bool,
    extra: dict[str, Any],
) -> None:
    path = prefix + route + ("?" + "&".join(f"{k}={v}" for k, v in query) if query else "")
    headers = {**extra, **({"Content-Encoding": "gzip"} if gzipped else {})}
    status = send(sidecar, method, path, body, headers)
    assert status in ALLOWED, (method, path, body[:80], status)


def test_still_serving_after_the_fuzz(sidecar: RunningSidecar) -> None:
    """Runs after the fuzz above, on the same sidecar (module fixture, file order)."""
    assert send(sidecar, "GET", "/api/splitChanges?s=1.3&since=-1", b"", {}) == 200
    assert http_get(f"{sidecar.mgmt_url}/healthz")[0] == 200
    metrics = http_get(f"{sidecar.mgmt_url}/metrics")[1]
    assert 'fader_split_api_requests_total{code="500"' not in metrics
