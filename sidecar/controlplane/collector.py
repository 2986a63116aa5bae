"""The reference collector: fader.v1.TelemetryService, writing what sidecars upload as JSONL.

Each kind of record goes to its own file (impressions, counts, unique keys, events), one JSON
object per line, every line tagged with its `batch_id` and `sidecar_id`. A batch is written
and fsync'd before it is acknowledged, and a batch id seen before is acknowledged without
writing it again, so sidecars can retry freely. The ids already stored are read back from
the files at start, so duplicates are recognised across collector restarts too.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import grpc
from fader.pb.fader.v1 import telemetry_pb2 as pb
from fader.pb.fader.v1 import telemetry_pb2_grpc

from sidecar.auth import TokenFile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outputs:
    impressions: Path | None = None
    counts: Path | None = None
    unique_keys: Path | None = None
    events: Path | None = None

    def paths(self) -> dict[str, Path]:
        named = {
            "impressions": self.impressions,
            "counts": self.counts,
            "unique_keys": self.unique_keys,
            "events": self.events,
        }
        return {kind: path for kind, path in named.items() if path is not None}


class Collector(telemetry_pb2_grpc.TelemetryServiceServicer):
    def __init__(self, outputs: Outputs, tokens: TokenFile | None = None) -> None:
        self._tokens = tokens
        self._lock = threading.Lock()
        self._files: dict[str, TextIO] = {}
        self._seen: set[str] = set()
        self.stored = {"batches": 0, "duplicates": 0}
        self.records: dict[str, int] = {}
        self.discarded: dict[str, int] = {}
        for kind, path in outputs.paths().items():
            self._seen.update(_batch_ids(path))
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = self._files[kind] = path.open("a", encoding="utf-8")
            if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
                handle.write("\n")  # end a line torn by a crash, so the next one is whole

    def close(self) -> None:
        with self._lock:
            for handle in self._files.values():
                handle.close()
            self._files = {}

    def Upload(self, request: pb.UploadRequest, context: grpc.ServicerContext) -> pb.UploadResponse:
        if self._tokens is not None and not self._tokens.allows(context.invocation_metadata()):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
        if not request.batch_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "batch_id: must not be empty")
        with self._lock:
            if request.batch_id in self._seen:
                self.stored["duplicates"] += 1
                return pb.UploadResponse(duplicate=True)
            self._write(request)
            self._seen.add(request.batch_id)
            self.stored["batches"] += 1
        return pb.UploadResponse()

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                **self.stored,
                "records": dict(self.records),
                "discarded": dict(self.discarded),
            }

    def _write(self, request: pb.UploadRequest) -> None:
        tag = {"batch_id": request.batch_id, "sidecar_id": request.sidecar_id}
        rows = {
            "impressions": [_impression(i) | tag for i in request.impressions],
            "counts": [
                {"flag": c.flag, "hour": c.hour_ms, "count": c.count} | tag for c in request.counts
            ],
            "unique_keys": [
                {"flag": u.flag, "keys": list(u.keys)} | tag for u in request.unique_keys
            ],
            "events": [_event(e) | tag for e in request.events],
        }
        for kind, lines in rows.items():
            if not lines:
                continue
            handle = self._files.get(kind)
            if handle is None:
                self.discarded[kind] = self.discarded.get(kind, 0) + len(lines)
                log.info("collector: %d %s discarded (no output file for them)", len(lines), kind)
                continue
            handle.write("".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines))
            handle.flush()
            os.fsync(handle.fileno())
            self.records[kind] = self.records.get(kind, 0) + len(lines)


def _impression(i: pb.Impression) -> dict[str, Any]:
    return {
        "key": i.key,
        "bucketing_key": i.bucketing_key or None,
        "flag": i.flag,
        "treatment": i.treatment,
        "label": i.label or None,
        "change_number": i.change_number,
        "time": i.time_ms,
        "previous_time": i.previous_time_ms or None,
        "snapshot_version": i.snapshot_version,
    }


def _event(e: pb.Event) -> dict[str, Any]:
    return {
        "key": e.key,
        "traffic_type": e.traffic_type,
        "event_type": e.event_type,
        "value": e.value if e.HasField("value") else None,
        "properties": json.loads(e.properties_json) if e.properties_json else None,
        "timestamp": e.timestamp_ms,
    }


def _batch_ids(path: Path) -> set[str]:
    """The batch ids an earlier run wrote to `path` (a torn last line is skipped)."""
    ids: set[str] = set()
    if not path.exists():
        return ids
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                ids.add(json.loads(line)["batch_id"])
            except (ValueError, KeyError, TypeError):
                continue
    return ids
