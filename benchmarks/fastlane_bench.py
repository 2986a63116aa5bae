"""Fast lane against gRPC: the same lookups on the same sidecar, both on Unix sockets.

Run: ``python -m benchmarks.fastlane_bench`` (about 30 s).

One child process runs the real sidecar (``Sidecar``: grpc.aio on uvloop, metrics on, demo
snapshot) with gRPC on one Unix socket and the fast lane on another. This process is the load
generator, on uvloop: N lookups kept in flight, closed loop, for N = 1 and 64. gRPC is driven
through a bare stub (the cheapest gRPC client), the fast lane through the Python client's
transport (``fader._lane.AsyncLane``: one pipelined connection). The request is grpc_bench's
lookup: a flag, a key and 3 attributes. The two lanes are measured in alternating rounds and
each cell reports its median round, so drifting background load hits both alike.

Then one call in flight the way a request handler makes it: `fader.Client("fastlane://…")`
(blocking socket) calling get_treatment, against its floor measured in the same run: a bare
two-process msgpack ping-pong over the same kind of socket (a uvloop protocol in a child
process that decodes each 4-byte-length-prefixed map and answers a map of the response's
shape; a blocking client that encodes, sends, receives and decodes, nothing else). Short
windows alternate between the two; the ratio is the median of the per-window ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import msgpack
import uvloop
from fader import Client
from fader._lane import AsyncLane
from fader.pb.fader.v1 import evaluation_pb2_grpc as pb_grpc

from benchmarks import processes
from benchmarks.grpc_bench import announce, demo_store, lookup_request, percentile
from sidecar.app.sidecar import Sidecar
from sidecar.config import Settings

REPO = Path(__file__).resolve().parent.parent
IN_FLIGHT = (1, 64)
LANES = ("grpc", "fastlane")


def lookup_map() -> dict[str, Any]:
    """`lookup_request()` as a fast-lane request."""
    return {
        "op": "treatment",
        "key": "user-1",
        "flag": "new-checkout",
        "attributes": {"plan": "pro", "age": 30, "country": "fr"},
    }


async def serve(workdir: Path) -> None:
    settings = Settings(
        grpc_listen=None,
        uds=workdir / "grpc.sock",
        fastlane_uds=workdir / "fastlane.sock",
        mgmt_listen=None,
        sync_listen=None,
        ofrep_listen=None,
        demo=True,
    )
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    sidecar = Sidecar(settings, demo_store(settings))
    await sidecar.start()
    announce(0)
    await asyncio.to_thread(signal.sigwait, {signal.SIGTERM})
    await sidecar.stop(0)


class FloorProtocol(asyncio.Protocol):
    """The floor's server: frames in, each decoded and answered with a map shaped like the
    sidecar's answer; no validation, no evaluation, no metrics."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer, out = self._buffer, []
        buffer += data
        while len(buffer) >= 4:
            size = int.from_bytes(buffer[:4], "big")
            if len(buffer) < 4 + size:
                break
            request = msgpack.unpackb(bytes(buffer[4 : 4 + size]))
            del buffer[: 4 + size]
            body = msgpack.packb({**FLOOR_ANSWER, "id": request["id"]})
            out.append(len(body).to_bytes(4, "big") + body)
        assert self._transport is not None
        self._transport.write(b"".join(out))


FLOOR_ANSWER = {
    "version": 1,
    "flag": "new-checkout",
    "treatment": "on",
    "label": "default rule",
    "config": '{"color":"green"}',
    "change_number": 3,
}


async def serve_floor(path: Path) -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    server = await asyncio.get_running_loop().create_unix_server(FloorProtocol, str(path))
    announce(0)
    await asyncio.to_thread(signal.sigwait, {signal.SIGTERM})
    server.close()


def ping_pong(path: Path, seconds: float) -> float:
    """The floor's client: round trips per second, one at a time, blocking socket."""
    request = lookup_map()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        calls, end = 0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            request["id"] = calls
            body = msgpack.packb(request)
            sock.sendall(len(body).to_bytes(4, "big") + body)
            msgpack.unpackb(sock.recv(65536)[4:])
            calls += 1
    return calls / seconds


def client_calls(client: Client, seconds: float) -> float:
    """get_treatment round trips per second through the sync client on the fast lane."""
    attributes = lookup_map()["attributes"]
    calls, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        client.get_treatment("user-1", "new-checkout", attributes)
        calls += 1
    return calls / seconds


def one_in_flight(args: argparse.Namespace, workdir: Path) -> list[str]:
    """The sync client at one call in flight against the bare ping-pong floor."""
    floor = Child(["floor", str(workdir / "floor.sock")])
    server = Server(workdir)
    rates: dict[str, list[float]] = {"floor": [], "client": []}
    ratios = []
    try:
        with Client(f"fastlane://{workdir / 'fastlane.sock'}", timeout=10.0) as client:
            client_calls(client, args.warmup)
            for _ in range(args.pairs):
                rates["floor"].append(ping_pong(workdir / "floor.sock", args.window))
                rates["client"].append(client_calls(client, args.window))
                ratios.append(rates["client"][-1] / rates["floor"][-1])
            assert client.fallback_count == 0
    finally:
        server.stop()
        floor.stop()
    return [
        "",
        f"one call in flight, blocking client ({args.pairs} alternating windows of "
        f"{args.window:g} s; medians):",
        f"  floor: bare msgpack ping-pong   {statistics.median(rates['floor']):>9,.0f} calls/s",
        f"  fader.Client fast lane          {statistics.median(rates['client']):>9,.0f} calls/s",
        f"  client ÷ floor (target >= 0.7)  {statistics.median(ratios):>9.2f}",
    ]


@dataclass
class Cell:
    lane: str
    in_flight: int
    qps: float
    p50_us: float
    p99_us: float
    server_cpu_us_per_call: float


class Child:
    """This module in a child process (`serve` or `floor`), started once it says READY."""

    def __init__(self, argv: list[str]) -> None:
        env = processes.child_env()
        command = [sys.executable, "-m", "benchmarks.fastlane_bench", *argv]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, text=True, cwd=REPO, env=env
        )
        assert self.process.stdout is not None
        if not self.process.stdout.readline().startswith("READY"):
            raise RuntimeError(f"{argv[0]} did not start")

    def stop(self) -> None:
        processes.stop(self.process)


class Server(Child):
    def __init__(self, workdir: Path) -> None:
        super().__init__(["serve", str(workdir)])

    def cpu_seconds(self) -> float:
        return processes.cpu_seconds(self.process.pid)


async def measure(
    server: Server,
    lane: str,
    call: Callable[[], Awaitable[Any]],
    in_flight: int,
    args: argparse.Namespace,
) -> Cell:
    """Closed loop, `in_flight` calls at a time: QPS and latency in the client, server CPU
    from /proc."""
    latencies, elapsed, cpu = await processes.closed_loop(
        call, in_flight, args.warmup, args.seconds, server.cpu_seconds
    )
    latencies.sort()
    return Cell(
        lane,
        in_flight,
        round(len(latencies) / elapsed, 1),
        percentile(latencies, 0.50),
        percentile(latencies, 0.99),
        round(cpu / max(len(latencies), 1) * 1e6, 1),
    )


async def run_all(args: argparse.Namespace, workdir: Path) -> list[Cell]:
    server = Server(workdir)
    channel = grpc.aio.insecure_channel(f"unix://{workdir / 'grpc.sock'}")
    stub = pb_grpc.EvaluationServiceStub(channel)
    lane = AsyncLane(str(workdir / "fastlane.sock"), timeout=10.0)
    request = lookup_request()
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "grpc": lambda: stub.GetTreatment(request, timeout=10),
        "fastlane": lambda: lane.call(lookup_map()),
    }
    cells: list[Cell] = []
    try:
        for in_flight in IN_FLIGHT:
            rounds: dict[str, list[Cell]] = {name: [] for name in LANES}
            for number in range(args.rounds):
                for name in LANES if number % 2 == 0 else LANES[::-1]:
                    cell = await measure(server, name, calls[name], in_flight, args)
                    rounds[name].append(cell)
            for name in LANES:
                median = sorted(rounds[name], key=lambda c: c.qps)[len(rounds[name]) // 2]
                print(format_cell(median), flush=True)
                cells.append(median)
    finally:
        await lane.close()
        await channel.close()
        server.stop()
    return cells


def format_cell(c: Cell) -> str:
    return (
        f"{c.lane:8} N={c.in_flight:<3} {c.qps:>9,.0f} calls/s  p50 {c.p50_us:>7,.0f} µs  "
        f"p99 {c.p99_us:>7,.0f} µs  server CPU {c.server_cpu_us_per_call:>5,.1f} µs/call"
    )


def summary(cells: list[Cell]) -> list[str]:
    index = {(c.lane, c.in_flight): c for c in cells}
    lines = ["", "fastlane / gRPC (target: QPS >= 10x, lower p99):"]
    for n in IN_FLIGHT:
        fast, slow = index[("fastlane", n)], index[("grpc", n)]
        lines.append(
            f"  N={n:<3} QPS x{fast.qps / slow.qps:.1f}   p99 {fast.p99_us:,.0f} vs "
            f"{slow.p99_us:,.0f} µs   server CPU/call {fast.server_cpu_us_per_call:,.1f} vs "
            f"{slow.server_cpu_us_per_call:,.1f} µs"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["serve"], ["floor"]):
        child = serve if argv[0] == "serve" else serve_floor
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(child(Path(argv[1])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="measured window per round")
    parser.add_argument("--warmup", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per cell (median kept)")
    parser.add_argument("--pairs", type=int, default=30, help="floor/client window pairs")
    parser.add_argument("--window", type=float, default=0.3, help="seconds per window")
    parser.add_argument("--one-in-flight", action="store_true", help="only the floor section")
    args = parser.parse_args(argv)
    print(
        f"grpcio {grpc.__version__}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
        f"{args.seconds:g} s per round after {args.warmup:g} s warm-up, median of "
        f"{args.rounds}; load average before {os.getloadavg()[0]:.2f}"
    )
    workdir = Path(tempfile.mkdtemp(prefix="flbench", dir="/tmp"))
    try:
        cells = []
        if not args.one_in_flight:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                cells = runner.run(run_all(args, workdir))
        floor_lines = one_in_flight(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join((summary(cells) if cells else []) + floor_lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
