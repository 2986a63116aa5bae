"""No loss by poison, on a real `fader serve`: a record that cannot be sent is set aside alone
and counted; every other record arrives.

The poison: a key that is not valid Unicode (a lone surrogate, which JSON's `\\udc80` escape
gives and which neither protobuf nor msgpack can encode) through OFREP, among lookups of
other users. Before the fix the whole batch around it was dropped as `unencodable` at upload
(or `spool_error` when spooled): up to --telemetry-batch-records impressions of other users.
Door checks refuse what they can (timestamps: tests/core/test_events.py); this is the net
for what passes them.
"""

from __future__ import annotations

import json
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
    with urllib.request.urlopen(request, timeout=5) as response:
        return int(response.status)


@pytest.mark.parametrize("spooled", [False, True], ids=["uploaded", "spooled first"])
def test_one_unencodable_record_is_set_aside_alone(tmp: Path, spooled: bool) -> None:
    """Uploaded at once, or spooled first (the collector is down when the poison comes: the
    spool cannot encode it either) and replayed once the collector is back."""
    collector = Scripted(grpc.StatusCode.UNAVAILABLE, failures=None if spooled else 0)
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
            if spooled:
                up = "fader_telemetry_upstream_up"
                wait_for(lambda: metric(sc, up) == 0, timeout=10, what="the collector down")
            assert _ofrep(ofrep, "\\udc80") == 200  # answered: the lookup itself is fine
            lookups(sc, keys[GOOD // 2 :])
            if spooled:
                wait_for(lambda: metric(sc, "fader_telemetry_spool_batches") >= 2, what="spooled")
                collector.failures = 0  # back: every upload from now on is taken
            wait_for(lambda: len(collector.keys) >= GOOD, timeout=30, what="every good key")
            wait_for(
                lambda: metric(sc, "fader_telemetry_dropped_total") > 0,
                timeout=10,
                what="the poison counted",
            )
            lost = metric(sc, "fader_telemetry_dropped_total")
            set_aside = metric(sc, "fader_telemetry_dropped_total", reason="unencodable")
    finally:
        server.stop(0)
    print(
        f"\n[no loss by poison] {GOOD} good impressions and 1 unencodable one "
        f"({'spooled' if spooled else 'uploaded'}): {len(set(collector.keys))} good arrived, "
        f"{lost:.0f} record(s) lost, {set_aside:.0f} set aside as unencodable"
    )
    assert sorted(collector.keys) == sorted(keys)
    assert lost == 1 and set_aside == 1
    collector.arrivals.assert_each_batch_once()
