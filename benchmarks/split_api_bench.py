"""Split SDK API benchmark: `splitChanges` for a 10,000-flag snapshot, time and bytes, gzip
on and off.

Run: ``python -m benchmarks.split_api_bench``. The snapshot is snapshot_bench's (10,000 flags
with a whitelist, a segment and an attribute condition each; 100 segments of 10,000 keys).
Measured on an in-process sidecar with `--split-api-listen`, over real HTTP on loopback:

* the change log's step: from the swap to the moment SDKs can be served the snapshot
  (decode its document, serve each flag's JSON, diff segments), for the first snapshot and
  for a second one that changes 100 flags and 1,000 segment keys;
* the full page (`since=-1`, what every SDK fetches at start): the first request, which
  builds it (and gzips it when asked), then the median of 20 more;
* the delta after the second snapshot (`since=<the first one's till>`), and the page an
  up-to-date SDK gets every poll;
* baseline in the same run: the same full-page bytes served as a static body by the
  standard library's HTTP server, so the ratio says what serving them costs beyond the send.
"""

from __future__ import annotations

import copy
import gzip
import http.client
import json
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fader.snapshot.loader import load_bytes

from benchmarks.snapshot_bench import document
from sidecar.config import Address
from tests.integration.harness import LOCAL_ANY_PORT, loopback_settings, running_sidecar

ROUNDS = 20


def get(address: Address, path: str, gzipped: bool) -> tuple[float, int, bytes]:
    connection = http.client.HTTPConnection(address.host, address.port, timeout=60)
    headers = {"Accept-Encoding": "gzip"} if gzipped else {}
    started = time.perf_counter()
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - started
    connection.close()
    assert response.status == 200, (response.status, body[:200])
    return elapsed, len(body), body


def median_ms(address: Address, path: str, gzipped: bool) -> float:
    return statistics.median(get(address, path, gzipped)[0] for _ in range(ROUNDS)) * 1000


def static_server(body: bytes) -> tuple[ThreadingHTTPServer, Address]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, Address("127.0.0.1", server.server_address[1])


def main() -> None:
    first_doc = document(1)
    second_doc = copy.deepcopy(first_doc)
    second_doc["version"] = 2
    for flag in second_doc["flags"][:100]:
        flag["killed"] = True
    second_doc["segments"]["seg-0"] = [f"new-{k}" for k in range(1_000)] + second_doc["segments"][
        "seg-0"
    ][1_000:]
    first = load_bytes(json.dumps(first_doc).encode(), "json", "bench")
    second = load_bytes(json.dumps(second_doc).encode(), "json", "bench")
    rows: list[tuple[str, str, str]] = []
    settings = loopback_settings(split_api_listen=LOCAL_ANY_PORT)
    started = time.perf_counter()
    with running_sidecar(settings, first) as sidecar:
        api = sidecar.sidecar._split_api
        assert api is not None
        assert api.changes.wait_for(1, 120)
        step_first = time.perf_counter() - started
        address = sidecar.sidecar.split_api_address
        assert address is not None
        till = api.changes.current.cn if api.changes.current else -1
        full = "/api/splitChanges?s=1.3&since=-1&rbSince=-1"
        cold, plain_bytes, body = get(address, full, gzipped=False)
        rows.append(
            ("full page, first request (builds it)", f"{cold * 1000:.0f}", f"{plain_bytes:,}")
        )
        rows.append(("full page", f"{median_ms(address, full, False):.1f}", f"{plain_bytes:,}"))
        cold_gz, gz_bytes, gz_body = get(address, full, gzipped=True)
        assert gzip.decompress(gz_body) == body
        rows.append(
            ("full page, gzip, first request (gzips it)", f"{cold_gz * 1000:.0f}", f"{gz_bytes:,}")
        )
        rows.append(("full page, gzip", f"{median_ms(address, full, True):.1f}", f"{gz_bytes:,}"))
        swapped = time.perf_counter()
        sidecar.store.swap(second)
        assert api.changes.wait_for(2, 120)
        step_second = time.perf_counter() - swapped
        delta = f"/api/splitChanges?s=1.3&since={till}&rbSince={till}"
        _, delta_bytes, delta_body = get(address, delta, gzipped=False)
        assert len(json.loads(delta_body)["ff"]["d"]) == 100
        rows.append(
            (
                "delta: 100 flags changed",
                f"{median_ms(address, delta, False):.1f}",
                f"{delta_bytes:,}",
            )
        )
        current = api.changes.current.cn if api.changes.current else -1
        latest = f"/api/splitChanges?s=1.3&since={current}&rbSince={current}"
        _, latest_bytes, _ = get(address, latest, gzipped=False)
        rows.append(
            (
                "up to date (every poll)",
                f"{median_ms(address, latest, False):.2f}",
                f"{latest_bytes:,}",
            )
        )
        segment = f"/api/segmentChanges/seg-0?since={till}"
        _, segment_bytes, _ = get(address, segment, gzipped=False)
        rows.append(
            (
                "segmentChanges delta: 1,000 keys in, 1,000 out",
                f"{median_ms(address, segment, False):.1f}",
                f"{segment_bytes:,}",
            )
        )
    server, static = static_server(body)
    try:
        baseline = median_ms(static, "/", False)
    finally:
        server.shutdown()
        server.server_close()
    rows.append(("baseline: the full page's bytes, static", f"{baseline:.1f}", f"{plain_bytes:,}"))
    print(f"change log step, first snapshot (from start): {step_first:.2f} s")
    print(f"change log step, second snapshot (100 flags, 2,000 keys changed): {step_second:.2f} s")
    print(f"gzip: {plain_bytes:,} -> {gz_bytes:,} bytes ({plain_bytes / gz_bytes:.1f}x smaller)")
    print("| request | ms (median of 20) | bytes |")
    print("|---|---|---|")
    for name, ms, size in rows:
        print(f"| {name} | {ms} | {size} |")


if __name__ == "__main__":
    main()
