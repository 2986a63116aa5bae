"""The spool: telemetry batches kept on disk while the collector cannot take them.

One file per batch, named by a sequence number so that replay follows the order in which
batches were sealed, across restarts. Each file is written atomically (temporary file, fsync,
rename, fsync of the directory) and carries a SHA-256 of its payload: after a crash or a full
disk there is either a whole, verified batch or none. A file that fails its check is moved
aside (`*.corrupt`), reported and counted, never replayed half-read.

The spool is synchronous and not thread-safe: the pipeline calls it from a single worker
thread, so disk latency never stalls the event loop that serves lookups.
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from pathlib import Path
from typing import Any

import msgpack

from sidecar.durable import write_atomically
from sidecar.telemetry.batches import Batch, decode, encode

log = logging.getLogger(__name__)

SUFFIX = ".batch"
TMP_PREFIX = ".tmp-"
FORMAT = 1


class SpoolFull(Exception):
    """Writing this batch would take the spool over its size limit."""


class Spool:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._entries: deque[tuple[int, int]] = deque()  # (sequence, file size), oldest first
        self._next = 0
        self.bytes = 0
        self.corrupt = 0

    def __len__(self) -> int:
        return len(self._entries)

    def open(self) -> int:
        """Creates the directory, removes half-written leftovers and indexes the batches a
        previous run left; returns how many there are."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for leftover in self.directory.glob(f"{TMP_PREFIX}*"):
            leftover.unlink(missing_ok=True)
        found = []
        for path in self.directory.glob(f"*{SUFFIX}"):
            try:
                found.append((int(path.stem), path.stat().st_size))
            except ValueError:
                log.warning("spool: ignoring %s (not a spool file name)", path)
        found.sort()
        self._entries = deque(found)
        self.bytes = sum(size for _, size in found)
        self._next = found[-1][0] + 1 if found else 0
        return len(found)

    def append(self, batch: Batch) -> None:
        """Writes `batch` durably after every batch already spooled; raises SpoolFull (nothing
        written) or OSError (a full or failing disk; nothing kept)."""
        payload = encode(batch)
        data = msgpack.packb(
            {"format": FORMAT, "sha256": hashlib.sha256(payload).hexdigest(), "batch": payload},
            use_bin_type=True,
        )
        if self.bytes + len(data) > self.max_bytes:
            raise SpoolFull(f"spool at {self.bytes} of {self.max_bytes} bytes")
        sequence = self._next
        write_atomically(self._path(sequence), data, TMP_PREFIX)
        self._next += 1
        self._entries.append((sequence, len(data)))
        self.bytes += len(data)

    def head(self) -> tuple[int, Batch] | None:
        """The oldest readable batch and its sequence number; corrupt ones are set aside."""
        while self._entries:
            sequence = self._entries[0][0]
            try:
                return sequence, self._read(self._path(sequence))
            except (OSError, ValueError) as err:
                self.corrupt += 1
                log.error("spool: batch %d is unreadable and set aside: %s", sequence, err)
                self._set_aside(sequence)
        return None

    def remove(self, sequence: int) -> None:
        """Forgets the oldest batch once the collector has it."""
        head, size = self._entries[0]
        if head != sequence:
            raise ValueError(f"spool: removing {sequence} but the oldest batch is {head}")
        self._entries.popleft()
        self.bytes -= size
        self._path(sequence).unlink(missing_ok=True)

    def _read(self, path: Path) -> Batch:
        try:
            envelope: Any = msgpack.unpackb(path.read_bytes(), raw=False)
            payload = envelope["batch"]
            digest = envelope["sha256"]
        except (ValueError, TypeError, KeyError, msgpack.UnpackException) as err:
            raise ValueError(f"not a spool file: {err}") from None
        if hashlib.sha256(payload).hexdigest() != digest:
            raise ValueError("checksum mismatch")
        return decode(payload)

    def _set_aside(self, sequence: int) -> None:
        _, size = self._entries.popleft()
        self.bytes -= size
        path = self._path(sequence)
        try:
            path.rename(path.with_suffix(".corrupt"))
        except OSError:
            path.unlink(missing_ok=True)

    def _path(self, sequence: int) -> Path:
        return self.directory / f"{sequence:016d}{SUFFIX}"
