"""What the control plane offers: the snapshot in a file, or the newest one in a folder.

The control plane does not validate: it forwards the bytes, and each sidecar validates
and answers ACK or NACK. That is the point of the protocol: a bad snapshot is refused
where it would be applied, and the control plane learns about it from every sidecar.
It only needs each candidate's version, to pick the newest. A snapshot's detached signature
``FILE.sig`` (``fader sign``), when present, is sent with it, untouched.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fader.snapshot.codec import decode, format_for, normalize
from fader.snapshot.issues import SnapshotError

from sidecar.delivery.signing import signature_path
from sidecar.plumbing.filewatch import PathWatcher, read_settled

log = logging.getLogger(__name__)

SUFFIXES = (".json", ".msgpack", ".mpk")


@dataclass(frozen=True, slots=True)
class Offer:
    """One snapshot as the control plane sends it."""

    version: int
    fmt: str
    data: bytes
    source: str
    signature: bytes | None = None


def read_offer(path: Path) -> Offer | None:
    """The offer a file makes; None when unreadable or without a readable version."""
    data = read_settled(path, 0.05)
    if data is None:
        return None
    fmt = format_for(path)
    try:
        version = normalize(decode(data, fmt)).version
    except SnapshotError as exc:
        log.error("ignoring %s: %s", path, exc)
        return None
    signature = read_settled(signature_path(path), 0.05)
    return Offer(version, fmt, data, f"file:{path}", signature)


def newest_offer(path: Path) -> Offer | None:
    """The file's offer, or the highest-version offer among a folder's snapshot files."""
    if not path.is_dir():
        return read_offer(path)
    offers = [read_offer(p) for p in sorted(path.iterdir()) if p.suffix.lower() in SUFFIXES]
    candidates = [o for o in offers if o is not None]
    return max(candidates, key=lambda o: o.version, default=None)


class OfferSource:
    """Holds the current offer and tells subscribers about each new one."""

    def __init__(self, path: Path, *, recheck_ms: int = 2000) -> None:
        self.path = path
        self.current: Offer | None = None
        self._lock = threading.Lock()
        self._subscribers: list[Callable[[Offer], None]] = []
        self._watcher = PathWatcher(path, self.refresh, recheck_ms=recheck_ms)

    def refresh(self) -> None:
        """Re-read the path; publish when the offer changed."""
        offer = newest_offer(self.path)
        with self._lock:
            if offer is None or offer == self.current:
                return
            self.current = offer
            subscribers = tuple(self._subscribers)
        log.info("offering snapshot version %d from %s", offer.version, offer.source)
        for subscriber in subscribers:
            subscriber(offer)

    def subscribe(self, subscriber: Callable[[Offer], None]) -> Callable[[], None]:
        with self._lock:
            self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            with self._lock:
                if subscriber in self._subscribers:
                    self._subscribers.remove(subscriber)

        return unsubscribe

    def start(self) -> None:
        self.refresh()
        self._watcher.start()

    def stop(self) -> None:
        self._watcher.stop()
