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
DEFAULT_CONSTRAINTS = REPO / "deploy" / "docker" / "constraints.txt"


def find_tool(name: str) -> str | None:
    """Where tools/deploy_check.py looks (tools/ is scripts, not a package to import)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


pytestmark = pytest.mark.skipif(
    find_tool("kubernetes-validate") is None or find_tool("hadolint") is None,
    reason="kubernetes-validate / hadolint not installed (run `make deploy-check`)",
)


def deploy_check(
    manifests: Path, dockerfile: Path, constraints: Path = DEFAULT_CONSTRAINTS
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--manifests",
            str(manifests),
            "--dockerfile",
            str(dockerfile),
            "--constraints",
            str(constraints),
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
    assert "6 of 6 checks passed" in result.stdout


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


def test_a_moving_base_image_tag_fails(tmp_path: Path) -> None:
    """hadolint accepts python:3.11-slim-bookworm; a rebuild would get another Python."""
    manifests, dockerfile = copy_of_deploy(tmp_path)
    text = dockerfile.read_text()
    assert "ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm\n" in text
    dockerfile.write_text(text.replace("python:3.11.7-slim-bookworm", "python:3.11-slim-bookworm"))
    result = deploy_check(manifests, dockerfile)
    assert result.returncode == 1
    assert "'python:3.11-slim-bookworm' is not an exact release" in result.stdout


def test_a_pip_install_without_the_constraints_fails(tmp_path: Path) -> None:
    manifests, dockerfile = copy_of_deploy(tmp_path)
    text = dockerfile.read_text()
    assert text.count("pip install --no-cache-dir -c constraints.txt ") == 2
    dockerfile.write_text(text.replace("-c constraints.txt /wheels", "/wheels"))
    result = deploy_check(manifests, dockerfile)
    assert result.returncode == 1
    assert "pip install without -c constraints: /opt/fader/bin/pip install" in result.stdout


def test_constraints_missing_a_package_or_pinning_a_refused_version_fail(tmp_path: Path) -> None:
    manifests, dockerfile = copy_of_deploy(tmp_path)
    constraints = tmp_path / "constraints.txt"
    lines = DEFAULT_CONSTRAINTS.read_text().splitlines(keepends=True)
    assert any(line.startswith("msgpack==") for line in lines)
    kept = [line for line in lines if not line.startswith("msgpack==")]
    constraints.write_text("".join(kept) + "flask==3.0.0\n")
    result = deploy_check(manifests, dockerfile, constraints)
    assert result.returncode == 1
    assert "msgpack is not pinned" in result.stdout
    assert "flask is pinned but nothing needs it" in result.stdout

    old = [line for line in lines if not line.startswith("grpcio==")] + ["grpcio==1.0.0\n"]
    constraints.write_text("".join(old))
    result = deploy_check(manifests, dockerfile, constraints)
    assert result.returncode == 1
    assert "grpcio==1.0.0 does not satisfy grpcio>=1.70" in result.stdout
