"""No loss by poison, on a real `fader serve`: a key that is not valid Unicode (a lone
surrogate, which JSON's `\\udc80` escape gives and which neither protobuf nor msgpack can
encode) sent through OFREP among other users' lookups.

Before the door check, the lookup was answered and its impression poisoned the upload: the
whole batch around it was dropped (up to --telemetry-batch-records impressions of other
users) until the pipeline learned to set the one record aside. Now OFREP refuses the body
(400, saying why) and nothing is recorded or lost. The pipeline's net for whatever still
passes a door is tested on its own (tests/telemetry/test_pipeline.py,
test_one_unencodable_record_is_set_aside_alone).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.fader.rules.builders import flag, snapshot_doc
from tests.integration.harness import http_get, serve_process, short_tmp
from tests.integration.test_telemetry_faults import Scripted, lookups, metric, scripted_collector
from tests.waiting import wait_for

GOOD = 150


@pytest.fixture
def tmp() -> Iterator[Path]:
    with short_tmp() as path:
        yield path


def _ofrep(address: str, raw_key: str) -> int:
    """One OFREP evaluation of flag "f" for a targeting key written raw into the JSON."""
    body = ('{"context": {"targetingKey": "' + raw_key + '"}}').encode()
    request = urllib.request.Request(
        f"http://{address}/ofrep/v1/evaluate/flags/f", body, method="POST"
    )
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as refused:
        return int(refused.code)


def test_a_key_that_is_not_text_is_refused_at_the_door_and_nothing_is_lost(tmp: Path) -> None:
    collector = Scripted(grpc.StatusCode.UNAVAILABLE, failures=0)
    server, port = scripted_collector(collector)
    snapshot = tmp / "snap.json"
    snapshot.write_text(json.dumps(snapshot_doc(flag("f"), version=1)))
    args = [
        "--snapshot", str(snapshot), "--collector", f"127.0.0.1:{port}",
        "--grpc-listen", "127.0.0.1:0", "--mgmt-listen", "127.0.0.1:0",
        "--ofrep-listen", "127.0.0.1:0", "--spool-dir", str(tmp / "spool"),
        "--impressions-mode", "debug", "--telemetry-flush-interval", "0.3",
        "--telemetry-batch-records", "100",
    ]  # fmt: skip
    keys = [f"user-{i}" for i in range(GOOD)]
    try:
        with serve_process(args, tmp) as sc:
            mgmt = "http://" + sc.wait_listening()["mgmt"]
            ofrep = json.loads(http_get(mgmt + "/status")[1])["listeners"]["ofrep"]
            lookups(sc, keys[: GOOD // 2])
            assert _ofrep(ofrep, "\\udc80") == 400  # refused, saying why (tests/api/test_ofrep)
            assert _ofrep(ofrep, "\\u00e9t\\u00e9") == 200  # a non-ASCII key is text
            lookups(sc, keys[GOOD // 2 :])
            wait_for(lambda: len(collector.keys) >= GOOD + 1, timeout=30, what="every key")
            lost = metric(sc, "fader_telemetry_dropped_total")
    finally:
        server.stop(0)
    print(f"\n[no loss by poison] {len(set(collector.keys))} keys arrived, {lost:.0f} lost")
    assert sorted(collector.keys) == sorted([*keys, "\u00e9t\u00e9"])
    assert lost == 0
    collector.arrivals.assert_each_batch_once()
