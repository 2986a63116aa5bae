"""Status says what is happening: a control plane that keeps no telemetry, and the sidecar
uploading to it, with real processes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import (
    free_port,
    http_get,
    serve_process,
    short_tmp,
    start_sidecar,
    treatment,
    write_snapshot,
)
from tests.integration.test_snapshot_sources import controlplane, fader, fleet, sidecar_record
from tests.integration.test_telemetry_faults import lookups, metric, sidecar, snapshot
from tests.waiting import wait_for


@pytest.fixture
def tmp() -> Iterator[Path]:
    with short_tmp() as path:
        yield path


def test_a_collector_that_refuses_everything_is_not_reported_up(tmp: Path) -> None:
    port, http = free_port(), free_port()
    plane = ["--listen", f"127.0.0.1:{port}", "--forward", str(snapshot(tmp))]
    plane += ["--http-listen", f"127.0.0.1:{http}"]
    with serve_process(plane, tmp, command="controlplane", log_name="cp.log") as cp:
        wait_for(lambda: "listening" in cp.log, what="the control plane up")
        with sidecar(tmp, port) as sc:
            lookups(sc, [f"k{i}" for i in range(20)])
            mgmt = f"http://{sc.wait_listening()['mgmt']}"

            def telemetry() -> dict[str, object]:
                return dict(json.loads(http_get(mgmt + "/status")[1])["telemetry"])

            wait_for(lambda: telemetry()["dropped"] != 0, what="a batch refused")
            status = telemetry()
            assert status["collector_up"] is False
            assert "keeps no telemetry" in str(status["collector_refusing"])
            assert metric(sc, "fader_telemetry_upstream_up") == 0
            assert sc.log.count("WARNING sidecar.telemetry.pipeline: telemetry: the collector") == 1
        collector = json.loads(http_get(f"http://127.0.0.1:{http}/status")[1])["collector"]
        assert collector["kept"] is False and collector["refused_uploads"] >= 1
        assert "--impressions-out" in collector["detail"]
        assert cp.log.count("refusing telemetry from") == 1, cp.log


def test_fader_status_shows_what_each_sidecar_serves_however_it_got_it(tmp: Path) -> None:
    snapshot, port, admin = tmp / "snap.json", free_port(), f"127.0.0.1:{free_port()}"
    write_snapshot(snapshot, 2)
    args = ["--control-plane", f"127.0.0.1:{port}", "--sidecar-id", "pod-a"]
    args += ["--admin-listen", admin]
    with controlplane(snapshot, port, tmp), start_sidecar(args, tmp, "a.log") as sc:
        target = sc.wait_listening()["grpc"]
        wait_for(lambda: sidecar_record(port, "pod-a").get("acked_version") == 2, what="ACK 2")
        pushed = tmp / "pushed.json"
        write_snapshot(pushed, 5)
        assert fader("push", "--target", admin, str(pushed)).returncode == 0
        assert treatment(target) == "v5"
        wait_for(lambda: sidecar_record(port, "pod-a").get("acked_version") == 5, what="ACK 5")
        table = fader("status", "--control-plane", f"127.0.0.1:{port}").stdout
        assert "pod-a" in table and " 5 " in table, table

        write_snapshot(snapshot, 6, algo=9)  # invalid: NACKed
        wait_for(lambda: sidecar_record(port, "pod-a").get("nacked_version") == 6, what="NACK")
        assert sidecar_record(port, "pod-a")["nack_errors"]
        write_snapshot(snapshot, 7)
        wait_for(lambda: sidecar_record(port, "pod-a").get("acked_version") == 7, what="ACK 7")
        record = sidecar_record(port, "pod-a")
        assert "nacked_version" not in record and "nack_errors" not in record, record
        assert isinstance(fleet(port)["offered_version"], int)
