"""`fader metrics` and `fader guardrails` against the real API over HTTP: the contract's
commands, what they print, and refusals with exit status 1."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sidecar.controlplane.guardrail_commands import guardrails_main, metrics_main
from tests.controlplane.guardrail_world import World, serve, world_fixture


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield from world_fixture(tmp_path)


@pytest.fixture
def server(world: World) -> Iterator[str]:
    web = serve(world)
    yield f"http://127.0.0.1:{web.address.port}"
    web.stop()


def run(command: Callable[..., int], *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = command(list(argv), out, err)
    return status, out.getvalue(), err.getvalue()


def test_the_cli_contract(world: World, server: str) -> None:
    world.add_flag("checkout")
    s = ("--server", server)
    status, out, _ = run(
        metrics_main, "create", "errors", "--event", "error", "--kind", "conversion",
        "--direction", "decrease", *s,
    )  # fmt: skip
    assert status == 0 and "metric errors created: conversion of event 'error'" in out
    status, out, _ = run(metrics_main, "list", *s)
    assert status == 0 and "errors  error  conversion  decrease" in out
    status, out, _ = run(
        guardrails_main, "set", "checkout", "--metric", "errors", "--max-regression", "0.01",
        "--webhook", "http://127.0.0.1:9/hook", *s,
    )  # fmt: skip
    assert status == 0 and "tolerating a regression of 0.01 against 'off'" in out
    (rule,) = world.definitions.guardrails("checkout")
    assert (rule.metric, rule.max_regression, rule.baseline) == ("errors", 0.01, "off")
    status, out, _ = run(guardrails_main, "list", *s)
    assert "checkout  errors  0.01" in out and "http://127.0.0.1:9/hook" in out
    status, out, _ = run(guardrails_main, "clear", "checkout", *s)
    assert status == 0 and "1 guardrail(s) removed" in out
    assert world.definitions.guardrails() == []


def test_refusals_exit_1_with_the_server_s_reason(world: World, server: str) -> None:
    s = ("--server", server)
    status, _, err = run(
        guardrails_main, "set", "nope", "--metric", "errors", "--max-regression", "0.01", *s
    )
    assert status == 1 and "refused (404): no flag named 'nope'" in err
    status, _, err = run(
        metrics_main, "create", "e", "--event", "no spaces", "--kind", "count",
        "--direction", "increase", *s,
    )  # fmt: skip
    assert status == 1 and "refused (400): event: 'no spaces' is not an event type" in err
    status, _, err = run(metrics_main, "list", "--server", "http://127.0.0.1:9")
    assert status == 1 and "cannot reach" in err
