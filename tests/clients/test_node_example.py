"""clients/node: the Node example reads Fader flags through the stock OpenFeature flagd
provider (npm packages, pinned by package-lock.json), over TCP and over the Unix socket, and
checks every answer against the demo snapshot. Skipped, with the reason, when node or npm is
not installed."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fader.snapshot.loader import build_snapshot

from tests.clients.examples import TIMEOUT, needs, provider_free_env, rpc_env
from tests.fader.rules.builders import flag, snapshot_doc
from tests.integration.harness import RunningSidecar, loopback_settings, running_sidecar, short_tmp

pytestmark = needs("node", "npm", to="run the Node example")


def run_example(installed: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # a shared 2-core CI machine can be slower than the provider's 500 ms default deadline
    settings = {"FLAGD_RESOLVER": "rpc", "FLAGD_DEADLINE_MS": "5000", **env}
    return subprocess.run(
        ["node", "example.mjs"],
        cwd=installed,
        env=provider_free_env(settings),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


@pytest.mark.parametrize("over", ["tcp", "uds"])
def test_example_answers_are_right(
    installed: Path, demo_sidecar: RunningSidecar, over: str
) -> None:
    done = run_example(installed, rpc_env(demo_sidecar, over))
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
    done = run_example(installed, rpc_env(other_sidecar, "uds"))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL" in done.stdout and "answers wrong" in done.stdout
