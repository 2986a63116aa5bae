"""The in-process mode's background work: the sidecar's snapshots in, impressions out.

`InProcess` keeps one WatchSnapshots stream open to the sidecar on a thread
("fader-snapshots"): each version arrives as the bytes the sidecar verified and applied, and
is compiled here with the same code the sidecar uses (`fader.snapshot.loader.load_bytes`),
then swapped in as `local` (`fader._local.LocalSnapshot`), which lookups read once per call.
`local` is None, and the client asks the sidecar instead, until the first version has
arrived, when the sidecar streams a version without its bytes, and when the stream has been
down for longer than `max_staleness` seconds: a client cut off from its sidecar for long
must not go on answering from an old snapshot. (While the stream is up and quiet, the
snapshot is the sidecar's current one.)

A second thread ("fader-exposures") turns the lookups recorded in process into impressions
every `DRAIN_SECONDS` (`BUSY_DRAIN_SECONDS` while lookups come fast), in the sidecar's
impressions mode (`fader._exposures`), and sends them to the sidecar with RecordExposures
every `FLUSH_SECONDS`, where they join its telemetry pipeline. Batches the sidecar did not
take are kept (bounded) and sent again, with the same batch id, once it is back. `close()`
(and process exit, through atexit) stops both threads, seals what was recorded and sends it
within `exit_timeout` seconds.

What a hard kill (SIGKILL, a crash) loses: the lookups recorded since the last flush (at
most `FLUSH_SECONDS` of them) and the batches the sidecar had not taken yet (only while it is
unreachable; at most `MAX_QUEUED_RECORDS` records). An impression's time is when this thread
collected it, at most `DRAIN_SECONDS` after the lookup: stamping every lookup would cost
the caller more than the rest of the recording.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from itertools import repeat, starmap
from typing import NamedTuple

import grpc

from fader._common import channel_options
from fader._exposures import ExposureBuffer
from fader._local import Limits, LocalSnapshot
from fader.impressions import Pending, now_ms
from fader.pb.fader.v1 import evaluation_pb2 as pb
from fader.pb.fader.v1 import evaluation_pb2_grpc as pb_grpc
from fader.snapshot.issues import SnapshotError
from fader.snapshot.loader import load_bytes

log = logging.getLogger("fader")

DEFAULT_MAX_STALENESS = 60.0
DEFAULT_EXIT_TIMEOUT = 2.0
# How long the exposures thread waits between rounds: 10 times a second, and 50 while
# lookups arrive at BUSY_RATE a second or more. Why faster when busy: at ~600,000 debug
# lookups a second, rounds of 0.1 s let the client's queue of batches outgrow its bound more
# often (benchmarks/inprocess_bench.py, records dropped of ~4.5 million: 430,000-930,000 over
# four runs at 0.1 s, 0-470,000 over five at 0.02 s, median 20,000); idle, fewer wake-ups.
DRAIN_SECONDS = 0.1
BUSY_DRAIN_SECONDS = 0.02
BUSY_RATE = 10_000
FLUSH_SECONDS = 1.0
SEND_TIMEOUT = 5.0
RETRY_INITIAL, RETRY_MAX = 0.1, 1.0
_SERVICE = pb.DESCRIPTOR.services_by_name["EvaluationService"]
RECORD_EXPOSURES = f"/{_SERVICE.full_name}/{_SERVICE.methods_by_name['RecordExposures'].name}"
# A retired snapshot's recorded lookups are collected for this long after the swap, before
# it is forgotten: a lookup that took it just before the swap still gets its impression.
RETIRED_SECONDS = 0.3


class Version(NamedTuple):
    """One snapshot version as the stream delivered it; `payload` None when not streamable."""

    version: int
    source: str
    encoding: str
    payload: bytes | None
    settings: pb.InProcessSettings


def versions(messages: Iterator[pb.WatchSnapshotsResponse]) -> Iterator[Version]:
    """Joins each version's chunks; raises ValueError when the stream breaks its own rules."""
    for first in messages:
        size = first.payload_size
        if not size:
            yield Version(first.version, first.source, first.encoding, None, first.settings)
            continue
        chunks, received = [first.chunk], len(first.chunk)
        while received < size:
            message = next(messages, None)
            if message is None or message.version != first.version:
                raise ValueError(f"snapshot version {first.version} arrived incomplete")
            chunks.append(message.chunk)
            received += len(message.chunk)
        if received != size:
            raise ValueError(f"snapshot version {first.version}: {received} of {size} bytes")
        yield Version(first.version, first.source, first.encoding, _joined(chunks), first.settings)


def next_wait(taken: int, waited: float) -> float:
    """The exposures thread's wait before its next round, after a round that took `taken`
    lookups recorded over `waited` seconds."""
    return BUSY_DRAIN_SECONDS if taken >= BUSY_RATE * waited else DRAIN_SECONDS


def _joined(chunks: list[bytes]) -> bytes:
    """The chunks as one payload, the list emptied: a snapshot's bytes are not held twice
    while it compiles."""
    payload = b"".join(chunks)
    chunks.clear()
    return payload


class Status(NamedTuple):
    """What the in-process mode is doing, for logs and tests. Exposure figures are records:
    impressions, counts and unique keys."""

    version: int | None  # of the snapshot answering lookups; None: the sidecar answers
    connected: bool  # the snapshot stream is up
    remote_lookups: int  # lookups the sidecar answered while in-process mode was on
    impressions_mode: str  # as the sidecar announced it ("": nothing is recorded)
    exposures_sent: int
    exposures_waiting: int  # sealed, not yet taken by the sidecar
    exposures_dropped: int  # refused by the sidecar, or over MAX_QUEUED_RECORDS


class InProcess:
    """Snapshots from the sidecar at `target` and impressions back to it, on two threads."""

    def __init__(
        self,
        target: str,
        *,
        max_staleness: float = DEFAULT_MAX_STALENESS,
        exit_timeout: float = DEFAULT_EXIT_TIMEOUT,
    ) -> None:
        self.target = target
        self.max_staleness = max_staleness
        self.exit_timeout = exit_timeout
        self.local: LocalSnapshot | None = None
        self.remote_lookups = 0  # answered by the sidecar while in-process mode was on
        self.connected = threading.Event()  # set while the stream is up
        self.ready = threading.Event()  # set while lookups are answered in process
        self._retired: list[tuple[LocalSnapshot, float]] = []  # with when to forget it
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._call: grpc.Future | None = None
        self._buffer = ExposureBuffer(f"{socket.gethostname()}:{os.getpid()}")
        options = [*channel_options(target), ("grpc.max_receive_message_length", -1)]
        self._channel = grpc.insecure_channel(target, options=options)
        self._stub = pb_grpc.EvaluationServiceStub(self._channel)
        # batches are sent as the bytes ExposureBuffer wrote: no serializer on the call
        self._record_exposures = self._channel.unary_unary(
            RECORD_EXPOSURES, response_deserializer=pb.RecordExposuresResponse.FromString
        )
        self._threads = [
            threading.Thread(target=self._watch, name="fader-snapshots", daemon=True),
            threading.Thread(target=self._export, name="fader-exposures", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        atexit.register(self.close)

    # -- snapshots ---------------------------------------------------------------------

    def _watch(self) -> None:
        lost_at: float | None = time.monotonic()  # no snapshot yet: as if just lost
        delay = RETRY_INITIAL
        while not self._closed.is_set():
            try:
                call = self._stub.WatchSnapshots(pb.WatchSnapshotsRequest())
                self._call = call
                self.connected.set()
                for version in versions(call):
                    self._install(version)
                    del version  # its payload: not kept until the next version arrives
                    lost_at, delay = None, RETRY_INITIAL
            except grpc.RpcError as err:
                if self._closed.is_set():
                    break
                log.debug("fader: snapshot stream ended: %s", err)
            except ValueError as err:
                log.error("fader: snapshot stream broken (%s); reconnecting", err)
            finally:
                self.connected.clear()
            now = time.monotonic()
            lost_at = now if lost_at is None else lost_at
            if self.local is not None and now - lost_at >= self.max_staleness:
                log.warning(
                    "fader: no contact with the sidecar for %.0f s; asking it for every lookup "
                    "until it is back",
                    now - lost_at,
                )
                self._swap(None)
            self._closed.wait(delay)
            delay = min(delay * 2, RETRY_MAX)

    def _install(self, version: Version) -> None:
        """Compiles and swaps in one version; on any failure stops answering locally, so the
        sidecar, not an older snapshot, answers."""
        settings = version.settings
        with self._lock:
            self._buffer.set_mode(
                settings.impressions_mode, settings.observer_size, settings.max_batch_items
            )
        if version.payload is None:
            log.warning("fader: version %d is not streamed; asking the sidecar", version.version)
            self._swap(None)
            return
        try:
            source = f"sidecar {self.target} ({version.source})"
            snapshot = load_bytes(version.payload, version.encoding, source)
            snapshot.document = None  # kept for lanes that re-serve definitions; none here
        except SnapshotError as err:
            log.error(
                "fader: version %d does not compile (%s); asking the sidecar", version.version, err
            )
            self._swap(None)
            return
        limits = Limits(
            settings.max_attributes, settings.max_attribute_size, settings.max_batch_items
        )
        self._swap(LocalSnapshot(snapshot, limits, recording=bool(settings.impressions_mode)))

    def _swap(self, local: LocalSnapshot | None) -> None:
        with self._lock:
            previous, self.local = self.local, local
            if previous is not None:
                self._retired.append((previous, time.monotonic() + RETIRED_SECONDS))
        if local is None:
            self.ready.clear()
        else:
            self.ready.set()

    # -- exposures ---------------------------------------------------------------------

    def _export(self) -> None:
        flushed = time.monotonic()
        wait = DRAIN_SECONDS
        while not self._closed.wait(wait):
            try:
                wait = next_wait(self._drain(), wait)
                now = time.monotonic()
                buffer = self._buffer
                if now - flushed >= FLUSH_SECONDS or buffer.open_records() >= buffer.batch_records:
                    flushed = now
                    self._flush(SEND_TIMEOUT)
            except Exception:  # a bug must not stop impressions for the process's life
                log.exception("fader: recording exposures failed; the next round retries")

    def _drain(self) -> int:
        """Applies the mode to every lookup recorded since the last round; how many."""
        time_ms = now_ms()
        now = time.monotonic()
        requests: list[Pending] = []
        count = 0
        with self._lock:
            states = [self.local] if self.local is not None else []
            states += [state for state, _ in self._retired]
            self._retired = [(state, until) for state, until in self._retired if until > now]
            for state in states:
                # popleft, which lookups' appends from other threads cannot break into, run
                # by a C loop: half the cost of a Python one per lookup
                pending = state.pending
                taken = list(starmap(pending.popleft, repeat((), len(pending))))
                if taken:
                    requests.append((state.snapshot, time_ms, taken))
                    count += len(taken)
            self._buffer.process(requests)
        return count

    def _flush(self, timeout: float, *, wait: bool = False) -> None:
        """Seals what was gathered and sends every waiting batch, oldest first, until one
        fails (the rest wait for the next flush) or `timeout` seconds have passed. With
        `wait` (the last flush), a call waits for the channel to (re)connect meanwhile."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._buffer.seal()
        buffer = self._buffer
        while buffer.queue:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            batch = buffer.queue[0]
            try:
                self._record_exposures(
                    batch.data, timeout=min(left, SEND_TIMEOUT), wait_for_ready=wait
                )
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    log.error("fader: the sidecar refused an exposures batch: %s", err.details())
                    with self._lock:
                        buffer.refused(batch)
                    continue
                log.debug("fader: exposures not sent (%s); retrying later", err.code())
                return
            with self._lock:
                buffer.sent(batch)

    def status(self) -> Status:
        local, buffer = self.local, self._buffer
        return Status(
            version=local.version if local is not None else None,
            connected=self.connected.is_set(),
            remote_lookups=self.remote_lookups,
            impressions_mode=buffer.mode,
            exposures_sent=buffer.sent_records,
            exposures_waiting=buffer.queued_records,
            exposures_dropped=buffer.dropped_records,
        )

    def close(self) -> None:
        """Stops both threads, then sends what was recorded within `exit_timeout` seconds."""
        if self._closed.is_set():
            return
        self._closed.set()
        atexit.unregister(self.close)
        if self._call is not None:
            self._call.cancel()
        for thread in self._threads:
            thread.join(self.exit_timeout)
        try:
            self._drain()
            self._flush(self.exit_timeout, wait=True)
        finally:
            if self._buffer.queued_records:
                log.warning(
                    "fader: %d exposure record(s) not delivered: the sidecar did not take them "
                    "within %.1f s",
                    self._buffer.queued_records,
                    self.exit_timeout,
                )
            self._channel.close()


MODES = ("remote", "in-process")


def start(
    target: str, lane_path: str | None, mode: str, max_staleness: float, exit_timeout: float
) -> InProcess | None:
    """The in-process machinery for a client in `mode`; None in remote mode."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "remote":
        return None
    if lane_path is not None:
        raise ValueError(
            "in-process mode subscribes to snapshots over gRPC: give the sidecar's gRPC "
            "target (host:port or unix:///path), not a fastlane:// one"
        )
    return InProcess(target, max_staleness=max_staleness, exit_timeout=exit_timeout)
