"""clients/node/check.mjs: the stock Node providers against a real sidecar.

- `@openfeature/flagd-provider` in `in-process` mode, fed by Fader's flagd sync, agrees with
  Fader's own answers (flagd.evaluation.v2 over gRPC) on 1,000 random contexts over the
  flagd testbed's flags, then sees a snapshot swap. Its flagd-core evaluates `fractional` as
  v2, Fader's default.
- `@openfeature/ofrep-provider` resolves every type, a Split flag, not found, type mismatch
  and a disabled flag over OFREP.
- A wrong expected answer makes the checker exit 1 (so a passing run means something).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from fader.pb.flagd.evaluation.v2 import evaluation_pb2_grpc as v2_grpc

from tests.api.test_ofrep import mixed_snapshot
from tests.clients import checker
from tests.clients.checker import Checker, expected
from tests.clients.conftest import needs_node
from tests.integration.harness import (
    LOCAL_ANY_PORT,
    RunningSidecar,
    loopback_settings,
    running_sidecar,
)
from tests.integration.test_flagd_in_process import (
    CONTEXTS,
    METHODS,
    fader_answer,
    flags_document,
    kind_of,
    random_context,
    snapshot,
)

pytestmark = needs_node
SEED = 1202


def check(kind: str, flag: str, default: Any, context: dict[str, Any], expect: dict[str, Any]):
    """A check for check.mjs, where integers and floats are both "number"."""
    node_kind = "number" if kind in ("integer", "float") else kind
    return checker.check(node_kind, flag, default, context, expect)


@pytest.fixture(scope="module")
def flagd_sidecar() -> Iterator[RunningSidecar]:
    settings = loopback_settings(sync_listen=LOCAL_ANY_PORT)
    with running_sidecar(settings, snapshot("v2")) as running:
        yield running


def test_in_process_agrees_on_random_contexts_and_follows_a_swap(
    installed: Path, flagd_sidecar: RunningSidecar
) -> None:
    address = flagd_sidecar.sidecar.sync_address
    assert address is not None
    flags = flags_document("v2")["flags"]
    names = sorted(flags)
    rng = random.Random(SEED)
    checks = []
    with grpc.insecure_channel(flagd_sidecar.tcp_target) as channel:
        stub = v2_grpc.ServiceStub(channel)
        for _ in range(CONTEXTS):
            name = rng.choice(names)
            kind = kind_of(flags[name])
            default = METHODS[kind][2]
            context = random_context(rng)
            answer = fader_answer(stub, kind, name, default, context)
            checks.append(check(kind, name, default, context, expected(answer)))
    env = {
        "FLAGD_RESOLVER": "in-process",
        "FLAGD_HOST": address.host,
        "FLAGD_PORT": str(address.port),
        "FLAGD_DEADLINE_MS": "5000",
    }
    checker = Checker(["node", "check.mjs", "in-process"], installed, env)
    checker.send(*checks, {"wait": "change"})
    lines = checker.wait_for("waiting for a change")
    failed = [line for line in lines if line.startswith(("FAIL", "     expected"))]
    assert not failed, failed[:10]
    assert sum(line.startswith("ok") for line in lines) == CONTEXTS
    flagd_sidecar.store.swap(snapshot("v2", **{"boolean-flag": "off"}))
    checker.wait_for("changed")
    after = {"value": False, "variant": "off", "reason": "STATIC", "errorCode": None}
    checker.send(check("boolean", "boolean-flag", True, {}, after))
    code, out = checker.finish()
    assert code == 0, out
    assert out[-1] == f"all {CONTEXTS + 1} answers right"


@pytest.fixture(scope="module")
def ofrep_sidecar() -> Iterator[RunningSidecar]:
    settings = loopback_settings(ofrep_listen=LOCAL_ANY_PORT)
    with running_sidecar(settings, mixed_snapshot()) as running:
        yield running


OFREP_CHECKS = [
    check("boolean", "enabled", False, {}, {"value": True, "variant": "on", "reason": "STATIC"}),
    check(
        "string",
        "greeting",
        "x",
        {"user": {"plan": "pro"}},
        {"value": "hey", "reason": "TARGETING_MATCH"},
    ),
    check("integer", "limit", 0, {}, {"value": 10, "variant": "low"}),
    check("float", "ratio", 0.25, {}, {"value": 1, "variant": "one"}),
    check("object", "style", {}, {}, {"value": {"color": "blue"}, "variant": "blue"}),
    check(
        "string",
        "banner",
        "x",
        {"targetingKey": "u1", "plan": "pro"},
        {"value": "on", "variant": "on"},
    ),
    check("string", "no-such-flag", "fb", {}, {"value": "fb", "errorCode": "FLAG_NOT_FOUND"}),
    check("boolean", "greeting", False, {}, {"value": False, "errorCode": "TYPE_MISMATCH"}),
    # a disabled flag answers the code default (ofrep-provider 0.1.3 requires a "value" in
    # every success body, so it reports the spec's value-less DISABLED answer as an error)
    check("boolean", "off-flag", True, {}, {"value": True}),
]


def ofrep_env(sidecar: RunningSidecar) -> dict[str, str]:
    return {"OFREP_ENDPOINT": f"http://{sidecar.sidecar.ofrep_address}"}


def test_ofrep_provider_resolves_everything(installed: Path, ofrep_sidecar: RunningSidecar) -> None:
    checker = Checker(["node", "check.mjs", "ofrep"], installed, ofrep_env(ofrep_sidecar))
    checker.send(*OFREP_CHECKS)
    code, out = checker.finish()
    assert code == 0, out
    assert out[-1] == f"all {len(OFREP_CHECKS)} answers right"


def test_a_wrong_answer_fails_the_checker(installed: Path, ofrep_sidecar: RunningSidecar) -> None:
    checker = Checker(["node", "check.mjs", "ofrep"], installed, ofrep_env(ofrep_sidecar))
    checker.send(check("boolean", "enabled", False, {}, {"value": False}))
    code, out = checker.finish()
    assert code == 1, out
    assert out[-1] == "1 of 1 answers wrong" and any(line.startswith("FAIL") for line in out)
