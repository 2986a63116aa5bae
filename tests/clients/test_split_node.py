"""Split's Node SDK (@splitsoftware/splitio, pinned by clients/split-node/package-lock.json,
installed with `npm ci`) against a real `fader serve` through the Split SDK API. Skipped
only when node or npm is missing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients.examples import CLIENTS, build, needs
from tests.clients.split_drivers import (
    check_push,
    check_same_as_from_another_source,
    check_telemetry,
)
from tests.integration.split_sdk_world import World, world

DRIVER = CLIENTS / "split-node"
COMMAND = ["node", "driver.mjs"]

pytestmark = needs("node", "npm", to="run Split's Node SDK")


@pytest.fixture(scope="module")
def installed() -> Path:
    build(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], DRIVER)
    return DRIVER


@pytest.fixture(scope="module")
def sidecar() -> Iterator[World]:
    with world() as running:
        yield running


def test_synced_from_the_sidecar_it_answers_as_from_another_source(
    installed: Path, sidecar: World
) -> None:
    corners = check_same_as_from_another_source(sidecar, COMMAND, installed)
    print(f"Node SDK vs the sidecar, lookups that differ per flag: {dict(corners)}")


def test_a_push_reaches_it_within_one_polling_interval(installed: Path, sidecar: World) -> None:
    lag = check_push(sidecar, COMMAND, installed)
    print(f"Node SDK served the pushed version {lag:.2f} s after the sidecar applied it")


def test_its_impressions_and_events_reach_the_collector(installed: Path, sidecar: World) -> None:
    assert check_telemetry(sidecar, COMMAND, installed, "nodejs").startswith("nodejs-11.")
