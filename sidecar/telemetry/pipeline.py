"""The telemetry pipeline: recorded lookups and track events → batches → collector, with a
disk spool for when the collector cannot take them.

Everything except disk I/O runs on the sidecar's event loop, in two tasks:

- *process* wakes every `BUSY_SECONDS` under load (every `IDLE_SECONDS` otherwise), turns
  recorded lookups into impressions (or counts and unique keys) in small chunks so lookups
  keep flowing, and every `flush_interval` seals the open batch with the counts and unique
  keys gathered so far;
- *upload* sends sealed batches oldest first, one at a time.

Order and loss: batches leave in the order they were sealed. While the spool holds anything,
or after an upload failed, new batches go to the spool behind it (never ahead of it), so the
replay after an outage or a restart keeps the order. Memory is bounded: the recorder's deque,
one open batch, and `memory_bytes` of sealed batches; past that, batches are spooled. A
record is dropped only when the collector refuses it for good, or when there is no room left
(no spool or a full one, a failing disk, a full recorder): each drop is counted by kind and
reason and logged. Disk writes run on one worker thread, in submission order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.plumbing.backoff import Backoff
from sidecar.telemetry.batches import (
    IMPRESSIONS_FIELD,
    UNENCODABLE,
    Batch,
    BatchBuilder,
    CountRow,
    UniqueRow,
    event_row,
    remove_unencodable,
    to_request,
)
from sidecar.telemetry.events import Event
from sidecar.telemetry.impressions import (
    DEFAULT_OBSERVER_SIZE,
    DEFAULT_RECORDER_CAPACITY,
    ImpressionModes,
    Mode,
    Recorder,
)
from sidecar.telemetry.spool import Spool, SpoolFull
from sidecar.telemetry.stats import Stats, TelemetryCollector
from sidecar.telemetry.uploader import REFUSES_ALL, Uploader, Verdict

log = logging.getLogger(__name__)

# How long the process task sleeps between turns. Under load, briefly, so that recorded
# lookups are turned into impressions while still in the CPU's caches: 5 ms is ~1,500
# batched lookups at 300,000 a second, a few hundred KB. After 50 ms they were megabytes,
# out of L2: reading them back, and the memory they held meanwhile, cost a batched lookup
# three times as much as at 5 ms (perf: benchmarks/RESULTS.md). "Under load" is lookups
# arriving at `BUSY_RATE` a second or more over the last pause; below that, 50 ms of them
# fit in the caches anyway, and an idle or lightly used sidecar wakes 20 times a second.
BUSY_SECONDS = 0.005
IDLE_SECONDS = 0.05
BUSY_RATE = 10_000
# Lookups turned into impressions before the loop is offered to requests again (~2 ms).
CHUNK = 1_000
UPLOAD_BACKOFF = Backoff(initial=0.5, maximum=30.0)
NO_ROOM = frozenset({"memory_full", "no_spool", "spool_full", "spool_error"})


@dataclass(frozen=True)
class PipelineSettings:
    mode: Mode = Mode.OPTIMIZED
    sidecar_id: str = ""
    batch_records: int = 10_000
    batch_bytes: int = 1024 * 1024
    flush_interval: float = 10.0
    memory_bytes: int = 32 * 1024 * 1024
    spool_dir: Path | None = None
    spool_bytes: int = 256 * 1024 * 1024
    observer_size: int = DEFAULT_OBSERVER_SIZE
    backoff: Backoff = UPLOAD_BACKOFF


class Pipeline:
    def __init__(self, settings: PipelineSettings, uploader: Uploader) -> None:
        self.settings = settings
        self.recorder = Recorder(DEFAULT_RECORDER_CAPACITY)
        self.stats = Stats()
        self.collector = TelemetryCollector(self.stats, self.gauges)
        self._uploader = uploader
        self._builder = BatchBuilder(settings.batch_records, settings.batch_bytes)
        self._modes = ImpressionModes(settings.mode, settings.observer_size)
        self._memory: deque[Batch] = deque()
        self._memory_bytes = 0
        self._spool = (
            Spool(settings.spool_dir, settings.spool_bytes) if settings.spool_dir else None
        )
        self._disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fader-spool")
        self._spool_batches = 0  # in the spool or on their way there
        self._writes: set[asyncio.Future[None]] = set()
        self._settled: set[str] = set()  # answered while being spilled to the spool
        self._upstream_up = True
        # "CODE: detail" while the collector refuses every upload (it cannot take telemetry)
        self._refusing: str | None = None
        self._no_room = False
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._closed = False
        self._last_flush = time.monotonic()
        self._overflow_seen = 0
        # the process task's sleep between turns (a test records the pauses it asks for)
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Opens the spool (replaying what a previous run left) and starts both tasks."""
        self._started = True
        if self._spool is not None:
            left = await self._on_disk(self._spool.open)
            self._spool_batches = left
            if left:
                log.info("telemetry: %d spooled batch(es) from an earlier run to replay", left)
        self._tasks = [
            asyncio.create_task(self._process_loop(), name="telemetry-process"),
            asyncio.create_task(self._upload_loop(), name="telemetry-upload"),
        ]

    async def close(self, budget: float) -> None:
        """Seals everything, uploads for up to `budget` seconds, spools what is left."""
        if self._closed:
            return
        self._closed = True
        if not self._started:  # the sidecar failed to start: nothing was recorded
            self._disk.shutdown(wait=True)
            return
        deadline = time.monotonic() + budget
        process = self._tasks[0] if self._tasks else None
        if process is not None:
            process.cancel()
            await asyncio.gather(process, return_exceptions=True)
        self._drain_recorder(None)
        self._flush()
        if self._upstream_up and self._tasks:
            while (self._memory or self._spool_batches) and time.monotonic() < deadline:
                self._wake.set()
                await asyncio.sleep(0.01)
                if not self._upstream_up:
                    break
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._spill()
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        await self._uploader.close()
        self._disk.shutdown(wait=True)
        log.info(
            "telemetry: closed with %d batch(es) spooled for the next start", self._spool_batches
        )

    # -- inputs --------------------------------------------------------------------------

    def add_event(self, event: Event) -> bool:
        """Accepts a validated track event; False when there is no room anywhere."""
        if self.saturated():
            return False
        self._builder.add_event(event_row(event))
        self.stats.add(self.stats.queued, {"events": 1})
        self._enqueue_sealed()
        return True

    def add_made(
        self, entries: bytes, impressions: int, counts: list[CountRow], unique_keys: list[UniqueRow]
    ) -> bool:
        """Accepts impressions, counts and unique keys made outside this pipeline's modes
        (a client's in-process lookups, already passed through the mode it was told); they
        are batched, spooled and uploaded like the sidecar's own. The impressions are wire
        entries of the upload's field (`IMPRESSIONS_FIELD`), `impressions` of them, as the
        modes write the sidecar's own. False when there is no room anywhere: nothing was
        added."""
        if self.saturated():
            return False
        builder = self._builder
        builder.add_entries(entries, impressions)
        builder.add_counts(counts)
        builder.add_unique_keys(unique_keys)
        made = {
            "impressions": impressions,
            "counts": len(counts),
            "unique_keys": sum(len(keys) for _, keys in unique_keys),
        }
        self.stats.add(self.stats.queued, made)
        self._enqueue_sealed()
        return True

    def add_batches(self, batches: list[Batch]) -> bool:
        """Accepts batches sealed elsewhere (what a Split SDK posted, tagged with its
        `source`): uploaded, spooled and counted like the sidecar's own, never merged with
        them. False when there is no room anywhere: nothing was added."""
        if self.saturated():
            return False
        for batch in batches:
            self.stats.add(self.stats.queued, batch.records())
            self._enqueue(batch)
        self._wake.set()
        return True

    def saturated(self) -> bool:
        """True while the last batch sealed had nowhere to go (memory full without a spool,
        or a full or failing spool), until one is stored somewhere again."""
        return self._no_room

    def pending_events(self) -> int:
        stats = self.stats
        dropped = sum(n for (kind, _), n in stats.dropped.items() if kind == "events")
        # after a restart, events replayed from the spool count as sent but not as queued
        return max(0, stats.queued.get("events", 0) - stats.sent.get("events", 0) - dropped)

    # -- processing ----------------------------------------------------------------------

    async def _process_loop(self) -> None:
        pause = IDLE_SECONDS
        while True:
            await self._sleep(pause)
            busy = self.recorder.size >= BUSY_RATE * pause
            pause = BUSY_SECONDS if busy else IDLE_SECONDS
            try:
                await self._drain_recorder_async()
                if time.monotonic() - self._last_flush >= self.settings.flush_interval:
                    self._flush()
            except Exception:  # a bug here must not stop telemetry for the process's life
                log.exception("telemetry: a flush failed; the next one retries")

    async def _drain_recorder_async(self) -> None:
        while self.recorder.size:
            self._drain_recorder(CHUNK)
            await asyncio.sleep(0)

    def _drain_recorder(self, limit: int | None) -> None:
        taken = self.recorder.take(limit)
        try:
            encoded = self._modes.encode_all(taken, IMPRESSIONS_FIELD)
        except Exception:  # a bug must not stop telemetry; say what it cost, at most
            done = sum(len(lookups) for _, _, lookups in taken)
            self.stats.drop({"impressions": done}, "processing_error")
            log.exception("telemetry: processing failed; up to %d impression(s) lost", done)
        else:
            made = encoded.written + encoded.unencodable
            self.stats.add(self.stats.queued, {"impressions": made})
            self._builder.add_entries(encoded.entries, encoded.written)
            if encoded.unencodable:
                self._unencodable(encoded.unencodable)
        self.stats.deduplicated = self._modes.deduplicated
        if self._modes.unique_keys.size >= self.settings.batch_records:
            self._add_unique_keys()
        self._note_overflow()
        self._enqueue_sealed()

    def _unencodable(self, lost: int) -> None:
        """Impressions an upload cannot hold (a key or label that is not valid Unicode, a
        lone surrogate; an int out of its field's range) are left out when made: counted and
        logged, as an upload's unencodable records are."""
        self.stats.drop({"impressions": lost}, "unencodable")
        log.error("telemetry: %d impression(s) dropped: they cannot be encoded", lost)

    def _note_overflow(self) -> None:
        overflow = self.recorder.overflow
        if overflow > self._overflow_seen:
            lost = overflow - self._overflow_seen
            self._overflow_seen = overflow
            self.stats.drop({"impressions": lost}, "recorder_full")
            log.warning(
                "telemetry: %d lookup(s) not recorded: %d are waiting to be processed",
                lost,
                self.recorder.size,
            )

    def _flush(self) -> None:
        """Seals the open batch with the counts and unique keys gathered so far."""
        self._last_flush = time.monotonic()
        counts = self._modes.take_counts()
        self.stats.add(self.stats.queued, {"counts": len(counts)})
        self._builder.add_counts(counts)
        self._add_unique_keys()
        self._builder.seal()
        self._enqueue_sealed()

    def _add_unique_keys(self) -> None:
        unique = self._modes.unique_keys.take()
        self.stats.add(self.stats.queued, {"unique_keys": sum(len(keys) for _, keys in unique)})
        self._builder.add_unique_keys(unique)

    def _enqueue_sealed(self) -> None:
        sealed = self._builder.sealed
        if not sealed:
            return
        self._builder.sealed = []
        for batch in sealed:
            self._enqueue(batch)
        self._wake.set()

    def _enqueue(self, batch: Batch) -> None:
        """Memory while the collector keeps up; the spool behind anything already there."""
        # one batch always fits, however big: the budget bounds how many wait
        memory_full = bool(self._memory) and (
            self._memory_bytes + batch.size > self.settings.memory_bytes
        )
        if self._spool is not None and (memory_full or self._spooling()):
            self._spill()
            self._to_spool(batch)
        elif memory_full:
            self._drop(batch, "memory_full")
        else:
            self._memory.append(batch)
            self._memory_bytes += batch.size
            self._no_room = False

    def _spooling(self) -> bool:
        return not self._upstream_up or self._spool_batches > 0

    # -- spool ---------------------------------------------------------------------------

    def _spill(self) -> None:
        """Moves every batch held in memory to the spool, oldest first."""
        if self._spool is None:
            for batch in self._memory:
                self._drop(batch, "no_spool")
        else:
            for batch in self._memory:
                self._to_spool(batch)
        self._memory.clear()
        self._memory_bytes = 0

    def _to_spool(self, batch: Batch) -> None:
        assert self._spool is not None
        spool = self._spool
        self._spool_batches += 1
        write = asyncio.get_running_loop().run_in_executor(self._disk, _append, spool, batch)
        self._writes.add(write)
        write.add_done_callback(lambda done: self._spooled(batch, done))

    def _spooled(self, batch: Batch, write: asyncio.Future[None]) -> None:
        self._writes.discard(write)
        error = write.exception() if not write.cancelled() else None
        if error is None:
            self.stats.add(self.stats.spooled, batch.records())
            self._no_room = False
            return
        self._spool_batches -= 1
        if isinstance(error, UNENCODABLE):
            self._set_aside(batch, error)
            if len(batch):
                self._to_spool(batch)
            return
        reason = "spool_full" if isinstance(error, SpoolFull) else "spool_error"
        self._drop(batch, reason, str(error))

    async def _on_disk(self, call: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._disk, call, *args)

    # -- upload --------------------------------------------------------------------------

    async def _upload_loop(self) -> None:
        failures = 0
        while True:
            picked = await self._next_batch()
            if picked is None:
                continue
            batch, sequence = picked
            try:
                request = to_request(batch, self.settings.sidecar_id, self.settings.mode.value)
            except UNENCODABLE as err:  # retrying could never help: set the bad records aside
                self._set_aside(batch, err)
                if not len(batch):
                    await self._forget(batch, sequence)
                    continue
                request = to_request(batch, self.settings.sidecar_id, self.settings.mode.value)
            started = time.perf_counter()
            answer = await self._uploader.send(request)
            self.stats.upload(answer.verdict.value, time.perf_counter() - started)
            if answer.verdict is Verdict.RETRY:
                failures += 1
                self._collector_down(answer.code, answer.detail)
                await asyncio.sleep(self.settings.backoff.delay(failures - 1))
                continue
            failures = 0
            await self._forget(batch, sequence)
            if answer.verdict is Verdict.REFUSED:
                self._drop(batch, f"refused_{answer.code.lower()}", answer.detail)
                if answer.code in REFUSES_ALL:
                    self._collector_refuses(answer.code, answer.detail)
                continue
            self.stats.add(self.stats.sent, batch.records())
            if sequence is not None:
                self.stats.add(self.stats.replayed, batch.records())
            if not self._upstream_up or self._refusing is not None:
                self._upstream_up, self._refusing = True, None
                log.info("telemetry: collector is taking uploads again")

    async def _next_batch(self) -> tuple[Batch, int | None] | None:
        """The oldest batch: from the spool while it holds any, else from memory."""
        if self._spool is not None and self._spool_batches > 0:
            head = await self._on_disk(self._spool.head)
            if head is None:  # every remaining file was unreadable (counted there)
                self._account_corrupt()
                return None
            sequence, batch = head
            if batch.id in self._settled:
                self._settled.discard(batch.id)
                await self._forget(batch, sequence)
                return None
            return batch, sequence
        if self._memory:
            return self._memory[0], None
        self._wake.clear()
        await self._wake.wait()
        return None

    async def _forget(self, batch: Batch, sequence: int | None) -> None:
        """Removes a batch the collector has answered for. One taken from memory may have
        been spilled to the spool while it was in flight: it is then remembered as settled
        and skipped when the spool reaches it, instead of being sent twice."""
        if sequence is None:
            if self._memory and self._memory[0] is batch:
                self._memory.popleft()
                self._memory_bytes -= batch.size
            else:
                self._settled.add(batch.id)
            return
        assert self._spool is not None
        await self._on_disk(self._spool.remove, sequence)
        self._spool_batches -= 1
        self._account_corrupt()

    def _account_corrupt(self) -> None:
        assert self._spool is not None
        corrupt = self._spool.corrupt
        if corrupt:
            self._spool.corrupt = 0
            self._spool_batches -= corrupt
            self.stats.drop({"batches": corrupt}, "spool_corrupt")

    def _collector_down(self, code: str, detail: str) -> None:
        if self._upstream_up:
            self._upstream_up = False
            where = "spooling to disk" if self._spool is not None else "holding in memory"
            log.warning("telemetry: upload failed (%s: %s); %s and retrying", code, detail, where)
            if self._spool is not None:
                self._spill()

    def _collector_refuses(self, code: str, detail: str) -> None:
        """A collector that cannot take telemetry at all (no collector there) refuses every
        batch: the status says so, and the first loss is a warning of its own."""
        if self._refusing is None:
            log.warning(
                "telemetry: the collector refuses uploads (%s: %s); impressions and events "
                "are dropped until it takes one",
                code,
                detail,
            )
        self._refusing = f"{code}: {detail}"

    def _set_aside(self, batch: Batch, error: BaseException) -> None:
        """Counts as lost only the records of `batch` that cannot be encoded, and takes them
        out; the rest of the batch goes on."""
        bad = remove_unencodable(batch)
        if len(bad):
            self._drop(bad, "unencodable", str(error))

    def _drop(self, batch: Batch, reason: str, detail: str = "") -> None:
        if reason in NO_ROOM:
            self._no_room = True
        lost = self.stats.drop(batch.records(), reason)
        log.error(
            "telemetry: dropped batch %s (%d records): %s%s",
            batch.id,
            lost,
            reason,
            f": {detail}" if detail else "",
        )

    # -- observation ---------------------------------------------------------------------

    def gauges(self) -> dict[str, float]:
        spool = self._spool
        return {
            "memory_bytes": self._memory_bytes,
            "spool_bytes": spool.bytes if spool is not None else 0,
            "spool_batches": self._spool_batches,
            "pending_lookups": self.recorder.size,
            "upstream_up": 1 if self._upstream_up and self._refusing is None else 0,
        }

    def status(self) -> dict[str, Any]:
        return {
            "impressions_mode": self.settings.mode.value,
            "collector_up": self._upstream_up and self._refusing is None,
            "collector_refusing": self._refusing,
            "memory_batches": len(self._memory),
            "spool_batches": self._spool_batches,
            "spool_dir": str(self.settings.spool_dir) if self.settings.spool_dir else None,
            "dropped": sum(self.stats.dropped.values()),
        }


def _append(spool: Spool, batch: Batch) -> None:
    spool.append(batch)
