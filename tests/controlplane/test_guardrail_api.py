"""The guardrail routes over real HTTP (the control plane's router and server): metrics and
guardrails with their refusals, the release JSON contract, the pages, /metrics."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.controlplane.apitokens import RoleTokens
from sidecar.controlplane.releases import bucket_for
from tests.controlplane.flagd_docs import flagd_flag
from tests.controlplane.guardrail_world import World, serve, world_fixture

CONTRACT_KEYS = {"flag", "state", "dial", "decisions", "metrics"}
METRIC_KEYS = {
    "metric", "treatment", "baseline", "units", "mean", "baseline_mean", "delta", "ci",
    "p_value", "verdict",
}  # fmt: skip


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield from world_fixture(tmp_path)


@pytest.fixture
def api(world: World) -> Iterator[str]:
    server = serve(world)
    yield f"http://127.0.0.1:{server.address.port}"
    server.stop()


def call(
    url: str, method: str = "GET", body: Any = None, token: str | None = None
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            status = response.status
            kind = response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    return status, json.loads(raw) if kind.startswith("application/json") else raw.decode()


def test_metrics_and_guardrails_through_the_api(world: World, api: str) -> None:
    world.add_flag("checkout")
    status, made = call(
        f"{api}/api/v1/metrics/errors",
        "PUT",
        {"event": "error", "kind": "conversion", "direction": "decrease"},
    )
    assert status == 200 and made["created"] is True
    assert call(f"{api}/api/v1/metrics")[1]["metrics"][0]["event"] == "error"
    status, rule = call(
        f"{api}/api/v1/guardrails/checkout/errors",
        "PUT",
        {"max_regression": 0.01, "webhooks": ["http://127.0.0.1:9/hook"]},
    )
    assert status == 200 and rule["baseline"] == "off" and rule["max_regression"] == 0.01
    listed = call(f"{api}/api/v1/guardrails")[1]
    assert listed["webhooks"] == {"checkout": ["http://127.0.0.1:9/hook"]}
    assert call(f"{api}/api/v1/metrics/errors", "DELETE")[0] == 409
    assert call(f"{api}/api/v1/guardrails/checkout/errors", "DELETE")[1]["removed"] == 1
    assert call(f"{api}/api/v1/guardrails/checkout/errors", "DELETE")[0] == 404
    assert call(f"{api}/api/v1/metrics/errors", "DELETE")[0] == 200


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("metrics/errors", {"event": "error", "kind": "ratio", "direction": "decrease"}, 400,
         "kind: conversion|count|mean"),
        ("metrics/errors", [1, 2], 400, "must be a JSON object"),
        ("guardrails/nope/errors", {"max_regression": 0.01}, 404, "no flag named 'nope'"),
        ("guardrails/checkout/latency", {"max_regression": 0.01}, 404, "no metric named"),
        ("guardrails/checkout/errors", {"max_regression": "big"}, 400, "max_regression"),
        ("guardrails/checkout/errors", {}, 400, "max_regression: required"),
        ("guardrails/checkout/errors", {"max_regression": 0.01, "baseline": "blue"}, 400,
         "not a treatment of checkout"),
        ("guardrails/checkout/errors", {"max_regression": 0.01, "webhooks": ["ftp://x"]}, 400,
         "http:// or https://"),
    ],
)  # fmt: skip
def test_bad_requests_say_what_is_wrong_and_change_nothing(
    world: World, api: str, path: str, body: Any, status: int, message: str
) -> None:
    world.add_flag("checkout")
    world.errors_metric()
    got, error = call(f"{api}/api/v1/{path}", "PUT", body)
    assert got == status and message in error["error"]
    assert world.definitions.guardrails() == []


def test_the_release_json_follows_the_contract(world: World, api: str) -> None:
    world.add_flag("checkout")
    world.errors_metric()
    world.definitions.set_guardrail("checkout", "errors", 0.01)
    world.rollouts.start("checkout", (50, 100), 3600, "on", author="test")
    world.expose("checkout", 3000, {"on": 0.20, "off": 0.05})

    status, running = call(f"{api}/api/v1/releases/checkout")
    assert status == 200 and set(running) == CONTRACT_KEYS
    assert (running["flag"], running["state"], running["dial"]) == ("checkout", "running", 50)
    (row,) = running["metrics"]
    assert set(row) == METRIC_KEYS
    assert (row["metric"], row["treatment"], row["baseline"]) == ("errors", "on", "off")
    assert row["verdict"] == "breach" and row["ci"][0] > 0.01 and row["p_value"] < 0.05
    assert row["units"] > 1000 and abs(row["delta"] - (row["mean"] - row["baseline_mean"])) < 1e-12

    world.guardian.look()
    killed = call(f"{api}/api/v1/releases/checkout")[1]
    assert (killed["state"], killed["dial"]) == ("killed", 0)
    kinds = [d["kind"] for d in killed["decisions"]]
    assert kinds == ["advance", "breach", "kill"]
    assert killed["metrics"][0]["verdict"] == "breach"  # the evidence stays visible

    summaries = call(f"{api}/api/v1/releases")[1]["releases"]
    assert [(s["flag"], s["state"], s["outcome"]) for s in summaries] == [
        ("checkout", "killed", "breach")
    ]
    assert call(f"{api}/api/v1/releases/unknown")[0] == 404


def test_states_paused_and_complete(world: World, api: str) -> None:
    world.add_flag("a")
    world.add_flag("b")
    world.rollouts.start("a", (10, 100), 3600, "on", author="test")
    world.rollouts.pause("a", author="test")
    world.rollouts.start("b", (100,), 0, "on", author="test")
    assert call(f"{api}/api/v1/releases/a")[1]["state"] == "paused"
    done = call(f"{api}/api/v1/releases/b")[1]
    assert (done["state"], done["dial"], done["metrics"]) == ("complete", 100, [])


def test_the_pages_render_charts_and_decisions(world: World, api: str) -> None:
    world.add_flag("checkout")
    world.errors_metric()
    world.definitions.set_guardrail("checkout", "errors", 0.01)
    world.rollouts.start("checkout", (50, 100), 3600, "on", author="test")
    world.expose("checkout", 3000, {"on": 0.20, "off": 0.05})
    world.guardian.look()

    index = call(f"{api}/releases")[1]
    assert 'href="/releases/checkout"' in index and "killed" in index
    page = call(f"{api}/releases/checkout")[1]
    assert page.count("<svg") == 3  # dial, units, one metric
    assert "guardrail errors: +" in page and "confidence sequence" in page
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org", "")


def test_prometheus_counters(world: World, api: str) -> None:
    world.add_flag("checkout")
    world.errors_metric()
    world.definitions.set_guardrail("checkout", "errors", 0.01)
    world.expose("checkout", 10, {"on": 0.0, "off": 0.0}, weights={"off": 1})
    world.guardian.look()
    text = call(f"{api}/metrics")[1]
    assert 'fader_guardrail_decisions_total{kind="hold"} 1' in text
    assert 'fader_guardrail_decisions_total{kind="kill"} 0' in text
    assert "fader_alerts_sent_total 0" in text and "fader_alerts_failed_total 0" in text


def test_writes_need_an_editor_token(world: World, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("viewer v-token\neditor e-token alice\n")
    server = serve(world, RoleTokens(tokens))
    base = f"http://127.0.0.1:{server.address.port}/api/v1/metrics/errors"
    body = {"event": "error", "kind": "count", "direction": "decrease"}
    try:
        assert call(base, "PUT", body)[0] == 401
        assert call(base, "PUT", body, token="v-token")[0] == 403
        assert call(base, "PUT", body, token="e-token")[0] == 200
        assert call(base, token="v-token")[0] == 200
    finally:
        server.stop()


def test_the_bucket_keeps_charts_within_the_store_s_limit() -> None:
    assert bucket_for(60_000, 3_600_000) == 1000
    assert bucket_for(3_600_000, 3_600_000) == 30_000
    day = bucket_for(600_000, 86_400_000)
    assert day % 1000 == 0 and (600_000 + 86_400_000) / day < 10_000


def test_a_guardrail_on_a_flagd_flag_is_refused_saying_why(world: World, api: str) -> None:
    world.store.put_flag("new-ui", flagd_flag(), author="test", reason="setup")
    world.errors_metric()
    status, body = call(f"{api}/api/v1/guardrails/new-ui/errors", "PUT", {"max_regression": 0.01})
    assert status == 422
    assert body["error"].startswith("'new-ui' is a flagd-dialect flag: a guardrail works on")
    assert call(f"{api}/api/v1/guardrails/new-ui")[1]["guardrails"] == []
    # the release pages know only Split flags: a flagd flag is "not a release", never a crash
    for path in ("/api/v1/releases/new-ui", "/releases/new-ui"):
        status, body = call(api + path)
        assert status == 404 and "'new-ui' is not a release" in body["error"]
    assert call(f"{api}/api/v1/releases")[1] == {"releases": []}
