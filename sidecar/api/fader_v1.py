"""fader.v1.EvaluationService: protobuf requests to the evaluation core and back.

`Lookups` translates the three lookup messages (synchronous, independent of the gRPC stack,
so the benchmarks and fuzz tests drive it directly); `EvaluationService` is the grpc.aio
servicer around it, with Track, WatchChanges, and the two calls of clients that evaluate in
process: WatchSnapshots (the snapshot bytes, every version) and RecordExposures (their
impressions, into the telemetry pipeline). Responses are filled in place: setting
fields on a message already in its response costs half of building one and copying it in.
EvaluateBatch, where the work per item counts most, goes further: it takes the request's
bytes and answers the response's (`evaluate_batch_wire`), so that no full message is built.
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import aclosing
from functools import partial
from time import perf_counter
from typing import TypeVar, cast

import grpc
from fader.pb.fader.v1 import evaluation_pb2 as pb
from fader.rules.result import Decision
from fader.snapshot.snapshot import Snapshot
from google.protobuf.message import DecodeError, Message

from sidecar.api.grpc_status import abort
from sidecar.api.watch import Change, ChangeFeed
from sidecar.core import Core
from sidecar.core.attributes import AttributePolicy
from sidecar.core.evaluator import Lookup
from sidecar.core.events import make_event
from sidecar.core.exposures import ClientBatch
from sidecar.core.refusals import BadRequest, Refusal
from sidecar.core.requests import (
    MAX_KEY_LENGTH,
    MAX_NAME_LENGTH,
    check_items,
    check_key,
    check_name,
    optional_key,
    select_flags,
)
from sidecar.plumbing._batchwire import WireError, join_entries, read_batch, read_exposures
from sidecar.telemetry.batches import IMPRESSIONS_FIELD
from sidecar.telemetry.events import Event
from sidecar.telemetry.impressions import Answer

SERVICE = pb.DESCRIPTOR.services_by_name["EvaluationService"]
# WatchSnapshots cuts a snapshot's bytes into messages of this size (the default gRPC
# message limit is 4 MiB, and a large snapshot is tens of MiB).
CHUNK_BYTES = 1024 * 1024
# Field 1 (evaluations), wire type 2 (length-delimited), in both lookup responses that list.
EVALUATIONS_TAG = b"\x0a"
# Field 2 (version), wire type 0 (varint), in EvaluateBatchResponse.
VERSION_TAG = b"\x10"
Req = TypeVar("Req")
Resp = TypeVar("Resp")
# upb's words for a request it cannot parse, followed by its reason: the reader's refusals
# repeat them (tests/plumbing/test_batchwire.py compares), as when gRPC parsed the request.
UNDECODABLE = (
    "the request does not decode: Error parsing message with type "
    f"'{pb.EvaluateBatchRequest.DESCRIPTOR.full_name}': "
)
RECORD_IMPRESSIONS_FIELD = pb.RecordExposuresRequest.IMPRESSIONS_FIELD_NUMBER
SCALAR_KINDS = frozenset(("string_value", "int_value", "double_value", "bool_value"))


class Lookups:
    """GetTreatment, GetTreatments and EvaluateBatch, as plain calls."""

    def __init__(self, core: Core) -> None:
        self._evaluator = core.evaluator
        self._policy = core.policy
        self._max_items = core.limits.max_batch_items
        self._entries = EvaluationEntries()
        self._attribute_entries = AttributeEntries(core.policy)

    def get_treatment(self, request: pb.GetTreatmentRequest) -> pb.GetTreatmentResponse:
        started = perf_counter()
        snap = self._evaluator.snapshot()
        key, flag = request.key, request.flag
        check_key(key, "key")
        check_name(flag, "flag")
        bucketing_key = optional_key(request.bucketing_key, "bucketing_key")
        attrs = attributes(request.attributes, self._policy, "attributes")
        lookup = (key, bucketing_key, flag, attrs)
        result = self._evaluator.evaluate_one(snap, lookup, "GetTreatment", started)
        response = pb.GetTreatmentResponse(version=snap.version)
        fill_evaluation(response.evaluation, flag, result)
        return response

    def get_treatments(self, request: pb.GetTreatmentsRequest) -> pb.GetTreatmentsResponse:
        started = perf_counter()
        snap = self._evaluator.snapshot()
        key = request.key
        check_key(key, "key")
        flags = select_flags(snap, request.flags, request.flag_sets, self._max_items)
        attrs = attributes(request.attributes, self._policy, "attributes")
        bucketing_key = optional_key(request.bucketing_key, "bucketing_key")
        lookups = [(key, bucketing_key, flag, attrs) for flag in flags]
        answers = self._evaluator.evaluate(snap, lookups, "GetTreatments", started)
        response = pb.GetTreatmentsResponse(version=snap.version)
        response.MergeFromString(self._entries.encode(snap, answers))
        return response

    def evaluate_batch(self, request: pb.EvaluateBatchRequest) -> pb.EvaluateBatchResponse:
        """`evaluate_batch_wire` for a message (tests, the thread-pool benchmark stack)."""
        answer = self.evaluate_batch_wire(request.SerializeToString())
        return pb.EvaluateBatchResponse.FromString(answer)

    def evaluate_batch_wire(self, data: bytes) -> bytes:
        """An EvaluateBatchResponse's bytes for an EvaluateBatchRequest's: what the gRPC
        method takes and answers, so that neither side builds a message it does not need.

        The request is read natively (`read_batch`, sidecar/plumbing/_batchwire.c): the items come
        out as lookup tuples, their attributes built from the entries `AttributeEntries`
        remembers by their bytes. An item the reader cannot settle alone (a key or name out
        of bounds, an entry not remembered, too many attributes) is listed in `pending` and
        goes through `_checked`, whose checks say what is wrong. Items past the limit are
        read and counted, not kept: a request is refused for their number without holding
        them all."""
        started = perf_counter()
        try:
            read, pending, items = read_batch(
                data,
                self._attribute_entries.known,
                MAX_KEY_LENGTH,
                MAX_NAME_LENGTH,
                self._policy.max_attributes,
                self._max_items,
            )
        except WireError as err:
            raise BadRequest(f"{UNDECODABLE}{err}") from None
        snap = self._evaluator.snapshot()
        check_items(items, self._max_items, "items")
        try:
            for index in pending:  # in item order: the first refused item is the one named
                read[index] = self._checked(index, *read[index])
        except (BadRequest, DecodeError) as err:
            raise _refusal(pb.EvaluateBatchRequest, data, err) from None
        lookups = cast("list[Lookup]", read)  # no pending item is left with its entries
        answers = self._evaluator.evaluate(snap, lookups, "EvaluateBatch", started)
        version = snap.version
        tail = VERSION_TAG + _varint(version) if version else b""
        return self._entries.encode(snap, answers) + tail

    def _checked(
        self,
        index: int,
        key: str,
        bucketing_key: str | None,
        flag: str,
        entries: dict[str, object] | tuple[bytes, ...] | None,
    ) -> Lookup:
        """A pending item's lookup, or the refusal of its first bad field."""
        check_key(key, f"items[{index}].key")
        check_name(flag, f"items[{index}].flag")
        if bucketing_key is not None:
            check_key(bucketing_key, f"items[{index}].bucketing_key")
        if entries is None:
            return (key, bucketing_key, flag, None)
        assert isinstance(entries, tuple)  # a pending item's attributes are its entries
        return (key, bucketing_key, flag, self._attribute_entries.read(entries, index))


def _refusal(
    message: type[Message], data: bytes, err: BadRequest | DecodeError | WireError
) -> BadRequest:
    """What a request refused while its wire form was read is answered: one that does not
    decode as the declared `message` says so first, with upb's reason for the whole request,
    as when gRPC parsed it before the handler (a native reader, or the parse of a part,
    stops at its own first fault, which need not be the first one upb meets)."""
    try:
        message.FromString(data)
    except DecodeError as whole:
        return BadRequest(f"the request does not decode: {whole}")
    if isinstance(err, BadRequest):
        return err
    return BadRequest(f"the request does not decode: {err}")


AttributesEntry = pb.BatchItem.AttributesEntry


class AttributeEntries:
    """A batch item's attributes from their wire entries, each entry's conversion and checks
    remembered by its bytes: a service's callers send the same few attributes ("plan": "pro")
    over and over, and a remembered entry costs one dict lookup. An entry is only remembered
    once it passed the policy, so a refusal is always worked out (and counted) anew; the
    memory is bounded by `MAX_ENTRIES` (it starts over when full).

    Map semantics are kept: for a name sent twice the last entry wins, the count limit is on
    distinct names, an entry without a value is refused."""

    MAX_ENTRIES = 10_000

    def __init__(self, policy: AttributePolicy) -> None:
        self._policy = policy
        self.known: dict[bytes, tuple[str, object]] = {}

    def read(self, entries: Sequence[bytes], index: int) -> dict[str, object]:
        """Item `index`'s attributes: from remembered entries when all of them are (the
        reader does this itself unless the item has too many), else through `admit`."""
        where = f"items[{index}].attributes"
        known = self.known
        attrs: dict[str, object] = {}
        for entry in entries:
            pair = known.get(entry)
            if pair is None:
                return self.admit(entries, where)
            attrs[pair[0]] = pair[1]
        self._policy.check_count(len(attrs), where)
        return attrs

    def admit(self, entries: Sequence[bytes], where: str) -> dict[str, object]:
        """`attributes` on the parsed entries, then the plain values it admitted remembered in
        `known`, where the reader looks every entry up first."""
        values: dict[str, tuple[bytes, pb.AttributeValue]] = {}
        for entry in entries:
            parsed = AttributesEntry.FromString(entry)  # DecodeError: the caller's to answer
            values[parsed.key] = (entry, parsed.value)
        admitted = attributes({name: v for name, (_, v) in values.items()}, self._policy, where)
        assert admitted is not None  # entries were given
        known = self.known
        if len(known) + len(values) > self.MAX_ENTRIES:
            known.clear()
        for name, (entry, value) in values.items():
            if name and value.WhichOneof("kind") in SCALAR_KINDS:
                known[entry] = (name, admitted[name])
        return admitted


class EvaluationEntries:
    """The `evaluations` of a GetTreatments or EvaluateBatch response, as bytes: each (flag,
    decision) is encoded once per snapshot and its bytes reused, and the response takes them
    all in one MergeFromString. Filling a message per answer costs three times as much, and a
    snapshot has few distinct answers (decisions are built at compile time).

    Keyed by value, not identity: a decision made at lookup time is encoded correctly too
    (`join_entries`, in C, only groups a request's answers by identity to look each distinct
    pair up once). The cache is dropped when the snapshot changes, and when it grows past
    `MAX_ENTRIES` (answers that vary per lookup cannot fill memory).
    """

    MAX_ENTRIES = 50_000

    def __init__(self) -> None:
        self._snapshot: weakref.ref[Snapshot] | None = None
        self._entries: dict[tuple[str, Decision], bytes] = {}

    def encode(self, snap: Snapshot, answers: list[Answer]) -> bytes:
        if self._snapshot is None or self._snapshot() is not snap:
            self._snapshot, self._entries = weakref.ref(snap), {}
        return join_entries(self._entries, answers, self._missing)

    def _missing(self, answer: tuple[str, Decision]) -> bytes:
        """The entry of an answer not encoded yet, remembered (`join_entries` asks)."""
        entries = self._entries
        if len(entries) >= self.MAX_ENTRIES:
            entries.clear()
        entries[answer] = part = _entry(*answer)
        return part


def _entry(flag: str, result: Decision) -> bytes:
    """One `repeated Evaluation evaluations = 1` entry: tag, length, message."""
    message = pb.Evaluation()
    fill_evaluation(message, flag, result)
    body = message.SerializeToString()
    return EVALUATIONS_TAG + _varint(len(body)) + body


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class EvaluationService:
    """The grpc.aio servicer: lookups, Track, WatchChanges; refusals become statuses."""

    # Methods registered without protobuf (de)serializers: they take and answer bytes.
    wire_methods = frozenset({"EvaluateBatch", "RecordExposures"})

    def __init__(self, core: Core, feed: ChangeFeed) -> None:
        self._lookups = Lookups(core)
        self._core = core
        self._feed = feed

    async def GetTreatment(
        self, request: pb.GetTreatmentRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetTreatmentResponse:
        return await _answer(self._lookups.get_treatment, request, context)

    async def GetTreatments(
        self, request: pb.GetTreatmentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetTreatmentsResponse:
        return await _answer(self._lookups.get_treatments, request, context)

    async def EvaluateBatch(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Bytes in, bytes out (see `wire_methods`): the request is read item by item
        without a full message, the response is already encoded."""
        try:
            return self._lookups.evaluate_batch_wire(request)
        except Refusal as err:
            await abort(context, err)

    async def Track(
        self, request: pb.TrackRequest, context: grpc.aio.ServicerContext
    ) -> pb.TrackResponse:
        events = self._core.events
        try:
            try:
                event = event_from_request(request, self._core.policy)
            except BadRequest:
                events.refused()
                raise
            events.put(event)
        except Refusal as err:
            await abort(context, err)
        return pb.TrackResponse()

    async def WatchChanges(
        self, request: pb.WatchChangesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchChangesResponse]:
        try:
            for index, flag in enumerate(request.flags):
                check_name(flag, f"flags[{index}]")
            async for message in self._feed.updates(frozenset(request.flags), change_message):
                yield message
        except Refusal as err:
            await abort(context, err)

    async def WatchSnapshots(
        self, request: pb.WatchSnapshotsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchSnapshotsResponse]:
        core = self._core
        settings = pb.InProcessSettings(
            impressions_mode=core.exposures.mode,
            observer_size=core.exposures.observer_size,
            max_attributes=core.limits.max_attributes,
            max_attribute_size=core.limits.max_attribute_size,
            max_batch_items=core.limits.max_batch_items,
        )
        try:
            async with aclosing(self._feed.snapshots()) as snapshots:
                async for snap in snapshots:
                    # made once per version for every stream: a stuck stream holds no copy
                    make = partial(_messages_of, snap, settings)
                    for message in self._feed.shared_for(snap, snapshot_messages, make):
                        yield message
        except Refusal as err:
            await abort(context, err)

    async def RecordExposures(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Bytes in, bytes out (see `wire_methods`): the impressions are checked on their
        bytes and passed on to the upload as they came (`exposures_from_wire`)."""
        try:
            duplicate = self._core.exposures.put(exposures_from_wire(request))
        except Refusal as err:
            await abort(context, err)
        return pb.RecordExposuresResponse(duplicate=duplicate).SerializeToString()


def change_message(change: Change) -> pb.WatchChangesResponse:
    """One WatchChanges message, shared by every stream it is for (it is never changed)."""
    return pb.WatchChangesResponse(
        version=change.version, changed_flags=change.flags, source=change.source
    )


def _messages_of(
    snap: Snapshot, settings: pb.InProcessSettings
) -> tuple[pb.WatchSnapshotsResponse, ...]:
    return tuple(snapshot_messages(snap, settings))


def snapshot_messages(
    snap: Snapshot, settings: pb.InProcessSettings
) -> Iterator[pb.WatchSnapshotsResponse]:
    """One snapshot version as WatchSnapshots sends it: its bytes in chunks, the first
    message carrying the rest; a single message without payload when the bytes are unknown."""
    first = pb.WatchSnapshotsResponse(version=snap.version, source=snap.source, settings=settings)
    document = snap.document
    if document is None:
        yield first
        return
    data = document.data
    first.encoding = document.fmt
    first.payload_size = len(data)
    first.chunk = data[:CHUNK_BYTES]
    yield first
    for start in range(CHUNK_BYTES, len(data), CHUNK_BYTES):
        yield pb.WatchSnapshotsResponse(
            version=snap.version, chunk=data[start : start + CHUNK_BYTES]
        )


def exposures_from_wire(data: bytes) -> ClientBatch:
    """A RecordExposuresRequest's bytes as the core takes a client's batch. The impressions
    are read natively (`read_exposures`, sidecar/plumbing/_batchwire.c): checked on their
    bytes, and kept as the wire entries they came as, under the upload's field number, so
    that none is made into an object, checked in Python and encoded again (that cost the
    sidecar more per impression than the client's lookup). The rest of the request (batch
    id, counts, unique keys: few records) is parsed by upb."""
    try:
        entries, count, problem, rest = read_exposures(
            data, RECORD_IMPRESSIONS_FIELD, IMPRESSIONS_FIELD, MAX_KEY_LENGTH, MAX_NAME_LENGTH
        )
        request = pb.RecordExposuresRequest.FromString(rest)
    except (WireError, DecodeError) as err:
        raise _refusal(pb.RecordExposuresRequest, data, err) from None
    return ClientBatch(
        batch_id=request.batch_id,
        entries=entries,
        impressions=count,
        counts=[(c.flag, c.hour_ms, c.count) for c in request.counts],
        unique_keys=[(u.flag, list(u.keys)) for u in request.unique_keys],
        impression_problem=problem,
    )


async def _answer(
    lookup: Callable[[Req], Resp], request: Req, context: grpc.aio.ServicerContext
) -> Resp:
    """The lookup's response, or the call aborted with its refusal's status."""
    try:
        return lookup(request)
    except Refusal as err:
        await abort(context, err)


def event_from_request(request: pb.TrackRequest, policy: AttributePolicy) -> Event:
    """The Event a TrackRequest stands for; BadRequest names the first bad field."""
    stamp = request.timestamp if request.HasField("timestamp") else None
    return make_event(
        request.key,
        request.traffic_type,
        request.event_type,
        request.value if request.HasField("value") else None,
        attributes(request.properties, policy, "properties"),
        None if stamp is None else stamp.seconds * 1000 + stamp.nanos // 1_000_000,
    )


def attributes(
    values: Mapping[str, pb.AttributeValue], policy: AttributePolicy, where: str
) -> dict[str, object] | None:
    """Engine attributes from the typed wire map (None when there are none), in one pass:
    int64 stays int, double stays float, a timestamp becomes whole epoch seconds."""
    if not values:
        return None
    policy.check_count(len(values), where)
    max_size = policy.max_size
    converted: dict[str, object] = {}
    for name, value in values.items():
        kind = value.WhichOneof("kind")
        if kind in SCALAR_KINDS and name:
            item = getattr(value, kind)
            if kind == "string_value" and len(item) > max_size:
                raise policy.too_long(where, name, len(item))
            converted[name] = item
        else:
            converted[name] = _special(name, value, kind, where, policy)
    return converted


def _special(
    name: str, value: pb.AttributeValue, kind: str | None, where: str, policy: AttributePolicy
) -> object:
    """The uncommon attribute forms, and the errors, out of the common path."""
    if kind is None:
        raise BadRequest(f"{where}[{name!r}]: no value set")
    if not name:
        raise BadRequest(f"{where}: an attribute name is empty")
    if kind == "string_list_value":
        return policy.check_list(where, name, list(value.string_list_value.values))
    return value.timestamp_value.seconds


def fill_evaluation(message: pb.Evaluation, flag: str, result: Decision) -> None:
    """Writes `result` into a message already in its response; absent fields stay unset."""
    message.flag = flag
    message.treatment = result.treatment
    if result.label is not None:
        message.label = result.label
    if result.config is not None:
        message.config = result.config
    if result.change_number is not None:
        message.change_number = result.change_number
