"""The control-plane stream, sidecar side: dial out, receive snapshots, ACK or NACK each.

Modelled on Envoy xDS: the sidecar opens one bidirectional stream, introduces itself
(id, labels, the version it serves), applies every snapshot it receives through the
Applier and answers ACK (applied version) or NACK (offered version and every error),
keeping the last good snapshot. On any failure it reconnects with capped exponential
backoff and jitter, reset by a stream that delivered; while it waits it watches the control
plane's port and reconnects as soon as the control plane is back. Keepalive pings detect a
dead peer behind a silent network.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from fader.pb.fader.v1 import controlplane_pb2, controlplane_pb2_grpc, snapshot_pb2
from fader.snapshot.snapshot import Snapshot

from sidecar.delivery.apply import Applier
from sidecar.delivery.messages import WireError, ack_for, format_of, nack
from sidecar.plumbing import probe
from sidecar.plumbing.backoff import Backoff
from sidecar.plumbing.channels import ChannelSecurity

log = logging.getLogger(__name__)
# While waiting to reconnect, how often the control plane's port is tried (±20 %, so that a
# fleet does not come back in lockstep).
PROBE_SECONDS = 1.0


@dataclass(frozen=True)
class Identity:
    id: str
    labels: Mapping[str, str] = field(default_factory=dict)
    software_version: str = ""


class ControlPlaneSource:
    """Keeps a Sync stream to the control plane open until stopped."""

    def __init__(
        self,
        target: str,
        applier: Applier,
        identity: Identity,
        *,
        security: ChannelSecurity | None = None,
        backoff: Backoff | None = None,
        keepalive_seconds: float = 30.0,
    ) -> None:
        self.target = target
        self.applier = applier
        self.identity = identity
        self.security = security or ChannelSecurity()
        self.backoff = backoff or Backoff()
        self.keepalive_seconds = keepalive_seconds
        self.connected = False
        self.disconnected_since: float | None = time.time()
        self.reconnects = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._call: grpc.Call | None = None
        self._thread: threading.Thread | None = None

    @property
    def source(self) -> str:
        return f"controlplane:{self.target}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fader-controlplane", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()
        if self._thread is not None:
            self._thread.join(timeout)

    def status(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "sidecar_id": self.identity.id,
            "connected": self.connected,
            "reconnects": self.reconnects,
            "last_error": self.last_error,
        }

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            received = self._session()
            if self._stop.is_set():
                return
            attempt = 0 if received else attempt + 1
            self.reconnects += 1
            delay = self.backoff.delay(attempt)
            log.warning(
                "control plane %s: stream ended (%s); reconnecting in %.1f s",
                self.target,
                self.last_error or "closed",
                delay,
            )
            self._wait(delay)

    def _wait(self, delay: float) -> None:
        """Wait ``delay`` seconds, or less when the control plane was down: its port is then
        tried every PROBE_SECONDS, and once it accepts connections again the stream
        reconnects at once. After an outage the backoff has grown (to 30 s), and a kill
        switch published as the control plane comes back would otherwise wait that long.
        A control plane that is up but failed the stream (a bad token, say) is not probed:
        its backoff is waited out in full."""
        deadline = time.monotonic() + delay
        address = probe.tcp_address(self.target)
        if address is not None and not probe.accepts(address):
            while not self._stop.wait(min(_probe_interval(), deadline - time.monotonic())):
                if time.monotonic() >= deadline:
                    return
                if probe.accepts(address):
                    log.info("control plane %s: accepting connections again", self.target)
                    return
            return
        self._stop.wait(max(0.0, deadline - time.monotonic()))

    def _channel(self) -> grpc.Channel:
        options = [
            ("grpc.keepalive_time_ms", int(self.keepalive_seconds * 1000)),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.max_receive_message_length", 256 * 1024 * 1024),
        ]
        return self.security.channel(self.target, options)

    def _session(self) -> bool:
        """One stream, until it fails or we stop; True if anything was received."""
        received = False
        outbox: queue.Queue[controlplane_pb2.SyncRequest | None] = queue.Queue()
        outbox.put(controlplane_pb2.SyncRequest(hello=self._hello()))
        try:
            metadata = self.security.metadata()
        except OSError as exc:
            self.last_error = f"cannot read the token file: {exc.strerror}"
            return False
        unsubscribe = self.applier.store.subscribe(
            lambda _old, new: self._report_other(new, outbox)
        )
        with self._channel() as channel:
            stub = controlplane_pb2_grpc.ControlPlaneServiceStub(channel)
            try:
                call = stub.Sync(_drain(outbox), metadata=metadata)
                self._call = call
                if self._stop.is_set():
                    call.cancel()
                for response in call:
                    if not received:
                        received = True
                        self._mark_connected()
                    outbox.put(controlplane_pb2.SyncRequest(ack=self._apply(response.snapshot)))
                self.last_error = None
            except grpc.RpcError as exc:
                self.last_error = f"{exc.code().name}: {exc.details()}"
            finally:
                unsubscribe()
                outbox.put(None)
                self._call = None
                self._mark_disconnected()
        return received

    def _report_other(
        self, snapshot: Snapshot, outbox: queue.Queue[controlplane_pb2.SyncRequest | None]
    ) -> None:
        """A snapshot applied from another source (a direct push, the watched file) is
        reported as an ACK of its version, so the fleet status shows what is served."""
        if snapshot.source != self.source:
            ack = snapshot_pb2.SnapshotAck(version=snapshot.version, accepted=True)
            outbox.put(controlplane_pb2.SyncRequest(ack=ack))

    def _hello(self) -> controlplane_pb2.Hello:
        active = self.applier.store.current
        return controlplane_pb2.Hello(
            identity=controlplane_pb2.SidecarIdentity(
                id=self.identity.id,
                labels=dict(self.identity.labels),
                software_version=self.identity.software_version,
            ),
            serving_version=active.version if active else 0,
            has_snapshot=active is not None,
        )

    def _apply(self, message: snapshot_pb2.Snapshot) -> snapshot_pb2.SnapshotAck:
        active = self.applier.store.current
        if active is not None and active.version == message.version:
            # A resync after reconnecting: this version is already served.
            return snapshot_pb2.SnapshotAck(version=active.version, accepted=True)
        try:
            fmt = format_of(message)
        except WireError as exc:
            return nack(message.version, str(exc))
        outcome = self.applier.apply_bytes(
            message.document, fmt, self.source, signature=message.signature or None
        )
        return ack_for(outcome, message.version)

    def _mark_connected(self) -> None:
        if not self.connected:
            log.info("control plane %s: connected", self.target)
        self.connected = True
        self.disconnected_since = None

    def _mark_disconnected(self) -> None:
        if self.connected:
            self.disconnected_since = time.time()
        self.connected = False


def _probe_interval() -> float:
    return PROBE_SECONDS * random.uniform(0.8, 1.2)


def _drain(
    outbox: queue.Queue[controlplane_pb2.SyncRequest | None],
) -> Iterator[controlplane_pb2.SyncRequest]:
    """The request side of the stream: whatever is queued, until None."""
    while True:
        item = outbox.get()
        if item is None:
            return
        yield item
