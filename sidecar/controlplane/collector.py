"""The reference collector: fader.v1.TelemetryService, writing what sidecars upload as JSONL
and/or into the exposure store (DuckDB).

Each kind of record goes to its own file (impressions, counts, unique keys, events), one JSON
object per line, every line tagged with its `batch_id` and `sidecar_id` (and `source`, the
Split SDK that made it, for what SDKs posted through a sidecar's Split SDK API). A batch is
written and fsync'd before it is acknowledged, and a batch id seen before is acknowledged
without writing it again, so sidecars can retry freely. The ids already stored are read back from
the files at start, so duplicates are recognised across collector restarts too.

With an `ExposureStore`, impressions and events also go to DuckDB, committed before the
answer; the store keeps its own batch ids. Each sink takes a batch it does not have yet (the
store first: all or nothing), so a batch that reached one sink and then failed in the other
(answered UNAVAILABLE, retried by the sidecar) is completed by the retry without a duplicate
in either. The answer says `duplicate` only when every sink had the batch already. The store
belongs to its owner (the control plane), which closes it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import grpc
from fader.pb.fader.v1 import telemetry_pb2 as pb
from fader.pb.fader.v1 import telemetry_pb2_grpc

from sidecar.auth import TokenFile
from sidecar.controlplane.exposures import ExposureStore, InvalidBatch, StoreError

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


# The kinds the exposure store keeps (counts and unique keys carry no unit-level data).
STORE_KINDS = frozenset({"impressions", "events"})


class Collector(telemetry_pb2_grpc.TelemetryServiceServicer):
    def __init__(
        self, outputs: Outputs, tokens: TokenFile | None = None, store: ExposureStore | None = None
    ) -> None:
        self._tokens = tokens
        self._store = store
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
            try:
                new_in_store = self._store is not None and self._store.ingest(request)
            except InvalidBatch as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except StoreError as exc:
                log.warning("collector: %s", exc)
                context.abort(grpc.StatusCode.UNAVAILABLE, f"exposure store: {exc}")
            # Without files the store is the only sink: its answer says whether the batch is new.
            new_in_files = request.batch_id not in self._seen if self._files else new_in_store
            if not (new_in_store or new_in_files):
                self.stored["duplicates"] += 1
                return pb.UploadResponse(duplicate=True)
            if new_in_files:
                self._write(request)
                self._seen.add(request.batch_id)
            self.stored["batches"] += 1
        return pb.UploadResponse()

    def status(self) -> dict[str, Any]:
        with self._lock:
            status = {
                **self.stored,
                "records": dict(self.records),
                "discarded": dict(self.discarded),
            }
            if self._store is not None:
                status["store"] = dict(self._store.ingested)
            return status

    def _write(self, request: pb.UploadRequest) -> None:
        tag = {"batch_id": request.batch_id, "sidecar_id": request.sidecar_id}
        if request.source:  # records a Split SDK posted to the sidecar: which SDK
            tag["source"] = request.source
        records: dict[str, tuple[Sequence[Any], Callable[[Any], dict[str, Any]]]] = {
            "impressions": (request.impressions, _impression),
            "counts": (request.counts, _count),
            "unique_keys": (request.unique_keys, _unique_keys),
            "events": (request.events, _event),
        }
        lines: dict[str, str] = {}  # every kind converted before anything is written or counted
        discarded: dict[str, int] = {}
        for kind, (items, convert) in records.items():
            if not items:
                continue
            if kind in self._files:
                lines[kind] = "".join(
                    json.dumps(convert(item) | tag, separators=(",", ":")) + "\n" for item in items
                )
            elif self._store is None or kind not in STORE_KINDS:
                discarded[kind] = len(items)
        for kind, count in discarded.items():
            self.discarded[kind] = self.discarded.get(kind, 0) + count
            log.info("collector: %d %s discarded (no output file for them)", count, kind)
        for kind, text in lines.items():
            handle = self._files[kind]
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
            self.records[kind] = self.records.get(kind, 0) + len(records[kind][0])


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


def _count(c: pb.ImpressionCount) -> dict[str, Any]:
    return {"flag": c.flag, "hour": c.hour_ms, "count": c.count}


def _unique_keys(u: pb.UniqueKeys) -> dict[str, Any]:
    return {"flag": u.flag, "keys": list(u.keys)}


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
