"""Isolation on a real `fader serve`: a consumer that is slow or stuck never costs another
client a lookup. Lookups are made with the clients' deadline (100 ms) while snapshots are
pushed; a lookup past the deadline is one a client answers "control".

Before the fix, every WatchChanges stream diffed each new snapshot against the one it had
reported, on the event loop, at every swap (~7 ms for 2,000 flags): with 300 streams that
were never read, 51 % of lookups missed their deadline during pushes.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from fader.pb.fader.v1 import telemetry_pb2, telemetry_pb2_grpc

from tests.integration.churn import (
    FLAGD_EVENTS,
    WATCH_CHANGES,
    LookupLoad,
    Lookups,
    Pushable,
    big_snapshot,
    metric,
    pushable_sidecar,
    slow_disk,
    unread_fastlane,
    unread_watch_streams,
)
from tests.integration.harness import http_get, short_tmp

FLAGS = 1000
SWAPS = 8
STREAMS = 200


@pytest.fixture
def tmp() -> Iterator[Path]:
    with short_tmp() as path:
        yield path


def _lookups_during_swaps(sidecar: Pushable, documents: dict[int, bytes], first: int) -> Lookups:
    with LookupLoad(sidecar.grpc_target, "flag-1") as load:
        for version in range(first, first + SWAPS):
            sidecar.pusher.push(version, documents[version])
    return load.result


def _tolerated(baseline: Lookups) -> int:
    """Lookups past the deadline allowed beyond the baseline's: the noise of a shared
    2-core machine, far below what one stuck consumer used to cost."""
    return baseline.control + max(3, baseline.count // 50)


@pytest.mark.parametrize("method", [WATCH_CHANGES, FLAGD_EVENTS], ids=["WatchChanges", "flagd"])
def test_unread_watch_streams_cost_no_lookup(tmp: Path, method: str) -> None:
    documents = {version: big_snapshot(version, FLAGS) for version in range(1, 2 * SWAPS + 2)}
    with pushable_sidecar(tmp) as sidecar:
        sidecar.pusher.push(1, documents[1])
        alone = _lookups_during_swaps(sidecar, documents, 2)
        with unread_watch_streams(sidecar.grpc_target, STREAMS, method):
            watched = _lookups_during_swaps(sidecar, documents, 2 + SWAPS)
    print(
        f"\n[isolation] {SWAPS} swaps of {FLAGS} flags; no stream: {alone.summary()}"
        f"\n[isolation] {STREAMS} unread {method} streams: {watched.summary()}"
    )
    assert watched.count > 0 and alone.count > 0
    assert watched.control <= _tolerated(alone), (alone.summary(), watched.summary())


class StallingCollector(telemetry_pb2_grpc.TelemetryServiceServicer):
    """Takes uploads until `stall` is set; then holds every upload until `release`."""

    def __init__(self) -> None:
        self.stall, self.release = threading.Event(), threading.Event()
        self.impressions = 0

    def Upload(
        self, request: telemetry_pb2.UploadRequest, context: grpc.ServicerContext
    ) -> telemetry_pb2.UploadResponse:
        if self.stall.is_set():
            self.release.wait(60)
        self.impressions += len(request.impressions)
        return telemetry_pb2.UploadResponse()


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace simulates the slow disk")
def test_stuck_consumers_cost_no_lookup(tmp: Path) -> None:
    """Every kind of stuck consumer at once, against the same sidecar before they were: watch
    streams never read, fast-lane clients that pipeline and never read, a collector that
    holds every upload (telemetry spools), and a disk whose fsync takes 200 ms (the spool and
    the last-known-good cache write to it)."""
    collector = StallingCollector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    telemetry_pb2_grpc.add_TelemetryServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    fastlane_path = tmp / "fl.sock"
    extra = [
        "--collector", f"127.0.0.1:{port}", "--impressions-mode", "debug",
        "--telemetry-flush-interval", "0.2", "--telemetry-batch-bytes", "16384",
        "--telemetry-memory-bytes", "65536",
        "--spool-dir", str(tmp / "spool"), "--cache-dir", str(tmp / "cache"),
        "--fastlane-uds", str(fastlane_path),
    ]  # fmt: skip
    documents = {version: big_snapshot(version, FLAGS) for version in range(1, 2 * SWAPS + 2)}
    try:
        with pushable_sidecar(tmp, *extra, prefix=slow_disk(0.2)) as sidecar:
            sidecar.pusher.push(1, documents[1])
            alone = _lookups_during_swaps(sidecar, documents, 2)
            collector.stall.set()
            with (
                unread_watch_streams(sidecar.grpc_target, STREAMS // 2),
                unread_fastlane(fastlane_path, connections=20, requests=2000),
            ):
                time.sleep(2.0)  # the lookups they sent are answered (load, not a stall)
                stuck = _lookups_during_swaps(sidecar, documents, 2 + SWAPS)
                spooled = metric(
                    http_get(sidecar.mgmt + "/metrics")[1], "fader_telemetry_spool_batches"
                )
    finally:
        collector.release.set()
        server.stop(0)
    print(
        f"\n[isolation] {SWAPS} swaps of {FLAGS} flags, fsync +200 ms; nothing stuck: "
        f"{alone.summary()}\n[isolation] {STREAMS // 2} unread watch streams, 20 fast-lane "
        f"clients not reading, uploads held ({spooled:.0f} batches spooled): {stuck.summary()}"
    )
    assert spooled > 0  # the stalled collector did make the sidecar spool to the slow disk
    assert stuck.control <= _tolerated(alone), (alone.summary(), stuck.summary())
