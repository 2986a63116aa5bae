"""Validation issues and the error that carries them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem in a snapshot: which flag (if any), where (JSON path), and what."""

    flag: str | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"flag {self.flag!r} at {self.path}" if self.flag else self.path
        return f"{where}: {self.message}"


class SnapshotError(ValueError):
    """A snapshot was refused; ``issues`` lists every reason, the active one keeps serving."""

    def __init__(self, issues: Sequence[Issue]) -> None:
        self.issues = list(issues)
        count = len(self.issues)
        lines = "\n".join(f"  - {issue}" for issue in self.issues)
        super().__init__(f"snapshot refused ({count} error{'s' if count != 1 else ''}):\n{lines}")
