"""`fader controlplane` (serve snapshots to sidecars) and `fader status` (what they serve).

By default the control plane runs releases: its flag store (``release``) makes every new
version a snapshot for the sidecars, and its HTTP listener serves the admin API, ``/status``
and ``/healthz``. ``--forward FILE|DIR`` instead passes a file's bytes (and ``FILE.sig``)
through unvalidated, as before the store existed: for snapshots signed elsewhere.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from fader.pb.fader.v1 import controlplane_pb2, controlplane_pb2_grpc, telemetry_pb2

from sidecar.auth import TokenFile, server_credentials
from sidecar.config import Address, ConfigError, parse_address
from sidecar.controlplane import guardrails as guardrail_control
from sidecar.controlplane import release as release_control
from sidecar.controlplane.apitokens import RoleTokens
from sidecar.controlplane.collector import Collector, Outputs
from sidecar.controlplane.exposures import ExposureStore
from sidecar.controlplane.guardrails import Guardrails
from sidecar.controlplane.no_collector import NoCollector
from sidecar.controlplane.offer import OfferSource
from sidecar.controlplane.registry import Registry, fleet_json
from sidecar.controlplane.release import ReleaseControl
from sidecar.controlplane.service import ControlPlaneServicer, Offers
from sidecar.controlplane.web import PUBLIC, Request, Response, Router, WebServer
from sidecar.plumbing import undecodable
from sidecar.plumbing.channels import ChannelSecurity

log = logging.getLogger(__name__)

CONTROL_PLANE = controlplane_pb2.DESCRIPTOR.services_by_name["ControlPlaneService"]
TELEMETRY = telemetry_pb2.DESCRIPTOR.services_by_name["TelemetryService"]


class ControlPlane:
    """The reference control plane: offers, Sync streams, fleet status, and the telemetry
    collector when at least one output file is given."""

    def __init__(
        self,
        source: Path | Offers,
        listen: Address,
        *,
        max_sidecars: int = 64,
        credentials: grpc.ServerCredentials | None = None,
        tokens: TokenFile | None = None,
        outputs: Outputs | None = None,
        exposures: ExposureStore | None = None,
    ) -> None:
        # A path is forwarded as it is (--forward); the release control passes its offers.
        self.offers: Offers = OfferSource(source) if isinstance(source, Path) else source
        self.registry = Registry()
        self.servicer = ControlPlaneServicer(self.offers, self.registry, tokens)
        # One thread per open Sync stream, plus some for ListSidecars and telemetry uploads.
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_sidecars + 16),
            options=[("grpc.so_reuseport", 0)],
            maximum_concurrent_rpcs=max_sidecars + 16,
        )
        undecodable.register(self.server, self.servicer, CONTROL_PLANE)
        self.collector: Collector | None = None
        self.no_collector: NoCollector | None = None
        if (outputs is not None and outputs.paths()) or exposures is not None:
            self.collector = Collector(outputs or Outputs(), tokens, exposures)
            undecodable.register(self.server, self.collector, TELEMETRY)
        else:  # sidecars upload here by default: answer them clearly, and say so
            self.no_collector = NoCollector()
            undecodable.register(self.server, self.no_collector, TELEMETRY)
        if credentials is None:
            self.port = self.server.add_insecure_port(str(listen))
        else:
            self.port = self.server.add_secure_port(str(listen), credentials)
        if self.port == 0:
            raise ConfigError(f"cannot listen on {listen}")

    def status(self) -> dict[str, Any]:
        response = self.servicer.fleet()
        status = fleet_json(response)
        if self.collector is not None:
            status["collector"] = self.collector.status()
        elif self.no_collector is not None:
            status["collector"] = self.no_collector.status()
        return status

    def start(self) -> None:
        self.offers.start()
        self.server.start()

    def stop(self, grace: float = 2.0) -> None:
        self.offers.stop()
        self.server.stop(grace).wait()
        if self.collector is not None:
            self.collector.close()


def http_router(plane: ControlPlane, release: ReleaseControl | None) -> Router:
    """The HTTP listener's routes: /healthz, /status, /openapi.json and the release API."""
    router = Router()

    def status(request: Request) -> Response:
        body = plane.status()
        if release is not None:
            body["release"] = release.status()
        return Response.json(body)

    def openapi(request: Request) -> Response:
        return Response.json(router.openapi("Fader control plane", _version()))

    router.add(
        "GET",
        "/healthz",
        lambda _: Response.text("ok\n"),
        role=PUBLIC,
        summary="liveness: 200 while the process runs",
        tag="status",
    )
    router.add(
        "GET",
        "/status",
        status,
        role=PUBLIC,
        summary="offered version, each sidecar's ACK or NACK, the store, the collector",
        tag="status",
    )
    router.add(
        "GET",
        "/api/v1/sidecars",
        lambda _: Response.json(plane.status()),
        role="viewer",
        summary="each sidecar: the version it ACKed, or the NACK with its errors",
        tag="status",
    )
    router.add(
        "GET",
        "/openapi.json",
        openapi,
        role=PUBLIC,
        summary="this API, as an OpenAPI 3 document",
        tag="status",
    )
    if release is not None:
        release.register(router)
    return router


def _loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _version() -> str:
    try:
        return importlib.metadata.version("fader")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def controlplane_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="fader controlplane",
        description="Reference control plane: keeps the flags (versioned, with history), "
        "pushes every new version to each connected sidecar, shows which version each ACKed "
        "or NACKed, and serves the admin API for releases (fader flags, fader rollout).",
    )
    parser.add_argument(
        "--listen", default="127.0.0.1:8017", help="gRPC HOST:PORT (default %(default)s)"
    )
    parser.add_argument(
        "--http-listen",
        "--status-listen",
        dest="http_listen",
        default="127.0.0.1:8018",
        metavar="HOST:PORT",
        help="HTTP: the admin API, /status, /healthz and /openapi.json, or 'off' "
        "(default %(default)s; --status-listen is the old name)",
    )
    parser.add_argument(
        "--api-tokens",
        type=Path,
        metavar="FILE",
        help="require bearer tokens on the admin API: lines 'ROLE TOKEN [NAME]', ROLE viewer "
        "(read) or editor (read and write); without it, everyone who reaches it is an editor",
    )
    parser.add_argument(
        "--forward",
        type=Path,
        metavar="FILE|DIR",
        help="no flag store: forward this file (or the newest in DIR) and its FILE.sig to "
        "sidecars unvalidated, as it is (for snapshots signed elsewhere)",
    )
    parser.add_argument("--max-sidecars", type=int, default=64, help="concurrent Sync streams")
    parser.add_argument("--tls-cert", type=Path, help="serve TLS with this certificate chain (PEM)")
    parser.add_argument("--tls-key", type=Path, help="private key (PEM) of --tls-cert")
    parser.add_argument(
        "--tls-client-ca",
        type=Path,
        metavar="FILE",
        help="require clients (sidecars, fader status) to present a certificate signed by this "
        "CA (mTLS; needs --tls-cert)",
    )
    parser.add_argument(
        "--token-file", type=Path, help="require one of these bearer tokens (one per line)"
    )
    for kind, what in (
        ("impressions", "impressions"),
        ("counts", "impression counts"),
        ("unique-keys", "unique keys (impressions mode none)"),
        ("events", "track events"),
    ):
        parser.add_argument(
            f"--{kind}-out",
            type=Path,
            metavar="FILE.jsonl",
            help=f"collect {what} uploaded by sidecars into this JSONL file",
        )
    release_control.add_arguments(parser)
    guardrail_control.add_arguments(parser)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for option, path in (("--snapshot", args.snapshot), ("--forward", args.forward)):
        if path is not None and not path.exists():
            print(f"fader controlplane: {option} {path} does not exist", file=sys.stderr)
            return 2
    release: ReleaseControl | None = None
    guardrails: Guardrails | None = None
    try:
        listen = parse_address(args.listen)
        http_listen = parse_address(args.http_listen)
        if args.forward is not None and (args.snapshot is not None or args.store is not None):
            raise ConfigError("--forward runs without a flag store: no --snapshot or --store")
        if listen is None:
            raise ConfigError("--listen cannot be off")
        if (args.tls_cert is None) != (args.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together")
        if args.tls_client_ca is not None and args.tls_cert is None:
            raise ConfigError("--tls-client-ca (mTLS) needs --tls-cert")
        credentials = None
        if args.tls_cert is not None:
            credentials = server_credentials(args.tls_cert, args.tls_key, args.tls_client_ca)
        tokens = TokenFile(args.token_file) if args.token_file else None
        api_tokens = RoleTokens(args.api_tokens) if args.api_tokens else None
        if args.forward is None:
            release = ReleaseControl(release_control.settings_from(args))
            guardrails = Guardrails(
                guardrail_control.settings_from(args),
                release.store,
                release.rollouts,
                guardrail_control.open_exposures(args.data_dir),
            )
        plane = ControlPlane(
            args.forward if release is None else release.offers,
            listen,
            max_sidecars=args.max_sidecars,
            credentials=credentials,
            tokens=tokens,
            outputs=Outputs(
                impressions=args.impressions_out,
                counts=args.counts_out,
                unique_keys=args.unique_keys_out,
                events=args.events_out,
            ),
            exposures=guardrails.exposures if guardrails is not None else None,
        )
    except (ConfigError, OSError, ValueError) as exc:
        if guardrails is not None:
            guardrails.close()
        if release is not None:
            release.stop()
        print(f"fader controlplane: {exc}", file=sys.stderr)
        return 2
    if release is not None:
        release.start()
    if guardrails is not None:
        guardrails.start()
    plane.start()
    web = None
    if http_listen is not None:
        try:
            router = http_router(plane, release)
            if guardrails is not None:
                guardrails.register(router)
            web = WebServer(http_listen, router, api_tokens)
        except OSError as exc:
            print(f"fader controlplane: cannot listen on {http_listen}: {exc}", file=sys.stderr)
            plane.stop(0)
            if guardrails is not None:
                guardrails.stop()
                guardrails.close()
            if release is not None:
                release.stop()
            return 2
        web.start()
        if api_tokens is None and release is not None and not _loopback(http_listen.host):
            log.warning(
                "the admin API on %s takes writes from anyone who reaches it: give --api-tokens",
                web.address,
            )
    log.info(
        "control plane listening on %s:%d (http %s, %s)",
        listen.host,
        plane.port,
        web.address if web is not None else "off",
        f"store {release.store.db.description} at version {release.store.version}"
        if release is not None
        else f"forwarding {args.forward}",
    )
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    stopping.wait()
    if web is not None:
        web.stop()
    if guardrails is not None:
        guardrails.stop()
    if release is not None:
        release.stop()  # first: no rollout step may be taken while the streams drain
    plane.stop()
    if guardrails is not None:
        guardrails.close()  # after the collector: nothing writes to the exposure store now
    return 0


def status_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="fader status", description="Which version each sidecar serves."
    )
    parser.add_argument("--control-plane", default="127.0.0.1:8017", metavar="ADDR")
    parser.add_argument("--json", action="store_true", help="print the raw status as JSON")
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--ca", type=Path, help="use TLS, verifying the control plane with this CA")
    parser.add_argument("--cert", type=Path, help="client certificate for mTLS (with --key)")
    parser.add_argument("--key", type=Path, help="private key of --cert")
    parser.add_argument("--token-file", type=Path, help="bearer token for the control plane")
    args = parser.parse_args(argv)
    try:
        security = ChannelSecurity.from_files(
            ca=args.ca, cert=args.cert, key=args.key, token_file=args.token_file
        )
        metadata = security.metadata()
    except OSError as exc:
        print(f"fader status: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    except ValueError as exc:  # TLS options that do not go together
        print(f"fader status: {exc}", file=sys.stderr)
        return 2
    with security.channel(args.control_plane) as channel:
        stub = controlplane_pb2_grpc.ControlPlaneServiceStub(channel)
        try:
            response = stub.ListSidecars(
                controlplane_pb2.ListSidecarsRequest(),
                timeout=args.timeout,
                metadata=metadata,
            )
        except grpc.RpcError as exc:
            print(
                f"fader status: {args.control_plane}: {exc.code().name}: {exc.details()}",
                file=sys.stderr,
            )
            return 1
    if args.json:
        print(json.dumps(fleet_json(response), indent=2))
        return 0
    print(f"offered: version {response.offered_version} from {response.offered_source or '-'}")
    print(f"{'SIDECAR':24} {'STATE':13} {'ACKED':>8} {'NACKED':>8}  LABELS / ERRORS")
    for item in response.sidecars:
        state = "connected" if item.connected else "disconnected"
        acked = str(item.acked_version) if item.has_acked else "-"
        nacked = str(item.nacked_version) if item.has_nacked else "-"
        labels = ",".join(f"{k}={v}" for k, v in sorted(item.identity.labels.items()))
        print(f"{item.identity.id:24} {state:13} {acked:>8} {nacked:>8}  {labels}")
        for error in item.nack_errors:
            print(f"{'':24} {'':13} {'':>8} {'':>8}  ! {error}")
    return 0
