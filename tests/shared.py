"""Where the team's shared test vectors live, and a clean skip when they are absent.

The repository is cloned next to ``shared/``; a user's fresh clone has no ``../shared``,
so every test that reads it must skip, not fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SPLIT_VECTORS = SHARED / "vectors" / "split"


def split_vector(name: str) -> Path:
    """Path of a file under shared/vectors/split, skipping the test when it is missing."""
    path = SPLIT_VECTORS / name
    if not path.exists():
        pytest.skip(f"shared test vectors not present: {path}")
    return path
