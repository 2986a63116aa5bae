"""flagd.evaluation.v1.Service and flagd.evaluation.v2.Service on grpc.aio.

Every OpenFeature flagd provider in RPC mode speaks this protocol, so a service in any
language reads Fader flags with no Fader SDK. The adapters are thin: they read the active
snapshot once per call, evaluate through `FlagdResolver.resolve` (the one evaluation path of
both services) and translate with `sidecar.api.flagd_mapping`.

Both versions share one implementation: v2 differs only in its message classes (value and
variant are `optional`, so a disabled flag sends neither; v1 sends zero values, as flagd does)
and in having no ResolveAll.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from types import ModuleType
from typing import Any, NoReturn

import grpc
from fader.pb.flagd.evaluation.v1 import evaluation_pb2 as v1
from fader.pb.flagd.evaluation.v2 import evaluation_pb2 as v2
from fader.rules.result import LABEL_NOT_FOUND, Result
from fader.snapshot.snapshot import Snapshot

from sidecar import limits
from sidecar.api import flagd_mapping as mapping
from sidecar.api.flagd_mapping import FlagdError
from sidecar.api.lookups import NotReady, active_snapshot
from sidecar.api.watch import ChangeFeed, TooManyStreams
from sidecar.api.wire import BadRequest, check_name
from sidecar.delivery.store import Store
from sidecar.telemetry.impressions import Recorder, now_ms
from sidecar.telemetry.metrics import Metrics

SERVICE_V1 = v1.DESCRIPTOR.services_by_name["Service"]
SERVICE_V2 = v2.DESCRIPTOR.services_by_name["Service"]

SELECTOR_HEADER = "flagd-selector"  # gRPC metadata keys arrive lower-case
# flagd's EventStream keep-alive period; read when the services are built, so that a test can
# shorten it for the sidecar it starts.
KEEP_ALIVE_SECONDS = 20.0

PROVIDER_READY = "provider_ready"
CONFIGURATION_CHANGE = "configuration_change"
KEEP_ALIVE = "keep_alive"

# flagd's gRPC status for each error code (flagd flag_evaluator.go errFormat); GENERAL is
# UNKNOWN, as flagd returns an unclassified error.
STATUS_OF_ERROR = {
    mapping.FLAG_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    mapping.TYPE_MISMATCH: grpc.StatusCode.INVALID_ARGUMENT,
    mapping.PARSE_ERROR: grpc.StatusCode.DATA_LOSS,
    mapping.GENERAL: grpc.StatusCode.UNKNOWN,
}

Convert = Callable[[Result], Any]


class FlagdResolver:
    """Evaluation for both flagd services."""

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        max_attributes: int,
        recorder: Recorder | None = None,
        max_attribute_size: int = limits.DEFAULT_MAX_ATTRIBUTE_SIZE,
    ) -> None:
        self.store = store
        self.max_attributes = max_attributes
        self.max_attribute_size = max_attribute_size
        self._metrics = metrics
        self._record = recorder.record if recorder is not None else None

    def resolve(
        self, snap: Snapshot, key: str, flag: str, attributes: dict[str, object] | None
    ) -> Result:
        """The single place where a flagd call evaluates a flag: whatever must happen for
        every flagd evaluation (metrics, impressions) happens here."""
        result = snap.evaluate(key, flag, None, attributes)
        self._metrics.shard().count_evaluation(
            flag, result.treatment, result.label != LABEL_NOT_FOUND
        )
        if self._record is not None:
            self._record(snap, now_ms(), [(key, None, flag, result)])
        return result


class FlagdService:
    """One version of flagd.evaluation.*.Service; `pb` is that version's message module."""

    def __init__(
        self, pb: ModuleType, resolver: FlagdResolver, feed: ChangeFeed, keep_alive: float
    ) -> None:
        self._pb = pb
        self._resolver = resolver
        self._feed = feed
        self._keep_alive = keep_alive

    async def ResolveBoolean(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._resolve(
            request, context, self._pb.ResolveBooleanResponse, mapping.boolean_value
        )

    async def ResolveString(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._resolve(
            request, context, self._pb.ResolveStringResponse, mapping.string_value
        )

    async def ResolveFloat(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._resolve(
            request, context, self._pb.ResolveFloatResponse, mapping.float_value
        )

    async def ResolveInt(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._resolve(request, context, self._pb.ResolveIntResponse, mapping.int_value)

    async def ResolveObject(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._resolve(
            request, context, self._pb.ResolveObjectResponse, mapping.object_value
        )

    async def _resolve(
        self,
        request: Any,
        context: grpc.aio.ServicerContext,
        response_type: Callable[..., Any],
        convert: Convert,
    ) -> Any:
        try:
            return self._answer(request, context, response_type, convert)
        except (BadRequest, NotReady, FlagdError) as err:
            await abort(context, err)

    def _answer(
        self,
        request: Any,
        context: grpc.aio.ServicerContext,
        response_type: Callable[..., Any],
        convert: Convert,
    ) -> Any:
        resolver = self._resolver
        snap = active_snapshot(resolver.store)
        flag = request.flag_key
        check_name(flag, "flag_key")
        selected = mapping.flag_set(selector(context))
        key, attributes = mapping.evaluation_context(
            request.context, resolver.max_attributes, resolver.max_attribute_size
        )
        compiled = snap.flags.get(flag)
        if not mapping.in_flag_set(compiled, selected):
            raise FlagdError(mapping.FLAG_NOT_FOUND, f"flag not found in flag set {selected!r}")
        result = resolver.resolve(snap, key, flag, attributes)
        reason = mapping.reason(compiled, result)
        response = response_type(reason=reason)
        if reason != mapping.REASON_DISABLED:
            set_value(response, convert(result))
            response.variant = result.treatment
        response.metadata.update(mapping.metadata(result, snap.version))
        return response

    async def EventStream(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        try:
            selected = mapping.flag_set(selector(context))
        except BadRequest as err:
            await abort(context, err)
        try:
            async for kind, data in events(self._feed, selected, self._keep_alive):
                response = self._pb.EventStreamResponse(type=kind)
                if data is not None:
                    response.data.update(data)
                yield response
        except TooManyStreams as err:  # flagd streams share --max-watch-streams
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(err))


class FlagdServiceV1(FlagdService):
    """v1 adds ResolveAll: every flag of the selected set, as its treatment (a string)."""

    async def ResolveAll(
        self, request: v1.ResolveAllRequest, context: grpc.aio.ServicerContext
    ) -> v1.ResolveAllResponse:
        try:
            return self._resolve_all(request, context)
        except (BadRequest, NotReady) as err:
            await abort(context, err)

    def _resolve_all(
        self, request: v1.ResolveAllRequest, context: grpc.aio.ServicerContext
    ) -> v1.ResolveAllResponse:
        """Treatments are Fader's variants and all of them are strings, so every flag fits
        `string_value`. A flag whose rules fail is left out, as flagd leaves out flags it
        cannot evaluate; a killed flag is in, DISABLED with no value (flagd's ADR)."""
        resolver = self._resolver
        snap = active_snapshot(resolver.store)
        selected = mapping.flag_set(selector(context))
        key, attributes = mapping.evaluation_context(
            request.context, resolver.max_attributes, resolver.max_attribute_size
        )
        names = snap.flags_in_sets((selected,)) if selected else snap.flag_names()
        response = v1.ResolveAllResponse()
        for name in names:
            result = resolver.resolve(snap, key, name, attributes)
            try:
                reason = mapping.reason(snap.flags.get(name), result)
            except FlagdError:
                continue
            entry = response.flags[name]
            entry.reason = reason
            if reason != mapping.REASON_DISABLED:
                entry.variant = result.treatment
                entry.string_value = result.treatment
            entry.metadata.update(mapping.metadata(result, snap.version))
        response.metadata.update({"version": snap.version})
        return response


def set_value(response: Any, value: Any) -> None:
    """Sets `value`; an object goes into the Struct field, marked present even when empty."""
    if isinstance(value, dict):
        response.value.SetInParent()
        response.value.update(value)
    else:
        response.value = value


def selector(context: grpc.aio.ServicerContext) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == SELECTOR_HEADER:
            return str(value)
    return None


async def events(
    feed: ChangeFeed, selected: str | None, keep_alive: float
) -> AsyncIterator[tuple[str, dict[str, Any] | None]]:
    """flagd's EventStream as (type, data): provider_ready once a snapshot is active (at once
    on a ready sidecar), then configuration_change with the flags each swap changed, and
    keep_alive after every `keep_alive` seconds without a message. Ends when the feed closes.

    The pending read of the feed survives keep-alive timeouts: cancelling it would end the
    feed's generator.
    """
    changes = feed.changes(frozenset())
    reported: Snapshot | None = None
    pending = asyncio.ensure_future(changes.__anext__())
    try:
        while True:
            done, _ = await asyncio.wait((pending,), timeout=keep_alive)
            if not done:
                yield KEEP_ALIVE, None
                continue
            try:
                snap, changed = pending.result()
            except StopAsyncIteration:
                return
            if reported is None:
                yield PROVIDER_READY, None
            else:
                flags = mapping.change_notifications(reported.flags, snap.flags, changed, selected)
                if flags:
                    yield CONFIGURATION_CHANGE, {"flags": flags}
            reported = snap
            pending = asyncio.ensure_future(changes.__anext__())
    finally:
        pending.cancel()


async def abort(
    context: grpc.aio.ServicerContext, err: BadRequest | NotReady | FlagdError
) -> NoReturn:
    """Ends the call with flagd's status for `err` and its message as details."""
    if isinstance(err, FlagdError):
        code = STATUS_OF_ERROR[err.error_code]
    elif isinstance(err, NotReady):
        code = grpc.StatusCode.UNAVAILABLE
    else:
        code = grpc.StatusCode.INVALID_ARGUMENT
    await context.abort(code, str(err))
    raise AssertionError("unreachable: grpc.aio abort raises")


def services(
    store: Store,
    metrics: Metrics,
    feed: ChangeFeed,
    max_attributes: int,
    recorder: Recorder | None = None,
    max_attribute_size: int = limits.DEFAULT_MAX_ATTRIBUTE_SIZE,
) -> tuple[tuple[FlagdService, Any], ...]:
    """(servicer, service descriptor) for flagd v1 and v2, sharing one resolver."""
    resolver = FlagdResolver(store, metrics, max_attributes, recorder, max_attribute_size)
    return (
        (FlagdServiceV1(v1, resolver, feed, KEEP_ALIVE_SECONDS), SERVICE_V1),
        (FlagdService(v2, resolver, feed, KEEP_ALIVE_SECONDS), SERVICE_V2),
    )
