"""Webhook alerts against a real local HTTP server: Slack-compatible body, retries with backoff,
giving up on a dead webhook, and `send` never waiting for the network."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest

from sidecar.controlplane.alerts import Alerts, payload
from sidecar.controlplane.decisions import Kind, decision
from sidecar.plumbing.backoff import Backoff
from tests.controlplane.guardrail_world import Webhooks

FAST = Backoff(initial=0.05, maximum=0.1, jitter=0.0)


@pytest.fixture
def hooks() -> Iterator[Webhooks]:
    server = Webhooks().start()
    yield server
    server.stop()


def dead_url() -> str:
    """A loopback port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.02)


def test_the_body_is_slack_compatible_and_carries_the_decision() -> None:
    made = decision("checkout", Kind.KILL, "killed at version 9: guardrail errors", "9", {"v": 9})
    body = payload(made, "http://cp:8018/releases/checkout")
    assert body["text"].startswith(":octagonal_sign: Fader kill on checkout: killed at version 9")
    assert "<http://cp:8018/releases/checkout|release page>" in body["text"]
    assert (body["kind"], body["flag"], body["details"]) == ("kill", "checkout", {"v": 9})


def test_a_failing_webhook_is_retried_until_it_takes_the_alert(hooks: Webhooks) -> None:
    hooks.failures = 2
    alerts = Alerts([hooks.url], attempts=4, backoff=FAST)
    alerts.start()
    try:
        assert alerts.send({"text": "hello"}) == 1
        wait_until(lambda: alerts.sent == 1)
    finally:
        alerts.stop()
    assert hooks.attempts == 3 and hooks.received == [{"text": "hello"}]
    assert (alerts.sent, alerts.failed) == (1, 0)


def test_a_dead_webhook_is_given_up_on_while_the_others_get_theirs(hooks: Webhooks) -> None:
    alerts = Alerts([dead_url()], attempts=3, backoff=FAST)
    alerts.start()
    try:
        alerts.send({"text": "one"}, [hooks.url])
        alerts.send({"text": "two"}, [hooks.url])
        wait_until(lambda: alerts.failed == 2 and alerts.sent == 2)
    finally:
        alerts.stop()
    assert [b["text"] for b in hooks.received] == ["one", "two"]
    assert (alerts.sent, alerts.failed) == (2, 2)


def test_send_returns_at_once_and_a_full_queue_drops_and_counts() -> None:
    alerts = Alerts([dead_url()], attempts=2, backoff=FAST, queue_limit=3)  # never started
    begun = time.monotonic()
    queued = [alerts.send({"text": str(i)}) for i in range(5)]
    assert time.monotonic() - begun < 0.5
    assert queued == [1, 1, 1, 0, 0]
    assert alerts.failed == 2 and alerts.pending() == 3
    alerts.stop()
    assert alerts.failed == 5  # the abandoned ones count too


def test_the_same_webhook_globally_and_per_flag_gets_one_post(hooks: Webhooks) -> None:
    alerts = Alerts([hooks.url], backoff=FAST)
    alerts.start()
    try:
        assert alerts.send({"text": "once"}, [hooks.url]) == 1
        wait_until(lambda: alerts.sent == 1)
    finally:
        alerts.stop()
    assert len(hooks.received) == 1
