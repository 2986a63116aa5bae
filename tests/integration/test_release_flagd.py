"""flagd-dialect flags released through the control plane, with real processes: `fader
controlplane`, the `fader flags` CLI, and `fader serve` fed by the control plane answering
over flagd's gRPC evaluation API, OFREP and flagd sync. Apply, kill, revive, history and
rollback of a flagd flag reach the sidecar; the dimmer refuses one, saying why."""

from __future__ import annotations

import contextlib
import json
import re
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from fader.pb.flagd.evaluation.v2 import evaluation_pb2 as v2
from fader.pb.flagd.evaluation.v2 import evaluation_pb2_grpc as v2_grpc
from fader.pb.flagd.sync.v1 import sync_pb2 as sync_pb
from fader.pb.flagd.sync.v1 import sync_pb2_grpc as sync_grpc

from tests.controlplane.flagd_docs import flagd_file
from tests.integration.harness import serve_process, short_tmp
from tests.integration.release_processes import control_plane, fader, free_port
from tests.waiting import wait_for

PRO = {"targetingKey": "user-1", "plan": "pro"}


@pytest.fixture
def tmp() -> Iterator[Path]:
    with short_tmp() as path:
        yield path


@contextlib.contextmanager
def sidecar(log_dir: Path, plane_target: str) -> Iterator[tuple[str, str]]:
    """`fader serve` fed by the control plane, with OFREP on; (gRPC target, OFREP address)."""
    ofrep = f"127.0.0.1:{free_port()}"
    options = [
        "--control-plane", plane_target, "--grpc-listen", "127.0.0.1:0",
        "--mgmt-listen", "127.0.0.1:0", "--ofrep-listen", ofrep, "--sidecar-id", "sc",
    ]  # fmt: skip
    with serve_process(options, log_dir, log_name="sc.log") as process:
        yield process.wait_listening()["grpc"], ofrep


def resolve(target: str, flag: str, context: dict[str, Any]) -> tuple[bool | None, str]:
    """flagd's gRPC evaluation API (v2): (value, reason); value None when none is sent."""
    request = v2.ResolveBooleanRequest(flag_key=flag)
    request.context.update(context)
    with grpc.insecure_channel(target) as channel:
        try:
            answer = v2_grpc.ServiceStub(channel).ResolveBoolean(request, timeout=5)
        except grpc.RpcError as err:
            return None, str(err.code())
    return (answer.value if answer.HasField("value") else None), answer.reason


def ofrep(address: str, flag: str, context: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps({"context": context}).encode()
    request = urllib.request.Request(
        f"http://{address}/ofrep/v1/evaluate/flags/{flag}", data=body, method="POST"
    )
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=5) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def synced(target: str) -> dict[str, Any]:
    """The flagd configuration flagd sync hands in-process providers."""
    with grpc.insecure_channel(target) as channel:
        stub = sync_grpc.FlagSyncServiceStub(channel)
        answer = stub.FetchAllFlags(sync_pb.FetchAllFlagsRequest(), timeout=5)
    configuration: dict[str, Any] = json.loads(answer.flag_configuration)
    return configuration


def succeeds(*args: str, server: str) -> str:
    done = fader(server, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def soon(check: Callable[[], bool], what: str) -> None:
    wait_for(check, timeout=20, what=what)


def test_a_flagd_flag_is_released_killed_and_rolled_back_through_a_sidecar(tmp: Path) -> None:
    flags_file = tmp / "shop.flagd.json"
    flags_file.write_text(json.dumps(flagd_file()))
    with (
        control_plane(tmp, "--data-dir", str(tmp / "data")) as plane,
        sidecar(tmp, plane.target) as (target, ofrep_address),
    ):
        server = plane.server
        applied = succeeds(
            "flags", "apply", str(flags_file), "--reason", "flagd flags", server=server
        )
        assert "+ flagd new-ui (added)" in applied and "applied as version 1" in applied
        soon(lambda: resolve(target, "new-ui", PRO) == (True, "TARGETING_MATCH"), "new-ui on")
        assert resolve(target, "new-ui", {"targetingKey": "u2", "plan": "free"}) == (
            False,
            "TARGETING_MATCH",
        )
        assert ofrep(ofrep_address, "color", PRO)["value"] == "#f00"
        assert synced(target)["metadata"] == {"flagSetId": "shop"}

        listing = succeeds("flags", "list", server=server)
        assert re.search(r"new-ui \(flagd\)\s+active", listing), listing
        refused = fader(server, "flags", "dial", "new-ui", "5")
        assert refused.returncode == 1
        assert "refused (422): 'new-ui' is a flagd-dialect flag: the dimmer" in refused.stderr

        succeeds("flags", "kill", "new-ui", "--reason", "errors up", server=server)
        soon(lambda: resolve(target, "new-ui", PRO) == (None, "DISABLED"), "new-ui disabled")
        killed = ofrep(ofrep_address, "new-ui", PRO)
        assert killed["reason"] == "DISABLED" and "value" not in killed
        assert synced(target)["flags"]["new-ui"]["state"] == "DISABLED"

        succeeds("flags", "revive", "new-ui", server=server)
        soon(lambda: resolve(target, "new-ui", PRO) == (True, "TARGETING_MATCH"), "revived")

        history = succeeds("flags", "history", "new-ui", server=server)
        assert [line.split()[0] for line in history.splitlines()[1:] if line[:1].isdigit()] == [
            "3",
            "2",
            "1",
        ], history
        assert '$.state: "ENABLED" -> "DISABLED"' in history
        succeeds("flags", "rollback", "new-ui", "--to", "2", server=server)
        soon(lambda: resolve(target, "new-ui", PRO) == (None, "DISABLED"), "version 2's state")
        shown = succeeds("flags", "get", "new-ui", server=server)
        assert "state:      killed (DISABLED)" in shown and "version:    4" in shown
