"""The release page in headless Chromium (Debian's `chromium`), served by a real `fader
controlplane` process whose collector received real uploads over gRPC: the DOM Chromium builds
holds the charts (SVG) and the guardrail's decision, and a screenshot is saved as an artifact
(tests/artifacts/release-page.png, printed)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from fader.pb.fader.v1 import telemetry_pb2 as pb
from fader.pb.fader.v1 import telemetry_pb2_grpc

from sidecar.controlplane.apiclient import ApiClient, flag_path
from tests.fader.rules.builders import condition, flag
from tests.integration.harness import REPO, short_tmp
from tests.integration.release_processes import control_plane
from tests.waiting import wait_for

ARTIFACTS = REPO / "tests" / "artifacts"
FLAG = "checkout-v2"


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def tmp() -> Iterator[Path]:
    with short_tmp() as path:
        yield path


def browse(url: str, *mode: str) -> subprocess.CompletedProcess[str]:
    """Chromium headless on ``url`` with a profile of its own, nothing fetched elsewhere."""
    binary = chromium()
    assert binary is not None
    with tempfile.TemporaryDirectory(prefix="fader-chromium-") as profile:
        return subprocess.run(
            [
                binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
                *mode, url,
            ],
            capture_output=True, text=True, timeout=90,
        )  # fmt: skip


def upload(target: str, change_number: int, batch: int, keys: int, rates: dict[str, float]) -> None:
    """One batch as a sidecar would send it: half the keys on, half off, `error` events at
    each treatment's rate (deterministic: every k-th key errs)."""
    now = time.time_ns() // 1_000_000
    request = pb.UploadRequest(batch_id=f"b{batch}", sidecar_id="browser-test")
    for i in range(keys):
        treatment = "on" if i % 2 else "off"
        key = f"user-{batch}-{i}"
        request.impressions.add(
            key=key, flag=FLAG, treatment=treatment, label="default rule",
            change_number=change_number, time_ms=now,
        )  # fmt: skip
        if (i // 2) % round(1 / rates[treatment]) == 0:
            request.events.add(key=key, traffic_type="user", event_type="error", timestamp_ms=now)
    with grpc.insecure_channel(target) as channel:
        telemetry_pb2_grpc.TelemetryServiceStub(channel).Upload(request, timeout=10)


@pytest.mark.skipif(chromium() is None, reason="no chromium binary (apt-get install chromium)")
def test_the_release_page_in_headless_chromium(tmp: Path) -> None:
    args = ["--data-dir", str(tmp / "data"), "--guardrail-interval", "1", "--window", "1h"]
    with control_plane(tmp, *args) as plane:
        api = ApiClient(plane.server)
        document = flag(FLAG, condition(partitions={"on": 0, "off": 100}, label="default rule"))
        api.post("/api/v1/apply", {"document": document, "reason": "browser test"})
        api.put("/api/v1/metrics/errors", {"event": "error", "kind": "conversion",
                                           "direction": "decrease"})  # fmt: skip
        api.put(f"/api/v1/guardrails/{FLAG}/errors", {"max_regression": 0.01})
        api.post(flag_path(FLAG, "/rollout"), {"steps": [50, 100], "hold_seconds": 3600})
        change = api.get(flag_path(FLAG))["version"]
        for batch in range(4):  # a few seconds apart: several points on every chart
            upload(plane.target, change, batch, 300, {"on": 0.25, "off": 0.05})
            time.sleep(1.1)
        wait_for(
            lambda: api.get(f"/api/v1/releases/{FLAG}")["state"] == "killed",
            timeout=20, what="the guardrail kills the flag",
        )  # fmt: skip

        url = f"{plane.server}/releases/{FLAG}"
        dom = browse(url, "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-3000:]
        html = dom.stdout
        assert html.count("<svg") == 3, html[:2000]  # dial, units per treatment, errors
        assert html.count('class="series"') >= 4  # dial, on, off, the difference
        assert 'class="band"' in html  # the confidence sequence
        assert "guardrail errors: +" in html  # the kill's reason, in the decisions
        assert 'class="badge s-killed"' in html and 'class="badge v-breach"' in html

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "release-page.png"
        shot.unlink(missing_ok=True)
        taken = browse(url, f"--screenshot={shot}", "--window-size=1280,1600")
        assert taken.returncode == 0, taken.stderr[-3000:]
        assert shot.stat().st_size > 10_000
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        print(f"\nrelease page screenshot: {shot}")

        index = browse(f"{plane.server}/releases", "--dump-dom").stdout
        assert f'href="/releases/{FLAG}"' in index
