"""A control plane's guardrail parts on real files (SQLite flag store, DuckDB exposure store)
with synthetic exposures and events, for the loop, API and page tests; and a real HTTP server
that receives webhooks; the guardrail API served over HTTP."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from fader.pb.fader.v1 import telemetry_pb2 as pb

from sidecar.config import Address
from sidecar.controlplane.alerts import Alerts
from sidecar.controlplane.apitokens import RoleTokens
from sidecar.controlplane.decisions import DecisionLog
from sidecar.controlplane.definitions import Definitions, MetricDef
from sidecar.controlplane.exposures import ExposureStore
from sidecar.controlplane.flagset import FLAG
from sidecar.controlplane.guardian import Guardian
from sidecar.controlplane.guardrail_api import GuardrailApi
from sidecar.controlplane.releases import Releases
from sidecar.controlplane.rollout import RolloutEngine
from sidecar.controlplane.statistics import Direction, MetricKind
from sidecar.controlplane.store import FlagStore
from sidecar.controlplane.storedb import Database, SqliteDatabase
from sidecar.controlplane.web import Router, WebServer
from sidecar.plumbing.backoff import Backoff


def flag_definition(name: str, on: int = 0) -> dict[str, Any]:
    """A two-treatment flag (on/off, default off) whose default rule gives `on` percent."""
    return {
        "name": name,
        "trafficTypeName": "user",
        "seed": 1234567,
        "trafficAllocation": 100,
        "trafficAllocationSeed": 7654321,
        "algo": 2,
        "status": "ACTIVE",
        "killed": False,
        "defaultTreatment": "off",
        "conditions": [
            {
                "conditionType": "ROLLOUT",
                "matcherGroup": {
                    "combiner": "AND",
                    "matchers": [
                        {
                            "keySelector": {"trafficType": "user", "attribute": None},
                            "matcherType": "ALL_KEYS",
                            "negate": False,
                        }
                    ],
                },
                "partitions": [
                    {"treatment": "on", "size": on},
                    {"treatment": "off", "size": 100 - on},
                ],
                "label": "default rule",
            }
        ],
    }


@dataclass
class Webhooks:
    """A real HTTP server on loopback that records every POST; answers `failures` 500s first."""

    failures: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    url: str = ""
    _server: ThreadingHTTPServer | None = None

    def start(self) -> Webhooks:
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hooks.attempts += 1
                if hooks.attempts <= hooks.failures:
                    self.send_response(500)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                hooks.received.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.received)


class World:
    """Flag store, rollout engine, exposure store, definitions, decisions, alerts, guardian."""

    def __init__(
        self,
        root: Path,
        *,
        webhooks: Sequence[str] = (),
        min_sample: int = 355,
        db: Database | None = None,
    ) -> None:
        self.store = FlagStore(db or SqliteDatabase(root / "store"))
        self.rollouts = RolloutEngine(self.store)
        self.exposures = ExposureStore(root / "exposures.duckdb")
        self.definitions = Definitions(self.store.db)
        self.decisions = DecisionLog(self.store.db)
        self.alerts = Alerts(webhooks, attempts=3, backoff=Backoff(initial=0.05, maximum=0.2))
        self.alerts.start()
        self.guardian = Guardian(
            self.store,
            self.rollouts,
            self.exposures,
            self.definitions,
            self.decisions,
            self.alerts,
            interval=1.0,
            min_sample=min_sample,
            clock=time.time,
        )
        self.rollouts.gate = self.guardian.gate
        self._batches = 0

    def close(self) -> None:
        self.guardian.stop()
        self.alerts.stop()
        self.exposures.close()
        self.store.db.close()

    def add_flag(self, name: str, on: int = 0) -> None:
        self.store.put_flag(name, flag_definition(name, on), author="test", reason="setup")

    def errors_metric(self) -> None:
        self.definitions.put_metric(
            MetricDef("errors", "error", MetricKind.CONVERSION, Direction.DECREASE)
        )

    def change_number(self, flag: str) -> int:
        return self.store.state.changed[(FLAG, flag)]

    def expose(
        self,
        flag: str,
        keys: int,
        error_rates: dict[str, float],
        *,
        weights: dict[str, float] | None = None,
        seed: int = 1,
        prefix: str = "u",
    ) -> dict[str, int]:
        """`keys` keys exposed now at the flag's current change number with the default rule's
        label, each given a treatment with `weights` (default: the current split), each sending
        an `error` event with its treatment's rate. Returns keys per treatment."""
        rng = random.Random(seed)
        if weights is None:
            partitions = self.store.state.flags.flags[flag]["conditions"][0]["partitions"]
            weights = {p["treatment"]: p["size"] for p in partitions if p["size"] > 0}
        names, sizes = list(weights), list(weights.values())
        now = time.time_ns() // 1_000_000
        change = self.change_number(flag)
        request = pb.UploadRequest(batch_id=f"batch-{self._batches}-{seed}", sidecar_id="pod-1")
        self._batches += 1
        counts: dict[str, int] = {}
        for i in range(keys):
            treatment = rng.choices(names, sizes)[0]
            counts[treatment] = counts.get(treatment, 0) + 1
            key = f"{prefix}{seed}-{i}"
            request.impressions.add(
                key=key,
                flag=flag,
                treatment=treatment,
                label="default rule",
                change_number=change,
                time_ms=now,
            )
            if rng.random() < error_rates[treatment]:
                request.events.add(
                    key=key, traffic_type="user", event_type="error", timestamp_ms=now + 1
                )
        self.exposures.ingest(request)
        return counts


def world_fixture(root: Path, **kwargs: Any) -> Iterator[World]:
    world = World(root, **kwargs)
    try:
        yield world
    finally:
        world.close()


def serve(world: World, tokens: RoleTokens | None = None) -> WebServer:
    """The guardrail API of ``world`` on a real HTTP server (loopback, a free port), started."""
    releases = Releases(
        world.store, world.rollouts, world.definitions, world.decisions, world.exposures
    )
    router = Router()
    GuardrailApi(world.store, world.definitions, world.decisions, releases, world.alerts).register(
        router
    )
    server = WebServer(Address("127.0.0.1", 0), router, tokens)
    server.start()
    return server
