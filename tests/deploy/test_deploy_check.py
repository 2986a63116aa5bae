"""`make deploy-check` (tools/deploy_check.py) passes on deploy/ and fails on broken copies.

Skips when kubernetes-validate or hadolint is not installed (`make deploy-check` installs
them into the venv).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "deploy_check.py"
DEFAULT_MANIFESTS = REPO / "deploy" / "kubernetes"
DEFAULT_DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"


def find_tool(name: str) -> str | None:
    """Where tools/deploy_check.py looks (tools/ is scripts, not a package to import)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


pytestmark = pytest.mark.skipif(
    find_tool("kubernetes-validate") is None or find_tool("hadolint") is None,
    reason="kubernetes-validate / hadolint not installed (run `make deploy-check`)",
)


def deploy_check(manifests: Path, dockerfile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--manifests",
            str(manifests),
            "--dockerfile",
            str(dockerfile),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def copy_of_deploy(tmp_path: Path) -> tuple[Path, Path]:
    manifests = tmp_path / "kubernetes"
    shutil.copytree(DEFAULT_MANIFESTS, manifests)
    dockerfile = tmp_path / "Dockerfile"
    shutil.copy(DEFAULT_DOCKERFILE, dockerfile)
    return manifests, dockerfile


def test_the_shipped_files_pass() -> None:
    result = deploy_check(DEFAULT_MANIFESTS, DEFAULT_DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 of 4 checks passed" in result.stdout


def test_an_unknown_field_in_a_manifest_fails(tmp_path: Path) -> None:
    manifests, dockerfile = copy_of_deploy(tmp_path)
    native = manifests / "sidecar-native.yaml"
    text = native.read_text()
    marker = "          restartPolicy: Always\n"
    assert marker in text
    # A typo'd field: only --strict rejects it (the API server would drop it silently).
    native.write_text(text.replace(marker, marker + "          restartpolicy: Always\n", 1))
    result = deploy_check(manifests, dockerfile)
    assert result.returncode == 1
    assert "sidecar-native.yaml did not validate" in result.stdout + result.stderr
    assert "'restartpolicy' was unexpected" in result.stdout + result.stderr


def test_a_wrong_type_in_a_manifest_fails(tmp_path: Path) -> None:
    manifests, dockerfile = copy_of_deploy(tmp_path)
    plane = manifests / "controlplane.yaml"
    plane.write_text(plane.read_text().replace("containerPort: 8017", "containerPort: grpc", 1))
    result = deploy_check(manifests, dockerfile)
    assert result.returncode == 1
    assert "controlplane.yaml did not validate" in result.stdout + result.stderr


def test_a_native_sidecar_in_the_classic_manifest_fails(tmp_path: Path) -> None:
    """The classic manifest is also checked against a pre-1.28 schema, which has no sidecars."""
    manifests, dockerfile = copy_of_deploy(tmp_path)
    classic = manifests / "sidecar-classic.yaml"
    marker = "        - name: fader\n          image: fader:0.1.0\n"
    text = classic.read_text()
    assert marker in text
    classic.write_text(text.replace(marker, marker + "          restartPolicy: Always\n", 1))
    result = deploy_check(manifests, dockerfile)
    assert result.returncode == 1
    assert "against version 1.25" in result.stdout + result.stderr


def test_a_dockerfile_lint_finding_fails(tmp_path: Path) -> None:
    manifests, dockerfile = copy_of_deploy(tmp_path)
    dockerfile.write_text(dockerfile.read_text() + "FROM python:latest\n")
    result = deploy_check(manifests, dockerfile)
    assert result.returncode == 1
    assert "DL3007" in result.stdout + result.stderr
