"""What the example-program tests share (clients/node, clients/go, clients/java): a skip with
the reason when a toolchain is missing, the build, the sidecars the examples run against, and
the checkers those examples are.

A checker (clients/node/check.mjs, clients/go, clients/java) reads checks on stdin as JSON
lines, asks each through a stock OpenFeature provider, prints "ok" or "FAIL" per check and
ends with "all N answers right", or "M of N answers wrong" and exit status 1.
"""

from __future__ import annotations

import json
import os
import queue
import random
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from fader.pb.flagd.evaluation.v2 import evaluation_pb2_grpc as v2_grpc

from tests.api.test_ofrep import mixed_snapshot
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

CLIENTS = Path(__file__).resolve().parents[2] / "clients"
TIMEOUT = 120.0
BUILD_TIMEOUT = 600.0
OFREP_TOKEN = "example-token"

Check = dict[str, Any]
MakeCheck = Callable[[str, str, Any, dict[str, Any], dict[str, Any]], Check]


def needs(*tools: str, to: str) -> list[pytest.MarkDecorator]:
    """A test module's marks: skipped when a toolchain is not installed, saying which and why
    (pytest's -rs prints the reason; anything else that goes wrong fails), and a time limit
    that lets the first test include a cold build (BUILD_TIMEOUT) before its own waits, which
    are bounded by TIMEOUT each."""
    return [
        pytest.mark.skipif(
            any(shutil.which(tool) is None for tool in tools),
            reason=f"{' and '.join(tools)} needed to {to}",
        ),
        pytest.mark.timeout(BUILD_TIMEOUT + 2 * TIMEOUT),
    ]


def build(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    """Runs a toolchain's build or install step; a failure shows its whole output."""
    done = subprocess.run(
        command,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def provider_free_env(env: dict[str, str]) -> dict[str, str]:
    """This process's environment without provider settings (a developer's FLAGD_HOST must
    not point an example elsewhere), plus `env`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FLAGD_", "OFREP_"))}
    return {**base, **env}


def check(kind: str, flag: str, default: Any, context: dict[str, Any], expect: dict[str, Any]):
    return {"type": kind, "flag": flag, "default": default, "context": context, "expect": expect}


def expected(answer: dict[str, Any]) -> dict[str, Any]:
    """What a checker must see, from an answer read as a provider reports it."""
    return {
        "value": answer["value"],
        "variant": answer["variant"],
        "reason": answer["reason"],
        "errorCode": answer["error_code"],
    }


def answers(make_check: MakeCheck = check) -> list[Check]:
    """What every provider answers alike from `mixed_snapshot` (over RPC and OFREP): every type,
    a Split flag, not found and a type mismatch. A disabled flag is not here: providers differ
    on it, so each test adds what its provider does."""
    return [
        make_check(
            "boolean", "enabled", False, {}, {"value": True, "variant": "on", "reason": "STATIC"}
        ),
        make_check(
            "string",
            "greeting",
            "x",
            {"user": {"plan": "pro"}},
            {"value": "hey", "variant": "yo", "reason": "TARGETING_MATCH"},
        ),
        make_check("integer", "limit", 0, {}, {"value": 10, "variant": "low", "reason": "STATIC"}),
        make_check("float", "ratio", 0.25, {}, {"value": 1.0, "variant": "one"}),
        make_check("object", "style", {}, {}, {"value": {"color": "blue"}, "variant": "blue"}),
        make_check(
            "string",
            "banner",
            "x",
            {"targetingKey": "u1", "plan": "pro"},
            {"value": "on", "variant": "on"},
        ),
        make_check(
            "string", "no-such-flag", "fb", {}, {"value": "fb", "errorCode": "FLAG_NOT_FOUND"}
        ),
        make_check(
            "boolean", "greeting", False, {}, {"value": False, "errorCode": "TYPE_MISMATCH"}
        ),
    ]


class Checker:
    """A checker process: checks in on stdin, verdicts out on stdout."""

    def __init__(self, command: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env=provider_free_env(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # its output lines, then None once it closed its output
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def send(self, *messages: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        for message in messages:
            self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def wait_for(self, text: str) -> list[str]:
        seen: list[str] = []
        while True:
            try:
                line = self.lines.get(timeout=TIMEOUT)
            except queue.Empty:
                raise AssertionError(f"no {text!r} from the checker: {seen[-5:]}") from None
            if line is None:
                raise AssertionError(f"the checker ended before {text!r}: {seen[-10:]}")
            seen.append(line)
            if line == text:
                return seen

    def finish(self) -> tuple[int, list[str]]:
        """Its exit status and every line it wrote after the ones already read: read to the
        end of its output, which the reading thread may still be at when the process has
        exited (taking only what was queued then lost its last line, in one CI run)."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        code = self.process.wait(TIMEOUT)
        out: list[str] = []
        while (line := self.lines.get(timeout=TIMEOUT)) is not None:
            out.append(line)
        return code, [line for line in out if line]


def run(
    command: list[str], cwd: Path, env: dict[str, str], *checks: Check
) -> tuple[int, list[str]]:
    """One checker run over `checks`: its exit status and output lines."""
    checker = Checker(command, cwd, env)
    checker.send(*checks)
    return checker.finish()


def assert_all_right(code: int, out: list[str], checks: int) -> None:
    assert code == 0, out
    assert out[-1] == f"all {checks} answers right", out


def assert_one_wrong(command: list[str], cwd: Path, env: dict[str, str]) -> None:
    """A wrong expected answer makes the checker exit 1, so a passing run means something."""
    wrong = check("boolean", "enabled", False, {}, {"value": False})
    code, out = run(command, cwd, env, wrong)
    assert code == 1, out
    assert out[-1] == "1 of 1 answers wrong", out
    assert any(line.startswith("FAIL") for line in out), out


@contextmanager
def mixed_sidecar() -> Iterator[RunningSidecar]:
    """`mixed_snapshot` (flagd-dialect and Split flags) on gRPC, a Unix socket and OFREP, whose
    port also serves flagd's API over Connect; OFREP and Connect want `OFREP_TOKEN`."""
    with short_tmp() as tmp:
        (tmp / "tokens").write_text(OFREP_TOKEN + "\n")
        settings = loopback_settings(
            uds=tmp / "x.sock", ofrep_listen=LOCAL_ANY_PORT, ofrep_token_file=tmp / "tokens"
        )
        with running_sidecar(settings, mixed_snapshot()) as running:
            yield running


@contextmanager
def synced_sidecar() -> Iterator[RunningSidecar]:
    """The flagd testbed's flags on flagd sync, for in-process providers."""
    with running_sidecar(loopback_settings(sync_listen=LOCAL_ANY_PORT), snapshot("v2")) as running:
        yield running


def rpc_env(sidecar: RunningSidecar, over: str) -> dict[str, str]:
    """flagd RPC provider settings: the gRPC port ("tcp") or the Unix socket ("uds")."""
    if over == "uds":
        return {"FLAGD_SOCKET_PATH": str(sidecar.sidecar.uds_path)}
    address = sidecar.sidecar.grpc_address
    assert address is not None
    return {"FLAGD_HOST": address.host, "FLAGD_PORT": str(address.port)}


def ofrep_env(sidecar: RunningSidecar) -> dict[str, str]:
    """OFREP provider settings: the endpoint and the token, as Go's and Java's checkers read it
    (OFREP_BEARER_TOKEN) and as Node's does (OFREP_HEADERS)."""
    return {
        "OFREP_ENDPOINT": f"http://{sidecar.sidecar.ofrep_address}",
        "OFREP_BEARER_TOKEN": OFREP_TOKEN,
        "OFREP_HEADERS": f"Authorization=Bearer%20{OFREP_TOKEN}",
    }


def sync_env(sidecar: RunningSidecar) -> dict[str, str]:
    address = sidecar.sidecar.sync_address
    assert address is not None
    return {"FLAGD_HOST": address.host, "FLAGD_PORT": str(address.port)}


def random_checks(
    sidecar: RunningSidecar, seed: int, leave_out: tuple[str, ...], make_check: MakeCheck
) -> list[Check]:
    """CONTEXTS checks of random testbed flags in random contexts, each expecting Fader's own
    answer (flagd.evaluation.v2 over gRPC); flags named with a `leave_out` prefix are left out."""
    flags = flags_document("v2")["flags"]
    names = sorted(name for name in flags if not name.startswith(leave_out))
    rng = random.Random(seed)
    checks = []
    with grpc.insecure_channel(sidecar.tcp_target) as channel:
        stub = v2_grpc.ServiceStub(channel)
        for _ in range(CONTEXTS):
            name = rng.choice(names)
            kind = kind_of(flags[name])
            default = METHODS[kind][2]
            context = random_context(rng)
            answer = fader_answer(stub, kind, name, default, context)
            checks.append(make_check(kind, name, default, context, expected(answer)))
    return checks


def assert_in_process_agrees_and_follows_a_swap(
    command: list[str],
    cwd: Path,
    env: dict[str, str],
    sidecar: RunningSidecar,
    *,
    seed: int,
    leave_out: tuple[str, ...] = (),
    make_check: MakeCheck = check,
) -> None:
    """An in-process provider fed by Fader's flagd sync agrees with Fader on random contexts,
    then sees a snapshot swap (its configuration-changed event, then the new answer)."""
    checks = random_checks(sidecar, seed, leave_out, make_check)
    checker = Checker(command, cwd, {**sync_env(sidecar), **env})
    checker.send(*checks, {"wait": "change"})
    lines = checker.wait_for("waiting for a change")
    failed = [line for line in lines if line.startswith(("FAIL", "     expected"))]
    assert not failed, failed[:20]
    assert sum(line.startswith("ok") for line in lines) == CONTEXTS
    sidecar.store.swap(snapshot("v2", **{"boolean-flag": "off"}))
    checker.wait_for("changed")
    after = {"value": False, "variant": "off", "reason": "STATIC", "errorCode": None}
    checker.send(make_check("boolean", "boolean-flag", True, {}, after))
    assert_all_right(*checker.finish(), CONTEXTS + 1)
