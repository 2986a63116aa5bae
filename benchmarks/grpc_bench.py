"""gRPC benchmark: the sidecar against an empty handler on the same stack, TCP and Unix socket.

Run: ``python -m benchmarks.grpc_bench`` (about 4 minutes; ``--quick`` about 1 minute).

Every server runs in its own process; this process is the load generator (grpc.aio on uvloop,
one channel, N calls kept in flight, closed loop). Measured cells, for N = 1, 8, 64, on TCP
and UDS, for GetTreatment and for EvaluateBatch with 100 lookups per call:

- ``floor``: empty handlers that return a prebuilt response, on the same stack and with the
  same server options as the sidecar; what gRPC and Python cost with no work at all.
- ``fader``: the real sidecar (``sidecar.app.sidecar.Sidecar``: grpc.aio on uvloop, metrics
  on) on the demo snapshot.
- ``fader-bare``: the same without the per-method gRPC metrics, to price them.
- Unless ``--quick`` or ``--stacks aio``, the floor and the sidecar's lookups are measured
  again on the thread-pool server, ``grpc.server(ThreadPoolExecutor(--workers))``, the other
  candidate stack.

QPS and latency are measured in the client; server CPU per call comes from /proc. On a
2-core machine client and server share the cores, so read QPS as a limit of the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import uvloop
from fader.pb.fader.v1 import evaluation_pb2 as pb
from fader.pb.fader.v1 import evaluation_pb2_grpc as pb_grpc

from benchmarks import processes
from sidecar.api.fader_v1 import Lookups
from sidecar.app.sidecar import Sidecar, server_options
from sidecar.config import Address, Settings
from sidecar.core import Core
from sidecar.core.evaluator import Evaluator
from sidecar.core.events import EventQueue
from sidecar.core.refusals import Refusal
from sidecar.delivery.store import Store
from sidecar.sources.initial import demo_snapshot
from sidecar.telemetry.metrics import Metrics

REPO = Path(__file__).resolve().parent.parent
SERVICE = "fader.v1.EvaluationService"
CONCURRENCY = (1, 8, 64)
BATCH = 100
DEMO_FLAGS = ("new-checkout", "kill-switch-demo", "beta-banner", "pricing-tier", "ui-theme")


def lookup_request() -> pb.GetTreatmentRequest:
    """About the size of the floor note's request: a flag, a key and 3 attributes."""
    return pb.GetTreatmentRequest(
        key="user-1",
        flag="new-checkout",
        attributes={
            "plan": pb.AttributeValue(string_value="pro"),
            "age": pb.AttributeValue(int_value=30),
            "country": pb.AttributeValue(string_value="fr"),
        },
    )


def batch_request() -> pb.EvaluateBatchRequest:
    items = []
    for i in range(BATCH):
        flag = DEMO_FLAGS[i % len(DEMO_FLAGS)]
        attributes = (
            {"plan": pb.AttributeValue(string_value="pro"), "age": pb.AttributeValue(int_value=i)}
            if flag == "pricing-tier"
            else None
        )
        items.append(pb.BatchItem(key=f"user-{i}", flag=flag, attributes=attributes))
    return pb.EvaluateBatchRequest(items=items)


# ---------------------------------------------------------------- servers (child process)


def settings_for(uds: Path) -> Settings:
    return Settings(
        grpc_listen=Address("127.0.0.1", 0),
        uds=uds,
        mgmt_listen=None,
        demo=True,
        sync_listen=None,
        ofrep_listen=None,
    )


def handlers(get_treatment: Any, evaluate_batch: Any) -> dict[str, grpc.RpcMethodHandler]:
    return {
        "GetTreatment": grpc.unary_unary_rpc_method_handler(
            get_treatment,
            request_deserializer=pb.GetTreatmentRequest.FromString,
            response_serializer=pb.GetTreatmentResponse.SerializeToString,
        ),
        "EvaluateBatch": grpc.unary_unary_rpc_method_handler(
            evaluate_batch,
            request_deserializer=pb.EvaluateBatchRequest.FromString,
            response_serializer=pb.EvaluateBatchResponse.SerializeToString,
        ),
    }


def floor_handlers(is_async: bool) -> dict[str, grpc.RpcMethodHandler]:
    """Empty handlers: parse the request, return a prebuilt response."""
    lookup = pb.GetTreatmentResponse(
        evaluation=pb.Evaluation(flag="new-checkout", treatment="on", label="default rule"),
        version=1,
    )
    batch = pb.EvaluateBatchResponse(
        evaluations=[pb.Evaluation(flag="f", treatment="on", label="default rule")] * BATCH,
        version=1,
    )

    def constant(response: Any) -> Callable[[Any, Any], Any]:
        if is_async:

            async def answer_async(_request: Any, _context: Any) -> Any:
                return response

            return answer_async

        def answer(_request: Any, _context: Any) -> Any:
            return response

        return answer

    return handlers(constant(lookup), constant(batch))


def sync_lookup_handlers(lookups: Lookups) -> dict[str, grpc.RpcMethodHandler]:
    """The sidecar's lookups on the thread-pool server (for the stack comparison only)."""

    def answer(lookup: Callable[[Any], Any]) -> Callable[[Any, Any], Any]:
        def handle(request: Any, context: Any) -> Any:
            try:
                return lookup(request)
            except Refusal as err:
                context.abort(grpc.StatusCode[err.code], str(err))

        return handle

    return handlers(answer(lookups.get_treatment), answer(lookups.evaluate_batch))


def demo_store(settings: Settings) -> Store:
    store = Store()
    store.swap(demo_snapshot())
    return store


def demo_lookups(settings: Settings) -> Lookups:
    store = demo_store(settings)
    metrics = Metrics(lambda: store.current)
    evaluator = Evaluator(store, metrics)
    return Lookups(Core.build(evaluator, settings.request_limits(), EventQueue(metrics, None)))


def serve_child(kind: str, stack: str, uds: Path, workers: int) -> None:
    """Starts one server, prints READY with its TCP port, runs until SIGTERM."""
    settings = settings_for(uds)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # for sigwait, in every thread
    if stack == "sync":
        serve_sync(kind, settings, workers)
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve_aio(kind, settings))


async def serve_aio(kind: str, settings: Settings) -> None:
    """`fader` and `fader-bare` are the real sidecar; `floor` has the same server options."""
    if kind != "floor":
        sidecar = Sidecar(settings, demo_store(settings), instrumented=kind == "fader")
        await sidecar.start()
        assert sidecar.grpc_address is not None
        announce(sidecar.grpc_address.port)
        await asyncio.to_thread(signal.sigwait, {signal.SIGTERM})
        await sidecar.stop(0)
        return
    server = grpc.aio.server(
        options=server_options(settings), maximum_concurrent_rpcs=settings.max_concurrent_rpcs
    )
    methods = floor_handlers(True)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.add_insecure_port(f"unix:{settings.uds}")
    await server.start()
    announce(port)
    await asyncio.to_thread(signal.sigwait, {signal.SIGTERM})
    await server.stop(0)


def serve_sync(kind: str, settings: Settings, workers: int) -> None:
    """The thread-pool server, for the stack comparison: the floor, and the sidecar's lookups
    without gRPC metrics (compare with the aio `fader-bare`)."""
    server = grpc.server(
        ThreadPoolExecutor(max_workers=workers),
        options=server_options(settings),
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
    )
    methods = (
        floor_handlers(False) if kind == "floor" else sync_lookup_handlers(demo_lookups(settings))
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.add_insecure_port(f"unix:{settings.uds}")
    server.start()
    announce(port)
    signal.sigwait({signal.SIGTERM})
    server.stop(0)


def announce(port: int) -> None:
    print(f"READY {port}", flush=True)


# ---------------------------------------------------------------- load (this process)


@dataclass
class Cell:
    stack: str
    kind: str
    method: str
    transport: str
    in_flight: int
    calls: int
    qps: float
    p50_us: float
    p99_us: float
    server_cpu_us_per_call: float
    evaluations_per_s: float
    ratio_to_floor: float | None


class ServerProcess:
    def __init__(self, kind: str, stack: str, workdir: Path, workers: int) -> None:
        self.uds = workdir / f"{stack}-{kind}.sock"
        command = [sys.executable, "-m", "benchmarks.grpc_bench", "serve", kind, stack]
        command += [str(self.uds), str(workers)]
        env = processes.child_env()
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, text=True, cwd=REPO, env=env
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"{kind}/{stack} server did not start: {line!r}")
        self.tcp = f"127.0.0.1:{line.split()[1]}"

    def target(self, transport: str) -> str:
        return self.tcp if transport == "tcp" else f"unix://{self.uds}"

    def cpu_seconds(self) -> float:
        return processes.cpu_seconds(self.process.pid)

    def stop(self) -> None:
        processes.stop(self.process)


class Load:
    """The load generator: one channel per server and transport, kept for the whole run so
    that every measurement starts on a warm connection."""

    def __init__(self) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}

    def stub(self, target: str) -> pb_grpc.EvaluationServiceStub:
        if target not in self._channels:
            self._channels[target] = grpc.aio.insecure_channel(target)
        return pb_grpc.EvaluationServiceStub(self._channels[target])

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()

    async def measure(
        self,
        server: ServerProcess,
        transport: str,
        method: str,
        in_flight: int,
        warmup: float,
        window: float,
    ) -> tuple[int, list[int], float]:
        """Closed loop, `in_flight` calls at a time. Returns calls, latencies (ns), CPU s."""
        stub = self.stub(server.target(transport))
        call: Callable[[], Awaitable[Any]]
        if method == "GetTreatment":
            request = lookup_request()
            call = lambda: stub.GetTreatment(request, timeout=10)  # noqa: E731
        else:
            batch = batch_request()
            call = lambda: stub.EvaluateBatch(batch, timeout=10)  # noqa: E731
        latencies, elapsed, cpu = await processes.closed_loop(
            call, in_flight, warmup, window, server.cpu_seconds
        )
        return len(latencies), latencies, cpu * window / elapsed


def percentile(sorted_ns: list[int], fraction: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(fraction * len(sorted_ns)))] / 1000


async def measure_cell(
    load: Load,
    server: ServerProcess,
    stack: str,
    kind: str,
    method: str,
    transport: str,
    in_flight: int,
    args: argparse.Namespace,
) -> Cell:
    calls, latencies, cpu = await load.measure(
        server, transport, method, in_flight, args.warmup, args.seconds
    )
    latencies.sort()
    qps = calls / args.seconds
    per_call = BATCH if method == "EvaluateBatch" else 1
    return Cell(
        stack,
        kind,
        method,
        transport,
        in_flight,
        calls,
        round(qps, 1),
        percentile(latencies, 0.50),
        percentile(latencies, 0.99),
        round(cpu / max(calls, 1) * 1e6, 1),
        round(qps * per_call, 1),
        None,
    )


def format_cell(c: Cell) -> str:
    return (
        f"{c.stack:5} {c.kind:10} {c.method:13} {c.transport:3} N={c.in_flight:<3} "
        f"{c.qps:>9,.0f} calls/s  p50 {c.p50_us:>8,.0f} µs  p99 {c.p99_us:>8,.0f} µs  "
        f"server CPU {c.server_cpu_us_per_call:>6,.0f} µs/call"
        + (f"  {c.evaluations_per_s:>9,.0f} evaluations/s" if c.method == "EvaluateBatch" else "")
    )


# Per stack: the servers to start, and which of them each method is measured on.
KINDS = {"aio": ("floor", "fader", "fader-bare"), "sync": ("floor", "fader-bare")}
METHOD_KINDS = {
    "GetTreatment": ("floor", "fader", "fader-bare"),
    "EvaluateBatch": ("floor", "fader", "fader-bare"),
}


async def run_all(args: argparse.Namespace, workdir: Path) -> list[Cell]:
    """All servers of a stack run at once (idle ones cost nothing). For each cell the kinds
    are measured back to back in short rounds, in alternating order, so that background load
    drifting on a shared machine hits the floor and the sidecar alike. A cell reports its
    median round, and its ratio to the floor is the median of the per-round paired ratios."""
    cells: list[Cell] = []
    load = Load()
    for stack in args.stacks:
        servers = {kind: ServerProcess(kind, stack, workdir, args.workers) for kind in KINDS[stack]}
        kinds = [kind for kind in KINDS[stack]]
        try:
            for method in args.methods:
                for transport in ("tcp", "uds"):
                    for in_flight in args.in_flight:
                        rounds: dict[str, list[Cell]] = {kind: [] for kind in kinds}
                        for number in range(args.rounds):
                            for kind in kinds if number % 2 == 0 else kinds[::-1]:
                                rounds[kind].append(
                                    await measure_cell(
                                        load,
                                        servers[kind],
                                        stack,
                                        kind,
                                        method,
                                        transport,
                                        in_flight,
                                        args,
                                    )
                                )
                        cells += medians(rounds)
        finally:
            await load.close()
            for server in servers.values():
                server.stop()
    return cells


def medians(rounds: dict[str, list[Cell]]) -> list[Cell]:
    cells = []
    for kind, measured in rounds.items():
        median = sorted(measured, key=lambda c: c.qps)[len(measured) // 2]
        if kind != "floor":
            paired = sorted(
                real.qps / floor.qps for real, floor in zip(measured, rounds["floor"], strict=True)
            )
            median.ratio_to_floor = round(paired[len(paired) // 2], 3)
        print(format_cell(median), flush=True)
        cells.append(median)
    return cells


def summary(cells: list[Cell]) -> list[str]:
    """GetTreatment / floor per stack, transport and N; batch evaluations per second."""
    index = {(c.stack, c.kind, c.method, c.transport, c.in_flight): c for c in cells}
    lines = []
    for method in ("GetTreatment", "EvaluateBatch"):
        target = "0.90" if method == "GetTreatment" else "0.70 at N=8 and 64"
        lines += ["", f"{method} / floor (QPS ratio; target >= {target}):"]
        for stack, kind in (("aio", "fader"), ("aio", "fader-bare"), ("sync", "fader-bare")):
            for transport in ("tcp", "uds"):
                ratios = []
                for n in sorted({c.in_flight for c in cells}):
                    real = index.get((stack, kind, method, transport, n))
                    if real and real.ratio_to_floor is not None:
                        ratios.append(f"N={n}: {real.ratio_to_floor:.2f}")
                if ratios:
                    lines.append(f"  {stack:5} {kind:10} {transport}: " + "  ".join(ratios))
    real_batches = [c for c in cells if c.method == "EvaluateBatch" and c.kind == "fader"]
    best = max(real_batches, key=lambda c: c.evaluations_per_s, default=None)
    if best:
        lines.append(
            f"EvaluateBatch best: {best.evaluations_per_s:,.0f} evaluations/s "
            f"({best.stack} {best.transport} N={best.in_flight}; target >= 150,000)"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        serve_child(argv[1], argv[2], Path(argv[3]), int(argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="short windows, the sidecar's stack only"
    )
    parser.add_argument("--seconds", type=float, default=0.6, help="measured window per round")
    parser.add_argument("--warmup", type=float, default=0.2)
    parser.add_argument("--stacks", default="aio,sync", help="aio (the sidecar's), sync or both")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per cell (median kept)")
    parser.add_argument(
        "--workers", type=int, default=4, help="thread-pool server workers (stack comparison)"
    )
    parser.add_argument(
        "--methods", default=",".join(METHOD_KINDS), help="GetTreatment, EvaluateBatch or both"
    )
    parser.add_argument(
        "--busy-cores",
        type=int,
        default=0,
        help="run this many busy-loop processes meanwhile, like an application sharing the cores",
    )
    parser.add_argument("--json", type=Path, help="also write every cell to this file")
    args = parser.parse_args(argv)
    args.stacks = ("aio",) if args.quick else tuple(args.stacks.split(","))
    if args.quick:
        args.seconds, args.warmup, args.rounds = 0.4, 0.1, 3
    args.methods = tuple(args.methods.split(","))
    args.in_flight = CONCURRENCY
    print(
        f"grpcio {grpc.__version__}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
        f"{args.seconds:g} s per cell after {args.warmup:g} s warm-up, median of "
        f"{args.rounds} round(s); {args.busy_cores} busy core(s) added; "
        f"load average before {os.getloadavg()[0]:.2f}"
    )
    workdir = Path(tempfile.mkdtemp(prefix="fbench", dir="/tmp"))
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy_cores)
    ]
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            cells = runner.run(run_all(args, workdir))
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(summary(cells)))
    if args.json:
        args.json.write_text(json.dumps([asdict(c) for c in cells], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
