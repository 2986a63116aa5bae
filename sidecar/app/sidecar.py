"""The serving sidecar assembled from its settings: gRPC on TCP and/or a Unix socket, the
msgpack fast lane (sidecar.api.fastlane) on its own Unix socket, and management HTTP, on one
event loop; started all-or-nothing and stopped in a fixed order (`Sidecar.stop`).

Stack: grpc.aio on a uvloop event loop, chosen by measurement (benchmarks/RESULTS.md): streams
(WatchChanges, health Watch, reflection) cost a coroutine each, not a thread, and lookups run
inline on the loop, since evaluation is a small part of a call and a thread hop would cost
more than it saves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

from sidecar.api import flagd_service, flagd_sync, instrument, ofrep, uds
from sidecar.api.fader_v1 import SERVICE, EvaluationService
from sidecar.api.fastlane import FastLane, Handlers
from sidecar.api.flagd_connect import FlagdConnect
from sidecar.api.health import Health
from sidecar.api.management import ManagementServer
from sidecar.api.split_sdk_api import SplitSdkApi
from sidecar.api.split_sdk_changes import ChangeLog
from sidecar.api.watch import ChangeFeed
from sidecar.app.errors import StartupError
from sidecar.app.readiness import Readiness
from sidecar.app.sources import SnapshotSources, SourcesCollector
from sidecar.auth import EvaluationTokens, TokenFile, server_credentials
from sidecar.config import Address, Settings, is_loopback
from sidecar.core import Core
from sidecar.core.evaluator import Evaluator
from sidecar.core.events import EventQueue
from sidecar.core.exposures import Exposures
from sidecar.delivery.store import Store
from sidecar.limits import LimitsCollector
from sidecar.telemetry.metrics import Metrics
from sidecar.telemetry.pipeline import Pipeline

log = logging.getLogger(__name__)

HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]
REFLECTION = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]

# gRPC core sheds calls it has not handed to the application yet beyond these limits
# (CANCELLED before the handler runs: 5-10 % of a 2,000-call burst with the defaults).
MAX_PENDING_REQUESTS = 10_000
MAX_PENDING_REQUESTS_HARD = 20_000


def server_options(settings: Settings) -> list[tuple[str, int]]:
    return [
        # gRPC sets SO_REUSEPORT by default: a second sidecar on the same port would bind
        # silently and take a share of the connections. Off, it fails loudly.
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.server.max_pending_requests", MAX_PENDING_REQUESTS),
        ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_REQUESTS_HARD),
    ]


class Sidecar:
    """The serving parts of one process; `start` and `stop` run on its event loop."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        instrumented: bool = True,
        sources: SnapshotSources | None = None,
        telemetry: Pipeline | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.sources = sources
        self.metrics = Metrics(lambda: store.current)
        if sources is not None:
            self.metrics.registry.register(SourcesCollector(sources))
        self.readiness = Readiness(store, sources.fresh if sources is not None else None)
        self.telemetry = telemetry
        if telemetry is not None:
            self.metrics.registry.register(telemetry.collector)
        self.metrics.registry.register(LimitsCollector())
        self.events = EventQueue(self.metrics, telemetry)
        recorder = telemetry.recorder if telemetry is not None else None
        limits = settings.request_limits()
        self.core = Core.build(
            Evaluator(store, self.metrics, recorder),
            limits,
            self.events,
            Exposures(telemetry, limits.max_batch_items),
        )
        self.grpc_address: Address | None = None
        self.uds_path: Path | None = None
        self.fastlane_path: Path | None = None
        self._instrumented = instrumented
        self._socket: uds.SocketFile | None = None
        self._server: grpc.aio.Server | None = None
        self._fastlane: FastLane | None = None
        self._health: Health | None = None
        self._unsubscribe_health: Callable[[], None] | None = None
        self._feed: ChangeFeed | None = None
        self._mgmt: ManagementServer | None = None
        self._split_api: SplitSdkApi | None = None
        self._sync_server: grpc.aio.Server | None = None
        self.sync_address: Address | None = None
        self._ofrep: ofrep.OfrepServer | None = None
        self._started_at = time.time()

    @property
    def mgmt_address(self) -> Address | None:
        return self._mgmt.address if self._mgmt else None

    async def start(self) -> None:
        """Binds every listener or none: on any failure what was opened is closed again."""
        try:
            await self._start()
        except BaseException:
            await self.stop(0)
            raise

    async def _start(self) -> None:
        settings = self.settings
        gid = uds.resolve_group(settings.uds_group) if settings.uds_group else None
        server = grpc.aio.server(
            options=server_options(settings),
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
            interceptors=_interceptors(settings),
        )
        self._server = server
        self._add_services(server)
        if settings.grpc_listen is not None:
            self.grpc_address = self._bind_tcp(server, settings.grpc_listen)
        if settings.uds is not None:
            self._bind_uds(server, settings.uds, gid)
        await server.start()
        if self.telemetry is not None:
            await self.telemetry.start()
        if settings.fastlane_uds is not None:
            await self._start_fastlane(settings.fastlane_uds, gid)
        if settings.split_api_listen is not None:
            self._start_split_api(settings.split_api_listen)
        if settings.sync_listen is not None:
            await self._start_sync(settings.sync_listen)
        if settings.ofrep_listen is not None:
            await self._start_ofrep(settings.ofrep_listen)
        assert self._health is not None
        await self._health.start()
        health = self._health
        self._unsubscribe_health = self.store.subscribe(lambda _old, _new: health.changed())
        if settings.mgmt_listen is not None:
            self._mgmt = self._management(settings.mgmt_listen)

    def _add_services(self, server: grpc.aio.Server) -> None:
        """Every gRPC lane, each a thin translator over the one evaluation core."""
        self._feed = ChangeFeed(self.store, self.core.limits.max_watch_streams)
        self.metrics.watch_event_queue(lambda: len(self.events))
        service = EvaluationService(self.core, self._feed)
        metrics = self.metrics if self._instrumented else None
        instrument.register(server, service, SERVICE, metrics)
        flagd = flagd_service.services(self.core, self._feed)
        for flagd_servicer, descriptor in flagd:
            instrument.register(server, flagd_servicer, descriptor, metrics)
        assert self._feed is not None
        sync = flagd_sync.FlagSyncService(self.core, self._feed)
        instrument.register(server, sync, flagd_sync.SERVICE, metrics)
        self._health = Health(self.readiness.ready)
        instrument.register(server, self._health.servicer, HEALTH, None)
        flagd_names = tuple(descriptor.full_name for _, descriptor in flagd)
        names = (
            SERVICE.full_name,
            *flagd_names,
            flagd_sync.SERVICE.full_name,
            HEALTH.full_name,
            REFLECTION.full_name,
        )
        instrument.register(server, reflection.aio.ReflectionServicer(names), REFLECTION, None)

    def _bind_tcp(self, server: grpc.aio.Server, address: Address) -> Address:
        settings = self.settings
        try:
            if settings.grpc_tls_cert is not None and settings.grpc_tls_key is not None:
                credentials = server_credentials(
                    settings.grpc_tls_cert, settings.grpc_tls_key, settings.grpc_client_ca
                )
                port = server.add_secure_port(str(address), credentials)
            else:
                port = server.add_insecure_port(str(address))
        except RuntimeError:
            raise StartupError(
                f"cannot listen on {address}: the port is in use or the address is not local"
            ) from None
        return Address(address.host, port)

    async def _start_sync(self, address: Address) -> None:
        """flagd sync on its own port (flagd's 8015, where in-process providers look by
        default), with the evaluation port's TLS and tokens."""
        settings = self.settings
        server = grpc.aio.server(
            options=server_options(settings),
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
            interceptors=_interceptors(settings),
        )
        self._sync_server = server
        assert self._feed is not None
        sync = flagd_sync.FlagSyncService(self.core, self._feed)
        instrument.register(server, sync, flagd_sync.SERVICE, None)
        self.sync_address = self._bind_tcp(server, address)
        await server.start()

    async def _start_ofrep(self, address: Address) -> None:
        settings = self.settings
        tokens = TokenFile(settings.ofrep_token_file) if settings.ofrep_token_file else None
        assert self._feed is not None
        (v1, _), (v2, _) = flagd_service.services(self.core, self._feed)
        connect = FlagdConnect({"v1": v1, "v2": v2})  # flagd over Connect, for Go's provider
        grpc_tokens = TokenFile(settings.grpc_token_file) if settings.grpc_token_file else None
        self._ofrep = ofrep.OfrepServer(self.core, tokens, connect, grpc_tokens)
        try:
            await self._ofrep.start(address)
        except OSError as err:
            raise StartupError(f"cannot listen on {address} for OFREP: {_reason(err)}") from None

    @property
    def ofrep_address(self) -> Address | None:
        return self._ofrep.address if self._ofrep is not None else None

    def _bind_uds(self, server: grpc.aio.Server, path: Path, gid: int | None) -> None:
        uds.check_path(path)
        if uds.claim_path(path):
            log.warning("removed stale socket %s (no server was answering on it)", path)
        try:
            self._socket = uds.bind_socket(path, gid, server.add_insecure_port)
        except RuntimeError as err:
            raise StartupError(f"cannot listen on unix:{path}: {err}") from None
        self.uds_path = path

    async def _start_fastlane(self, path: Path, gid: int | None) -> None:
        self._fastlane = FastLane(Handlers(self.core), self.core.limits.max_message_bytes)
        await self._fastlane.start(path, gid)
        self.fastlane_path = path

    @property
    def split_api_address(self) -> Address | None:
        return self._split_api.address if self._split_api else None

    def _start_split_api(self, address: Address) -> None:
        """Split's SDK API (sidecar.api.split_sdk_api), fed by its own change log."""
        key_file = self.settings.split_api_key_file
        try:
            keys = TokenFile(key_file) if key_file is not None else None
        except (OSError, ValueError) as err:
            raise StartupError(f"--split-api-key-file: {err}") from None
        changes = ChangeLog(self.store)
        try:
            api = SplitSdkApi(
                address,
                changes,
                self.core.policy,
                self.telemetry,
                asyncio.get_running_loop(),
                keys=keys,
            )
        except OSError as err:
            raise StartupError(
                f"cannot listen on {address} for the Split SDK API: {_reason(err)}"
            ) from None
        self._split_api = api
        if keys is None and not is_loopback(address.host):
            log.warning(
                "the Split SDK API on %s takes any SDK key: see --split-api-key-file", address
            )
        self.metrics.registry.register(api.collector)
        changes.start()
        api.start()

    def _management(self, address: Address) -> ManagementServer:
        try:
            return ManagementServer(
                address,
                self.store,
                self.metrics,
                self._status_extra,
                state=self.readiness.state,
                ready=self.readiness.ready,
            )
        except OSError as err:
            raise StartupError(
                f"cannot listen on {address} for management HTTP: {_reason(err)}"
            ) from None

    def _status_extra(self) -> dict[str, Any]:
        return {
            "uptime_seconds": round(time.time() - self._started_at, 3),
            "listeners": {
                "grpc": str(self.grpc_address) if self.grpc_address else None,
                "uds": str(self.uds_path) if self.uds_path else None,
                # listed only when on, so the document stays as it was for gRPC-only sidecars
                **({"fastlane": str(self.fastlane_path)} if self.fastlane_path else {}),
                **({"split_api": str(self.split_api_address)} if self._split_api else {}),
                **({"sync": str(self.sync_address)} if self.sync_address else {}),
                **({"ofrep": str(self.ofrep_address)} if self.ofrep_address else {}),
                "mgmt": str(self.mgmt_address) if self.mgmt_address else None,
            },
            "track_events_queued": len(self.events),
            "telemetry": self.telemetry.status() if self.telemetry is not None else None,
            **(self.sources.status() if self.sources is not None else {}),
        }

    async def stop(self, grace: float) -> None:
        """Not ready (health NOT_SERVING, /readyz 503), end watch streams, stop accepting,
        drain within `grace` seconds, upload or spool telemetry, then release the socket and
        the management port."""
        self.readiness.drain()
        if self._unsubscribe_health is not None:
            self._unsubscribe_health()
        if self._health is not None:
            await self._health.shutdown()
        if self._feed is not None:
            self._feed.close()
        if self._fastlane is not None:
            await self._fastlane.stop(grace)
        if self._split_api is not None:  # before telemetry closes: SDK bodies in flight land
            self._split_api.stop()
            await self._split_api.drained(grace)
            self._split_api.changes.stop()
        if self._ofrep is not None:
            await self._ofrep.stop(grace)
        if self._sync_server is not None:
            await self._sync_server.stop(grace)
        if self._server is not None:
            await self._server.stop(grace)
        if self.telemetry is not None:
            await self.telemetry.close(self.settings.telemetry_flush_timeout)
        if self._socket is not None and self._socket.remove():
            log.info("removed socket %s", self._socket.path)
        if self._mgmt is not None:
            self._mgmt.stop()

    async def cut_drain_short(self) -> None:
        """Cancels the calls still in flight (a second signal during the drain)."""
        if self._server is not None:
            await self._server.stop(0)


def _interceptors(settings: Settings) -> list[grpc.aio.ServerInterceptor]:
    """The bearer-token check for TCP callers, only when --grpc-token-file is set: an
    interceptor costs every call some Python, so a sidecar without tokens has none."""
    if settings.grpc_token_file is None:
        return []
    return [EvaluationTokens(TokenFile(settings.grpc_token_file))]


def _reason(err: OSError) -> str:
    """An OSError's words without Python's "[Errno 98]" prefix."""
    return err.strerror or str(err)
