"""Watch a path for changes in a background thread, robustly, and read it whole.

The *parent directory* is watched, not the path itself: that is what survives an
editor's atomic rename, a Kubernetes ConfigMap update (the ``..data`` symlink swapped to
a new timestamped directory) and delete-then-restore, all of which replace the inode a
plain file watch would be attached to (flagd#42, #1876). A periodic stat re-check
covers anything the event backend misses. ``read_settled`` then reads the file until two
reads agree, so half of a write in progress is never taken for the new content.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path

import watchfiles

log = logging.getLogger(__name__)

_SETTLE_ROUNDS = 20


def read_settled(path: Path, settle_seconds: float) -> bytes | None:
    """Read ``path`` until two reads ``settle_seconds`` apart agree; None when missing."""
    previous = _read(path)
    for _ in range(_SETTLE_ROUNDS):
        time.sleep(settle_seconds)
        current = _read(path)
        if current == previous:
            return current
        previous = current
    return previous


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        log.warning("cannot read %s: %s", path, exc.strerror)
        return None


class PathWatcher:
    """Calls ``on_change()`` from a daemon thread whenever ``path`` may have changed."""

    def __init__(
        self,
        path: Path,
        on_change: Callable[[], None],
        *,
        debounce_ms: int = 50,
        recheck_ms: int = 2000,
        force_polling: bool | None = None,
        names: Collection[str] | None = None,
    ) -> None:
        self.path = path
        self.on_change = on_change
        # only changes to these names in the directory count (None: every change)
        self.names = frozenset(names) if names is not None else None
        self.debounce_ms = debounce_ms
        self.recheck_ms = recheck_ms
        self.force_polling = force_polling
        self._signature = self._stat_signature()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _root(self) -> Path:
        return self.path if self.path.is_dir() else self.path.parent

    def _stat_signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fader-watch", daemon=True)
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
                log.exception("watching %s failed; retrying in 1 s", self._root())
                self._stop.wait(1.0)

    def _relevant(self, _change: watchfiles.Change, path: str) -> bool:
        """A change to a watched name, or to Kubernetes' atomic-writer entries (``..data``
        and its timestamped directories), which is how a ConfigMap's files change. Other
        files in the directory (a log file written beside the snapshot) are not changes."""
        name = os.path.basename(path)
        assert self.names is not None
        return name in self.names or name.startswith("..")

    def _watch(self) -> None:
        for changes in watchfiles.watch(
            self._root(),
            watch_filter=None if self.names is None else self._relevant,
            debounce=self.debounce_ms,
            stop_event=self._stop,
            rust_timeout=self.recheck_ms,
            yield_on_timeout=True,
            raise_interrupt=False,
            force_polling=self.force_polling,
        ):
            signature = self._stat_signature()
            if changes or signature != self._signature:
                self._signature = signature
                try:
                    self.on_change()
                except Exception:
                    log.exception("handling a change of %s failed", self.path)
