"""README's shell examples that need no external tool run as written, from the repository
root, with `.venv/bin` on PATH as README says: a broken example fails here first."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# `make` installs and runs the whole suite: tested by running it, not from here
SKIP = re.compile(r"^make\b")


def examples() -> list[str]:
    text = (REPO / "README.md").read_text()
    lines = []
    for block in re.findall(r"```(?:sh|bash)\n(.*?)```", text, re.S):
        for line in block.splitlines():
            command = line.strip()
            if command and not command.startswith("#") and not SKIP.match(command):
                lines.append(command)
    return lines


def test_there_are_examples_to_run() -> None:
    assert examples(), "README lost its runnable shell examples"


@pytest.mark.parametrize("command", examples())
def test_readme_example_runs_as_written(command: str) -> None:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stdout.strip(), "an example that prints nothing shows nothing to a reader"
