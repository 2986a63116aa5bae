"""What reaches a test collector, counted apart from what it stores.

A collector stores a batch id once and answers a repeat with ``duplicate=True``, as the
reference collector does, so "exactly N records, none twice" stays true even when a sidecar
sends a stored batch again. The test collectors record every arrival here as well, and
:meth:`Arrivals.assert_each_batch_once` fails on any resend that no forced failure explains.
"""

from __future__ import annotations

import threading


class Arrivals:
    """Every upload's batch id, the uploads failed on purpose, the ids stored, the repeats."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the sync gRPC server answers on several threads
        self.ids: list[str] = []
        self.failed = 0
        self.stored: list[str] = []
        self.duplicates = 0

    def arrive(self, batch_id: str) -> None:
        """An upload reached the collector (before it is failed, stored or found a repeat)."""
        with self._lock:
            self.ids.append(batch_id)

    def fail(self) -> None:
        """The collector failed this upload on purpose (a forced retry or refusal)."""
        with self._lock:
            self.failed += 1

    def store(self, batch_id: str) -> bool:
        """True when the id is new (the caller stores the batch); a repeat is counted."""
        with self._lock:
            if batch_id in self.stored:
                self.duplicates += 1
                return False
            self.stored.append(batch_id)
            return True

    def assert_each_batch_once(self) -> None:
        """No stored batch arrived again, and every extra arrival answers a forced failure
        (the retry of an upload the collector failed is the only resend allowed)."""
        with self._lock:
            ids, stored = list(self.ids), len(self.stored)
            assert self.duplicates == 0, (
                f"{self.duplicates} upload(s) of a batch sent again after it was stored: {ids}"
            )
            assert len(ids) == stored + self.failed, (
                f"{len(ids)} arrivals for {stored} stored batches and {self.failed} forced "
                f"failures: {ids}"
            )
