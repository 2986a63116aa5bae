"""``--snapshot FILE|DIR``: the flags kept in Git, applied to the store whenever they change.

The file (or the newest snapshot in the folder, by its version, as before the store
existed) is the whole flag set: applying it replaces the set, author ``file:PATH``. The
SHA-256 of the bytes last applied is kept in the store, so a restart does not re-apply an
unchanged file over changes made since through the API; only a new file content does. An
invalid file is logged with every error and changes nothing; the next change is tried again.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path

from fader.snapshot.codec import decode

from sidecar.controlplane.documents import InvalidFlags, parse_document
from sidecar.controlplane.offer import newest_offer
from sidecar.controlplane.store import FlagStore, set_meta
from sidecar.controlplane.storedb import Tx
from sidecar.plumbing.filewatch import PathWatcher

log = logging.getLogger(__name__)


class SnapshotFiles:
    """Watches ``path`` and applies each new content to the store."""

    def __init__(self, store: FlagStore, path: Path, *, recheck_ms: int = 2000) -> None:
        self.store = store
        self.path = path
        self._lock = threading.Lock()
        self._watcher = PathWatcher(path, self.refresh, recheck_ms=recheck_ms)
        self.last_error: str | None = None

    def _meta_key(self, source: Path) -> str:
        return f"applied:{source.resolve()}"

    def refresh(self) -> None:
        """Apply the file when its bytes differ from the ones last applied from it."""
        with self._lock:
            offer = newest_offer(self.path)
            if offer is None:
                return
            source = Path(offer.source.removeprefix("file:"))
            digest = hashlib.sha256(offer.data).hexdigest()
            key = self._meta_key(source)
            if self.store.meta(key) == digest:
                return
            author = f"file:{source}"

            def remember(tx: Tx, _version: int) -> None:
                set_meta(tx, key, digest)

            try:
                part = parse_document(decode(offer.data, offer.fmt), str(source))
                written = self.store.apply(
                    [part],
                    author=author,
                    reason=f"{source.name} changed",
                    replace=True,
                    hook=remember,
                )
            except InvalidFlags as exc:
                self.last_error = str(exc)
                for error in exc.errors:
                    log.error("%s: error: %s", error.source, error.issue)
                log.error("%s: not applied (%d errors)", source, len(exc.errors))
                return
            except Exception as exc:  # a file must never stop the control plane
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("%s: not applied", source)
                return
            self.last_error = None
            if written.changed:
                log.info("%s applied as version %d", source, written.version)
            else:
                log.info("%s matches the store (version %d)", source, written.version)

    def start(self) -> None:
        self.refresh()
        self._watcher.start()

    def stop(self) -> None:
        self._watcher.stop()
