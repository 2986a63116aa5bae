"""A snapshot file, watched: every new valid content is applied, anything else refused.

The *directory* is watched, not the file: that is what survives an editor's atomic
rename, a Kubernetes ConfigMap update (the ``..data`` symlink is swapped to a new
timestamped directory) and delete-then-restore, all of which replace the inode a
file watch would be attached to (flagd#42, #1876). Each event triggers a re-read of
the path through its symlinks; identical content is ignored by digest, and a file
still being written is read again until two reads agree.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path

import watchfiles

from sidecar.snapshot.apply import Applier, Outcome
from sidecar.snapshot.codec import format_for

log = logging.getLogger(__name__)

_SETTLE_ROUNDS = 20


class FileSource:
    """Loads a snapshot file now and, once started, whenever it changes."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        applier: Applier,
        *,
        settle_seconds: float = 0.05,
        debounce_ms: int = 50,
        recheck_ms: int = 2000,
        force_polling: bool | None = None,
    ) -> None:
        self.path = Path(os.path.abspath(path))
        self.applier = applier
        self.settle_seconds = settle_seconds
        self.debounce_ms = debounce_ms
        self.recheck_ms = recheck_ms
        self.force_polling = force_polling
        self._seen: bytes | None = None
        self._applied: bytes | None = None
        self._signature: tuple[int, int, int] | None = None
        self._missing_logged = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def source(self) -> str:
        return f"file:{self.path}"

    def load(self) -> Outcome | None:
        """Apply the file's content if it is new; None when missing or unchanged."""
        data = self._read_settled()
        if data is None:
            if not self._missing_logged:
                log.warning(
                    "snapshot file %s is missing; the active snapshot keeps serving", self.path
                )
                self._missing_logged = True
            return None
        self._missing_logged = False
        digest = hashlib.sha256(data).digest()
        if digest == self._seen:
            return None
        self._seen = digest
        if digest == self._applied:
            log.info("snapshot file %s is back to the active content", self.path)
            return None
        outcome = self.applier.apply_bytes(data, format_for(self.path), self.source)
        if outcome.applied:
            self._applied = digest
        return outcome

    def _read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            log.warning("cannot read snapshot file %s: %s", self.path, exc.strerror)
            return None

    def _read_settled(self) -> bytes | None:
        """Read until two reads ``settle_seconds`` apart agree: half a write is no snapshot."""
        previous = self._read()
        for _ in range(_SETTLE_ROUNDS):
            time.sleep(self.settle_seconds)
            current = self._read()
            if current == previous:
                return current
            previous = current
        return previous

    def _stat_signature(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def start(self) -> None:
        """Watch in a daemon thread until ``stop``."""
        self._signature = self._stat_signature()
        self._thread = threading.Thread(target=self._run, name="fader-file-source", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._watch()
            except Exception:
                # e.g. the directory itself vanished; keep serving and try again
                log.exception("watching %s failed; retrying in 1 s", self.path.parent)
                self._stop.wait(1.0)

    def _watch(self) -> None:
        for changes in watchfiles.watch(
            self.path.parent,
            watch_filter=None,
            debounce=self.debounce_ms,
            stop_event=self._stop,
            rust_timeout=self.recheck_ms,
            yield_on_timeout=True,
            raise_interrupt=False,
            force_polling=self.force_polling,
        ):
            signature = self._stat_signature()
            # An event, or a periodic re-check that finds the file changed (covers
            # anything the event backend missed).
            if changes or signature != self._signature:
                self._signature = signature
                self.load()
