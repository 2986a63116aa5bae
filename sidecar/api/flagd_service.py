"""flagd.evaluation.v1.Service and flagd.evaluation.v2.Service on grpc.aio.

Every OpenFeature flagd provider in RPC mode speaks this protocol, so a service in any
language reads Fader flags with no Fader SDK. The adapters are thin: they take the active
snapshot once per call, evaluate through the evaluation core every lane shares
(`sidecar.core`) and translate with `sidecar.api.flagd_mapping`.

Both versions share one implementation: v2 differs only in its message classes (value and
variant are `optional`, so a disabled flag sends neither; v1 sends zero values, as flagd does)
and in having no ResolveAll.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from functools import partial
from time import perf_counter
from types import ModuleType
from typing import Any, TypeVar

import grpc
from fader.pb.flagd.evaluation.v1 import evaluation_pb2 as v1
from fader.pb.flagd.evaluation.v2 import evaluation_pb2 as v2
from fader.rules.result import Decision
from fader.snapshot.snapshot import Snapshot

from sidecar.api import flagd_mapping as mapping
from sidecar.api.flagd_mapping import FlagdError
from sidecar.api.grpc_status import abort
from sidecar.api.watch import ChangeFeed
from sidecar.core import Core
from sidecar.core.refusals import Refusal
from sidecar.core.requests import check_name

SERVICE_V1 = v1.DESCRIPTOR.services_by_name["Service"]
SERVICE_V2 = v2.DESCRIPTOR.services_by_name["Service"]

SELECTOR_HEADER = "flagd-selector"  # gRPC metadata keys arrive lower-case
# flagd's EventStream keep-alive period; read when the services are built, so that a test can
# shorten it for the sidecar it starts.
KEEP_ALIVE_SECONDS = 20.0

PROVIDER_READY = "provider_ready"
CONFIGURATION_CHANGE = "configuration_change"
KEEP_ALIVE = "keep_alive"

Convert = Callable[[Decision], Any]
Value = TypeVar("Value")

# Each typed resolve: its response message's name, how a Split treatment converts, the kind
# a flagd-dialect value must be (shared by the gRPC servicers and the Connect lane).
RESOLVES: dict[str, tuple[str, Convert, str]] = {
    "ResolveBoolean": ("ResolveBooleanResponse", mapping.boolean_value, "boolean"),
    "ResolveString": ("ResolveStringResponse", mapping.string_value, "string"),
    "ResolveFloat": ("ResolveFloatResponse", mapping.float_value, "float"),
    "ResolveInt": ("ResolveIntResponse", mapping.int_value, "integer"),
    "ResolveObject": ("ResolveObjectResponse", mapping.object_value, "object"),
}


class FlagdResolver:
    """What both flagd services share: the evaluation core, and the context decoding."""

    def __init__(self, core: Core) -> None:
        self.evaluator = core.evaluator
        self.policy = core.policy

    def context(self, request: Any, typed: bool = False) -> tuple[str, dict[str, object] | None]:
        """Split flags need a targeting key and flat attributes; flagd-dialect (`typed`) flags
        read the context whole."""
        if typed:
            return mapping.typed_context(request.context, self.policy)
        return mapping.evaluation_context(request.context, self.policy)

    def resolve(
        self,
        snap: Snapshot,
        key: str,
        flags: list[str],
        attributes: dict[str, object] | None,
        operation: str,
        started: float,
    ) -> list[Decision]:
        """Evaluates `flags` for one context through the core (counted, recorded, timed)."""
        lookups = [(key, None, flag, attributes) for flag in flags]
        answers = self.evaluator.evaluate(snap, lookups, operation, started)
        return [answer[3] for answer in answers]


class FlagdService:
    """One version of flagd.evaluation.*.Service; `pb` is that version's message module."""

    def __init__(
        self, pb: ModuleType, resolver: FlagdResolver, feed: ChangeFeed, keep_alive: float
    ) -> None:
        self._pb = pb
        self._resolver = resolver
        self._feed = feed
        self._keep_alive = keep_alive

    @property
    def pb(self) -> ModuleType:
        return self._pb

    def events(self, header: str | None) -> AsyncIterator[tuple[str, dict[str, Any] | None]]:
        """The EventStream's (type, data) for a Flagd-Selector header (BadRequest if bad)."""
        return events(self._feed, mapping.flag_set(header), self._keep_alive)

    def event_message(self, kind: str, data: dict[str, Any] | None) -> Any:
        """An EventStreamResponse; one for all the streams a swap sends the same data to
        (building the Struct of 2,000 changed flags takes ~20 ms of Python)."""
        if data is None:
            return self._pb.EventStreamResponse(type=kind)
        make = partial(_event_response, self._pb, kind, data)
        return self._feed.shared_for(data, (self._pb, kind), make)

    def shared_for(self, subject: object, key: Hashable, make: Callable[[], Value]) -> Value:
        """`ChangeFeed.shared_for`: made once per swap for every stream asking."""
        return self._feed.shared_for(subject, key, make)

    async def ResolveBoolean(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._resolve(
            request, context, self._pb.ResolveBooleanResponse, mapping.boolean_value, "boolean"
        )

    async def ResolveString(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._resolve(
            request, context, self._pb.ResolveStringResponse, mapping.string_value, "string"
        )

    async def ResolveFloat(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._resolve(
            request, context, self._pb.ResolveFloatResponse, mapping.float_value, "float"
        )

    async def ResolveInt(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._resolve(
            request, context, self._pb.ResolveIntResponse, mapping.int_value, "integer"
        )

    async def ResolveObject(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._resolve(
            request, context, self._pb.ResolveObjectResponse, mapping.object_value, "object"
        )

    async def _resolve(
        self,
        request: Any,
        context: grpc.aio.ServicerContext,
        response_type: Callable[..., Any],
        convert: Convert,
        kind: str,
    ) -> Any:
        try:
            return self.answer(request, selector(context), response_type, convert, kind)
        except Refusal as err:
            await abort(context, err)

    def answer(
        self,
        request: Any,
        header: str | None,
        response_type: Callable[..., Any],
        convert: Convert,
        kind: str,
    ) -> Any:
        """One Resolve call; `header` is its Flagd-Selector. A flagd-dialect flag answers its
        variant's typed value; a Split flag, its treatment read as `kind` (`convert`)."""
        started = perf_counter()
        resolver = self._resolver
        snap = resolver.evaluator.snapshot()
        flag = request.flag_key
        check_name(flag, "flag_key")
        selected = mapping.flag_set(header)
        compiled = snap.flags.get(flag)
        typed = mapping.is_typed(compiled)
        # an unknown flag is NOT_FOUND whatever its context (a Split flag's needs a key)
        key, attributes = resolver.context(request, typed or compiled is None)
        if not mapping.in_flag_set(compiled, selected):
            raise FlagdError(mapping.FLAG_NOT_FOUND, f"flag not found in flag set {selected!r}")
        [result] = resolver.resolve(snap, key, [flag], attributes, "flagd.Resolve", started)
        reason = mapping.reason(compiled, result)
        response = response_type(reason=reason)
        if mapping.has_value(compiled, result):
            if typed:
                assert compiled is not None
                set_value(response, mapping.typed_value(compiled, result, kind))
            else:
                set_value(response, convert(result))
            response.variant = result.treatment
        response.metadata.update(mapping.metadata(result, snap.version, compiled))
        return response

    async def EventStream(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        try:
            selected = mapping.flag_set(selector(context))
            # flagd streams share --max-watch-streams with WatchChanges
            async for kind, data in events(self._feed, selected, self._keep_alive):
                yield self.event_message(kind, data)
        except Refusal as err:
            await abort(context, err)


class FlagdServiceV1(FlagdService):
    """v1 adds ResolveAll: every flag of the selected set, as its treatment (a string)."""

    async def ResolveAll(
        self, request: v1.ResolveAllRequest, context: grpc.aio.ServicerContext
    ) -> v1.ResolveAllResponse:
        try:
            return self.resolve_all(request, selector(context))
        except Refusal as err:
            await abort(context, err)

    def resolve_all(
        self, request: v1.ResolveAllRequest, header: str | None
    ) -> v1.ResolveAllResponse:
        """A Split flag's treatment is its variant and its value (`string_value`); a flagd
        flag's value goes in the field of its type. A flag whose rules fail is left out, as
        flagd leaves out flags it cannot evaluate; a disabled flag is in, DISABLED with no
        value (flagd's ADR). Split flags need the context's targetingKey; flagd ones do not."""
        started = perf_counter()
        resolver = self._resolver
        snap = resolver.evaluator.snapshot()
        selected = mapping.flag_set(header)
        names = list(snap.flags_in_sets((selected,)) if selected else snap.flag_names())
        typed = [name for name in names if mapping.is_typed(snap.flags[name])]
        split = [name for name in names if not mapping.is_typed(snap.flags[name])]
        lookups = []
        if typed:
            key, data = resolver.context(request, typed=True)
            lookups += [(key, None, name, data) for name in typed]
        if split:
            key, attributes = resolver.context(request)
            lookups += [(key, None, name, attributes) for name in split]
        answers = resolver.evaluator.evaluate(snap, lookups, "flagd.ResolveAll", started)
        response = v1.ResolveAllResponse()
        for _key, _bk, name, result in answers:
            flag = snap.flags.get(name)
            try:
                reason = mapping.reason(flag, result)
            except FlagdError:
                continue
            entry = response.flags[name]
            entry.reason = reason
            if mapping.has_value(flag, result):
                entry.variant = result.treatment
                set_any_value(entry, flag, result)
            entry.metadata.update(mapping.metadata(result, snap.version, flag))
        response.metadata.update({"version": snap.version})
        return response


def set_any_value(entry: v1.AnyFlag, flag: Any, result: Decision) -> None:
    """ResolveAll's value: a Split treatment as a string; a flagd variant's value in the
    field of its type (a list value, which AnyFlag cannot hold, is left out)."""
    if flag is None or flag.values is None:
        entry.string_value = result.treatment
        return
    value = flag.values[result.treatment]
    if isinstance(value, bool):
        entry.bool_value = value
    elif isinstance(value, str):
        entry.string_value = value
    elif isinstance(value, int | float):
        entry.double_value = float(value)
    elif isinstance(value, dict):
        entry.object_value.SetInParent()
        entry.object_value.update(value)


def set_value(response: Any, value: Any) -> None:
    """Sets `value`; an object goes into the Struct field, marked present even when empty."""
    if isinstance(value, dict):
        response.value.SetInParent()
        response.value.update(value)
    else:
        response.value = value


def _change_data(
    reported: Snapshot, snap: Snapshot, changed: Sequence[str], selected: str | None
) -> dict[str, Any] | None:
    """configuration_change's data, None when no flag of the selected set changed."""
    flags = mapping.change_notifications(reported.flags, snap.flags, changed, selected)
    return {"flags": flags} if flags else None


def _event_response(pb: ModuleType, kind: str, data: dict[str, Any]) -> Any:
    response = pb.EventStreamResponse(type=kind)
    response.data.update(data)
    return response


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
                # once per swap for every stream at the same place with the same selector
                notify = partial(_change_data, reported, snap, changed, selected)
                data = feed.shared_for(reported, (CONFIGURATION_CHANGE, selected), notify)
                if data is not None:
                    yield CONFIGURATION_CHANGE, data
            reported = snap
            pending = asyncio.ensure_future(changes.__anext__())
    finally:
        pending.cancel()


def services(core: Core, feed: ChangeFeed) -> tuple[tuple[FlagdService, Any], ...]:
    """(servicer, service descriptor) for flagd v1 and v2, sharing one resolver."""
    resolver = FlagdResolver(core)
    return (
        (FlagdServiceV1(v1, resolver, feed, KEEP_ALIVE_SECONDS), SERVICE_V1),
        (FlagdService(v2, resolver, feed, KEEP_ALIVE_SECONDS), SERVICE_V2),
    )
