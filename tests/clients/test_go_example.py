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

import pytest

from tests.clients.examples import (
    CLIENTS,
    answers,
    assert_all_right,
    assert_in_process_agrees_and_follows_a_swap,
    assert_one_wrong,
    build,
    check,
    needs,
    ofrep_env,
    run,
)
from tests.integration.harness import RunningSidecar

EXAMPLE = CLIENTS / "go"
SEED = 1203

pytestmark = needs("go", to="build and run the Go example")

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

OFREP_CHECKS = [
    *answers(),
    check("boolean", "off-flag", True, {}, {"value": True, "reason": "DISABLED"}),
]

RPC_CHECKS = [
    *answers(),
    # flagd.evaluation.v1 cannot leave a value out: a disabled flag arrives as v1's zero value
    # with reason DISABLED, as from flagd, and this provider passes the zero value on
    check("boolean", "off-flag", True, {}, {"value": False, "reason": "DISABLED"}),
]


@pytest.fixture(scope="module")
def binary() -> str:
    """`go build`: modules from the Go module proxy as go.sum pins them (buf.build's generated
    flagd modules are not in the public checksum database, hence GONOSUMDB)."""
    out = EXAMPLE / "bin" / "check"
    env = {"GONOSUMDB": "buf.build/gen/go", "GOFLAGS": "-mod=readonly"}
    build(["go", "build", "-o", str(out), "."], EXAMPLE, env)
    return str(out)


def test_ofrep(binary: str, mixed: RunningSidecar) -> None:
    code, out = run([binary, "ofrep"], EXAMPLE, ofrep_env(mixed), *OFREP_CHECKS)
    assert_all_right(code, out, len(OFREP_CHECKS))


def test_rpc_over_connect(binary: str, mixed: RunningSidecar) -> None:
    address = mixed.sidecar.ofrep_address
    assert address is not None
    env = {"FLAGD_HOST": address.host, "FLAGD_PORT": str(address.port)}
    code, out = run([binary, "rpc"], EXAMPLE, env, *RPC_CHECKS)
    assert_all_right(code, out, len(RPC_CHECKS))


def test_a_wrong_answer_exits_1(binary: str, mixed: RunningSidecar) -> None:
    assert_one_wrong([binary, "ofrep"], EXAMPLE, ofrep_env(mixed))


def test_in_process_agrees_on_random_contexts_and_follows_a_swap(
    binary: str, synced: RunningSidecar
) -> None:
    assert_in_process_agrees_and_follows_a_swap(
        [binary, "in-process"], EXAMPLE, {}, synced, seed=SEED, leave_out=OLD_CORE
    )
