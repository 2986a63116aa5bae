"""ControlPlaneService: the Sync stream and ListSidecars.

Each Sync stream holds one server thread (the reference control plane is sized for
demos and tests: ``--max-sidecars`` threads). The stream's reader (ACKs from the sidecar)
runs in a helper thread so that new offers are pushed while an answer is outstanding.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

import grpc
from fader.pb.fader.v1 import controlplane_pb2, controlplane_pb2_grpc

from sidecar.auth import TokenFile
from sidecar.controlplane.offer import Offer
from sidecar.controlplane.registry import Registry
from sidecar.delivery.messages import to_message

log = logging.getLogger(__name__)

# Stream housekeeping: how often a waiting stream checks that its peer is still there.
_POLL_SECONDS = 0.5


class Offers(Protocol):
    """What the streams send: a file forwarded (``offer.OfferSource``) or the flag store's
    newest version (``snapshots.StoreOffers``)."""

    current: Offer | None

    def subscribe(self, subscriber: Callable[[Offer], None]) -> Callable[[], None]: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class ControlPlaneServicer(controlplane_pb2_grpc.ControlPlaneServiceServicer):
    def __init__(self, offers: Offers, registry: Registry, tokens: TokenFile | None = None) -> None:
        self._offers = offers
        self._registry = registry
        self._tokens = tokens

    def _authorize(self, context: grpc.ServicerContext) -> None:
        if self._tokens is not None and not self._tokens.allows(context.invocation_metadata()):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")

    def Sync(
        self,
        request_iterator: Iterator[controlplane_pb2.SyncRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[controlplane_pb2.SyncResponse]:
        self._authorize(context)
        first = next(request_iterator, None)
        if first is None or not first.HasField("hello"):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first Sync message must be a Hello"
            )
            return
        hello = first.hello
        sidecar_id = hello.identity.id
        if not sidecar_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Hello.identity.id is required")
            return
        self._registry.connect(hello.identity, context.peer())
        log.info(
            "sidecar %s connected from %s (serving %s)",
            sidecar_id,
            context.peer(),
            hello.serving_version if hello.has_snapshot else "nothing",
        )
        outbox: queue.Queue[Offer | None] = queue.Queue()
        reader = threading.Thread(
            target=self._read_answers, args=(request_iterator, sidecar_id, outbox), daemon=True
        )
        reader.start()
        unsubscribe = self._offers.subscribe(outbox.put)
        current = self._offers.current
        if current is not None:
            outbox.put(current)
        try:
            yield from self._send(outbox, context)
        finally:
            unsubscribe()
            self._registry.disconnect(sidecar_id)
            log.info("sidecar %s disconnected", sidecar_id)

    def _send(
        self, outbox: queue.Queue[Offer | None], context: grpc.ServicerContext
    ) -> Iterator[controlplane_pb2.SyncResponse]:
        while context.is_active():
            try:
                offer = outbox.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                continue
            if offer is None:
                return
            snapshot = to_message(offer.data, offer.fmt, offer.version, offer.signature)
            yield controlplane_pb2.SyncResponse(snapshot=snapshot)

    def _read_answers(
        self,
        requests: Iterator[controlplane_pb2.SyncRequest],
        sidecar_id: str,
        outbox: queue.Queue[Offer | None],
    ) -> None:
        try:
            for request in requests:
                if request.HasField("ack"):
                    ack = request.ack
                    self._registry.answer(sidecar_id, ack)
                    if ack.accepted and ack.warnings:
                        log.warning(
                            "sidecar %s ACK version %d, with: %s",
                            sidecar_id,
                            ack.version,
                            "; ".join(ack.warnings),
                        )
                    elif ack.accepted:
                        log.info("sidecar %s ACK version %d", sidecar_id, ack.version)
                    else:
                        log.warning(
                            "sidecar %s NACK version %d: %s",
                            sidecar_id,
                            ack.version,
                            "; ".join(ack.errors),
                        )
        except grpc.RpcError:
            pass  # the stream ended; the sender sees it too
        finally:
            outbox.put(None)

    def ListSidecars(
        self, request: controlplane_pb2.ListSidecarsRequest, context: grpc.ServicerContext
    ) -> controlplane_pb2.ListSidecarsResponse:
        self._authorize(context)
        return self.fleet()

    def fleet(self) -> controlplane_pb2.ListSidecarsResponse:
        """The offered version and every sidecar's state (ListSidecars and /status)."""
        offer = self._offers.current
        return controlplane_pb2.ListSidecarsResponse(
            offered_version=offer.version if offer else 0,
            offered_source=offer.source if offer else "",
            sidecars=self._registry.statuses(),
        )
