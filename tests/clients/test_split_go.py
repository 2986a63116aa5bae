"""Split's Go SDK (github.com/splitio/go-client v6.8.0, pinned by clients/go-split/go.sum,
built with `go build`) against a real `fader serve` through the Split SDK API. Skipped only
when the go toolchain is missing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.clients.examples import CLIENTS, build, needs
from tests.clients.split_drivers import (
    check_push,
    check_same_as_from_another_source,
    check_telemetry,
)
from tests.integration.harness import short_tmp
from tests.integration.split_sdk_world import World, world

SOURCE = CLIENTS / "go-split"
SPLIT_SYNC_MIN = 5.0  # the Go SDK polls flags every 5 s at the least

pytestmark = needs("go", to="build Split's Go SDK")


@pytest.fixture(scope="module")
def command() -> Iterator[list[str]]:
    with short_tmp() as tmp:
        binary = tmp / "go-split"
        build(["go", "build", "-o", str(binary), "."], SOURCE)
        yield [str(binary)]


@pytest.fixture(scope="module")
def sidecar() -> Iterator[World]:
    with world() as running:
        yield running


def test_synced_from_the_sidecar_it_answers_as_from_another_source(
    command: list[str], sidecar: World
) -> None:
    corners = check_same_as_from_another_source(sidecar, command, SOURCE)
    print(f"Go SDK vs the sidecar, lookups that differ per flag: {dict(corners)}")


def test_a_push_reaches_it_within_one_polling_interval(command: list[str], sidecar: World) -> None:
    lag = check_push(sidecar, command, SOURCE, SPLIT_SYNC_MIN)
    print(f"Go SDK served the pushed version {lag:.2f} s after the sidecar applied it")


def test_its_impressions_and_events_reach_the_collector(command: list[str], sidecar: World) -> None:
    assert check_telemetry(sidecar, command, SOURCE, "go").startswith("go-6.")
