"""Which sidecars are connected and which version each has ACKed or NACKed."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fader.pb.fader.v1 import controlplane_pb2, snapshot_pb2
from google.protobuf import json_format

# 64-bit integers, which protobuf's JSON mapping writes as strings; a status reader (a
# script reading `fader status --json`, say) compares them as numbers.
_NUMBERS = frozenset({"offered_version", "acked_version", "nacked_version", "last_seen_unix_ms"})


@dataclass
class SidecarRecord:
    identity: controlplane_pb2.SidecarIdentity
    peer: str
    connected: bool = True
    acked_version: int | None = None
    nacked_version: int | None = None
    nack_errors: list[str] = field(default_factory=list)
    last_seen: float = field(default_factory=time.time)
    streams: int = 1


class Registry:
    """Thread-safe view of the fleet, keyed by sidecar id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, SidecarRecord] = {}

    def connect(self, identity: controlplane_pb2.SidecarIdentity, peer: str) -> None:
        with self._lock:
            record = self._records.get(identity.id)
            if record is None:
                self._records[identity.id] = SidecarRecord(identity, peer)
                return
            record.identity, record.peer, record.connected = identity, peer, True
            record.streams += 1
            record.last_seen = time.time()

    def disconnect(self, sidecar_id: str) -> None:
        with self._lock:
            record = self._records.get(sidecar_id)
            if record is not None:
                record.streams -= 1
                record.connected = record.streams > 0
                record.last_seen = time.time()

    def answer(self, sidecar_id: str, ack: snapshot_pb2.SnapshotAck) -> None:
        with self._lock:
            record = self._records.get(sidecar_id)
            if record is None:
                return
            record.last_seen = time.time()
            if ack.accepted:
                record.acked_version = ack.version
                if record.nacked_version is not None and record.nacked_version <= ack.version:
                    # an older refusal is history once a version as new is served
                    record.nacked_version, record.nack_errors = None, []
            else:
                record.nacked_version = ack.version
                record.nack_errors = list(ack.errors)

    def statuses(self) -> list[controlplane_pb2.SidecarStatus]:
        with self._lock:
            records = sorted(self._records.items())
            return [_status(record) for _, record in records]


def _status(record: SidecarRecord) -> controlplane_pb2.SidecarStatus:
    return controlplane_pb2.SidecarStatus(
        identity=record.identity,
        connected=record.connected,
        acked_version=record.acked_version or 0,
        has_acked=record.acked_version is not None,
        nacked_version=record.nacked_version or 0,
        has_nacked=record.nacked_version is not None,
        nack_errors=record.nack_errors,
        last_seen_unix_ms=int(record.last_seen * 1000),
        peer=record.peer,
    )


def fleet_json(response: controlplane_pb2.ListSidecarsResponse) -> dict[str, Any]:
    """The fleet as JSON with versions as numbers (not protobuf's strings for 64 bits)."""
    fleet = json_format.MessageToDict(response, preserving_proto_field_name=True)
    for record in [fleet, *fleet.get("sidecars", [])]:
        for name in _NUMBERS.intersection(record):
            record[name] = int(record[name])
    return fleet
