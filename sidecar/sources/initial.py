"""What can be served the moment `fader serve` starts, before any other source answers: the
embedded demo (`--demo`), or the last-known-good cache (`--cache-dir`).

Each is offered once, through the Applier like any other snapshot (so with `--trusted-keys`
a cached snapshot is re-verified), and never changes after that.
"""

from __future__ import annotations

import importlib.resources
import logging
from pathlib import Path
from typing import Any

from fader.snapshot.loader import load_bytes
from fader.snapshot.snapshot import Snapshot

from sidecar.delivery import cache
from sidecar.delivery.apply import Applier, Outcome

log = logging.getLogger(__name__)


def demo_bytes() -> bytes:
    """The embedded demo snapshot (`--demo`, `make run`)."""
    return (importlib.resources.files("sidecar") / "demo" / "demo.json").read_bytes()


def demo_snapshot() -> Snapshot:
    return load_bytes(demo_bytes(), "json", "demo")


class DemoSource:
    """`--demo`: the embedded demo snapshot, applied once at start."""

    def __init__(self, applier: Applier) -> None:
        self._applier = applier
        self._version: int | None = None

    def load(self) -> Outcome:
        outcome = self._applier.apply_bytes(demo_bytes(), "json", "demo")
        self._version = outcome.version if outcome.applied else None
        return outcome

    def start(self) -> None:
        """Nothing to start: the demo never changes."""

    def stop(self) -> None:
        """Nothing to stop."""

    def status(self) -> dict[str, Any]:
        return {"applied_version": self._version}


class CacheSource:
    """`--cache-dir` at start: the snapshot applied last before the process stopped, so that
    a sidecar whose source is down still serves what it served before."""

    def __init__(self, directory: Path, applier: Applier) -> None:
        self.directory = directory
        self._applier = applier
        self._version: int | None = None
        self.error: str | None = None

    def load(self) -> Outcome | None:
        """Offer the cached snapshot; None when there is none, or when it is corrupt
        (`error` says why: it is refused, never served)."""
        try:
            cached = cache.read(self.directory)
        except cache.CacheError as exc:
            self.error = str(exc)
            log.error("%s", exc)
            return None
        if cached is None:
            return None
        outcome = self._applier.apply_bytes(
            cached.payload,
            cached.encoding,
            cached.source,
            signature=cached.signature,
            persist=False,
        )
        if outcome.applied:
            self._version = outcome.version
            log.info(
                "serving the cached snapshot version %s until a source answers", outcome.version
            )
        return outcome

    def start(self) -> None:
        """Nothing to start: the cache is read once; the Applier keeps it up to date."""

    def stop(self) -> None:
        """Nothing to stop."""

    def status(self) -> dict[str, Any]:
        return {"dir": str(self.directory), "applied_version": self._version, "error": self.error}
