"""The real OpenFeature Python flagd provider (openfeature-provider-flagd, RPC mode) against a
running sidecar over TCP: every flag type, errors, a killed flag, reasons and variants, and
the change event (with its cache invalidation) after a snapshot swap.

The provider runs in a child process (flagd_provider_driver.py explains why); the sidecar
runs in this one, so the test can swap its snapshot directly.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fader.snapshot.loader import build_snapshot
from fader.snapshot.snapshot import Snapshot

from tests.fader.rules.builders import condition, flag, matcher, snapshot_doc
from tests.integration.harness import RunningSidecar, loopback_settings, running_sidecar

DRIVER = Path(__file__).with_name("flagd_provider_driver.py")
TIMEOUT = 20.0


def flags_snapshot(version: int, banner: str) -> Snapshot:
    pro = matcher("WHITELIST", "plan", whitelistMatcherData={"whitelist": ["pro"]})
    return build_snapshot(
        snapshot_doc(
            flag("banner", condition(partitions={banner: 100})),
            flag("enabled", condition(partitions={"on": 100})),
            flag(
                "style",
                condition(partitions={"blue": 100}),
                configurations={"blue": '{"color": "blue", "size": 3}'},
            ),
            flag(
                "max-items",
                condition(pro, partitions={"25": 100}, label="pro plan"),
                condition(partitions={"10": 100}, label="default rule"),
                defaultTreatment="10",
            ),
            flag("ratio", condition(partitions={"half": 100}), configurations={"half": "0.25"}),
            flag("kill", killed=True, defaultTreatment="on"),
            flag("theme", condition(partitions={"dark": 100})),
            flag("rollout", condition(partitions={"on": 100}), trafficAllocation=50),
            version=version,
        )
    )


class Provider:
    """The driver process: requests on its stdin, answers and events from its stdout."""

    def __init__(self, host: str, port: int) -> None:
        env = {
            **os.environ,
            "FLAGD_HOST": host,
            "FLAGD_PORT": str(port),
            "FLAGD_RESOLVER": "rpc",
            # a shared 2-core CI machine can be slower than the provider's 500 ms default
            "FLAGD_DEADLINE_MS": "5000",
        }
        self.process = subprocess.Popen(
            [sys.executable, str(DRIVER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.answers: queue.Queue[dict[str, Any]] = queue.Queue()
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            message = json.loads(line)
            (self.events if "event" in message else self.answers).put(message)

    def next_event(self) -> dict[str, Any]:
        try:
            return self.events.get(timeout=TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"no provider event in {TIMEOUT} s") from None

    def ask(
        self, kind: str, flag_key: str, default: Any, key: str = "user-1", **attributes: Any
    ) -> dict[str, Any]:
        request = {
            "type": kind,
            "flag": flag_key,
            "default": default,
            "key": key,
            "attributes": attributes,
        }
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        try:
            return self.answers.get(timeout=TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"the provider did not answer {request}") from None

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def sidecar() -> Iterator[RunningSidecar]:
    with running_sidecar(loopback_settings(), flags_snapshot(1, "on")) as running:
        yield running


@pytest.fixture(scope="module")
def provider(sidecar: RunningSidecar) -> Iterator[Provider]:
    address = sidecar.sidecar.grpc_address
    assert address is not None
    provider = Provider(address.host, address.port)
    try:
        assert provider.next_event() == {"event": "ready"}
        yield provider
    finally:
        provider.close()


def answer(value: Any, reason: str, variant: str | None, error: str | None = None) -> Any:
    return {"value": value, "reason": reason, "variant": variant, "error_code": error}


def test_boolean_string_object_int_float(provider: Provider) -> None:
    assert provider.ask("boolean", "enabled", False) == answer(True, "STATIC", "on")
    # the provider caches a STATIC answer (per flag key, whatever the type asked)
    assert provider.ask("boolean", "enabled", False) == answer(True, "CACHED", "on")
    assert provider.ask("object", "style", {}) == answer(
        {"color": "blue", "size": 3}, "STATIC", "blue"
    )
    assert provider.ask("string", "max-items", "none", plan="pro") == answer(
        "25", "TARGETING_MATCH", "25"
    )
    assert provider.ask("string", "max-items", "none", plan="free") == answer("10", "DEFAULT", "10")
    assert provider.ask("integer", "max-items", 0, plan="pro") == answer(
        25, "TARGETING_MATCH", "25"
    )
    assert provider.ask("float", "max-items", 0.0, plan="free") == answer(10.0, "DEFAULT", "10")
    assert provider.ask("float", "ratio", 0.0) == answer(0.25, "STATIC", "half")


def test_not_found_and_type_mismatch_return_the_default(provider: Provider) -> None:
    assert provider.ask("string", "no-such-flag", "fallback") == answer(
        "fallback", "ERROR", None, "FLAG_NOT_FOUND"
    )
    assert provider.ask("boolean", "theme", True) == answer(True, "ERROR", None, "TYPE_MISMATCH")
    assert provider.ask("integer", "theme", 7) == answer(7, "ERROR", None, "TYPE_MISMATCH")


def test_killed_flag_is_disabled_and_answers_the_code_default(provider: Provider) -> None:
    assert provider.ask("boolean", "kill", False) == answer(False, "DISABLED", None)
    assert provider.ask("string", "kill", "code-default") == answer(
        "code-default", "DISABLED", None
    )


def test_a_flag_that_varies_by_key_is_never_served_from_the_cache(
    sidecar: RunningSidecar, provider: Provider
) -> None:
    """A 50 % traffic allocation: one key is in ("on"), another is not ("off"). The provider
    caches a STATIC answer by flag key alone, so the reason must not be STATIC. Mutant this
    catches: a traffic-allocation cut reported STATIC (the second key would get the first
    key's cached "on")."""
    snap = sidecar.store.current
    assert snap is not None
    treatments = {f"user-{i}": snap.evaluate(f"user-{i}", "rollout").treatment for i in range(50)}
    inside = next(key for key, treatment in treatments.items() if treatment == "on")
    outside = next(key for key, treatment in treatments.items() if treatment == "off")
    for key in (inside, outside, inside, outside):
        if key == inside:
            expected = answer("on", "TARGETING_MATCH", "on")
        else:
            expected = answer("off", "DEFAULT", "off")
        assert provider.ask("string", "rollout", "x", key=key) == expected, key


def test_change_event_after_a_swap_refreshes_the_cache(
    sidecar: RunningSidecar, provider: Provider
) -> None:
    provider.ask("string", "banner", "x")  # cached (STATIC) before the swap
    assert provider.ask("string", "banner", "x")["reason"] == "CACHED"
    sidecar.store.swap(flags_snapshot(2, "off"))
    assert provider.next_event() == {"event": "configuration_changed", "flags": ["banner"]}
    assert provider.ask("string", "banner", "x") == answer("off", "STATIC", "off")
    assert provider.ask("string", "banner", "x") == answer("off", "CACHED", "off")
