"""What the Split SDK acceptance tests share: a random snapshot covering every matcher type,
thousands of lookups on it, a small stand-in of Split's own API, and a collector.

The snapshot is made of chunks drawn with the differential test's generators
(tests/fader/rules/strategies.py), each with its own names, then topped up with one flag per
matcher type no chunk used: so "every matcher type" holds for any seed, and every chunk is
as valid as the generators make it (references only to earlier nodes, no cycles).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import math
import os
import random
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import grpc
from fader.pb.fader.v1 import evaluation_pb2 as pb
from fader.pb.fader.v1 import telemetry_pb2_grpc
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from sidecar.controlplane.collector import Collector, Outputs
from tests.fader.rules import strategies as gen
from tests.fader.rules.builders import condition, flag
from tests.integration.harness import ServeProcess, free_port, serve_process, short_tmp

Json = dict[str, Any]
INT64 = 2**63


def example(strategy: st.SearchStrategy[Any], at_seed: int) -> Any:
    """One value of `strategy`, the same for the same seed."""
    found: list[Any] = []

    @seed(at_seed)
    @settings(
        max_examples=1,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(strategy)
    def grab(value: Any) -> None:
        found.append(value)

    grab()
    return found[0]


@st.composite
def chunk(draw: gen.Draw, prefix: str) -> Json:
    """A snapshot part like the generators' own, its names prefixed."""
    segments = {f"{prefix}{name}": keys for name, keys in draw(gen.segment_maps()).items()}
    scope = gen._Scope(segments=sorted(segments))
    order = draw(st.permutations(["flag"] * 6 + ["rbs"] * 2))
    flags: list[Json] = []
    rule_based: list[Json] = []
    for kind in order:
        if kind == "flag":
            name = f"{prefix}flag_{len(flags)}"
            flags.append(draw(gen.flags(name, scope)))
            scope.flags.append(name)
        else:
            name = f"{prefix}rbs_{len(rule_based)}"
            rule_based.append(draw(gen.rule_based_segments(name, scope)))
            scope.rule_based.append(name)
    return {"flags": flags, "segments": segments, "ruleBasedSegments": rule_based}


@st.composite
def covering_flag(draw: gen.Draw, name: str, matcher_type: str, scope: gen._Scope) -> Json:
    """A flag whose first condition tests `matcher_type`."""
    matcher: Json = {
        "keySelector": draw(gen.key_selector(draw(gen.matcher_input(matcher_type)))),
        "matcherType": matcher_type,
        "negate": draw(gen.one_in(4)),
        **draw(gen.matcher_data(matcher_type, scope)),
    }
    flag: Json = draw(gen.flags(name, scope))
    flag["killed"] = False
    flag["conditions"] = [
        {
            "conditionType": "ROLLOUT",
            "matcherGroup": {"combiner": "AND", "matchers": [matcher]},
            "partitions": draw(gen.partitions()),
            "label": f"covers {matcher_type}",
        },
        *flag["conditions"],
    ]
    return flag


def matcher_types(doc: Json) -> set[str]:
    return {m["matcherType"] for m in gen._all_matchers(doc)}


def snapshot_document(at_seed: int, chunks: int = 5, version: int = 1) -> Json:
    doc: Json = {"version": version, "flags": [], "segments": {}, "ruleBasedSegments": []}
    for index in range(chunks):
        part = example(chunk(f"c{index}_"), at_seed + index)
        doc["flags"] += part["flags"]
        doc["segments"].update(part["segments"])
        doc["ruleBasedSegments"] += part["ruleBasedSegments"]
    scope = gen._Scope(
        segments=sorted(doc["segments"]) or [],
        flags=[f["name"] for f in doc["flags"]],
        rule_based=[r["name"] for r in doc["ruleBasedSegments"]],
    )
    if not scope.segments:
        doc["segments"]["cover_seg"] = list(gen.KEYS_BMP[:4])
        scope.segments.append("cover_seg")
    for matcher_type in sorted(set(gen.ALL_MATCHER_TYPES) - matcher_types(doc)):
        name = f"cover_{matcher_type.lower()}"
        doc["flags"].append(example(covering_flag(name, matcher_type, scope), at_seed))
    assert matcher_types(doc) >= set(gen.ALL_MATCHER_TYPES)
    return doc


@dataclass(frozen=True)
class Lookup:
    key: str
    bucketing_key: str | None
    attributes: dict[str, Any]


def portable(value: object) -> bool:
    """A value every path carries the same way: gRPC attributes, JSON to Node and Go."""
    if isinstance(value, bool | str):
        return True
    if isinstance(value, int):
        return -INT64 <= value < INT64
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def lookups(doc: Json, count: int, at_seed: int) -> list[Lookup]:
    """`count` keys (the values the snapshot's matchers look for first, then user-N), each
    with attributes drawn as the differential test draws them, minus what gRPC cannot
    carry, and sometimes a bucketing key."""
    harvested = gen._harvest(doc)
    keys = [k for k in gen._key_pool(doc, harvested[None]) if len(k) <= 250]
    keys += [f"user-{i}" for i in range(count - len(keys))]
    rng = random.Random(at_seed)
    maps = example(st.lists(gen.attribute_maps(harvested), min_size=64, max_size=64), at_seed)
    found = []
    for key in keys[:count]:
        attributes = {k: v for k, v in (rng.choice(maps) or {}).items() if portable(v)}
        bucketing = rng.choice(keys) if rng.random() < 0.2 else None
        found.append(Lookup(key, bucketing, attributes))
    return found


def attribute_values(attributes: dict[str, Any]) -> dict[str, pb.AttributeValue]:
    values = {}
    for name, value in attributes.items():
        if isinstance(value, bool):
            values[name] = pb.AttributeValue(bool_value=value)
        elif isinstance(value, int):
            values[name] = pb.AttributeValue(int_value=value)
        elif isinstance(value, float):
            values[name] = pb.AttributeValue(double_value=value)
        elif isinstance(value, str):
            values[name] = pb.AttributeValue(string_value=value)
        else:
            values[name] = pb.AttributeValue(string_list_value=pb.StringList(values=value))
    return values


def cases_json(flags: list[str], found: list[Lookup]) -> str:
    """The lookups as the Node and Go drivers read them."""
    return json.dumps(
        {
            "flags": flags,
            "lookups": [
                {"key": lk.key, "bucketingKey": lk.bucketing_key, "attributes": lk.attributes}
                for lk in found
            ],
        }
    )


# -- a stand-in of Split's API: the same flags, served the plainest way --------------------


class StandIn:
    """Split's sdk API reduced to what an SDK needs to sync: every flag and rule-based
    segment at since=-1, nothing after; whole segments at since=-1, nothing after."""

    def __init__(self, doc: Json) -> None:
        till = 1
        self.split_changes = {
            "ff": {"d": doc["flags"], "s": -1, "t": till},
            "rbs": {"d": doc["ruleBasedSegments"], "s": -1, "t": till},
        }
        self.segments = doc["segments"]
        handler = self._handler()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/api"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                args = parse_qs(query)
                since = int(args.get("since", ["-1"])[0])
                if path.endswith("/splitChanges"):
                    body: Any = standin.split_changes
                    if since != -1:
                        body = {
                            "ff": {"d": [], "s": since, "t": since},
                            "rbs": {"d": [], "s": since, "t": since},
                        }
                elif "/segmentChanges/" in path:
                    name = path.rsplit("/", 1)[1]
                    keys = standin.segments.get(name, []) if since == -1 else []
                    till = 1 if since == -1 else since
                    body = {
                        "name": name,
                        "added": keys,
                        "removed": [],
                        "since": since,
                        "till": till,
                    }
                elif path.endswith("auth"):
                    body = {"pushEnabled": False, "token": ""}
                else:
                    body = {}
                self._send(json.dumps(body).encode())

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._send(b"{}")

            def _send(self, data: bytes) -> None:
                data = gzip.compress(data)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@contextlib.contextmanager
def standin(doc: Json) -> Iterator[StandIn]:
    server = StandIn(doc)
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


# -- a collector -----------------------------------------------------------------------------


@contextlib.contextmanager
def collector(directory: Path) -> Iterator[tuple[Collector, int, Outputs]]:
    """The reference collector writing JSONL into `directory`, on a loopback port."""
    outputs = Outputs(
        impressions=directory / "impressions.jsonl",
        counts=directory / "counts.jsonl",
        unique_keys=directory / "unique_keys.jsonl",
        events=directory / "events.jsonl",
    )
    servicer = Collector(outputs)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    telemetry_pb2_grpc.add_TelemetryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, port, outputs
    finally:
        server.stop(0)
        servicer.close()


def jsonl(path: Path | None) -> list[Json]:
    if path is None or not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


# -- a sidecar serving the world ------------------------------------------------------------

SEED = int(os.environ.get("FADER_TEST_SEED") or 20_251_203)


def document(version: int, pushed: str, doomed: bool) -> Json:
    """The random world, plus "pushed" (every key gets `pushed`) and, while `doomed`, a flag
    that the next version deletes."""
    doc = snapshot_document(SEED, version=version)
    doc["flags"].append(flag("pushed", condition(partitions={pushed: 100}), changeNumber=version))
    if doomed:
        doc["flags"].append(flag("doomed", condition(partitions={"alive": 100})))
    return doc


def active_flags(doc: Json) -> list[str]:
    return sorted(f["name"] for f in doc["flags"] if f.get("status", "ACTIVE") == "ACTIVE")


def write(path: Path, doc: Json) -> None:
    tmp = path.with_name(".next.json")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


@dataclass
class World:
    serve: ServeProcess
    split_port: int
    snapshot: Path
    collector: Collector
    outputs: Outputs
    tmp: Path

    @property
    def split_url(self) -> str:
        return f"http://127.0.0.1:{self.split_port}/api"


@contextlib.contextmanager
def world() -> Iterator[World]:
    """`fader serve` on the world's first version, with the Split SDK API and a collector."""
    with short_tmp() as tmp, collector(tmp) as (servicer, port, outputs):
        snapshot = tmp / "snap.json"
        write(snapshot, document(1, "v1", doomed=True))
        split_port = free_port()
        args = [
            "--snapshot", str(snapshot),
            "--grpc-listen", "127.0.0.1:0",
            "--mgmt-listen", "127.0.0.1:0",
            "--split-api-listen", f"127.0.0.1:{split_port}",
            "--collector", f"127.0.0.1:{port}",
            "--telemetry-flush-interval", "0.2",
        ]  # fmt: skip
        with serve_process(args, tmp) as serve:
            serve.wait_listening()
            yield World(serve, split_port, snapshot, servicer, outputs, tmp)
