"""fader.v1.EvaluationService on grpc.aio: thin adapters from RPCs to `Lookups`, the event
queue and the change feed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import NoReturn

import grpc
from fader.pb.fader.v1 import evaluation_pb2 as pb

from sidecar.api.lookups import Lookups, NotReady
from sidecar.api.track import EventQueue, QueueFull, event_from_request
from sidecar.api.watch import ChangeFeed, TooManyStreams
from sidecar.api.wire import BadRequest, check_name
from sidecar.telemetry.metrics import Metrics

SERVICE = pb.DESCRIPTOR.services_by_name["EvaluationService"]
STATUS_OF = {
    BadRequest: grpc.StatusCode.INVALID_ARGUMENT,
    NotReady: grpc.StatusCode.UNAVAILABLE,
    QueueFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    TooManyStreams: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


async def abort(
    context: grpc.aio.ServicerContext, err: BadRequest | NotReady | QueueFull | TooManyStreams
) -> NoReturn:
    """Ends the call with the status that `err` stands for and its message as details."""
    await context.abort(STATUS_OF[type(err)], str(err))
    raise AssertionError("unreachable: grpc.aio abort raises")


class EvaluationService:
    def __init__(
        self,
        lookups: Lookups,
        events: EventQueue,
        feed: ChangeFeed,
        metrics: Metrics,
        max_properties: int,
    ) -> None:
        self._lookups = lookups
        self._events = events
        self._feed = feed
        self._metrics = metrics
        self._max_properties = max_properties

    async def GetTreatment(
        self, request: pb.GetTreatmentRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetTreatmentResponse:
        try:
            return self._lookups.get_treatment(request)
        except (BadRequest, NotReady) as err:
            await abort(context, err)

    async def GetTreatments(
        self, request: pb.GetTreatmentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetTreatmentsResponse:
        try:
            return self._lookups.get_treatments(request)
        except (BadRequest, NotReady) as err:
            await abort(context, err)

    async def EvaluateBatch(
        self, request: pb.EvaluateBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.EvaluateBatchResponse:
        try:
            return self._lookups.evaluate_batch(request)
        except (BadRequest, NotReady) as err:
            await abort(context, err)

    async def Track(
        self, request: pb.TrackRequest, context: grpc.aio.ServicerContext
    ) -> pb.TrackResponse:
        try:
            self._events.put(event_from_request(request, self._max_properties))
        except BadRequest as err:
            self._metrics.shard().count_track("invalid")
            await abort(context, err)
        except QueueFull as err:
            await abort(context, err)
        return pb.TrackResponse()

    async def WatchChanges(
        self, request: pb.WatchChangesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchChangesResponse]:
        for index, flag in enumerate(request.flags):
            try:
                check_name(flag, f"flags[{index}]")
            except BadRequest as err:
                await abort(context, err)
        try:
            async for snap, changed in self._feed.changes(frozenset(request.flags)):
                yield pb.WatchChangesResponse(
                    version=snap.version, changed_flags=changed, source=snap.source
                )
        except TooManyStreams as err:
            await abort(context, err)
