"""Split's Node and Go SDKs, each in a small driver program (clients/split-node/driver.mjs,
clients/go-split/main.go) spoken to over stdin/stdout, one JSON line per request; and the
acceptance checks both must pass, written once:

- synced from the sidecar, the SDK answers 2,000 keys x every flag of the random world
  exactly as the same SDK synced the same flags from a stand-in of Split's API (the SDKs
  differ from the Python SDK, and so from Fader, in a few corners of their own: those
  differences are counted and reported, README "Move from Split" lists them);
- a push reaches it within one polling interval, and a deleted flag disappears;
- its impressions and events reach the collector once each, tagged with the SDK.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from fader.pb.fader.v1 import evaluation_pb2 as pb
from fader.pb.fader.v1 import evaluation_pb2_grpc as pb_grpc

from tests.integration.split_sdk_world import (
    SEED,
    World,
    active_flags,
    attribute_values,
    cases_json,
    document,
    jsonl,
    lookups,
    standin,
    write,
)
from tests.integration.test_telemetry_faults import metric
from tests.waiting import wait_for

KEYS = 2_000
REFRESH = 1  # seconds between the SDK's polls in these tests (Go polls every 5 s at least)
Answer = tuple[str, str | None]


class Driver:
    """One SDK process; every call waits for its one-line answer."""

    def __init__(self, command: list[str], cwd: Path, url: str, **env: str) -> None:
        environment = {**os.environ, "SPLIT_URL": url, "SPLIT_REFRESH": str(REFRESH), **env}
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env=environment,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        ready = self._read()
        assert ready == {"ready": True}, ready

    def _read(self) -> Any:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait(10)
            assert self.process.stderr is not None
            raise AssertionError(f"the SDK driver exited ({code}): {self.process.stderr.read()}")
        return json.loads(line)

    def call(self, **request: Any) -> Any:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._read()

    def answers(self, flags: list[str], cases: str) -> list[list[Answer]]:
        """Every lookup of `cases` (cases_json) for every flag."""
        request = json.loads(cases)
        results = self.call(op="eval", flags=flags, lookups=request["lookups"])["results"]
        return [[(t, c) for t, c in row] for row in results]

    def treatment(self, key: str, flag: str) -> str:
        lookup: dict[str, Any] = {"key": key, "bucketingKey": None, "attributes": {}}
        return str(self.call(op="eval", flags=[flag], lookups=[lookup])["results"][0][0][0])

    def close(self) -> None:
        if self.process.poll() is None:
            self.call(op="destroy")
            self.process.wait(30)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@contextmanager
def driver(command: list[str], cwd: Path, url: str, **env: str) -> Iterator[Driver]:
    running = Driver(command, cwd, url, **env)
    try:
        yield running
    finally:
        running.kill()


def sidecar_answers(world: World, flags: list[str], found: list[Any]) -> list[list[Answer]]:
    rows = []
    with grpc.insecure_channel(world.serve.wait_listening()["grpc"]) as channel:
        stub = pb_grpc.EvaluationServiceStub(channel)
        for lookup in found:
            request = pb.GetTreatmentsRequest(
                key=lookup.key,
                flags=flags,
                bucketing_key=lookup.bucketing_key or "",
                attributes=attribute_values(lookup.attributes),
            )
            answers = stub.GetTreatments(request, timeout=10).evaluations
            rows.append(
                [(a.treatment, a.config if a.HasField("config") else None) for a in answers]
            )
    return rows


def check_same_as_from_another_source(world: World, command: list[str], cwd: Path) -> Counter[str]:
    """The SDK synced from the sidecar equals the SDK synced from a stand-in, 100 %. Returns
    the flags where the SDK and the sidecar differ, with how many lookups each."""
    doc = document(1, "v1", doomed=True)
    flags = active_flags(doc)
    found = lookups(doc, KEYS, SEED)
    cases = cases_json(flags, found)
    with driver(command, cwd, world.split_url, SPLIT_IMPRESSIONS_MODE="NONE") as ours:
        from_sidecar = ours.answers(flags, cases)
    with standin(doc) as stand_in, driver(command, cwd, stand_in.url) as theirs:
        from_standin = theirs.answers(flags, cases)
    differ = [
        (flags[j], found[i], a, b)
        for i, (row_a, row_b) in enumerate(zip(from_sidecar, from_standin, strict=True))
        for j, (a, b) in enumerate(zip(row_a, row_b, strict=True))
        if a != b
    ]
    total = len(found) * len(flags)
    assert total >= KEYS * 20
    assert not differ, f"{len(differ)} of {total} differ (seed {SEED}): {differ[:5]}"
    fader = sidecar_answers(world, flags, found)
    corners: Counter[str] = Counter()
    for row_sdk, row_fader in zip(from_sidecar, fader, strict=True):
        for j, (a, b) in enumerate(zip(row_sdk, row_fader, strict=True)):
            if a != b:
                corners[flags[j]] += 1
    return corners


def check_push(world: World, command: list[str], cwd: Path, interval: float = REFRESH) -> float:
    """A push reaches the SDK within one polling interval (`interval`, the SDK's own
    least where it has one); a deleted flag disappears. Returns the lag in seconds after the
    sidecar applied the snapshot."""
    with driver(command, cwd, world.split_url, SPLIT_IMPRESSIONS_MODE="NONE") as sdk:
        assert sdk.treatment("k", "pushed") == "v1"
        assert sdk.treatment("k", "doomed") == "alive"
        before = metric(world.serve, "fader_snapshot_version")
        write(world.snapshot, document(2, "v2", doomed=False))
        try:
            wait_for(lambda: metric(world.serve, "fader_snapshot_version") > before, 10, "apply")
            applied = time.monotonic()
            wait_for(lambda: sdk.treatment("k", "pushed") == "v2", interval + 10, "the SDK")
            lag = time.monotonic() - applied
            assert sdk.treatment("k", "doomed") == "control"
        finally:
            write(world.snapshot, document(3, "v1", doomed=True))
            wait_for(lambda: metric(world.serve, "fader_snapshot_version") > before + 1, 10)
        sdk.close()
    assert lag < interval + 1.0, f"{lag:.2f} s after the sidecar applied it"
    return lag


def check_telemetry(world: World, command: list[str], cwd: Path, sdk_prefix: str) -> str:
    """DEBUG impressions and events reach the collector once each, tagged with the SDK, and
    show in /metrics. Returns the SDK's source tag."""
    n_keys = 120
    prefix = f"{sdk_prefix}-imp-"
    with driver(command, cwd, world.split_url, SPLIT_IMPRESSIONS_MODE="DEBUG") as sdk:
        wait_for(lambda: sdk.treatment("probe", "pushed") == "v1", 10)
        cases: list[dict[str, Any]] = [
            {"key": f"{prefix}{i}", "bucketingKey": None, "attributes": {}} for i in range(n_keys)
        ]
        results = sdk.call(op="eval", flags=["pushed"], lookups=cases)["results"]
        assert {row[0][0] for row in results} == {"v1"}
        for index in range(n_keys):
            event = {"trafficType": "user", "eventType": "checkout", "value": index}
            answer = sdk.call(op="track", key=f"{prefix}{index}", properties={"n": index}, **event)
            assert answer["ok"] is True
        sdk.close()

    def stored(kind: str) -> list[dict[str, Any]]:
        path = world.outputs.impressions if kind == "impressions" else world.outputs.events
        return [r for r in jsonl(path) if str(r["key"]).startswith(prefix)]

    wait_for(lambda: len(stored("impressions")) >= n_keys, 20, "impressions")
    wait_for(lambda: len(stored("events")) >= n_keys, 20, "events")
    time.sleep(0.5)  # anything sent twice would arrive by now
    impressions, events = stored("impressions"), stored("events")
    assert sorted(i["key"] for i in impressions) == sorted(f"{prefix}{i}" for i in range(n_keys))
    assert sorted(e["value"] for e in events) == [float(i) for i in range(n_keys)]
    sources = {r.get("source") for r in impressions + events}
    assert len(sources) == 1, sources
    source = str(sources.pop())
    assert source.startswith(sdk_prefix), source
    assert world.collector.stored["duplicates"] == 0
    # /metrics counts every impression of this SDK, the probes before the lookups too
    tagged = [r for r in jsonl(world.outputs.impressions) if r.get("source") == source]
    counted = metric(world.serve, "fader_split_api_records_total", kind="impressions", sdk=source)
    assert counted == len(tagged) >= n_keys
    return source
