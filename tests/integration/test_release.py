"""Releases with real processes: `fader controlplane` (its store), `fader serve` connected to
it, and the `fader flags` / `fader rollout` CLI. What a sidecar answers is read for 10,000
keys at a time over EvaluateBatch."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.controlplane.apiclient import ApiClient, flag_path
from tests.fader.rules.builders import condition, flag, snapshot_doc
from tests.integration.harness import short_tmp
from tests.integration.release_processes import (
    Answers,
    answers,
    control_plane,
    fader,
    free_port,
    served_version,
    sidecar,
)
from tests.postgres import create_database, postgres_server, skip_reason
from tests.waiting import wait_for

TOLERANCE = 1.5  # percentage points, for 10,000 keys


@pytest.fixture
def tmp() -> Iterator[Path]:
    with short_tmp() as path:
        yield path


def released(name: str = "checkout", percent: int = 0) -> dict[str, Any]:
    rule = condition(partitions={"on": percent, "off": 100 - percent}, label="default rule")
    return flag(name, rule, defaultTreatment="off")


def write(path: Path, document: Any) -> Path:
    path.write_text(json.dumps(document))
    return path


def version_of(output: str) -> int:
    match = re.search(r"version (\d+)\)", output)
    assert match, output
    return int(match.group(1))


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


def wait_served(target: str, flag_name: str, version: int) -> Answers:
    wait_for(lambda: served_version(target, flag_name) >= version, what=f"sidecar at {version}")
    result = answers(target, flag_name)
    assert result.version == version
    return result


def test_dial_kill_revive_and_rollback_through_the_cli(tmp: Path) -> None:
    with control_plane(tmp, "--data-dir", str(tmp / "data")) as plane, sidecar(
        tmp, plane.target
    ) as target:  # fmt: skip
        cli = lambda *args: fader(plane.server, *args)  # noqa: E731
        out = ok(cli("flags", "apply", str(write(tmp / "checkout.json", snapshot_doc(released())))))
        assert "+ flag checkout (added)" in out and "applied as version 1" in out
        seen = wait_served(target, "checkout", 1)
        assert seen.having("on") == set()
        at: dict[int, set[str]] = {0: set()}
        previous = 0
        for percent in (5, 25, 50, 100):
            out = ok(cli("flags", "dial", "checkout", str(percent), "--reason", f"to {percent}"))
            assert f"checkout: on {percent}%" in out
            served = wait_served(target, "checkout", version_of(out))
            assert abs(served.share("on") - percent) <= TOLERANCE, (percent, served.share("on"))
            assert at[previous] <= served.having("on"), f"a key lost 'on' when dialled to {percent}"
            at[percent], previous = served.having("on"), percent
        out = ok(cli("flags", "dial", "checkout", "10%"))
        ten = wait_served(target, "checkout", version_of(out)).having("on")
        assert abs(100 * len(ten) / 10_000 - 10) <= TOLERANCE
        assert at[5] <= ten <= at[25], "on the way down, only the keys added last leave"

        out = ok(cli("flags", "kill", "checkout", "--reason", "errors up"))
        killed = wait_served(target, "checkout", version_of(out))
        assert set(killed.treatments.values()) == {"off"} and killed.labels == {"killed"}
        assert "every key gets 'off'" in out
        out = ok(cli("flags", "revive", "checkout"))
        assert wait_served(target, "checkout", version_of(out)).having("on") == ten

        history = ok(cli("flags", "history", "checkout"))
        five_version = next(
            int(line.split()[0]) for line in history.splitlines() if line.endswith("to 5")
        )
        out = ok(cli("flags", "rollback", "checkout", "--to", str(five_version)))
        rolled = version_of(out)
        assert rolled == 9 and wait_served(target, "checkout", rolled).having("on") == at[5]
        history = ok(cli("flags", "history", "checkout"))
        assert "rollback" in history and "kill" in history and "errors up" in history
        listing = ok(cli("flags", "list"))
        assert re.search(r"checkout\s+active\s+on 5%\s+9\s", listing), listing
        assert json.loads(ok(cli("flags", "get", "checkout", "--json")))["name"] == "checkout"
        status = local("status", "--control-plane", plane.target)
        assert re.search(r"sc\s+connected\s+9\s+-", status.stdout), status.stdout + status.stderr


def local(*args: str) -> subprocess.CompletedProcess[str]:
    """A `fader` command that does not talk to the API (status, validate)."""
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args], capture_output=True, text=True, timeout=30
    )


def test_two_writers_on_one_base_version(tmp: Path) -> None:
    with control_plane(tmp, "--data-dir", str(tmp / "data")) as plane:
        ok(fader(plane.server, "flags", "apply", str(write(tmp / "f.json", released()))))
        results: list[subprocess.CompletedProcess[str]] = []
        barrier = threading.Barrier(2)

        def dial(percent: int) -> None:
            barrier.wait()
            results.append(
                fader(
                    plane.server, "flags", "dial", "checkout", str(percent), "--base-version", "1"
                )
            )

        threads = [threading.Thread(target=dial, args=(p,)) for p in (20, 30)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        codes = sorted(r.returncode for r in results)
        assert codes == [0, 1], [r.stderr for r in results]
        loser = next(r for r in results if r.returncode == 1)
        assert "refused (409)" in loser.stderr and "now at version 2" in loser.stderr
        history = ApiClient(plane.server).get(flag_path("checkout", "/history"))["versions"]
        assert [h["action"] for h in history] == ["dial", "apply"]


def plan(server: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = ApiClient(server).get(flag_path(name, "/rollout"))
    return result


def test_a_rollout_plan_runs_by_itself_and_survives_a_restart(tmp: Path) -> None:
    grpc_port, http_port = free_port(), free_port()
    data = ["--data-dir", str(tmp / "data")]
    with sidecar(tmp, f"127.0.0.1:{grpc_port}") as target:
        with control_plane(tmp, *data, grpc_port=grpc_port, http_port=http_port) as plane:
            ok(fader(plane.server, "flags", "apply", str(write(tmp / "f.json", released()))))
            out = ok(
                fader(
                    plane.server,
                    "rollout",
                    "start",
                    "checkout",
                    "--steps",
                    "1,5,25,50,100",
                    "--hold",
                    "1s",
                    "--reason",
                    "launch",
                )
            )
            assert "rollout started, on at 1 % (step 1/5" in out
            wait_for(lambda: plan(plane.server, "checkout")["step"] >= 2, what="step 2")
            plane.process.signal(signal.SIGTERM)
            assert plane.process.wait(10) == 0
        step_before = plan_step_from_store(tmp)
        assert 2 <= step_before < 5
        with control_plane(
            tmp, *data, name="cp2.log", grpc_port=grpc_port, http_port=http_port
        ) as plane:  # fmt: skip
            wait_for(
                lambda: plan(plane.server, "checkout")["status"] == "completed",
                timeout=20, what="the plan completes after the restart",
            )  # fmt: skip
            final = plan(plane.server, "checkout")
            assert final["percent"] == 100
            version = ApiClient(plane.server).get("/api/v1/flags")["version"]
            assert wait_served(target, "checkout", version).share("on") == 100.0
            history = ApiClient(plane.server).get(flag_path("checkout", "/history"))["versions"]
            reasons = [h["reason"] for h in reversed(history)]
            assert reasons[1:] == [
                "rollout step 1/5: launch", "rollout step 2/5", "rollout step 3/5",
                "rollout step 4/5", "rollout step 5/5",
            ]  # fmt: skip
            status = ok(fader(plane.server, "rollout", "status", "checkout"))
            assert "completed, on at 100 %" in status


def plan_step_from_store(tmp: Path) -> int:
    """The step the stopped control plane left in its store (read from the SQLite file)."""
    with sqlite3.connect(tmp / "data" / "fader.db") as db:
        (raw,) = db.execute("SELECT plan FROM fader_rollouts WHERE flag = 'checkout'").fetchone()
    return int(json.loads(raw)["index"]) + 1


def test_pause_resume_abort(tmp: Path) -> None:
    with control_plane(tmp, "--data-dir", str(tmp / "data")) as plane, sidecar(
        tmp, plane.target
    ) as target:  # fmt: skip
        cli = lambda *args: fader(plane.server, *args)  # noqa: E731
        ok(cli("flags", "apply", str(write(tmp / "f.json", released()))))
        ok(cli("rollout", "start", "checkout", "--steps", "10,20,30,40", "--hold", "1s"))
        out = ok(cli("rollout", "pause", "checkout", "--reason", "checking"))
        assert "paused, on at 10 %" in out
        version = ApiClient(plane.server).get("/api/v1/flags")["version"]
        wait_served(target, "checkout", version)
        time.sleep(1.5)  # longer than the hold
        assert plan(plane.server, "checkout")["step"] == 1  # paused: no step taken
        ok(cli("rollout", "resume", "checkout"))
        wait_for(lambda: plan(plane.server, "checkout")["step"] >= 2, what="step 2 after resume")
        out = ok(cli("rollout", "abort", "checkout", "--reason", "enough"))
        assert "aborted" in out
        version = ApiClient(plane.server).get("/api/v1/flags")["version"]
        assert wait_served(target, "checkout", version).having("on") == set()
        again = cli("rollout", "abort", "checkout")
        assert again.returncode == 1 and "refused (409)" in again.stderr


def test_bad_input_is_refused_and_changes_nothing(tmp: Path) -> None:
    tokens = tmp / "tokens"
    tokens.write_text("editor ed-secret ops\nviewer view-secret\n")
    (tmp / "editor").write_text("ed-secret\n")
    (tmp / "viewer").write_text("view-secret\n")
    (tmp / "wrong").write_text("guess\n")
    args = ["--data-dir", str(tmp / "data"), "--api-tokens", str(tokens)]
    with control_plane(tmp, *args) as plane:
        editor = tmp / "editor"
        ok(fader(plane.server, "flags", "apply", str(write(tmp / "f.json", released())),
                 token_file=editor))  # fmt: skip
        bad_doc = snapshot_doc(released("a"), released("b"))
        bad_doc["flags"][0]["algo"] = 4
        bad_doc["flags"][1]["conditions"][0]["partitions"][0]["size"] = 3
        bad = write(tmp / "bad.json", bad_doc)
        refused = fader(plane.server, "flags", "apply", str(bad), token_file=editor)
        assert refused.returncode == 1 and "refused (422)" in refused.stderr
        validate = local("validate", str(bad))
        expected = [line for line in validate.stderr.splitlines() if ": error: " in line]
        assert len(expected) == 2
        assert [line for line in refused.stderr.splitlines() if ": error: " in line] == expected
        api = ApiClient(plane.server, "ed-secret")
        assert api.get("/api/v1/flags")["version"] == 1  # unchanged

        missing = fader(plane.server, "flags", "get", "nope", token_file=editor)
        assert missing.returncode == 1 and "refused (404)" in missing.stderr
        wrong = fader(plane.server, "flags", "list", token_file=tmp / "wrong")
        assert wrong.returncode == 1 and "refused (401)" in wrong.stderr
        anonymous = fader(plane.server, "flags", "list")
        assert anonymous.returncode == 1 and "refused (401)" in anonymous.stderr
        viewer = tmp / "viewer"
        assert "checkout" in ok(fader(plane.server, "flags", "list", token_file=viewer))
        denied = fader(plane.server, "flags", "kill", "checkout", "--reason", "x",
                       token_file=viewer)  # fmt: skip
        assert denied.returncode == 1 and "refused (403)" in denied.stderr
        assert api.get("/api/v1/flags")["version"] == 1
        usage = fader(plane.server, "flags", "dial", "checkout", "150", token_file=editor)
        assert usage.returncode == 2
        assert api.get(flag_path("checkout"))["author"] == "ops"


@pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))
def test_two_replicas_on_one_postgresql_serve_the_same_version(tmp: Path) -> None:
    with postgres_server() as server:
        dsn = create_database(server, "flags")
        store = ["--store", dsn]
        with (
            control_plane(tmp, *store, name="a.log") as a,
            control_plane(tmp, *store, name="b.log") as b,
            sidecar(tmp, a.target, "on-a.log") as on_a,
            sidecar(tmp, b.target, "on-b.log") as on_b,
        ):
            out = ok(fader(a.server, "flags", "apply", str(write(tmp / "f.json", released()))))
            assert "applied as version 1" in out
            for target in (on_a, on_b):
                assert wait_served(target, "checkout", 1).having("on") == set()
            out = ok(fader(b.server, "flags", "dial", "checkout", "40"))
            version = version_of(out)
            on_b_answers = wait_served(on_b, "checkout", version)
            on_a_answers = wait_served(on_a, "checkout", version)
            assert on_a_answers.treatments == on_b_answers.treatments
            assert abs(on_a_answers.share("on") - 40) <= TOLERANCE
            out = ok(fader(a.server, "flags", "kill", "checkout", "--reason", "replica test"))
            for target in (on_a, on_b):
                assert wait_served(target, "checkout", version_of(out)).labels == {"killed"}
            assert "replica test" in ok(fader(b.server, "flags", "history", "checkout"))
