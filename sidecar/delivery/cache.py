"""The last-known-good cache: the last applied snapshot, on disk, verified before use.

A sidecar restarting while its control plane is unreachable serves this file at once
(OPA's persisted bundles are the model). It holds the bytes the snapshot was decoded
from, with their encoding, and is written atomically (temporary file,
fsync, rename, fsync of the directory) so a crash leaves the old file or the new one,
never half of one, and it carries a SHA-256 of its payload so that a corrupt file is
refused rather than served. It also keeps the snapshot's detached signature, if it had one:
a sidecar with trusted keys re-verifies the cached snapshot like any other (it is applied
through the Applier), so whoever can write the cache directory cannot plant a snapshot.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgpack
from fader.snapshot.issues import Issue, SnapshotError
from fader.snapshot.loader import load_bytes
from fader.snapshot.snapshot import Snapshot

from sidecar.durable import write_atomically

FILE_NAME: Final = "last-known-good.fader"
FORMAT: Final = 1
# Temporary files are named so while written (sidecar.durable); any found at start are a
# crash's leftovers, up to a snapshot's size each.
TMP_PREFIX: Final = ".lkg-"


class CacheError(SnapshotError):
    """The cache file exists but cannot be trusted; it is refused, never served."""


def path_in(cache_dir: Path) -> Path:
    return cache_dir / FILE_NAME


@dataclass(frozen=True, slots=True)
class Cached:
    """The cache file's content, checksum verified but not yet decoded or signature-checked."""

    payload: bytes
    encoding: str
    signature: bytes | None
    source: str


def save(
    cache_dir: Path,
    snapshot: Snapshot,
    encoding: str,
    payload: bytes,
    signature: bytes | None = None,
) -> Path:
    """Atomically replace the cache with ``snapshot``, whose bytes were ``payload``."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    envelope = msgpack.packb(
        {
            "format": FORMAT,
            "encoding": encoding,
            "version": snapshot.version,
            "source": snapshot.source,
            "saved_from_loaded_at": snapshot.loaded_at,
            "sha256": hashlib.sha256(payload).hexdigest(),
            "payload": payload,
            "signature": signature,
        },
        use_bin_type=True,
    )
    target = path_in(cache_dir)
    write_atomically(target, envelope, TMP_PREFIX)
    return target


def sweep(cache_dir: Path) -> list[Path]:
    """Remove the temporary files a crash left mid-write; only at start, when no write of
    this process can be under way. Returns what was removed."""
    removed: list[Path] = []
    try:
        leftovers = sorted(cache_dir.glob(TMP_PREFIX + "*"))
    except OSError:
        return removed
    for path in leftovers:
        try:
            path.unlink()
        except OSError:
            continue
        removed.append(path)
    return removed


def load(cache_dir: Path) -> Snapshot | None:
    """The cached snapshot, None when there is none; raises CacheError when it is corrupt."""
    cached = read(cache_dir)
    if cached is None:
        return None
    try:
        return load_bytes(cached.payload, cached.encoding, cached.source)
    except SnapshotError as exc:
        raise CacheError(exc.issues) from None


def read(cache_dir: Path) -> Cached | None:
    """The cache's bytes, None when there is none; raises CacheError when it is corrupt."""
    target = path_in(cache_dir)
    try:
        data = target.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _corrupt(target, f"cannot read: {exc.strerror}") from None
    envelope = _envelope(target, data)
    payload = envelope["payload"]
    if hashlib.sha256(payload).hexdigest() != envelope["sha256"]:
        raise _corrupt(target, "checksum mismatch")
    original = envelope.get("source")
    source = f"cache:{target}" + (f" (from {original})" if isinstance(original, str) else "")
    signature = envelope.get("signature")
    encoding = envelope.get("encoding")
    if not isinstance(encoding, str) or not (signature is None or isinstance(signature, bytes)):
        raise _corrupt(target, "encoding or signature malformed")
    return Cached(payload, encoding, signature, source)


def _envelope(target: Path, data: bytes) -> dict[str, Any]:
    try:
        envelope = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise _corrupt(target, f"not a cache file: {exc}") from None
    if not isinstance(envelope, dict) or envelope.get("format") != FORMAT:
        raise _corrupt(target, "not a cache file of format 1")
    if not isinstance(envelope.get("payload"), bytes) or not isinstance(
        envelope.get("sha256"), str
    ):
        raise _corrupt(target, "payload or checksum missing")
    return envelope


def _corrupt(target: Path, message: str) -> CacheError:
    return CacheError([Issue(None, str(target), f"last-known-good cache refused: {message}")])
