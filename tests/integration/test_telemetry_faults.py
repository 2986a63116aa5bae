"""Impressions through faults, from real `fader serve` processes: collector down across a
sidecar restart, transient errors, permanent refusal, a full spool, and the control plane as
the collector.

The collector is a real `fader controlplane` process where the test needs only one that is
up or down. Transient errors and permanent refusals need a collector whose answers are
scripted: those two tests run `Scripted`, a gRPC collector in the test process, against the
real sidecar process. Every collector counts duplicates apart from what it stores (the
control plane's /status, tests/telemetry/arrivals.py for `Scripted`), and no test that forces
no retry may see a batch arrive twice.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator
from concurrent import futures
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import grpc
import pytest
from fader.pb.fader.v1 import evaluation_pb2 as pb
from fader.pb.fader.v1 import evaluation_pb2_grpc as pb_grpc
from fader.pb.fader.v1 import telemetry_pb2, telemetry_pb2_grpc

from tests.fader.rules.builders import flag, snapshot_doc
from tests.integration.harness import ServeProcess, free_port, http_get, serve_process, short_tmp
from tests.telemetry.arrivals import Arrivals
from tests.waiting import wait_for

FAST = ["--telemetry-flush-interval", "0.2", "--telemetry-batch-records", "50"]


@pytest.fixture
def tmp() -> Iterator[Path]:
    with short_tmp() as path:
        yield path


def snapshot(tmp: Path) -> Path:
    path = tmp / "snap.json"
    path.write_text(json.dumps(snapshot_doc(flag("f"), flag("g"), version=4)))
    return path


def sidecar(
    tmp: Path, collector: int, *extra: str, name: str = "sc.log"
) -> AbstractContextManager[ServeProcess]:
    args = [
        "--snapshot", str(snapshot(tmp)),
        "--grpc-listen", "127.0.0.1:0",
        "--mgmt-listen", "127.0.0.1:0",
        "--collector", f"127.0.0.1:{collector}",
        "--sidecar-id", "pod-a",
        *FAST,
        *extra,
    ]  # fmt: skip
    return serve_process(args, tmp, log_name=name)


def lookups(serve: ServeProcess, keys: list[str]) -> None:
    """Half the keys one GetTreatment each, the rest in one EvaluateBatch."""
    target = serve.wait_listening()["grpc"]
    half = len(keys) // 2
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.EvaluationServiceStub(channel)
        for key in keys[:half]:
            stub.GetTreatment(pb.GetTreatmentRequest(key=key, flag="f"), timeout=5)
        items = [pb.BatchItem(key=key, flag="f") for key in keys[half:]]
        stub.EvaluateBatch(pb.EvaluateBatchRequest(items=items), timeout=5)


def metric(serve: ServeProcess, name: str, **labels: str) -> float:
    text = http_get(f"http://{serve.wait_listening()['mgmt']}/metrics")[1]
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"{name}(?:\{{(.*)\}})? (\S+)$", line)
        if not match:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


def jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def stored_keys(path: Path) -> list[str]:
    return [line["key"] for line in jsonl(path)]


def collector_status(http_port: int) -> dict[str, Any]:
    """The control plane's collector counters: batches stored, duplicates received, records."""
    status = json.loads(http_get(f"http://127.0.0.1:{http_port}/status")[1])
    return dict(status["collector"])


def test_collector_down_sigterm_restart_delivers_exactly_n(tmp: Path) -> None:
    """The real control plane as collector: down while the first sidecar runs (it spools
    and stops), up for the second, which replays. No upload reached a collector before, so
    none may arrive twice: the control plane counts zero duplicates."""
    n, port, spool, http_port = 300, free_port(), tmp / "spool", free_port()
    keys = [f"user-{i}" for i in range(n)]
    with sidecar(tmp, port, "--impressions-mode", "debug", "--spool-dir", str(spool)) as first:
        lookups(first, keys)
        wait_for(lambda: metric(first, "fader_telemetry_upstream_up") == 0, what="upload fails")
        first.signal(signal.SIGTERM)
        assert first.wait(30) == 0, first.log
    assert "telemetry: closed with" in first.log
    assert list(spool.glob("*.batch")), "nothing was spooled"

    out = tmp / "impressions.jsonl"
    cp_args = [
        "--listen", f"127.0.0.1:{port}",
        "--forward", str(snapshot(tmp)),
        "--http-listen", f"127.0.0.1:{http_port}",
        "--impressions-out", str(out),
    ]  # fmt: skip
    with (
        serve_process(cp_args, tmp, command="controlplane", log_name="cp.log"),
        sidecar(
            tmp, port, "--impressions-mode", "debug", "--spool-dir", str(spool), name="2.log"
        ) as second,
    ):
        wait_for(lambda: len(stored_keys(out)) >= n, timeout=30, what="replay")
        wait_for(lambda: not list(spool.glob("*.batch")), what="spool emptied")
        wait_for(
            lambda: metric(second, "fader_telemetry_replayed_total", kind="impressions") == n,
            what="replayed counted",
        )
        second.signal(signal.SIGTERM)
        assert second.wait(30) == 0
        received = collector_status(http_port)
    stored = stored_keys(out)
    assert sorted(stored) == sorted(keys)  # exactly N stored, none twice
    assert received["duplicates"] == 0, received  # and none sent twice
    assert received["batches"] == len({line["batch_id"] for line in jsonl(out)}), received
    first_line = json.loads(out.read_text().splitlines()[0])
    assert {k: first_line[k] for k in ("flag", "treatment", "label", "change_number")} == {
        "flag": "f",
        "treatment": "on",
        "label": "rule",
        "change_number": 7,
    }
    assert first_line["bucketing_key"] is None and first_line["time"] > 0


class Scripted(telemetry_pb2_grpc.TelemetryServiceServicer):
    """A collector in the test process that fails the first `failures` uploads with `code`
    (all when None); it stores a batch id once and counts every arrival."""

    def __init__(self, code: grpc.StatusCode, failures: int | None) -> None:
        self.code, self.failures = code, failures
        self.arrivals = Arrivals()
        self.keys: list[str] = []

    def Upload(
        self, request: telemetry_pb2.UploadRequest, context: grpc.ServicerContext
    ) -> telemetry_pb2.UploadResponse:
        self.arrivals.arrive(request.batch_id)
        if self.failures is None or len(self.arrivals.ids) <= self.failures:
            self.arrivals.fail()
            context.abort(self.code, "scripted failure")
        if not self.arrivals.store(request.batch_id):
            return telemetry_pb2.UploadResponse(duplicate=True)
        self.keys += [i.key for i in request.impressions]
        return telemetry_pb2.UploadResponse()


def scripted_collector(servicer: Scripted) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    telemetry_pb2_grpc.add_TelemetryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def test_transient_errors_then_recovery(tmp: Path) -> None:
    """A real sidecar process against the in-process `Scripted` collector, which answers the
    first three uploads UNAVAILABLE: everything arrives once, and only the three failed
    uploads were sent again."""
    collector = Scripted(grpc.StatusCode.UNAVAILABLE, failures=3)
    server, port = scripted_collector(collector)
    keys = [f"user-{i}" for i in range(120)]
    try:
        with sidecar(tmp, port, "--impressions-mode", "debug", "--spool-dir", str(tmp / "s")) as sc:
            lookups(sc, keys)
            wait_for(lambda: len(collector.keys) == 120, timeout=30, what="delivery")
            assert sorted(collector.keys) == sorted(keys)
            assert metric(sc, "fader_telemetry_upload_duration_seconds_count", outcome="retry") == 3
            assert metric(sc, "fader_telemetry_dropped_total") == 0
            collector.arrivals.assert_each_batch_once()
            assert collector.arrivals.failed == 3
    finally:
        server.stop(0)


def test_permanent_refusal_is_dropped_and_counted(tmp: Path) -> None:
    """A real sidecar process against the in-process `Scripted` collector, which refuses
    every upload for good: each batch is dropped and counted, and none is sent again."""
    collector = Scripted(grpc.StatusCode.INVALID_ARGUMENT, failures=None)
    server, port = scripted_collector(collector)
    try:
        with sidecar(tmp, port, "--impressions-mode", "debug") as sc:
            lookups(sc, [f"user-{i}" for i in range(80)])
            reason = "refused_invalid_argument"
            wait_for(
                lambda: metric(sc, "fader_telemetry_dropped_total", reason=reason) == 80,
                what="drops counted",
            )
            assert "dropped batch" in sc.log and "refused_invalid_argument" in sc.log
            assert http_get(f"http://{sc.wait_listening()['mgmt']}/healthz")[0] == 200
            ids = collector.arrivals.ids
            assert ids and len(set(ids)) == len(ids), ids  # a refused batch is not resent
            assert collector.arrivals.stored == []
    finally:
        server.stop(0)


def accounted(serve: ServeProcess) -> dict[str, float]:
    """Where the sidecar's impressions went: queued, then sent, spooled or dropped."""
    names = ("queued", "sent", "spooled", "dropped")
    return {n: metric(serve, f"fader_telemetry_{n}_total", kind="impressions") for n in names}


def test_spool_limit_drops_are_counted_and_the_sidecar_stays_healthy(tmp: Path) -> None:
    """No collector at all: 2,000 impressions go to an 8 KB spool until it is full. Every
    one is accounted for: sent (none), spooled or dropped, 2,000 in all."""
    spool, n = tmp / "spool", 2000
    extra = ["--impressions-mode", "debug", "--spool-dir", str(spool)]
    with sidecar(tmp, free_port(), *extra, "--spool-max-bytes", "8000") as sc:
        lookups(sc, [f"user-{i:05d}" for i in range(n)])
        wait_for(
            lambda: metric(sc, "fader_telemetry_dropped_total", reason="spool_full") > 0,
            timeout=20,
            what="spool full",
        )
        wait_for(
            lambda: (
                (c := accounted(sc))["queued"] == n and c["sent"] + c["spooled"] + c["dropped"] == n
            ),
            timeout=20,
            what="every impression sent, spooled or dropped",
        )
        counts = accounted(sc)
        assert counts["sent"] == 0 and counts["spooled"] > 0, counts
        assert counts["dropped"] == metric(
            sc, "fader_telemetry_dropped_total", kind="impressions", reason="spool_full"
        ), counts
        assert sum(f.stat().st_size for f in spool.glob("*.batch")) <= 8000
        assert metric(sc, "fader_telemetry_spool_bytes") <= 8000
        status = json.loads(http_get(f"http://{sc.wait_listening()['mgmt']}/status")[1])
        assert status["telemetry"]["collector_up"] is False
        assert status["telemetry"]["dropped"] > 0
        lookups(sc, ["still-serving"])
        assert http_get(f"http://{sc.wait_listening()['mgmt']}/healthz")[0] == 200
        sc.signal(signal.SIGTERM)
        assert sc.wait(30) == 0
    assert list(spool.glob("*.batch")), "the spool keeps what fit for the next start"


def test_optimized_counts_and_events_reach_the_control_planes_collector(tmp: Path) -> None:
    """No --collector: the control plane is the collector. SIGTERM flushes what is buffered.
    Nothing fails, so the control plane counts zero duplicates received."""
    port, out, http_port = free_port(), tmp / "out", free_port()
    cp_args = [
        "--listen", f"127.0.0.1:{port}",
        "--forward", str(snapshot(tmp)),
        "--http-listen", f"127.0.0.1:{http_port}",
        "--impressions-out", str(out / "impressions.jsonl"),
        "--counts-out", str(out / "counts.jsonl"),
        "--events-out", str(out / "events.jsonl"),
    ]  # fmt: skip
    sc_args = [
        "--control-plane", f"127.0.0.1:{port}",
        "--grpc-listen", "127.0.0.1:0",
        "--mgmt-listen", "127.0.0.1:0",
        "--telemetry-flush-interval", "60",
    ]  # fmt: skip
    with (
        serve_process(cp_args, tmp, command="controlplane", log_name="cp.log"),
        serve_process(sc_args, tmp, log_name="sc.log") as sc,
    ):
        target = sc.wait_listening()["grpc"]
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.EvaluationServiceStub(channel)
            wait_for(lambda: _answers(stub), what="the control plane's snapshot")
            for _ in range(4):
                stub.GetTreatment(pb.GetTreatmentRequest(key="same", flag="f"), timeout=5)
            for key in ("a", "b", "c"):
                stub.GetTreatment(pb.GetTreatmentRequest(key=key, flag="g"), timeout=5)
            stub.GetTreatment(pb.GetTreatmentRequest(key="x", flag="missing"), timeout=5)
            track = pb.TrackRequest(
                key="same",
                traffic_type="User",
                event_type="checkout.done",
                value=12.5,
                properties={"plan": pb.AttributeValue(string_value="pro")},
            )
            stub.Track(track, timeout=5)
        sc.signal(signal.SIGTERM)
        assert sc.wait(30) == 0, sc.log
        received = collector_status(http_port)
    assert received["duplicates"] == 0 and received["batches"] > 0, received
    impressions = [
        json.loads(line) for line in (out / "impressions.jsonl").read_text().splitlines()
    ]
    # The wait_for probe looked "f" up for "probe" once more.
    assert sorted((i["flag"], i["key"]) for i in impressions) == [
        ("f", "probe"),
        ("f", "same"),
        ("g", "a"),
        ("g", "b"),
        ("g", "c"),
    ]
    counts = jsonl(out / "counts.jsonl")
    assert [(c["flag"], c["count"]) for c in counts] == [("f", 3)]
    events = jsonl(out / "events.jsonl")
    assert [(e["key"], e["traffic_type"], e["value"], e["properties"]) for e in events] == [
        ("same", "user", 12.5, {"plan": "pro"})
    ]
    assert {e["sidecar_id"] for e in [*impressions, *events]} != {""}


def _answers(stub: pb_grpc.EvaluationServiceStub) -> bool:
    try:
        stub.GetTreatment(pb.GetTreatmentRequest(key="probe", flag="f"), timeout=2)
    except grpc.RpcError:
        return False
    return True
