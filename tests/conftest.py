"""Fixtures shared by the client and integration tests: one demo sidecar per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.harness import (
    RunningSidecar,
    demo_snapshot,
    loopback_settings,
    running_sidecar,
    short_tmp,
)


@pytest.fixture(scope="module")
def demo_sidecar() -> Iterator[RunningSidecar]:
    """One sidecar per module, serving the demo snapshot on loopback TCP and a Unix socket."""
    with (
        short_tmp() as tmp,
        running_sidecar(loopback_settings(uds=tmp / "fader.sock"), demo_snapshot()) as running,
    ):
        yield running


@pytest.fixture(params=["tcp", "uds"])
def target(request: pytest.FixtureRequest, demo_sidecar: RunningSidecar) -> str:
    """The gRPC target of the module's sidecar, once over TCP and once over the socket."""
    return demo_sidecar.tcp_target if request.param == "tcp" else demo_sidecar.uds_target
