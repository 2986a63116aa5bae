"""Exposures: the impressions a client made from its own in-process lookups, handed to the
telemetry pipeline beside the sidecar's own (fader.v1 RecordExposures).

The client has already applied the impressions mode the sidecar announced with the snapshot
(WatchSnapshots), so a batch holds what an upload holds: impressions, counts per flag and
hour, unique keys. A batch is checked whole before any of it is added, so a malformed one
costs nothing but its refusal. A batch id seen recently is acknowledged again without being
added twice: a client retries a batch whose answer it did not see (the last
`RECENT_BATCHES` ids are kept, in memory: a retry that spans a sidecar restart may be added
twice).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

from sidecar.core.refusals import BadRequest, QueueFull
from sidecar.core.requests import check_key, check_name
from sidecar.telemetry.batches import CountRow, UniqueRow
from sidecar.telemetry.pipeline import Pipeline

log = logging.getLogger(__name__)

RECENT_BATCHES = 10_000
MAX_BATCH_ID_LENGTH = 128


@dataclass(frozen=True)
class ClientBatch:
    """A client's batch as the pipeline takes it: its impressions as upload entries (wire
    bytes of the repeated fader.v1.Impression field, `impressions` of them), its counts and
    unique keys as rows. The impressions were checked where they were read, on their bytes:
    `impression_problem` says what is wrong with the first one refused, or is None."""

    batch_id: str
    entries: bytes
    impressions: int
    counts: list[CountRow]
    unique_keys: list[UniqueRow]
    impression_problem: str | None = None


class Exposures:
    """Where RecordExposures puts a client's batch: the telemetry pipeline, when there is one."""

    def __init__(self, pipeline: Pipeline | None, max_records: int) -> None:
        self._pipeline = pipeline
        self._max_records = max_records
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._warned = False

    @property
    def mode(self) -> str:
        """The impressions mode clients must apply; empty when nothing is recorded."""
        return self._pipeline.settings.mode.value if self._pipeline is not None else ""

    @property
    def observer_size(self) -> int:
        return self._pipeline.settings.observer_size if self._pipeline is not None else 0

    def put(self, batch: ClientBatch) -> bool:
        """Adds a client's batch; True when it had been added before (nothing added again).

        Raises BadRequest naming the first bad record (nothing added), or QueueFull when the
        pipeline has no room (nothing added; the client keeps the batch and retries).
        """
        check_batch(batch, self._max_records)
        if batch.batch_id in self._recent:
            self._recent.move_to_end(batch.batch_id)
            return True
        if self._pipeline is None:
            if not self._warned:
                self._warned = True
                log.warning("client exposures are dropped: no --collector or --control-plane")
        elif not self._pipeline.add_made(
            batch.entries, batch.impressions, batch.counts, batch.unique_keys
        ):
            raise QueueFull("no room for exposures: the collector is unreachable, the spool full")
        self._recent[batch.batch_id] = None
        if len(self._recent) > RECENT_BATCHES:
            self._recent.popitem(last=False)
        return False


def check_batch(batch: ClientBatch, max_records: int) -> None:
    """Every field an upload needs, in range; BadRequest names the first one that is not."""
    if not batch.batch_id or len(batch.batch_id) > MAX_BATCH_ID_LENGTH:
        raise BadRequest(f"batch_id: 1 to {MAX_BATCH_ID_LENGTH} characters")
    records = (
        batch.impressions + len(batch.counts) + sum(len(keys) for _, keys in batch.unique_keys)
    )
    if records > max_records:
        raise BadRequest(f"{records} records in one batch, at most {max_records} allowed")
    if batch.impression_problem is not None:
        raise BadRequest(batch.impression_problem)
    for index, (flag, hour_ms, count) in enumerate(batch.counts):
        check_name(flag, f"counts[{index}].flag")
        if hour_ms < 0 or count <= 0:
            raise BadRequest(f"counts[{index}]: hour_ms must not be negative, count positive")
    for index, (flag, keys) in enumerate(batch.unique_keys):
        check_name(flag, f"unique_keys[{index}].flag")
        for position, key in enumerate(keys):
            check_key(key, f"unique_keys[{index}].keys[{position}]")
