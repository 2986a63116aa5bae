"""flagd.sync.v1.FlagSyncService: flagd-dialect flags for in-process OpenFeature providers.

An in-process flagd provider (Go, Java, Node, .NET, Python, Rust) opens `SyncFlags`, stores
the flag configuration it receives and evaluates locally. Fader sends what flagd sends: the
**whole** configuration of the selected flag set as flagd's flags JSON
(``{"flags": {...}, "metadata": {...}}``, ``$ref``s already substituted) at once on
subscribe, and again after every snapshot swap that changes it. `FetchAllFlags` answers the
same JSON once; `GetMetadata` (deprecated, still called first by the Python and Java
providers) answers an empty metadata Struct, as Fader injects no static context.

Only flagd-dialect flags are offered: flagd's rule language cannot express Split's seeded
bucketing, traffic allocation or cross-flag rules, so a provider evaluating a translated
Split flag would answer differently from the sidecar. Split flags stay on the RPC lanes.

The selector is flagd's: the ``Flagd-Selector`` header (or the deprecated request field)
``flagSetId=<set>`` or a bare set name; a set is the flags whose (or whose flag set's)
metadata names it as ``flagSetId``. Streams count against ``--max-watch-streams`` with
WatchChanges and EventStream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from fader.pb.flagd.sync.v1 import sync_pb2 as pb
from fader.snapshot.snapshot import Snapshot

from sidecar.api import flagd_mapping as mapping
from sidecar.api.flagd_service import selector
from sidecar.api.grpc_status import abort
from sidecar.api.watch import ChangeFeed
from sidecar.core import Core
from sidecar.core.refusals import Refusal

SERVICE = pb.DESCRIPTOR.services_by_name["FlagSyncService"]
EMPTY = '{"flags":{}}'


def configuration(snap: Snapshot, flag_set: str | None) -> str:
    """The flag configuration of one flag set (None: every flagd flag) in `snap`."""
    return snap.flagd.payload(flag_set) if snap.flagd is not None else EMPTY


def selected_set(context: grpc.aio.ServicerContext, request: Any) -> str | None:
    """The flag set asked for: the header wins over the deprecated request field."""
    return mapping.flag_set(selector(context) or request.selector or None)


class FlagSyncService:
    def __init__(self, core: Core, feed: ChangeFeed) -> None:
        self._evaluator = core.evaluator
        self._feed = feed

    async def SyncFlags(
        self, request: pb.SyncFlagsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SyncFlagsResponse]:
        """The configuration at once (as soon as a snapshot is active), then after every
        swap that changes it; a swap that leaves the set as it was sends nothing."""
        try:
            flag_set = selected_set(context, request)
            sent: str | None = None
            async for snap, _changed in self._feed.changes(frozenset()):
                text = configuration(snap, flag_set)
                if text != sent:
                    yield pb.SyncFlagsResponse(flag_configuration=text)
                    sent = text
        except Refusal as err:
            await abort(context, err)

    async def FetchAllFlags(
        self, request: pb.FetchAllFlagsRequest, context: grpc.aio.ServicerContext
    ) -> pb.FetchAllFlagsResponse:
        try:
            flag_set = selected_set(context, request)
            snap = self._evaluator.snapshot()
        except Refusal as err:
            await abort(context, err)
        return pb.FetchAllFlagsResponse(flag_configuration=configuration(snap, flag_set))

    async def GetMetadata(
        self, request: pb.GetMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetMetadataResponse:
        response = pb.GetMetadataResponse()
        response.metadata.SetInParent()
        return response
