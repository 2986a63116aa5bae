"""`make run` on a fresh copy of the repository (no .venv): the venv is created, fader installed
from PyPI, the protobuf code generated and the demo sidecar started, and everything printed
up to "listening" fits on one screen (pip's ~80 lines go to .venv/setup.log)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.harness import free_port

REPO = Path(__file__).resolve().parents[1]
SCREEN_LINES = 24
INSTALL_TIMEOUT = 900.0  # a fresh venv: every dependency from PyPI (or pip's cache)


def fresh_copy(destination: Path) -> None:
    """The tracked files as they are in the working tree, as a clone would have them."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


@pytest.mark.slow
@pytest.mark.timeout(INSTALL_TIMEOUT + 60)
def test_make_run_from_a_fresh_clone_fits_on_one_screen(tmp_path: Path) -> None:
    if shutil.which("make") is None or shutil.which("git") is None:
        pytest.fail("make and git are needed (README: `make run`)")
    clone = tmp_path / "clone"
    fresh_copy(clone)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FADER_", "VIRTUAL_ENV"))}
    for name in ("GRPC", "MGMT", "SYNC", "OFREP"):  # the defaults may be taken on this machine
        env[f"FADER_{name}_LISTEN"] = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        ["make", "run"],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + INSTALL_TIMEOUT
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if " listening " in line or time.monotonic() > deadline:
                break
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
    shown = "\n".join(lines)
    assert any(" listening " in line for line in lines), shown
    assert "setup: done" in lines, shown
    assert "Traceback" not in shown
    assert len(lines) <= SCREEN_LINES, f"{len(lines)} lines:\n{shown}"
    assert (clone / ".venv" / "setup.log").stat().st_size > 0, "pip's output is kept"
    print(f"make run from a fresh copy: {len(lines)} lines up to 'listening'")
