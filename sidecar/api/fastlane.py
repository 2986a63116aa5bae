"""The fast lane: fader.v1's lookups as length-prefixed msgpack frames on a Unix socket.

Why it exists: a gRPC call costs 100-300 µs of Python CPU on each side, an evaluation a few µs.
Here a request is decoded, evaluated and answered inline in `data_received`, on the sidecar's
uvloop loop, and every answer to one read goes out in one write, so a pipelining client pays
one system call per batch of requests rather than per request. The protocol is specified in
docs/fastlane.md; this module is its reference server.

Requests are validated with the same rules (and messages) as the gRPC adapter; evaluations are
counted in the same metrics. Track goes through the same validation and queue as gRPC's.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from collections.abc import Iterator
from pathlib import Path
from time import perf_counter
from typing import Any, cast

import msgpack
from fader import fastlane as fl
from fader.pb.fader.v1 import evaluation_pb2 as pb
from fader.rules.result import LABEL_NOT_FOUND, Result

from sidecar.api import uds, wire
from sidecar.api.lookups import NotReady, active_snapshot, select_flags
from sidecar.api.track import EventQueue, QueueFull, event_from_request
from sidecar.api.wire import BadRequest
from sidecar.delivery.store import Store
from sidecar.telemetry.impressions import Lookup, Recorder, now_ms
from sidecar.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

SCALARS = (str, int, float, bool)


class Handlers:
    """The four operations on decoded request maps; each returns the response map."""

    def __init__(
        self,
        store: Store,
        events: EventQueue,
        metrics: Metrics,
        max_attributes: int,
        max_items: int,
        recorder: Recorder | None = None,
    ) -> None:
        self._store = store
        self._events = events
        self._metrics = metrics
        self._max_attributes = max_attributes
        self._max_items = max_items
        self._record = recorder.record if recorder is not None else None

    def treatment(self, request: dict[str, Any]) -> dict[str, Any]:
        start = perf_counter()
        snap = active_snapshot(self._store)
        key = _text(request, "key")
        flag = _text(request, "flag")
        wire.check_key(key, "key")
        wire.check_name(flag, "flag")
        bucketing_key = self._bucketing_key(request.get("bucketing_key"), "bucketing_key")
        attrs = self._attributes(request.get("attributes"), "attributes")
        result = snap.evaluate(key, flag, bucketing_key, attrs)
        shard = self._metrics.shard()
        shard.count_evaluation(flag, result.treatment, result.label != LABEL_NOT_FOUND)
        if self._record is not None:
            self._record(snap, now_ms(), [(key, bucketing_key, flag, result)])
        shard.lookup("GetTreatment").observe(perf_counter() - start)
        return {"version": snap.version, **_evaluation(flag, result)}

    def treatments(self, request: dict[str, Any]) -> dict[str, Any]:
        start = perf_counter()
        snap = active_snapshot(self._store)
        key = _text(request, "key")
        wire.check_key(key, "key")
        flags = select_flags(
            snap, _names(request, "flags"), _names(request, "flag_sets"), self._max_items
        )
        attrs = self._attributes(request.get("attributes"), "attributes")
        bucketing_key = self._bucketing_key(request.get("bucketing_key"), "bucketing_key")
        shard = self._metrics.shard()
        evaluations = []
        recorded: list[Lookup] = []
        for flag in flags:
            result = snap.evaluate(key, flag, bucketing_key, attrs)
            shard.count_evaluation(flag, result.treatment, result.label != LABEL_NOT_FOUND)
            recorded.append((key, bucketing_key, flag, result))
            evaluations.append(_evaluation(flag, result))
        if self._record is not None:
            self._record(snap, now_ms(), recorded)
        shard.lookup("GetTreatments").observe(perf_counter() - start)
        return {"version": snap.version, "evaluations": evaluations}

    def batch(self, request: dict[str, Any]) -> dict[str, Any]:
        start = perf_counter()
        snap = active_snapshot(self._store)
        items = request.get("items")
        if not isinstance(items, list):
            raise BadRequest("items: must be an array")
        if len(items) > self._max_items:
            raise BadRequest(f"items: {len(items)} given, at most {self._max_items} allowed")
        shard = self._metrics.shard()
        evaluations = []
        recorded: list[Lookup] = []
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise BadRequest(f"items[{index}]: must be a map")
            key = _text(item, "key", f"items[{index}].key")
            flag = _text(item, "flag", f"items[{index}].flag")
            wire.check_key(key, f"items[{index}].key")
            wire.check_name(flag, f"items[{index}].flag")
            bucketing_key = self._bucketing_key(
                item.get("bucketing_key"), f"items[{index}].bucketing_key"
            )
            attrs = self._attributes(item.get("attributes"), f"items[{index}].attributes")
            result = snap.evaluate(key, flag, bucketing_key, attrs)
            shard.count_evaluation(flag, result.treatment, result.label != LABEL_NOT_FOUND)
            recorded.append((key, bucketing_key, flag, result))
            evaluations.append(_evaluation(flag, result))
        if self._record is not None:
            self._record(snap, now_ms(), recorded)
        shard.lookup("EvaluateBatch").observe(perf_counter() - start)
        return {"version": snap.version, "evaluations": evaluations}

    def track(self, request: dict[str, Any]) -> dict[str, Any]:
        """Built into a fader.v1 TrackRequest so that gRPC's validation applies unchanged;
        track is not the hot path."""
        try:
            self._events.put(event_from_request(self._track_request(request), self._max_attributes))
        except BadRequest:
            self._metrics.shard().count_track("invalid")
            raise
        return {}

    def _track_request(self, request: dict[str, Any]) -> pb.TrackRequest:
        value = request.get("value")
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise BadRequest("value: must be a number or nil")
        message = pb.TrackRequest(
            key=_text(request, "key"),
            traffic_type=_text(request, "traffic_type"),
            event_type=_text(request, "event_type"),
            value=None if value is None else float(value),
        )
        if value is not None and not math.isfinite(message.value):
            raise BadRequest(f"value: {value} is not a finite number")
        stamp = request.get("timestamp")
        if stamp is not None:
            if not isinstance(stamp, msgpack.Timestamp):
                raise BadRequest("timestamp: must be a msgpack timestamp or nil")
            message.timestamp.seconds, message.timestamp.nanos = stamp.seconds, stamp.nanoseconds
        values = self._attributes(request.get("properties"), "properties") or {}
        for name, item in values.items():
            message.properties[name].CopyFrom(_attribute_value(item))
        return message

    def _bucketing_key(self, value: object, where: str) -> str | None:
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise BadRequest(f"{where}: must be a string or nil")
        wire.check_key(value, where)
        return value

    def _attributes(self, values: object, where: str) -> dict[str, object] | None:
        """Engine attributes from the msgpack map: int stays int and float stays float (Split's
        numeric matchers accept only ints); a msgpack timestamp becomes whole epoch seconds."""
        if values is None:
            return None
        if not isinstance(values, dict):
            raise BadRequest(f"{where}: must be a map or nil")
        if not values:
            return None
        if len(values) > self._max_attributes:
            raise BadRequest(
                f"{where}: {len(values)} entries, at most {self._max_attributes} allowed"
            )
        converted: dict[str, object] = {}
        for name, value in values.items():
            if not name:
                raise BadRequest(f"{where}: an attribute name is empty")
            if isinstance(value, SCALARS):
                if type(value) is int and not fl.INT64_MIN <= value <= fl.INT64_MAX:
                    raise BadRequest(f"{where}[{name!r}]: {value} does not fit in 64 bits")
                converted[name] = value
            elif isinstance(value, msgpack.Timestamp):
                converted[name] = value.seconds
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                converted[name] = value
            else:
                raise BadRequest(
                    f"{where}[{name!r}]: {type(value).__name__} is not one of string, integer, "
                    "float, boolean, array of strings, timestamp"
                )
        return converted


def _text(request: dict[str, Any], field: str, where: str | None = None) -> str:
    value = request.get(field, "")
    if not isinstance(value, str):
        raise BadRequest(f"{where or field}: must be a string")
    return value


def _names(request: dict[str, Any], field: str) -> list[str]:
    values = request.get(field)
    if values is None:
        return []
    if not isinstance(values, list):
        raise BadRequest(f"{field}: must be an array of strings or nil")
    for index, name in enumerate(values):
        if not isinstance(name, str):
            raise BadRequest(f"{field}[{index}]: must be a string")
    return values  # names are checked by lookups.select_flags, as for gRPC


def _evaluation(flag: str, result: Result) -> dict[str, Any]:
    return {
        "flag": flag,
        "treatment": result.treatment,
        "label": result.label,
        "config": result.config,
        "change_number": result.change_number,
    }


def _attribute_value(value: object) -> pb.AttributeValue:
    """An event property (already checked by `_attributes`) as fader.v1 carries it."""
    if isinstance(value, bool):
        return pb.AttributeValue(bool_value=value)
    if isinstance(value, int):
        return pb.AttributeValue(int_value=value)
    if isinstance(value, float):
        return pb.AttributeValue(double_value=value)
    if isinstance(value, str):
        return pb.AttributeValue(string_value=value)
    assert isinstance(value, list)
    return pb.AttributeValue(string_list_value=pb.StringList(values=value))


class Connection(asyncio.Protocol):
    """One client connection: preamble, then frames answered in arrival order.

    A protocol error (bad preamble, bad or oversized frame) is answered with an error frame
    without an id, and the connection is closed; answers already written go out first.
    """

    def __init__(self, lane: FastLane) -> None:
        self._lane = lane
        self._frames = fl.FrameBuffer(lane.max_frame_bytes)
        self._greeted = False
        self._preamble = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._lane.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lane.connections.discard(self)
        self._transport = None

    def pause_writing(self) -> None:
        """The client is not reading its answers: stop reading its requests (backpressure)."""
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        out: list[bytes] = []
        try:
            bodies = self._frames.feed(data) if self._greeted else self._greet(data, out)
            dispatch = self._lane.dispatch
            for body in bodies:
                out.append(dispatch(fl.decode(body)))
        except fl.ProtocolError as err:
            out.append(fl.encode({"id": None, "error": err.code, "message": str(err)}))
            transport.write(b"".join(out))
            transport.close()
            return
        transport.write(b"".join(out))

    def _greet(self, data: bytes, out: list[bytes]) -> Iterator[bytes]:
        """Checks the preamble, answers the hello frame, then reads the frames behind it."""
        self._preamble += data
        head = bytes(self._preamble[: len(fl.PREAMBLE)])
        if not fl.MAGIC.startswith(head[:4]):
            raise fl.ProtocolError(fl.BAD_FRAME, "expected the preamble 'FADR' + version byte")
        if len(head) < len(fl.PREAMBLE):
            return iter(())
        if head[4] != fl.VERSION:
            raise fl.ProtocolError(
                fl.UNSUPPORTED_VERSION,
                f"version {head[4]} is not supported; supported: {fl.VERSION}",
            )
        self._greeted = True
        out.append(self._lane.hello)
        rest = bytes(self._preamble[len(fl.PREAMBLE) :])
        self._preamble.clear()
        return self._frames.feed(rest)

    def shut(self) -> None:
        """Says why the connection ends, then closes it once the pending answers are out."""
        if self._transport is not None and not self._transport.is_closing():
            message = {"id": None, "error": fl.SHUTTING_DOWN, "message": "the sidecar is stopping"}
            self._transport.write(fl.encode(message))
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class FastLane:
    """The listener: binds the socket like the gRPC one, serves `Connection`s, drains."""

    def __init__(self, handlers: Handlers, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.connections: set[Connection] = set()
        self.hello = fl.encode(
            {
                "version": fl.VERSION,
                "max_frame_bytes": max_frame_bytes,
                "max_in_flight": fl.MAX_IN_FLIGHT,
            }
        )
        self._operations = {
            "treatment": handlers.treatment,
            "treatments": handlers.treatments,
            "batch": handlers.batch,
            "track": handlers.track,
        }
        self._server: asyncio.AbstractServer | None = None
        self._socket: uds.SocketFile | None = None

    def dispatch(self, request: dict[str, Any]) -> bytes:
        """The encoded answer to one request; refusals become error frames with its id."""
        request_id = request.get("id")
        if type(request_id) is not int or not 0 <= request_id < 2**64:
            raise fl.ProtocolError(fl.BAD_FRAME, "request without an unsigned integer 'id'")
        op = request.get("op")
        operation = self._operations.get(op) if isinstance(op, str) else None
        try:
            if operation is None:
                known = ", ".join(self._operations)
                raise BadRequest(f"op: {request.get('op')!r} is not one of {known}")
            response = operation(request)
        except BadRequest as err:
            return fl.encode({"id": request_id, "error": fl.INVALID_ARGUMENT, "message": str(err)})
        except NotReady as err:
            return fl.encode({"id": request_id, "error": fl.UNAVAILABLE, "message": str(err)})
        except QueueFull as err:
            return fl.encode(
                {"id": request_id, "error": fl.RESOURCE_EXHAUSTED, "message": str(err)}
            )
        response["id"] = request_id
        return fl.encode(response)

    async def start(self, path: Path, gid: int | None) -> None:
        uds.check_path(path)
        if uds.claim_path(path):
            log.warning("removed stale socket %s (no server was answering on it)", path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._socket = uds.bind_socket(path, gid, lambda _: sock.bind(str(path)))
            loop = asyncio.get_running_loop()
            self._server = await loop.create_unix_server(lambda: Connection(self), sock=sock)
        except BaseException:
            sock.close()
            raise

    async def stop(self, grace: float) -> None:
        """Stops accepting, sends SHUTTING_DOWN on every connection after the answers already
        computed (requests are answered as they arrive, so nothing else is in flight), waits
        up to `grace` seconds for the writes to drain, then cuts what is left."""
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.shut()
        deadline = asyncio.get_running_loop().time() + grace
        while self.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            connection.abort()
        if self._socket is not None and self._socket.remove():
            log.info("removed socket %s", self._socket.path)
