"""clients/go: the OpenFeature Go SDK with the stock flagd provider (RPC and in-process) and the
OFREP provider, built with the Go toolchain (modules from the Go module proxy, pinned by
go.sum; the build cache is Go's own), run against a real sidecar:

- rpc: flagd-dialect and Split flags over flagd.evaluation.v1 (Connect);
- in-process: the testbed's flags synced by Fader, 1,000 random contexts agreeing with Fader's
  gRPC answers, then a snapshot swap;
- ofrep: every type, a Split flag, not found, type mismatch, disabled, with a bearer token;
- a wrong expected answer exits 1.

The flagd provider is v0.3.2, the newest whose dependencies the Go module proxy serves (v0.4.0
needs flagd/core v0.14.0, which it refuses). It embeds flagd core 0.13, older than the
testbed's semantics: a disabled flag or a missing default variant is FLAG_NOT_FOUND, string
and semver operators answer false (not null) on bad input, `fractional` is an earlier
generation. The in-process check leaves those flags out (`OLD_CORE`); every other testbed flag
must agree. Its RPC mode speaks flagd's API over Connect (HTTP/1.1), which Fader serves on
the OFREP listener (sidecar.api.flagd_connect): FLAGD_PORT is --ofrep-listen's port.

Skipped, with the reason, only when `go` is not installed.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from fader.pb.flagd.evaluation.v2 import evaluation_pb2_grpc as v2_grpc

from tests.api.test_ofrep import mixed_snapshot
from tests.clients.checker import Checker, check, expected
from tests.integration.harness import (
    LOCAL_ANY_PORT,
    RunningSidecar,
    loopback_settings,
    running_sidecar,
    short_tmp,
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

EXAMPLE = Path(__file__).resolve().parents[2] / "clients" / "go"
BUILD_TIMEOUT = 600.0
SEED = 1203

pytestmark = pytest.mark.skipif(
    shutil.which("go") is None, reason="the Go toolchain (go) is needed to run the Go example"
)

# testbed flags whose meaning changed after flagd core 0.13 (see the module docstring)
OLD_CORE = (
    "fractional-",
    "disabled-",
    "no-default-",
    "null-default-",
    "undefined-default-",
    "semver-invalid-",
    "semver-wrong-",
    "starts-with-",
    "ends-with-",
)

CHECKS = [
    check("boolean", "enabled", False, {}, {"value": True, "variant": "on", "reason": "STATIC"}),
    check("string", "greeting", "x", {"user": {"plan": "pro"}}, {"value": "hey", "variant": "yo"}),
    check("integer", "limit", 0, {}, {"value": 10, "reason": "STATIC"}),
    check("float", "ratio", 0.25, {}, {"value": 1.0, "variant": "one"}),
    check("object", "style", {}, {}, {"value": {"color": "blue"}}),
    check("string", "banner", "x", {"targetingKey": "u1", "plan": "pro"}, {"value": "on"}),
    check("string", "no-such-flag", "fb", {}, {"value": "fb", "errorCode": "FLAG_NOT_FOUND"}),
    check("boolean", "greeting", False, {}, {"value": False, "errorCode": "TYPE_MISMATCH"}),
    check("boolean", "off-flag", True, {}, {"value": True, "reason": "DISABLED"}),
]


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`go build`: modules from the Go module proxy as go.sum pins them (buf.build's generated
    flagd modules are not in the public checksum database, hence GONOSUMDB)."""
    out = EXAMPLE / "bin" / "check"
    env = {**os.environ, "GONOSUMDB": "buf.build/gen/go", "GOFLAGS": "-mod=readonly"}
    done = subprocess.run(
        ["go", "build", "-o", str(out), "."],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out


@pytest.fixture(scope="module")
def mixed() -> Iterator[RunningSidecar]:
    with short_tmp() as tmp:
        (tmp / "tokens").write_text("go-token\n")
        settings = loopback_settings(
            ofrep_listen=LOCAL_ANY_PORT,
            ofrep_token_file=tmp / "tokens",
        )
        with running_sidecar(settings, mixed_snapshot()) as running:
            yield running


def run(
    binary: Path, mode: str, env: dict[str, str], *checks: dict[str, Any]
) -> tuple[int, list[str]]:
    checker = Checker([str(binary), mode], EXAMPLE, env)
    checker.send(*checks)
    return checker.finish()


def ofrep_env(sidecar: RunningSidecar) -> dict[str, str]:
    return {
        "OFREP_ENDPOINT": f"http://{sidecar.sidecar.ofrep_address}",
        "OFREP_BEARER_TOKEN": "go-token",
    }


def test_ofrep(binary: Path, mixed: RunningSidecar) -> None:
    code, out = run(binary, "ofrep", ofrep_env(mixed), *CHECKS)
    assert code == 0, out
    assert out[-1] == f"all {len(CHECKS)} answers right"


def test_rpc_over_connect(binary: Path, mixed: RunningSidecar) -> None:
    address = mixed.sidecar.ofrep_address
    assert address is not None
    env = {"FLAGD_HOST": address.host, "FLAGD_PORT": str(address.port)}
    # flagd.evaluation.v1 cannot leave a value out: a disabled flag arrives as v1's zero value
    # with reason DISABLED, as from flagd, and this provider passes the zero value on
    disabled = check("boolean", "off-flag", True, {}, {"value": False, "reason": "DISABLED"})
    code, out = run(binary, "rpc", env, *CHECKS[:-1], disabled)
    assert code == 0, out
    assert out[-1] == f"all {len(CHECKS)} answers right"


def test_a_wrong_answer_exits_1(binary: Path, mixed: RunningSidecar) -> None:
    wrong = check("boolean", "enabled", False, {}, {"value": False})
    code, out = run(binary, "ofrep", ofrep_env(mixed), wrong)
    assert code == 1, out
    assert out[-1] == "1 of 1 answers wrong" and out[0].startswith("FAIL")


@pytest.fixture(scope="module")
def synced() -> Iterator[RunningSidecar]:
    settings = loopback_settings(sync_listen=LOCAL_ANY_PORT)
    with running_sidecar(settings, snapshot("v2")) as running:
        yield running


def test_in_process_agrees_on_random_contexts_and_follows_a_swap(
    binary: Path, synced: RunningSidecar
) -> None:
    address = synced.sidecar.sync_address
    assert address is not None
    flags = flags_document("v2")["flags"]
    names = sorted(name for name in flags if not name.startswith(OLD_CORE))
    rng = random.Random(SEED)
    checks = []
    with grpc.insecure_channel(synced.tcp_target) as channel:
        stub = v2_grpc.ServiceStub(channel)
        for _ in range(CONTEXTS):
            name = rng.choice(names)
            kind = kind_of(flags[name])
            default = METHODS[kind][2]
            context = random_context(rng)
            answer = fader_answer(stub, kind, name, default, context)
            checks.append(check(kind, name, default, context, expected(answer)))
    env = {"FLAGD_HOST": address.host, "FLAGD_PORT": str(address.port)}
    checker = Checker([str(binary), "in-process"], EXAMPLE, env)
    checker.send(*checks, {"wait": "change"})
    lines = checker.wait_for("waiting for a change")
    failed = [line for line in lines if line.startswith(("FAIL", "     expected"))]
    assert not failed, failed[:80]
    assert sum(line.startswith("ok") for line in lines) == CONTEXTS
    synced.store.swap(snapshot("v2", **{"boolean-flag": "off"}))
    checker.wait_for("changed")
    after = {"value": False, "variant": "off", "reason": "STATIC"}
    checker.send(check("boolean", "boolean-flag", True, {}, after))
    code, out = checker.finish()
    assert code == 0, out
    assert out[-1] == f"all {CONTEXTS + 1} answers right"
