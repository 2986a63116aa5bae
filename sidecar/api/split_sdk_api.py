"""The Split SDK API: what Split's own SDKs call, served by the sidecar, so an SDK pointed at
it (README "Move from Split") syncs Fader's flags and posts its impressions and events here.

Routes, each with or without the `/api` prefix (SDKs differ in where their base URL ends):

- `GET /splitChanges?s=&since=&rbSince=&sets=`: spec 1.3 `{ff, rbs}` or 1.1
  `{splits, since, till}`, from the change log (`split_sdk_changes`);
- `GET /segmentChanges/{name}?since=`: `{name, added, removed, since, till}`;
- `GET /memberships/{key}`, `GET /mySegments/{key}`: the key's segments (client-side SDKs);
- `GET /auth`, `GET /v2/auth`: `{"pushEnabled": false, "token": ""}`: no streaming, SDKs poll;
- `POST /testImpressions/bulk`, `/testImpressions/count`, `/events/bulk`, `/keys/ss`,
  `/keys/cs` (also `/v1/keys/...`, and the browser's `.../beacon` forms): into the telemetry
  pipeline (`split_sdk_records`);
- `POST /metrics/...`, `/v1/metrics/...`: SDK runtime telemetry, accepted and not kept.

What SDKs post becomes Fader's: each body becomes its own upload batches, tagged with the
SDK's `SplitSDKVersion` as their `source` and its `SplitSDKImpressionsMode` (it applied its
own mode), and goes through the same memory, spool and upload as the sidecar's own records.
A body is answered 200 only once the pipeline holds it; with no room it is answered 429 and
the SDK keeps it and retries, so nothing is lost and, since the answer waits for the
pipeline's verdict, nothing is added twice.

Why a thread with the standard library's HTTP server, like management HTTP, rather than
asyncio on the sidecar's loop: lookups run on that loop, and this API's work is parsing
request bodies of up to megabytes and sending multi-megabyte pages; on the loop each of
those would delay every lookup behind it. In threads they only share the GIL, which JSON
decoding here hands over at every object. Polls are cheap: an up-to-date SDK gets a
constant page, and the full page every SDK fetches at start is built (and gzipped) once per
snapshot.

With `--split-api-key-file`, every call must carry `Authorization: Bearer <key>` with a key
from the file (the beacon forms carry it in the body's `token`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import re
import socket
import threading
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote

from fader.snapshot.text import lone_surrogate
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sidecar.api.split_sdk_changes import SPEC_1_1, SPEC_1_2, SPEC_1_3, ChangeLog, Page
from sidecar.api.split_sdk_records import (
    Records,
    events_bulk,
    impression_counts,
    impressions_bulk,
    unique_keys_client,
    unique_keys_server,
)
from sidecar.auth import TokenFile
from sidecar.config import Address
from sidecar.core.attributes import AttributePolicy
from sidecar.core.refusals import BadRequest, NotReady, QueueFull, Refusal
from sidecar.telemetry.batches import Batch, BatchBuilder
from sidecar.telemetry.pipeline import Pipeline

log = logging.getLogger(__name__)

POLL_SECONDS = 0.05
# Largest request body, after gzip: an SDK's bulk of 5,000 events with properties fits.
MAX_BODY_BYTES = 32 * 1024 * 1024
# An idle keep-alive connection (or one that stops sending) is closed after this long.
SOCKET_TIMEOUT = 30.0
# How long a body waits for the pipeline's verdict before it is answered 503 (never added).
PIPELINE_TIMEOUT = 10.0
GZIP_MIN_BYTES = 1024
FLAG_SET = re.compile(r"[a-z0-9][_a-z0-9]{0,49}")
# The `sdk` label of the record counters: a short version string, at most this many kinds.
SDK_LABEL = re.compile(r"[A-Za-z0-9._:-]{1,40}")
MAX_SDK_LABELS = 50
AUTH_ANSWER = b'{"pushEnabled":false,"token":""}'
IMPRESSION_MODES = {"OPTIMIZED": "optimized", "DEBUG": "debug", "NONE": "none"}

Decoder = Callable[[Any], Records]


class Stats:
    """The API's counters, written by its HTTP threads, read by /metrics."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.records: dict[tuple[str, str], int] = {}
        self.refused: dict[tuple[str, str], int] = {}

    def request(self, route: str, code: int) -> None:
        self._add(self.requests, (route, code), 1)

    def accepted(self, kinds: dict[str, int], sdk: str) -> None:
        for kind, count in kinds.items():
            if count:
                self._add(self.records, (kind, sdk), count)

    def refuse(self, route: str, reason: str, count: int = 1) -> None:
        self._add(self.refused, (route, reason), count)

    def sdk_label(self, source: str) -> str:
        """`source` if it is a short version string and not one too many, else "other"."""
        if not SDK_LABEL.fullmatch(source):
            return "other"
        with self._lock:
            known = {sdk for _, sdk in self.records}
        return source if source in known or len(known) < MAX_SDK_LABELS else "other"

    def _add(self, table: dict[Any, int], key: Any, count: int) -> None:
        with self._lock:
            table[key] = table.get(key, 0) + count

    def snapshot(self) -> tuple[dict[Any, int], ...]:
        with self._lock:
            return dict(self.requests), dict(self.records), dict(self.refused)


class SplitApiCollector(Collector):
    def __init__(self, stats: Stats, changes: ChangeLog) -> None:
        self._stats = stats
        self._changes = changes

    def collect(self) -> Iterator[Metric]:
        requests, records, refused = self._stats.snapshot()
        family = CounterMetricFamily(
            "fader_split_api_requests",
            "Split SDK API requests answered, by route and HTTP status.",
            labels=("route", "code"),
        )
        for (route, code), count in sorted(requests.items()):
            family.add_metric((route, str(code)), count)
        yield family
        family = CounterMetricFamily(
            "fader_split_api_records",
            "Records Split SDKs posted that entered the telemetry pipeline, by kind and SDK.",
            labels=("kind", "sdk"),
        )
        for (kind, sdk), count in sorted(records.items()):
            family.add_metric((kind, sdk), count)
        yield family
        family = CounterMetricFamily(
            "fader_split_api_refused",
            "Split SDK API bodies refused (malformed_body, too_large, unauthorized, no_room, "
            "not_ready, ...) and records skipped (invalid_record), by route and reason.",
            labels=("route", "reason"),
        )
        for (route, reason), count in sorted(refused.items()):
            family.add_metric((route, reason), count)
        yield family
        current = self._changes.current
        yield GaugeMetricFamily(
            "fader_split_api_change_number",
            "The change number Split SDKs are served (-1 before the first snapshot).",
            value=current.cn if current is not None else -1,
        )
        yield GaugeMetricFamily(
            "fader_split_api_tombstones",
            "Removed flags and rule-based segments still sent as ARCHIVED to SDKs behind.",
            value=current.tombstones if current is not None else 0,
        )
        yield CounterMetricFamily(
            "fader_split_api_changelog_failures",
            "Snapshots the Split SDK API could not serve (it kept serving the previous one).",
            value=self._changes.failures,
        )


class _Reply(Exception):
    """Ends a request early with this status and message (counted under `reason`)."""

    def __init__(self, status: int, message: str, reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class _HTTPServerV6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


# POST routes: decoder and the kind of body (a beacon wraps the payload in {entries, token, sdk})
POSTS: dict[str, Decoder | None] = {
    "testImpressions/bulk": impressions_bulk,
    "testImpressions/count": impression_counts,
    "keys/ss": unique_keys_server,
    "keys/cs": unique_keys_client,
    "events/bulk": None,  # needs the attribute policy: bound in SplitSdkApi
    "metrics": None,  # runtime telemetry: read and discarded
}
BEACONS = {
    "testImpressions/beacon": "testImpressions/bulk",
    "testImpressions/count/beacon": "testImpressions/count",
    "events/beacon": "events/bulk",
    "keys/cs/beacon": "keys/cs",
}


def post_route(path: str) -> tuple[str, bool] | None:
    """(route, is a beacon) for a POST path without its `/api` prefix; None if unknown."""
    path = path.removeprefix("v1/")
    if path in BEACONS:
        return BEACONS[path], True
    if path in POSTS and path != "metrics":
        return path, False
    if path.startswith(("metrics/", "v1/metrics/")) or path == "metrics":
        return "metrics", False
    return None


class SplitSdkApi:
    """The HTTP server; `start` and `stop` from the sidecar's loop thread."""

    def __init__(
        self,
        address: Address,
        changes: ChangeLog,
        policy: AttributePolicy,
        pipeline: Pipeline | None,
        loop: asyncio.AbstractEventLoop,
        *,
        keys: TokenFile | None = None,
    ) -> None:
        self.changes = changes
        self.stats = Stats()
        self.collector = SplitApiCollector(self.stats, changes)
        self._policy = policy
        self._pipeline = pipeline
        self._loop = loop
        self._keys = keys
        self._warned_no_pipeline = False
        self._closing = False
        self._inflight = 0
        self._idle = threading.Condition()
        server_class = _HTTPServerV6 if ":" in address.host else ThreadingHTTPServer
        self._httpd = server_class((address.host, address.port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            args=(POLL_SECONDS,),
            name="fader-split-api",
            daemon=True,
        )

    @property
    def address(self) -> Address:
        host, port = self._httpd.server_address[:2]
        return Address(str(host), int(port))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Closes the listener; requests still arriving on open connections get 503."""
        self._closing = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    async def drained(self, timeout: float) -> bool:
        """Waits (off the loop, which in-flight bodies need) until no body is in flight."""

        def idle() -> bool:
            with self._idle:
                return self._idle.wait_for(lambda: self._inflight == 0, timeout)

        return await asyncio.to_thread(idle)

    # -- GET -----------------------------------------------------------------------------

    def get(self, path: str, query: dict[str, list[str]]) -> bytes | Page:
        if path in ("auth", "v2/auth"):
            return AUTH_ANSWER
        changes = self.changes.current
        if changes is None:
            raise NotReady("no snapshot yet: the sidecar has no flags to serve")
        if path == "splitChanges":
            spec = _one(query, "s", SPEC_1_1)
            if spec not in (SPEC_1_1, SPEC_1_2, SPEC_1_3):
                raise BadRequest(f"s: spec {spec!r} is not served; 1.3, 1.2 and 1.1 are")
            since = _since(query, "since")
            rb_since = _since(query, "rbSince", since)
            return changes.split_changes(spec, since, rb_since, _sets(query))
        section, _, name = path.partition("/")
        if not name or "/" in name:
            raise _Reply(404, f"not found: {path}", "not_found")
        name = unquote(name)
        if section == "segmentChanges":
            return changes.segment_changes(name, _since(query, "since"))
        if section == "memberships":
            return changes.memberships(name)
        if section == "mySegments":
            return changes.my_segments(name)
        raise _Reply(404, f"not found: {path}", "not_found")

    # -- POST ----------------------------------------------------------------------------

    def post(self, route: str, body: Any, source: str, mode: str) -> dict[str, Any]:
        """Decodes `body` and hands its records to the pipeline; the answer's JSON."""
        decode = POSTS[route]
        records = events_bulk(body, self._policy) if decode is None else decode(body)
        if records.skipped:
            self.stats.refuse(route, "invalid_record", records.skipped)
            log.warning(
                "split api: %s from %s: %d record(s) skipped, e.g. %s",
                route,
                source,
                records.skipped,
                records.reasons[0],
            )
        kinds = records.kinds()
        if any(kinds.values()):
            if self._deliver(records, source, mode):
                self.stats.accepted(kinds, self.stats.sdk_label(source))
            else:
                self.stats.refuse(route, "no_collector", sum(kinds.values()))
        answer: dict[str, Any] = {"accepted": sum(kinds.values()), "skipped": records.skipped}
        if records.reasons:
            answer["reasons"] = records.reasons
        return answer

    def _deliver(self, records: Records, source: str, mode: str) -> bool:
        """Hands the records to the pipeline; False when there is none (they are dropped,
        as Track's events are without a collector: no queue that nobody drains)."""
        pipeline = self._pipeline
        if pipeline is None:
            if not self._warned_no_pipeline:
                self._warned_no_pipeline = True
                log.warning(
                    "split api: what SDKs post is dropped: no --collector or --control-plane"
                )
            return False
        settings = pipeline.settings
        builder = BatchBuilder(settings.batch_records, settings.batch_bytes)
        builder.add_impressions(records.impressions)
        builder.add_counts(records.counts)
        builder.add_unique_keys(records.unique_keys)
        for row in records.events:
            builder.add_event(row)
        builder.seal()
        batches = builder.sealed
        for batch in batches:
            batch.source, batch.mode = source, mode
        if not self._on_loop(pipeline, batches):
            raise QueueFull("no room: the collector is unreachable and the spool is full")
        return True

    def _on_loop(self, pipeline: Pipeline, batches: list[Batch]) -> bool:
        """The pipeline's verdict, from its own loop. A verdict that is late is withdrawn
        before it runs (answered 503, nothing added), or awaited if already running: an
        SDK is never told to retry records that were added."""
        verdict: concurrent.futures.Future[bool] = concurrent.futures.Future()

        def add() -> None:
            if verdict.set_running_or_notify_cancel():
                try:
                    verdict.set_result(pipeline.add_batches(batches))
                except Exception as err:  # reported to the waiting thread, never lost
                    verdict.set_exception(err)

        try:
            self._loop.call_soon_threadsafe(add)
        except RuntimeError:  # the loop is closed: the sidecar is stopping
            raise _Reply(503, "the sidecar is stopping", "stopping") from None
        try:
            return verdict.result(PIPELINE_TIMEOUT)
        except concurrent.futures.TimeoutError:
            if verdict.cancel():
                raise _Reply(503, "the telemetry pipeline is busy", "busy") from None
            return verdict.result()

    # -- HTTP ----------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = SOCKET_TIMEOUT
            server_version = "fader-split-api"

            def do_GET(self) -> None:
                path, query = _split(self.path)
                route = "auth" if path in ("auth", "v2/auth") else path.split("/", 1)[0]
                try:
                    self._check_open()
                    self._check_key(self.headers.get("Authorization"))
                    answer = api.get(path, query)
                except (_Reply, Refusal) as err:
                    self._fail(route, err)
                    return
                except Exception:
                    log.exception("split api: GET %s failed", path)
                    self._fail(route, _Reply(500, "internal error", "internal"))
                    return
                self._answer(route, 200, answer)

            def do_POST(self) -> None:
                path, _ = _split(self.path)
                found = post_route(path)
                route = found[0] if found else "unknown"
                with api._idle:
                    api._inflight += 1
                try:
                    self._check_open()
                    if found is None:
                        self._discard_body()
                        raise _Reply(404, f"not found: POST {path}", "not_found")
                    data = self._read_body()  # first: every answer leaves the stream usable
                    route, beacon = found
                    if not beacon:
                        self._check_key(self.headers.get("Authorization"))
                    if route == "metrics":  # runtime telemetry: not kept
                        answer: dict[str, Any] = {}
                    else:
                        body = self._json(data)
                        source = self.headers.get("SplitSDKVersion") or "unknown"
                        if beacon:
                            body, source = self._beacon(body)
                        mode = IMPRESSION_MODES.get(
                            (self.headers.get("SplitSDKImpressionsMode") or "").upper(), ""
                        )
                        answer = api.post(route, body, source[:100], mode)
                except (_Reply, Refusal) as err:
                    self._fail(route, err)
                    return
                except Exception:
                    log.exception("split api: POST %s failed", path)
                    self._fail(route, _Reply(500, "internal error", "internal"))
                    return
                finally:
                    with api._idle:
                        api._inflight -= 1
                        api._idle.notify_all()
                self._answer(route, 200, json.dumps(answer).encode())

            def _check_open(self) -> None:
                if api._closing:
                    self.close_connection = True
                    raise _Reply(503, "the sidecar is stopping", "stopping")

            def _check_key(self, authorization: str | None) -> None:
                if api._keys is None:
                    return
                if not api._keys.allows([("authorization", authorization or "")]):
                    raise _Reply(
                        401, "missing or unknown SDK key (Authorization: Bearer)", "unauthorized"
                    )

            def _beacon(self, body: Any) -> tuple[Any, str]:
                """A browser beacon: `{entries, token, sdk}`, the key in the body."""
                if not isinstance(body, dict):
                    raise BadRequest("$: a beacon must be a JSON object {entries, token, sdk}")
                token = body.get("token")
                self._check_key(f"Bearer {token}" if isinstance(token, str) else None)
                sdk = body.get("sdk")
                return body.get("entries"), sdk if isinstance(sdk, str) and sdk else "unknown"

            def _json(self, data: bytes) -> Any:
                if self.headers.get("Content-Encoding", "").lower() == "gzip":
                    data = _gunzip(data)
                try:
                    document = json.loads(data, object_hook=_yield_point)
                except (ValueError, UnicodeDecodeError) as err:
                    raise BadRequest(f"the body is not JSON: {err}") from None
                except RecursionError:
                    raise BadRequest(
                        "the body is not JSON this API reads: nested too deep"
                    ) from None
                not_text = lone_surrogate(data, document)
                if not_text is not None:
                    raise BadRequest(not_text)
                return document

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    return self._read_chunked()
                length_header = self.headers.get("Content-Length")
                if length_header is None:
                    self.close_connection = True
                    raise _Reply(
                        411, "Content-Length (or chunked encoding) is required", "no_length"
                    )
                try:
                    length = int(length_header)
                except ValueError:
                    self.close_connection = True
                    raise _Reply(400, "Content-Length is not a number", "malformed_body") from None
                if length < 0 or length > MAX_BODY_BYTES:
                    self.close_connection = True
                    raise _Reply(413, f"bodies are limited to {MAX_BODY_BYTES} bytes", "too_large")
                data = self.rfile.read(length)
                if len(data) != length:
                    self.close_connection = True
                    raise _Reply(400, "the body ended before Content-Length", "malformed_body")
                return data

            def _read_chunked(self) -> bytes:
                self.close_connection = True  # a broken chunk leaves the stream unusable
                parts, total = [], 0
                while True:
                    line = self.rfile.readline(1024)
                    try:
                        size = int(line.split(b";", 1)[0].strip(), 16)
                    except ValueError:
                        raise _Reply(400, "malformed chunked body", "malformed_body") from None
                    if size == 0:
                        self.rfile.readline(1024)
                        break
                    total += size
                    if size < 0 or total > MAX_BODY_BYTES:
                        raise _Reply(
                            413, f"bodies are limited to {MAX_BODY_BYTES} bytes", "too_large"
                        )
                    parts.append(self.rfile.read(size))
                    self.rfile.readline(1024)
                self.close_connection = False
                return b"".join(parts)

            def _discard_body(self) -> None:
                length = self.headers.get("Content-Length")
                if length is not None and length.isdigit() and int(length) <= MAX_BODY_BYTES:
                    self.rfile.read(int(length))
                else:
                    self.close_connection = True

            def _fail(self, route: str, err: Exception) -> None:
                if isinstance(err, _Reply):
                    status, reason = err.status, err.reason
                else:
                    assert isinstance(err, Refusal)
                    status = err.http_status
                    reason = {400: "malformed_body", 429: "no_room", 503: "not_ready"}.get(
                        status, "refused"
                    )
                api.stats.refuse(route, reason)
                body = json.dumps({"error": str(err)}).encode()
                self._answer(route, status, body)

            def _answer(self, route: str, status: int, answer: bytes | Page) -> None:
                body = answer.body if isinstance(answer, Page) else answer
                gzipped = (
                    len(body) >= GZIP_MIN_BYTES
                    and "gzip" in self.headers.get("Accept-Encoding", "").lower()
                )
                if gzipped:
                    body = answer.gzipped() if isinstance(answer, Page) else Page(body).gzipped()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if gzipped:
                    self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-cache")
                if self.close_connection:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                api.stats.request(route, status)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("split api %s %s", self.address_string(), format % args)

        return Handler


def _split(raw_path: str) -> tuple[str, dict[str, list[str]]]:
    """The path without `/api/` and slashes around it, and the query."""
    path, _, query = raw_path.partition("?")
    path = path.strip("/")
    path = path.removeprefix("api/") if path != "api" else ""
    return path, parse_qs(query, keep_blank_values=True, max_num_fields=100)


def _one(query: dict[str, list[str]], name: str, default: str) -> str:
    values = query.get(name)
    return values[-1] if values else default


def _since(query: dict[str, list[str]], name: str, default: int = -1) -> int:
    text = _one(query, name, "")
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"{name}: {text!r} is not a change number") from None
    if not -1 <= value < 2**63:
        raise BadRequest(f"{name}: {value} is not a change number (-1 or more)")
    return value


def _sets(query: dict[str, list[str]]) -> frozenset[str] | None:
    text = _one(query, "sets", "")
    if not text:
        return None
    names = frozenset(name.strip() for name in text.split(","))
    for name in sorted(names):
        if not FLAG_SET.fullmatch(name):
            raise BadRequest(f"sets: {name!r} is not a flag set name ({FLAG_SET.pattern})")
    return names


def _gunzip(data: bytes) -> bytes:
    """At most MAX_BODY_BYTES out of a gzip body, whatever it claims (a small bomb stays small)."""
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
    try:
        out = inflater.decompress(data, MAX_BODY_BYTES + 1)
    except zlib.error as err:
        raise BadRequest(f"the body is not gzip: {err}") from None
    if len(out) > MAX_BODY_BYTES or inflater.unconsumed_tail:
        raise _Reply(413, f"bodies are limited to {MAX_BODY_BYTES} bytes", "too_large")
    return out


def _yield_point(value: Any) -> Any:
    """Called for every JSON object decoded: a point where a lookup thread can take the GIL
    back, instead of waiting for a whole multi-megabyte body to decode."""
    return value
