"""Fixtures of the client example tests (helpers in tests/clients/examples.py): the Node
example's dependencies installed once, and one sidecar of each kind per test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients.examples import CLIENTS, build, mixed_sidecar, synced_sidecar
from tests.integration.harness import RunningSidecar

NODE_EXAMPLE = CLIENTS / "node"


@pytest.fixture(scope="session")
def installed() -> Path:
    """`npm ci`: exactly the versions in package-lock.json, from the npm registry (or the
    local npm cache), into clients/node/node_modules (git-ignored)."""
    build(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], NODE_EXAMPLE)
    return NODE_EXAMPLE


@pytest.fixture(scope="module")
def mixed() -> Iterator[RunningSidecar]:
    """flagd-dialect and Split flags on gRPC, a Unix socket, OFREP and Connect."""
    with mixed_sidecar() as running:
        yield running


@pytest.fixture(scope="module")
def synced() -> Iterator[RunningSidecar]:
    """The flagd testbed's flags on flagd sync."""
    with synced_sidecar() as running:
        yield running
