"""Paths of the test vectors vendored under ``tests/vectors/`` (see the README in each folder).

The data lives in the repository, so a fresh clone runs every test CI runs: a missing file
is an error that fails the test, never a skip.
"""

from __future__ import annotations

from pathlib import Path

VECTORS = Path(__file__).resolve().parent / "vectors"
SPLIT = VECTORS / "split"
FLAGD = VECTORS / "flagd"


def _existing(path: Path) -> Path:
    """``path`` itself, or FileNotFoundError saying which vendored file is gone."""
    if not path.is_file():
        raise FileNotFoundError(f"vendored test vector missing: {path}")
    return path


def split_vector(name: str) -> Path:
    """Path of a file under tests/vectors/split (Split's SDK test data)."""
    return _existing(SPLIT / name)


def flagd_vector(name: str) -> Path:
    """Path of a file under tests/vectors/flagd (the flagd testbed's conformance data)."""
    return _existing(FLAGD / name)
