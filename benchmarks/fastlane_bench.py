"""Fast lane against gRPC: the same lookups on the same sidecar, both on Unix sockets.

Run: ``python -m benchmarks.fastlane_bench`` (about 30 s).

One child process runs the real sidecar (``Sidecar``: grpc.aio on uvloop, metrics on, demo
snapshot) with gRPC on one Unix socket and the fast lane on another. This process is the load
generator, on uvloop: N lookups kept in flight, closed loop, for N = 1 and 64. gRPC is driven
through a bare stub (the cheapest gRPC client), the fast lane through the Python client's
transport (``fader._lane.AsyncLane``: one pipelined connection). The request is grpc_bench's
lookup: a flag, a key and 3 attributes. The two lanes are measured in alternating rounds and
each cell reports its median round, so drifting background load hits both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import uvloop
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


@dataclass
class Cell:
    lane: str
    in_flight: int
    qps: float
    p50_us: float
    p99_us: float
    server_cpu_us_per_call: float


class Server:
    def __init__(self, workdir: Path) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO), str(REPO / "clients" / "python"), env.get("PYTHONPATH", "")]
        )
        command = [sys.executable, "-m", "benchmarks.fastlane_bench", "serve", str(workdir)]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, text=True, cwd=REPO, env=env
        )
        assert self.process.stdout is not None
        if not self.process.stdout.readline().startswith("READY"):
            raise RuntimeError("the sidecar did not start")

    def cpu_seconds(self) -> float:
        return processes.cpu_seconds(self.process.pid)

    def stop(self) -> None:
        processes.stop(self.process)


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
    if argv[:1] == ["serve"]:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(Path(argv[1])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="measured window per round")
    parser.add_argument("--warmup", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per cell (median kept)")
    args = parser.parse_args(argv)
    print(
        f"grpcio {grpc.__version__}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
        f"{args.seconds:g} s per round after {args.warmup:g} s warm-up, median of "
        f"{args.rounds}; load average before {os.getloadavg()[0]:.2f}"
    )
    workdir = Path(tempfile.mkdtemp(prefix="flbench", dir="/tmp"))
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            cells = runner.run(run_all(args, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(summary(cells)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
