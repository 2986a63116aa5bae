"""The fast lane: fader.v1's lookups as length-prefixed msgpack frames on a Unix socket.

Why it exists: a gRPC call costs 100-300 µs of Python CPU on each side, an evaluation a few µs.
Here a request is decoded, evaluated and answered inline in `data_received`, on the sidecar's
uvloop loop, and every answer to one read goes out in one write, so a pipelining client pays
one system call per batch of requests rather than per request. The protocol is specified in
docs/fastlane.md; this module is its reference server.

Requests go through the same evaluation core as every other lane (`sidecar.core`): the same
field rules, attribute policy and limits, messages, metrics, impressions and event
validation; refusals become error frames named like gRPC's statuses.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from time import perf_counter
from typing import Any, cast

import msgpack
from fader import fastlane as fl
from fader.rules.result import Decision

from sidecar.api import uds
from sidecar.core import Core
from sidecar.core import requests as fields
from sidecar.core.evaluator import Lookup
from sidecar.core.events import make_event
from sidecar.core.refusals import BadRequest, Refusal
from sidecar.core.requests import MAX_KEY_LENGTH, MAX_NAME_LENGTH

log = logging.getLogger(__name__)


class Handlers:
    """The four operations on decoded request maps; each returns the response map."""

    def __init__(self, core: Core) -> None:
        self._core = core
        self._evaluator = core.evaluator
        self._max_items = core.limits.max_batch_items
        self._admit = core.policy.admit  # bound once: `_lookup` runs for every lookup

    def treatment(self, request: dict[str, Any]) -> dict[str, Any]:
        """The commonest request: its answer is built as one map (the keys in
        `_evaluation`'s order, after "version") rather than merged from two."""
        started = perf_counter()
        evaluator = self._evaluator
        snap = evaluator.snapshot()
        lookup = self._lookup(request, "")
        result = evaluator.evaluate_one(snap, lookup, "GetTreatment", started)
        return {
            "version": snap.version,
            "flag": lookup[2],
            "treatment": result.treatment,
            "label": result.label,
            "config": result.config,
            "change_number": result.change_number,
        }

    def treatments(self, request: dict[str, Any]) -> dict[str, Any]:
        started = perf_counter()
        snap = self._evaluator.snapshot()
        key = _text(request, "key")
        fields.check_key(key, "key")
        flags = fields.select_flags(
            snap, _names(request, "flags"), _names(request, "flag_sets"), self._max_items
        )
        attrs = self._attributes(request.get("attributes"), "attributes")
        bucketing_key = _bucketing_key(request.get("bucketing_key"), "bucketing_key")
        lookups = [(key, bucketing_key, flag, attrs) for flag in flags]
        answers = self._evaluator.evaluate(snap, lookups, "GetTreatments", started)
        return {"version": snap.version, "evaluations": [_evaluation(a[2], a[3]) for a in answers]}

    def batch(self, request: dict[str, Any]) -> dict[str, Any]:
        started = perf_counter()
        snap = self._evaluator.snapshot()
        items = request.get("items")
        if not isinstance(items, list):
            raise BadRequest("items: must be an array")
        fields.check_items(len(items), self._max_items, "items")
        lookups: list[Lookup] = []
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise BadRequest(f"items[{index}]: must be a map")
            lookups.append(self._lookup(item, f"items[{index}]."))
        answers = self._evaluator.evaluate(snap, lookups, "EvaluateBatch", started)
        return {"version": snap.version, "evaluations": [_evaluation(a[2], a[3]) for a in answers]}

    def track(self, request: dict[str, Any]) -> dict[str, Any]:
        events = self._core.events
        try:
            stamp = request.get("timestamp")
            if stamp is not None and not isinstance(stamp, msgpack.Timestamp):
                raise BadRequest("timestamp: must be a msgpack timestamp or nil")
            event = make_event(
                _text(request, "key"),
                _text(request, "traffic_type"),
                _text(request, "event_type"),
                request.get("value"),
                self._attributes(request.get("properties"), "properties"),
                None if stamp is None else stamp.seconds * 1000 + stamp.nanoseconds // 1_000_000,
            )
        except BadRequest:
            events.refused()
            raise
        events.put(event)
        return {}

    def _lookup(self, request: dict[str, Any], prefix: str) -> Lookup:
        """One (key, bucketing key, flag, attributes) from a request or batch item map;
        `prefix` is where it sits in the request, for the refusal's message. The fields'
        names are only formatted on the refusal path: this runs for every lookup."""
        key, flag = request.get("key", ""), request.get("flag", "")
        if type(key) is not str or not 0 < len(key) <= MAX_KEY_LENGTH:
            fields.check_key(_text(request, "key", f"{prefix}key"), f"{prefix}key")
        if type(flag) is not str or not 0 < len(flag) <= MAX_NAME_LENGTH:
            fields.check_name(_text(request, "flag", f"{prefix}flag"), f"{prefix}flag")
        bucketing_key = request.get("bucketing_key")
        if bucketing_key is not None:
            bucketing_key = _bucketing_key(bucketing_key, f"{prefix}bucketing_key")
        attributes = request.get("attributes")
        if attributes is not None:
            if not isinstance(attributes, dict):  # `_attributes`, inlined
                raise BadRequest(f"{prefix}attributes: must be a map or nil")
            attributes = self._admit(attributes, prefix + "attributes", _timestamp_seconds)
        return key, bucketing_key, flag, attributes

    def _attributes(self, values: object, where: str) -> dict[str, object] | None:
        """Engine attributes from the msgpack map, through the policy every lane uses; a
        msgpack timestamp becomes whole epoch seconds."""
        if values is None:
            return None
        if not isinstance(values, dict):
            raise BadRequest(f"{where}: must be a map or nil")
        return self._admit(values, where, _timestamp_seconds)


def _timestamp_seconds(value: object) -> object | None:
    return value.seconds if isinstance(value, msgpack.Timestamp) else None


def _bucketing_key(value: object, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{where}: must be a string or nil")
    return fields.optional_key(value, where)


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
    return values  # names are checked by select_flags, as for gRPC


def _evaluation(flag: str, result: Decision) -> dict[str, Any]:
    return {
        "flag": flag,
        "treatment": result.treatment,
        "label": result.label,
        "config": result.config,
        "change_number": result.change_number,
    }


class Connection(asyncio.Protocol):
    """One client connection: preamble, then frames answered in arrival order.

    A protocol error (bad preamble, bad or oversized frame) is answered with an error frame
    without an id, and the connection is closed; answers already written go out first.
    """

    def __init__(self, lane: FastLane) -> None:
        self._lane = lane
        self._dispatch = lane.dispatch  # bound once: read for every frame
        self._max_frame_bytes = lane.max_frame_bytes
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
        frames, size = self._frames, len(data) - fl.LENGTH_BYTES
        if (
            0 < size <= self._max_frame_bytes
            and int.from_bytes(data[: fl.LENGTH_BYTES], "big") == size
            and self._greeted
            and frames.empty
        ):
            try:  # the usual case at one request in flight: exactly one whole frame
                transport.write(self._dispatch(fl.decode(data[4:])))
                return
            except fl.ProtocolError:
                pass  # answered below, the general way
        out: list[bytes] = []
        try:
            bodies = frames.feed(data) if self._greeted else self._greet(data, out)
            dispatch = self._dispatch
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
        self._packer = fl.packer()  # every connection runs on the one event loop

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
        except Refusal as err:
            return fl.encode(
                {"id": request_id, "error": err.code, "message": str(err)}, self._packer
            )
        response["id"] = request_id
        body: bytes = self._packer.pack(response)  # `fl.encode`, inlined: once per request
        return len(body).to_bytes(fl.LENGTH_BYTES, "big") + body

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
