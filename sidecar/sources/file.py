"""A snapshot file, watched: every new valid content is applied, anything else refused.

Each change re-reads the path through its symlinks; identical content is ignored by
digest, and a file still being written is read again until two reads agree, so half
a write is never offered as a snapshot. The detached signature ``FILE.sig`` beside it (see
``sidecar.delivery.signing``) is read the same way and offered with it: a change to either is
a new offer (a ConfigMap holding both keys swaps them together).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from fader.snapshot.codec import format_for

from sidecar.delivery.apply import Applier, Outcome
from sidecar.delivery.signing import signature_path
from sidecar.plumbing.filewatch import PathWatcher, read_settled

log = logging.getLogger(__name__)


class FileSource:
    """Loads a snapshot file now and, once started, whenever it changes."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        applier: Applier,
        *,
        settle_seconds: float = 0.05,
        recheck_ms: int = 2000,
        force_polling: bool | None = None,
    ) -> None:
        self.path = Path(os.path.abspath(path))
        self.signature_path = signature_path(self.path)
        self.applier = applier
        self.settle_seconds = settle_seconds
        self._seen: bytes | None = None
        self._applied: bytes | None = None
        self._missing_logged = False
        self._watcher = PathWatcher(
            self.path,
            self._on_change,
            recheck_ms=recheck_ms,
            force_polling=force_polling,
            names=(self.path.name, self.signature_path.name),
        )

    @property
    def source(self) -> str:
        return f"file:{self.path}"

    def load(self) -> Outcome | None:
        """Apply the file's content if it is new; None when missing or unchanged."""
        data = read_settled(self.path, self.settle_seconds)
        if data is None:
            if not self._missing_logged:
                log.warning(
                    "snapshot file %s is missing; the active snapshot keeps serving", self.path
                )
                self._missing_logged = True
            return None
        self._missing_logged = False
        signature = read_settled(self.signature_path, self.settle_seconds)
        hasher = hashlib.sha256(data)
        hasher.update(b"\0" + (signature or b""))
        digest = hasher.digest()
        if digest == self._seen:
            return None
        self._seen = digest
        if digest == self._applied:
            log.info("snapshot file %s is back to the active content", self.path)
            return None
        outcome = self.applier.apply_bytes(
            data, format_for(self.path), self.source, signature=signature
        )
        if outcome.applied:
            self._applied = digest
        return outcome

    def _on_change(self) -> None:
        self.load()

    def start(self) -> None:
        """Watch in a daemon thread until ``stop``."""
        self._watcher.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._watcher.stop(timeout)

    def status(self) -> dict[str, Any]:
        return {"path": str(self.path), "missing": self._missing_logged}
