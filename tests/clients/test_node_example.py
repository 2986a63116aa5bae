"""clients/node: the Node example reads Fader flags through the stock OpenFeature flagd
provider (npm packages, pinned by package-lock.json), over TCP and over the Unix socket, and
checks every answer against the demo snapshot. Skipped when node or npm is not installed."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fader.snapshot.loader import build_snapshot

from tests.clients.conftest import needs_node
from tests.fader.rules.builders import flag, snapshot_doc
from tests.integration.harness import RunningSidecar, loopback_settings, running_sidecar, short_tmp

TIMEOUT = 120.0

pytestmark = needs_node


def run_example(installed: Path, **flagd_env: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGD_")}
    # a shared 2-core CI machine can be slower than the provider's 500 ms default deadline
    env.update(FLAGD_RESOLVER="rpc", FLAGD_DEADLINE_MS="5000", **flagd_env)
    return subprocess.run(
        ["node", "example.mjs"],
        cwd=installed,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


@pytest.fixture(params=["tcp", "uds"])
def provider_env(request: pytest.FixtureRequest, demo_sidecar: RunningSidecar) -> dict[str, str]:
    if request.param == "uds":
        return {"FLAGD_SOCKET_PATH": str(demo_sidecar.sidecar.uds_path)}
    address = demo_sidecar.sidecar.grpc_address
    assert address is not None
    return {"FLAGD_HOST": address.host, "FLAGD_PORT": str(address.port)}


def test_example_answers_are_right(installed: Path, provider_env: dict[str, str]) -> None:
    done = run_example(installed, **provider_env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all 9 answers right" in done.stdout
    assert "FAIL" not in done.stdout


@pytest.fixture
def other_sidecar() -> Iterator[RunningSidecar]:
    """Serves one flag that is not the demo's, so the example's answers must be wrong."""
    with (
        short_tmp() as tmp,
        running_sidecar(
            loopback_settings(uds=tmp / "f.sock"),
            build_snapshot(snapshot_doc(flag("new-checkout", defaultTreatment="on"))),
        ) as running,
    ):
        yield running


def test_example_fails_on_wrong_answers(installed: Path, other_sidecar: RunningSidecar) -> None:
    done = run_example(installed, FLAGD_SOCKET_PATH=str(other_sidecar.sidecar.uds_path))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL" in done.stdout and "answers wrong" in done.stdout
