"""Status says what is happening: a control plane that keeps no telemetry, and the sidecar
uploading to it, with real processes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import free_port, http_get, serve_process, short_tmp
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
