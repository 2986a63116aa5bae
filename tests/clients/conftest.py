"""What the client example tests share: the Node example's dependencies, installed once."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

NODE_EXAMPLE = Path(__file__).resolve().parents[2] / "clients" / "node"
NPM_TIMEOUT = 120.0

needs_node = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="node and npm are needed to run the Node example",
)


@pytest.fixture(scope="session")
def installed() -> Path:
    """`npm ci`: exactly the versions in package-lock.json, from the npm registry (or the
    local npm cache), into clients/node/node_modules (git-ignored)."""
    done = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=NODE_EXAMPLE,
        capture_output=True,
        text=True,
        timeout=NPM_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return NODE_EXAMPLE
