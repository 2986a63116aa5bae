"""Instructions per lookup on the lanes' in-process path, counted by callgrind.

Wall-clock benchmarks on a shared 2-core machine move by 20-50 % with the load; callgrind
counts instructions, which do not. This measures what a code change to the lanes or the
evaluation core costs: each fader.v1 and fast-lane lookup kind is run N1 and N2 times under
`valgrind --tool=callgrind`, and the difference divided by N2 - N1 is the cost of one call
(start-up and imports cancel out). No gRPC, no sockets: the translation and evaluation only.

`--server` counts a whole gRPC server process instead: the real sidecar (`fader`) and the
empty-handler floor of `benchmarks.grpc_bench` each run under callgrind with counting off,
take warm-up calls, then count exactly `--calls` EvaluateBatch calls of grpc_bench's request
(100 items, 5 flags, 20 of them with two attributes) sent `--in-flight` at a time by this
process. The ratio floor / fader of server instructions per call is the throughput ratio of
a CPU-bound server, and, unlike the QPS ratio, the machine's load does not move it.

    python -m benchmarks.lookup_instructions          # needs valgrind (Debian's package)
    python -m benchmarks.lookup_instructions --server
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
from collections.abc import Callable
from pathlib import Path

from benchmarks.processes import callgrind_module, callgrind_total

RUNS = {"treatment": (200, 2200), "batch of 100": (2, 22)}
LANES = ("fader.v1", "fast lane")


def workload(lane: str, kind: str, count: int) -> None:
    """Runs one lookup kind `count` times on the demo snapshot (the child process's job)."""
    from fader.pb.fader.v1 import evaluation_pb2 as pb

    from sidecar.api.fader_v1 import Lookups
    from sidecar.api.fastlane import Handlers
    from sidecar.core import Core
    from sidecar.core.evaluator import Evaluator
    from sidecar.core.events import EventQueue
    from sidecar.delivery.store import Store
    from sidecar.limits import RequestLimits
    from sidecar.sources.initial import demo_snapshot
    from sidecar.telemetry.metrics import Metrics

    store = Store()
    store.swap(demo_snapshot())
    metrics = Metrics(lambda: store.current)
    core = Core.build(Evaluator(store, metrics), RequestLimits(), EventQueue(metrics, None))
    flags = [("new-checkout" if i % 2 else "pricing-tier") for i in range(100)]
    lookups, handlers = Lookups(core), Handlers(core)
    plan = pb.AttributeValue(string_value="pro")
    one = pb.GetTreatmentRequest(
        key="user-1",
        flag="pricing-tier",
        attributes={"plan": plan, "age": pb.AttributeValue(int_value=30)},
    )
    batch = pb.EvaluateBatchRequest(
        items=[
            pb.BatchItem(key=f"user-{i}", flag=flag, attributes={"plan": plan})
            for i, flag in enumerate(flags)
        ]
    )
    request = {"key": "user-1", "flag": "pricing-tier", "attributes": {"plan": "pro", "age": 30}}
    items = [
        {"key": f"user-{i}", "flag": flag, "attributes": {"plan": "pro"}}
        for i, flag in enumerate(flags)
    ]
    calls: dict[tuple[str, str], Callable[[], object]] = {
        ("fader.v1", "treatment"): lambda: lookups.get_treatment(one),
        ("fader.v1", "batch of 100"): lambda: lookups.evaluate_batch(batch),
        ("fast lane", "treatment"): lambda: handlers.treatment(dict(request)),
        ("fast lane", "batch of 100"): lambda: handlers.batch({"items": items}),
    }
    call = calls[lane, kind]
    for _ in range(count):
        call()


def instructions(lane: str, kind: str, count: int) -> int:
    """Instructions callgrind counts for a child process running the workload."""
    return callgrind_module("benchmarks.lookup_instructions", ["--run", lane, kind, str(count)])


def server_instructions(kind: str, calls: int, in_flight: int, warmup: int) -> int:
    """Instructions of a grpc_bench server process (`floor` or `fader`, grpc.aio on uvloop)
    while it answers `calls` EvaluateBatch calls, counted from after `warmup` calls."""
    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(repo), str(repo / "clients" / "python")])
    with tempfile.TemporaryDirectory(prefix="fader-instr-") as workdir:
        out = Path(workdir) / "callgrind.out"
        command = [
            "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
            sys.executable, "-m", "benchmarks.grpc_bench", "serve", kind, "aio",
            str(Path(workdir) / "s.sock"), "1",
        ]  # fmt: skip
        server = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=repo
        )
        assert server.stdout is not None and server.stderr is not None
        try:
            line = server.stdout.readline()
            if not line.startswith("READY"):
                raise RuntimeError(f"the {kind} server did not start: {server.stderr.read()}")
            target = f"127.0.0.1:{line.split()[1]}"

            def instrument(switch: str) -> None:
                subprocess.run(["callgrind_control", "-i", switch, str(server.pid)], check=True,
                               capture_output=True)  # fmt: skip

            asyncio.run(_batches(target, warmup, in_flight))
            instrument("on")
            asyncio.run(_batches(target, calls, in_flight))
            instrument("off")
        finally:
            server.send_signal(signal.SIGTERM)
            _, errors = server.communicate(timeout=300)
    return callgrind_total(errors)


async def _batches(target: str, calls: int, in_flight: int) -> None:
    """`calls` EvaluateBatch calls, `in_flight` at a time, on a fresh channel."""
    import grpc
    from fader.pb.fader.v1 import evaluation_pb2_grpc as pb_grpc

    from benchmarks.grpc_bench import batch_request

    request = batch_request()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.EvaluationServiceStub(channel)
        left = calls

        async def caller() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await stub.EvaluateBatch(request, timeout=120)

        await asyncio.gather(*(caller() for _ in range(in_flight)))


def server_main(calls: int, in_flight: int) -> int:
    print(f"EvaluateBatch x100 (grpc_bench's request), {calls} calls, {in_flight} in flight")
    counted = {}
    for kind in ("floor", "fader"):
        counted[kind] = server_instructions(kind, calls, in_flight, warmup=20) // calls
        print(f"{kind:6} server instructions per call {counted[kind]:>12,}", flush=True)
    print(f"floor / fader: {counted['floor'] / counted['fader']:.3f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", nargs=3, metavar=("LANE", "KIND", "COUNT"), help=argparse.SUPPRESS)
    parser.add_argument("--server", action="store_true", help="whole server processes, gRPC")
    parser.add_argument("--calls", type=int, default=200, help="--server: calls counted")
    parser.add_argument("--in-flight", type=int, default=8, help="--server: calls at a time")
    args = parser.parse_args()
    if args.run:
        workload(args.run[0], args.run[1], int(args.run[2]))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    if args.server:
        return server_main(args.calls, args.in_flight)
    print(f"{'lane':10} {'lookup':14} {'instructions per call':>22}")
    for lane in LANES:
        for kind, (low, high) in RUNS.items():
            per_call = (instructions(lane, kind, high) - instructions(lane, kind, low)) // (
                high - low
            )
            print(f"{lane:10} {kind:14} {per_call:>22,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
