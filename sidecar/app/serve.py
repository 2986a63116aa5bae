"""`fader serve`: settings, the initial snapshot, then the sidecar until SIGTERM or SIGINT.

The shutdown order: stop taking snapshots in, then `Sidecar.stop` (health NOT_SERVING, end
streams, drain within --shutdown-grace, flush telemetry, release sockets).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import uvloop

from sidecar.api import uds
from sidecar.app.errors import StartupError
from sidecar.app.sidecar import Sidecar
from sidecar.app.sources import SnapshotSources
from sidecar.app.telemetry import build_pipeline
from sidecar.config import ConfigError, Settings, load_settings
from sidecar.delivery.store import Store
from sidecar.plumbing import logformat

log = logging.getLogger(__name__)


async def run(settings: Settings, store: Store, sources: SnapshotSources) -> int:
    """Serves until SIGTERM or SIGINT, then drains; a second signal cuts the drain short."""
    try:
        telemetry = build_pipeline(settings)
    except StartupError as err:
        log.error("%s", err)
        return 1
    sidecar = Sidecar(settings, store, sources=sources, telemetry=telemetry)
    try:
        await sidecar.start()
        sources.start()
    except (StartupError, uds.SocketError, OSError, ValueError) as err:
        log.error("%s", err)
        sources.stop()
        await sidecar.stop(0)
        return 1
    log.info(
        "listening grpc=%s uds=%s mgmt=%s fastlane=%s sync=%s ofrep=%s",
        sidecar.grpc_address or "off",
        sidecar.uds_path or "off",
        sidecar.mgmt_address or "off",
        sidecar.fastlane_path or "off",
        sidecar.sync_address or "off",
        sidecar.ofrep_address or "off",
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _on_signal, stopping, sidecar, signum)
    await stopping.wait()
    sources.stop()
    log.info("draining for up to %.1f s", settings.shutdown_grace)
    await sidecar.stop(settings.shutdown_grace)
    log.info("stopped")
    return 0


def _on_signal(stopping: asyncio.Event, sidecar: Sidecar, signum: int) -> None:
    name = signal.Signals(signum).name
    if not stopping.is_set():
        log.info("%s received: shutting down", name)
        stopping.set()
        return
    log.warning("%s received again: cancelling the calls still in flight", name)
    asyncio.get_running_loop().create_task(sidecar.cut_drain_short())


NOTHING_TO_LOAD = (
    "nothing to load: give --snapshot FILE, --demo, --control-plane HOST:PORT, or "
    "--admin-listen HOST:PORT to wait for a `fader push` (a --cache-dir alone serves its "
    "last-known-good snapshot)"
)


def _has_source(settings: Settings) -> bool:
    """Without any of these, the sidecar would answer "not ready" forever."""
    return bool(
        settings.snapshot is not None
        or settings.demo
        or settings.control_plane is not None
        or settings.admin_listen is not None
        or settings.cache_dir is not None
    )


def serve_main(argv: list[str]) -> int:
    """`fader serve ARGS`: returns the process exit code (0 after a clean shutdown)."""
    try:
        settings = load_settings(argv)
    except SystemExit as exit_:  # --help, or a flag argparse does not know
        return exit_.code if isinstance(exit_.code, int) else 2
    except ConfigError as err:
        print(f"fader serve: {err}", file=sys.stderr)
        return 2
    if not _has_source(settings):
        print(f"fader serve: {NOTHING_TO_LOAD}", file=sys.stderr)
        return 2
    logformat.configure(settings.log_level, settings.log_format)
    store = Store()
    try:
        sources = SnapshotSources(settings, store)
        sources.load_initial()
    except StartupError as err:
        log.error("%s", err)
        return 1
    if store.current is None:
        log.warning("no snapshot yet: not ready until one arrives (push, control plane)")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run(settings, store, sources))
