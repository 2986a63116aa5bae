"""Split's Python SDK (splitio-client) against a real `fader serve` through the Split SDK API:
the SDK, synced from the sidecar, answers every lookup exactly as the sidecar's own
GetTreatments does; a pushed snapshot reaches it within one polling interval, a deleted flag
disappears; the impressions and events it posts reach the collector once each, tagged with
the SDK, and show in /metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from fader.pb.fader.v1 import evaluation_pb2 as pb
from fader.pb.fader.v1 import evaluation_pb2_grpc as pb_grpc
from splitio import get_factory
from splitio.client.key import Key

from tests.integration.split_sdk_world import (
    SEED,
    World,
    active_flags,
    attribute_values,
    document,
    jsonl,
    lookups,
    world,
    write,
)
from tests.integration.test_telemetry_faults import metric
from tests.waiting import wait_for

KEYS = 2_000
REFRESH = 1  # seconds: the SDK's featuresRefreshRate and segmentsRefreshRate in this test
SDK = "python-10.7.0"


@pytest.fixture(scope="module")
def sidecar() -> Iterator[World]:
    with world() as running:
        yield running


def factory(split_port: int, **config: Any) -> Any:
    base = f"http://127.0.0.1:{split_port}/api"
    settings = {
        "streamingEnabled": False,
        "IPAddressesEnabled": False,
        "featuresRefreshRate": REFRESH,
        "segmentsRefreshRate": REFRESH,
        **config,
    }
    made = get_factory(
        "fader-sdk-key",
        config=settings,
        sdk_api_base_url=base,
        events_api_base_url=base,
        auth_api_base_url=base,
        telemetry_api_base_url=base,
    )
    made.block_until_ready(30)
    return made


@pytest.fixture(autouse=True)
def _quiet_sdk() -> Iterator[None]:
    sdk_logger = logging.getLogger("splitio")
    level = sdk_logger.level
    sdk_logger.setLevel(logging.CRITICAL)  # per-call warnings cost time, and say nothing here
    yield
    sdk_logger.setLevel(level)


def test_the_sdk_answers_every_lookup_as_the_sidecar(sidecar: World) -> None:
    doc = document(1, "v1", doomed=True)
    flags = active_flags(doc)
    found = lookups(doc, KEYS, SEED)
    made = factory(sidecar.split_port, impressionsMode="NONE")
    client = made.client()
    mismatches = []
    try:
        with grpc.insecure_channel(sidecar.serve.wait_listening()["grpc"]) as channel:
            stub = pb_grpc.EvaluationServiceStub(channel)
            for lookup in found:
                key = Key(lookup.key, lookup.bucketing_key) if lookup.bucketing_key else lookup.key
                sdk = client.get_treatments_with_config(key, flags, dict(lookup.attributes))
                request = pb.GetTreatmentsRequest(
                    key=lookup.key,
                    flags=flags,
                    bucketing_key=lookup.bucketing_key or "",
                    attributes=attribute_values(lookup.attributes),
                )
                answers = stub.GetTreatments(request, timeout=10).evaluations
                for answer in answers:
                    ours = (answer.treatment, answer.config if answer.HasField("config") else None)
                    theirs = sdk[answer.flag]
                    if ours != theirs:
                        mismatches.append((answer.flag, lookup, ours, theirs))
    finally:
        made.destroy()
    total = len(found) * len(flags)
    assert not mismatches, f"{len(mismatches)} of {total} differ (seed {SEED}): {mismatches[:5]}"
    assert total >= KEYS * 20


def test_a_push_reaches_the_sdk_within_one_polling_interval(sidecar: World) -> None:
    serve = sidecar.serve
    made = factory(sidecar.split_port, impressionsMode="NONE")
    client = made.client()
    try:
        assert client.get_treatment("k", "pushed") == "v1"
        assert client.get_treatment("k", "doomed") == "alive"
        before = metric(serve, "fader_snapshot_version")
        write(sidecar.snapshot, document(2, "v2", doomed=False))
        wait_for(lambda: metric(serve, "fader_snapshot_version") > before, 10, "the sidecar")
        applied = time.monotonic()
        wait_for(lambda: client.get_treatment("k", "pushed") == "v2", 10, "the SDK to sync")
        lag = time.monotonic() - applied
        assert client.get_treatment("k", "doomed") == "control"  # archived: gone from the SDK
        # one polling interval, plus the change log's step and the HTTP round trips
        assert lag < REFRESH + 1.0, f"{lag:.2f} s after the sidecar applied it"
    finally:
        made.destroy()


def test_impressions_and_events_reach_the_collector_once_tagged_with_the_sdk(
    sidecar: World,
) -> None:
    serve, outputs = sidecar.serve, sidecar.outputs
    made = factory(
        sidecar.split_port, impressionsMode="DEBUG", impressionsRefreshRate=1, eventsPushRate=1
    )
    client = made.client()
    n_keys = 150
    try:
        for index in range(n_keys):
            assert client.get_treatment(f"imp-{index}", "pushed") in ("v1", "v2")
            assert client.get_treatment(f"imp-{index}", "no-such-flag") == "control"
            assert client.track(f"imp-{index}", "user", "checkout", index, {"n": index})
    finally:
        made.destroy()  # flushes what is queued

    def stored(path: Path | None) -> list[dict[str, Any]]:
        return [r for r in jsonl(path) if r.get("source") == SDK]

    wait_for(lambda: len(stored(outputs.impressions)) >= n_keys, 20, "impressions")
    wait_for(lambda: len(stored(outputs.events)) >= n_keys, 20, "events")
    time.sleep(0.5)  # anything sent twice would arrive by now
    impressions = stored(outputs.impressions)
    events = stored(outputs.events)
    assert sorted(i["key"] for i in impressions) == sorted(f"imp-{i}" for i in range(n_keys))
    assert {i["flag"] for i in impressions} == {"pushed"}  # none for an unknown flag
    assert sorted(e["value"] for e in events) == [float(i) for i in range(n_keys)]
    assert all(e["properties"] == {"n": int(e["value"])} for e in events)
    assert sidecar.collector.stored["duplicates"] == 0
    assert metric(serve, "fader_split_api_records_total", kind="impressions", sdk=SDK) == n_keys
    assert metric(serve, "fader_split_api_records_total", kind="events", sdk=SDK) == n_keys
    assert metric(serve, "fader_telemetry_sent_total", kind="events") >= n_keys
