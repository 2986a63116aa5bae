"""The property: no input file and no request makes a `fader` command or a server entry
point show a Python traceback. Structure-aware hostile inputs (tests/fuzz/hostile.py) go
through `fader validate` in a real process, through `evaluate`, `validate` and `sign` as
the command line runs them, and through the snapshot door every server uses (push, stream,
file and cache all apply through `Applier.apply_bytes`) and the control plane's request
body parser."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

import pytest
from fader.snapshot.limits import SNAPSHOT_LIMITS, SnapshotLimits

from sidecar import cli, keys
from sidecar.controlplane.web import HttpError, Request
from sidecar.delivery.apply import Applier
from sidecar.delivery.store import Store
from tests.fuzz.hostile import hostile_inputs

REPO = Path(__file__).resolve().parents[2]
CASES = '{"flag": "new-checkout", "key": "u"}\n\n{"flag": "pricing-tier", "key": "u"}\n'


def write_all(directory: Path) -> list[tuple[Path, bytes, str]]:
    written = []
    for index, (name, data, fmt) in enumerate(hostile_inputs()):
        path = directory / f"{index:04d}-{name}.{'msgpack' if fmt == 'msgpack' else 'json'}"
        path.write_bytes(data)
        written.append((path, data, fmt))
    return written


def test_fader_validate_in_a_real_process_over_every_hostile_file(tmp_path: Path) -> None:
    written = write_all(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "sidecar", "validate", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        errors="replace",
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in output, output[-3000:]
    judged = sum(1 for path, _, _ in written if f"{path}: " in output)
    assert judged == len(written)
    print(f"fader validate: {len(written)} hostile files, each judged, no traceback")


def test_cli_commands_and_server_doors_over_every_hostile_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = write_all(tmp_path)
    assert keys.keygen_main(["--out", str(tmp_path / "keys"), "--key-id", "k"]) == 0
    key = str(tmp_path / "keys" / "k.key")
    tried = 0
    for path, data, fmt in written:
        for argv in (
            ["evaluate", "--snapshot", str(path)],
            ["validate", str(path)],
            ["sign", "--key", key, "--key-id", "k", "--out", str(tmp_path / "x.sig"), str(path)],
        ):
            monkeypatch.setattr(sys, "stdin", io.StringIO(CASES))
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli.main(argv)  # an exception escaping here is the traceback
            assert code in (0, 1, 2), (argv, code, err.getvalue())
            tried += 1
        outcome = Applier(Store(), limits=SnapshotLimits()).apply_bytes(data, fmt, "fuzz")
        if not outcome.applied:
            assert outcome.reason == "invalid" or outcome.reason in SNAPSHOT_LIMITS, outcome
            assert outcome.errors, outcome
        if fmt == "json":
            request = Request("POST", "/", {}, {}, {}, data, None)
            with contextlib.suppress(HttpError):
                request.json()
        tried += 2
    print(f"{tried} hostile command runs and requests over {len(written)} inputs, none raised")
