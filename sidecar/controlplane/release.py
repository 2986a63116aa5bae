"""Release control inside ``fader controlplane``: the flag store and what hangs off it.

One object assembles the store (SQLite under ``--data-dir``, or PostgreSQL with
``--store``), the snapshot offers made from it (signed with ``--signing-key``), the
rollout engine, the ``--snapshot`` file watcher, and the admin API routes. Other
control-plane modules reach the same parts: ``release.store`` (changes in process),
``release.rollouts`` (plans, and the ``gate`` they ask before each step), and the router
the API is registered on.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.controlplane.api import ReleaseApi
from sidecar.controlplane.durations import parse_duration
from sidecar.controlplane.gitops import SnapshotFiles
from sidecar.controlplane.rollout import RolloutEngine
from sidecar.controlplane.snapshots import DEFAULT_SIGNATURE_TTL, Signer, StoreOffers
from sidecar.controlplane.store import FlagStore
from sidecar.controlplane.storedb import Database, SqliteDatabase
from sidecar.controlplane.web import Router

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path("fader-data")


@dataclass(frozen=True)
class ReleaseSettings:
    data_dir: Path = DEFAULT_DATA_DIR
    store_url: str | None = None
    snapshot: Path | None = None
    signing_key: Path | None = None
    signing_key_id: str | None = None
    signature_ttl: int = DEFAULT_SIGNATURE_TTL
    rollout_tick: float = 0.25


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The release-control options of ``fader controlplane``."""
    group = parser.add_argument_group("release control (the flag store)")
    group.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        metavar="DIR",
        help="where the embedded SQLite flag store lives (default ./%(default)s)",
    )
    group.add_argument(
        "--store",
        metavar="URL",
        help="keep the flag store in PostgreSQL instead (postgresql://USER@HOST:PORT/DB); "
        "replicas on one database stay in step through LISTEN/NOTIFY",
    )
    group.add_argument(
        "--snapshot",
        type=Path,
        metavar="FILE|DIR",
        help="GitOps: apply this snapshot file (or the newest in DIR) to the store whenever "
        "it changes; it replaces the whole flag set (author file:PATH)",
    )
    group.add_argument(
        "--signing-key", type=Path, metavar="FILE", help="sign every snapshot (Ed25519 ID.key)"
    )
    group.add_argument("--signing-key-id", metavar="ID", help="key id sidecars trust it under")
    group.add_argument(
        "--signature-ttl",
        default="30d",
        metavar="DURATION",
        help="how long each signature is valid (default %(default)s)",
    )
    group.add_argument(
        "--rollout-tick",
        type=float,
        default=0.25,
        metavar="SECONDS",
        help="how often rollout plans are checked (default %(default)s)",
    )


def settings_from(args: argparse.Namespace) -> ReleaseSettings:
    """ValueError for options that do not go together."""
    if (args.signing_key is None) != (args.signing_key_id is None):
        raise ValueError("--signing-key and --signing-key-id go together")
    if args.store is not None and not args.store.startswith(("postgresql://", "postgres://")):
        raise ValueError("--store takes a postgresql:// URL (without it: SQLite in --data-dir)")
    if args.rollout_tick <= 0:
        raise ValueError("--rollout-tick must be > 0")
    return ReleaseSettings(
        data_dir=args.data_dir,
        store_url=args.store,
        snapshot=args.snapshot,
        signing_key=args.signing_key,
        signing_key_id=args.signing_key_id,
        signature_ttl=int(parse_duration(args.signature_ttl)),
        rollout_tick=args.rollout_tick,
    )


def open_database(settings: ReleaseSettings) -> Database:
    if settings.store_url is not None:
        from sidecar.controlplane.postgres import PostgresDatabase

        return PostgresDatabase(settings.store_url)
    return SqliteDatabase(settings.data_dir)


class ReleaseControl:
    """The store, its offers, the rollouts and the GitOps watcher, started and stopped together."""

    def __init__(self, settings: ReleaseSettings, db: Database | None = None) -> None:
        self.settings = settings
        self.store = FlagStore(db or open_database(settings))
        signer = None
        if settings.signing_key is not None and settings.signing_key_id is not None:
            signer = Signer.load(
                settings.signing_key, settings.signing_key_id, settings.signature_ttl
            )
        self.offers = StoreOffers(self.store, signer)
        self.rollouts = RolloutEngine(self.store, tick_seconds=settings.rollout_tick)
        self.files = (
            SnapshotFiles(self.store, settings.snapshot) if settings.snapshot is not None else None
        )
        self.api = ReleaseApi(self.store, self.rollouts)

    def register(self, router: Router) -> None:
        self.api.register(router)

    def start(self) -> None:
        self.store.start()
        if self.files is not None:
            self.files.start()
        self.rollouts.start_ticking()

    def stop(self) -> None:
        self.rollouts.stop()
        if self.files is not None:
            self.files.stop()
        self.offers.stop()
        self.store.stop()
        self.store.db.close()

    def status(self) -> dict[str, Any]:
        """The store's part of ``/status``."""
        plans = self.rollouts.plans()
        status: dict[str, Any] = {
            "store": self.store.db.description,
            "version": self.store.version,
            "flags": len(self.store.state.flags.flags),
            "flagd_flags": len(self.store.state.flags.flagd_flags),
            "signed": self.offers.signer is not None,
            "rollouts": {flag: f"{p.status} step {p.step_label}" for flag, p in plans.items()},
        }
        if self.files is not None:
            status["snapshot_file"] = {
                "path": str(self.files.path),
                "last_error": self.files.last_error,
            }
        return status
