"""Snapshots from the store: every new version of the flag set becomes the offer sidecars get.

The offer is the sidecar snapshot format (native JSON with ``version``), signed with the
control plane's key when it has one (``--signing-key``), and handed to every open Sync
stream as soon as the version is committed, in version order.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sidecar.controlplane.offer import Offer
from sidecar.controlplane.store import FlagStore, State
from sidecar.delivery import signing

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE_TTL = 30 * 86400


@dataclass(frozen=True)
class Signer:
    """Signs each offered snapshot, valid for ``ttl`` seconds from when it is made."""

    key: Ed25519PrivateKey
    key_id: str
    ttl: int = DEFAULT_SIGNATURE_TTL

    @staticmethod
    def load(path: Path, key_id: str, ttl: int = DEFAULT_SIGNATURE_TTL) -> Signer:
        signing.check_key_id(key_id)
        return Signer(signing.load_private_key(path), key_id, ttl)

    def sign(self, data: bytes, version: int) -> bytes:
        expires = int(time.time()) + self.ttl
        return signing.sign(data, version, self.key, self.key_id, expires).to_bytes()


def snapshot_bytes(state: State) -> bytes:
    return json.dumps(state.document(), separators=(",", ":"), ensure_ascii=False).encode()


class StoreOffers:
    """The offer for the store's current version; tells subscribers about each new one."""

    def __init__(self, store: FlagStore, signer: Signer | None = None) -> None:
        self.store = store
        self.signer = signer
        self.current: Offer | None = None
        self._lock = threading.Lock()
        self._subscribers: list[Callable[[Offer], None]] = []
        self._unsubscribe: Callable[[], None] | None = None

    def _offer(self, state: State) -> None:
        if state.version == 0:
            return  # nothing was ever written: there is no snapshot to offer yet
        data = snapshot_bytes(state)
        signature = self.signer.sign(data, state.version) if self.signer else None
        offer = Offer(state.version, "json", data, f"store:{self.store.db.description}", signature)
        with self._lock:
            if self.current is not None and self.current.version >= offer.version:
                return
            self.current = offer
            subscribers = tuple(self._subscribers)
        log.info("offering snapshot version %d (%d bytes)", offer.version, len(data))
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
        self._unsubscribe = self.store.subscribe(self._offer)
        self._offer(self.store.state)

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
