"""The outcome of one lookup, as the clients return it."""

from __future__ import annotations

from typing import NamedTuple


class Result(NamedTuple):
    """Treatment, its dynamic config (a JSON string or None), the label that explains it, and
    the snapshot version that answered (None when the client fell back to "control")."""

    treatment: str
    config: str | None
    label: str | None
    version: int | None
