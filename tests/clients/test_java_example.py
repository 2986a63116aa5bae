"""clients/java: the OpenFeature Java SDK with the stock flagd and OFREP providers, built with
Maven (dependencies from Maven Central, cached in ~/.m2), run against a real sidecar:

- rpc: flagd-dialect and Split flags over flagd.evaluation, on TCP and on the Unix socket;
- in-process: the testbed's flags synced by Fader, 1,000 random contexts agreeing with Fader's
  gRPC answers, then a snapshot swap;
- ofrep: every type, a Split flag, not found, type mismatch, disabled, with a bearer token;
- a wrong expected answer exits 1, in both builds.

The flagd provider is 0.11.8 (Maven Central has no newer one here) and runs on SDK 1.15.1
only; the OFREP provider 0.0.2 needs SDK 1.16.0 or newer, so clients/java builds twice from
the same sources: `mvn package` (flagd, SDK 1.15.1) and `mvn -P ofrep package` (SDK 1.22.0,
into target/ofrep). The flagd provider's in-process evaluator predates the testbed's current
semantics: a disabled flag is FLAG_NOT_FOUND, a missing default variant TYPE_MISMATCH,
`fractional` and `sem_ver` follow older rules. The in-process check leaves those flags out
(`OLD_CORE`); every other testbed flag must agree.

Skipped, with the reason, only when `java` or `mvn` is not installed.
"""

from __future__ import annotations

from pathlib import Path

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
    rpc_env,
    run,
)
from tests.integration.harness import RunningSidecar

EXAMPLE = CLIENTS / "java"
SEED = 1204

pytestmark = needs("java", "mvn", to="build and run the Java example")

# testbed flags whose meaning changed after the provider's evaluator (see the docstring)
OLD_CORE = (
    "fractional-",
    "disabled-",
    "no-default-",
    "null-default-",
    "undefined-default-",
    "semver-",
    "equal-greater-lesser-version-flag",
    "major-minor-version-flag",
)

RPC_CHECKS = [
    *answers(),
    # flagd.evaluation.v1 (which this provider calls) cannot leave a value out, so a disabled
    # flag arrives as v1's zero value with reason DISABLED, as from flagd; the provider 0.11.8
    # passes that zero value on instead of the code default
    check("boolean", "off-flag", True, {}, {"value": False, "reason": "DISABLED"}),
]

OFREP_CHECKS = [
    *answers(),
    # a disabled flag answers the code default; the OFREP provider 0.0.2 takes the spec's
    # value-less DISABLED answer for a missing flag and says FLAG_NOT_FOUND
    check("boolean", "off-flag", True, {}, {"value": True, "errorCode": "FLAG_NOT_FOUND"}),
]


def checker_command(build_dir: Path) -> list[str]:
    """The java command of a build: its classes and target/classpath.txt's dependencies."""
    classpath = (build_dir / "classpath.txt").read_text().strip()
    return ["java", "-cp", f"{build_dir / 'classes'}:{classpath}", "dev.fader.example.Check"]


@pytest.fixture(scope="module")
def flagd_command() -> list[str]:
    """`mvn package`: the checker with the flagd provider's SDK."""
    build(["mvn", "-q", "-B", "package"], EXAMPLE)
    return checker_command(EXAMPLE / "target")


@pytest.fixture(scope="module")
def ofrep_command() -> list[str]:
    """`mvn -P ofrep package`: the checker with the OFREP provider's SDK."""
    build(["mvn", "-q", "-B", "-P", "ofrep", "package"], EXAMPLE)
    return checker_command(EXAMPLE / "target" / "ofrep")


@pytest.mark.parametrize("over", ["tcp", "uds"])
def test_rpc(flagd_command: list[str], mixed: RunningSidecar, over: str) -> None:
    code, out = run([*flagd_command, "rpc"], EXAMPLE, rpc_env(mixed, over), *RPC_CHECKS)
    assert_all_right(code, out, len(RPC_CHECKS))


def test_ofrep(ofrep_command: list[str], mixed: RunningSidecar) -> None:
    code, out = run([*ofrep_command, "ofrep"], EXAMPLE, ofrep_env(mixed), *OFREP_CHECKS)
    assert_all_right(code, out, len(OFREP_CHECKS))


def test_a_wrong_answer_exits_1(flagd_command: list[str], mixed: RunningSidecar) -> None:
    assert_one_wrong([*flagd_command, "rpc"], EXAMPLE, rpc_env(mixed, "tcp"))


def test_a_wrong_ofrep_answer_exits_1(ofrep_command: list[str], mixed: RunningSidecar) -> None:
    assert_one_wrong([*ofrep_command, "ofrep"], EXAMPLE, ofrep_env(mixed))


def test_in_process_agrees_on_random_contexts_and_follows_a_swap(
    flagd_command: list[str], synced: RunningSidecar
) -> None:
    assert_in_process_agrees_and_follows_a_swap(
        [*flagd_command, "in-process"], EXAMPLE, {}, synced, seed=SEED, leave_out=OLD_CORE
    )
