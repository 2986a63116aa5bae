"""Guardrails inside ``fader controlplane``: the options, and the parts assembled and run together.

Definitions, decisions, the rollout gate, the release pages and the API need only the flag
store's database, so every replica has them. The loop (``Guardian``) needs the exposure store
as well, which one process owns: without it (``exposures=None``) nothing is judged here, and
the gate still holds guarded plans on the looks the owner records.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.controlplane.alerts import Alerts
from sidecar.controlplane.decisions import DecisionLog
from sidecar.controlplane.definitions import Definitions, check_webhook
from sidecar.controlplane.durations import format_duration, parse_duration
from sidecar.controlplane.exposures import DEFAULT_WINDOW_MS, ExposureStore, StoreError
from sidecar.controlplane.guardian import DEFAULT_INTERVAL, Guardian, LookGate
from sidecar.controlplane.guardrail_api import GuardrailApi
from sidecar.controlplane.releases import Releases
from sidecar.controlplane.rollout import RolloutEngine
from sidecar.controlplane.statistics import DEFAULT_MIN_SAMPLE
from sidecar.controlplane.store import FlagStore
from sidecar.controlplane.web import Router

log = logging.getLogger(__name__)

EXPOSURES_FILE = "exposures.duckdb"


@dataclass(frozen=True)
class GuardrailSettings:
    interval: float | None = DEFAULT_INTERVAL  # None: no loop in this process
    window_ms: int = DEFAULT_WINDOW_MS
    min_sample: int = DEFAULT_MIN_SAMPLE
    webhooks: tuple[str, ...] = ()
    public_url: str | None = None  # where people reach the HTTP listener (links in alerts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("guardrails")
    group.add_argument(
        "--guardrail-interval",
        default=str(DEFAULT_INTERVAL),
        metavar="SECONDS",
        help="how often every guarded flag is judged (default %(default)s; 1 for tests); "
        "'off': no loop here (a replica that does not collect exposures)",
    )
    group.add_argument(
        "--window",
        default=format_duration(DEFAULT_WINDOW_MS / 1000),
        metavar="DURATION",
        help="attribution window: an event counts for a key's treatment this long after its "
        "first exposure (default %(default)s)",
    )
    group.add_argument(
        "--min-sample",
        type=int,
        default=DEFAULT_MIN_SAMPLE,
        metavar="UNITS",
        help="units in a treatment and its baseline before a guardrail judges (default "
        "%(default)s); fewer holds the rollout",
    )
    group.add_argument(
        "--webhook",
        action="append",
        default=[],
        metavar="URL",
        help="POST every guardrail decision here as JSON (Slack-compatible); repeatable",
    )
    group.add_argument(
        "--public-url",
        metavar="URL",
        help="this control plane's HTTP address as people reach it, for links in alerts",
    )


def settings_from(args: argparse.Namespace) -> GuardrailSettings:
    """ValueError naming the option that is wrong."""
    interval = None
    if args.guardrail_interval.strip().lower() != "off":
        interval = parse_duration(args.guardrail_interval)
        if interval <= 0:
            raise ValueError("--guardrail-interval must be > 0 seconds (or off)")
    window = parse_duration(args.window)
    if window < 1:
        raise ValueError("--window must be at least 1s")
    if args.min_sample < 2:
        raise ValueError("--min-sample must be >= 2")
    try:
        hooks = tuple(check_webhook(url) for url in args.webhook)
    except ValueError as exc:
        raise ValueError(f"--webhook: {exc}") from None
    public = args.public_url.rstrip("/") if args.public_url else None
    return GuardrailSettings(interval, int(window * 1000), args.min_sample, hooks, public)


def open_exposures(data_dir: Path) -> ExposureStore | None:
    """The exposure store in ``data_dir``, or None when another process holds it (replicas
    sharing a data directory: the one holding it collects and judges, the others serve the
    API and the gate); OSError for any other reason it cannot be opened."""
    try:
        return ExposureStore(data_dir / EXPOSURES_FILE)
    except StoreError as exc:
        if "lock" in str(exc).lower():
            log.warning(
                "exposure store %s is held by another process: no collector store and no "
                "guardrail loop here (%s)",
                data_dir / EXPOSURES_FILE,
                exc,
            )
            return None
        raise OSError(str(exc)) from None


class Guardrails:
    """Definitions, decisions, alerts, the gate, the loop (with an exposure store) and the API.

    It owns the exposure store it is given: ``close`` closes it (after the collector stopped).
    """

    def __init__(
        self,
        settings: GuardrailSettings,
        store: FlagStore,
        rollouts: RolloutEngine,
        exposures: ExposureStore | None,
    ) -> None:
        self.settings = settings
        self.exposures = exposures
        self.definitions = Definitions(store.db)
        self.decisions = DecisionLog(store.db)
        self.alerts = Alerts(settings.webhooks)
        rollouts.gate = LookGate(self.definitions, self.decisions)
        self.guardian: Guardian | None = None
        if exposures is not None and settings.interval is not None:
            self.guardian = Guardian(
                store,
                rollouts,
                exposures,
                self.definitions,
                self.decisions,
                self.alerts,
                interval=settings.interval,
                window_ms=settings.window_ms,
                min_sample=settings.min_sample,
                page_url=self.page_url,
            )
        self.releases = Releases(
            store,
            rollouts,
            self.definitions,
            self.decisions,
            exposures,
            window_ms=settings.window_ms,
            min_sample=settings.min_sample,
        )
        self.api = GuardrailApi(store, self.definitions, self.decisions, self.releases, self.alerts)

    def page_url(self, flag: str) -> str | None:
        base = self.settings.public_url
        return f"{base}/releases/{flag}" if base else None

    def register(self, router: Router) -> None:
        self.api.register(router)

    def start(self) -> None:
        self.alerts.start()
        if self.guardian is not None:
            self.guardian.start()

    def stop(self) -> None:
        if self.guardian is not None:
            self.guardian.stop()
        self.alerts.stop()

    def close(self) -> None:
        """Close the exposure store (once nothing writes to it any more)."""
        if self.exposures is not None:
            self.exposures.close()
            self.exposures = None

    def status(self) -> dict[str, Any]:
        """The guardrails' part of ``/status``."""
        return {
            "loop": self.guardian is not None,
            "interval_seconds": self.settings.interval,
            "window_seconds": self.settings.window_ms / 1000,
            "min_sample": self.settings.min_sample,
            "looks": 0 if self.guardian is None else self.guardian.looks,
            "guarded_flags": len(self.definitions.guarded_flags()),
            "alerts": {
                "sent": self.alerts.sent,
                "failed": self.alerts.failed,
                "pending": self.alerts.pending(),
            },
        }
