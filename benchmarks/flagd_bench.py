"""flagd dialect: evaluation cost in process, and OFREP against the gRPC lane.

    python -m benchmarks.flagd_bench

1. **In process**: microseconds per evaluation of the flagd testbed's flags (a static flag, a
   targeting rule through `$ref`, `fractional`): Fader's typed resolve over its compiled rules
   (`fader.flagd.resolve.Resolver`, fractional v2 and v3) against `openfeature-flagd-core`
   2.0.0's Python evaluator, which interprets the JsonLogic on every call (fractional v3), in
   the same run. Both answer a typed resolve (value checked against the type asked for,
   variant, reason, metadata), each in its own result type.
2. **Over the network**: a sidecar in a child process serving the same flags; single-flag
   requests per second and server CPU per request for OFREP (`POST
   /ofrep/v1/evaluate/flags/{key}`, HTTP/1.1 keep-alive) against flagd's gRPC lane
   (`flagd.evaluation.v2.Service/ResolveString`), same flag, same context, 8 in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

import grpc
from fader.flagd.resolve import Resolution, Resolver
from fader.pb.flagd.evaluation.v2 import evaluation_pb2 as v2
from fader.pb.flagd.evaluation.v2 import evaluation_pb2_grpc as v2_grpc
from fader.snapshot.loader import build_snapshot
from openfeature.contrib.tools.flagd.core import FlagdCore
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import FlagResolutionDetails

from benchmarks.processes import callgrind_module, closed_loop, cpu_seconds, stop
from tests.integration.harness import free_port, serve_env
from tests.vectors import flagd_vector

REPO = Path(__file__).resolve().parent.parent
# (name, flag, flagd type, context): the flagd testbed's flags
CASES: tuple[tuple[str, str, str, dict[str, Any]], ...] = (
    ("static", "boolean-flag", "boolean", {}),
    ("targeting ($ref)", "some-email-targeted-flag", "string", {"email": "ballmer@macrosoft.com"}),
    ("fractional", "fractional-flag", "string", {"user": {"name": "jack"}}),
)
DEFAULTS: dict[str, Any] = {"boolean": False, "string": "x"}
ROUNDS, FADER_LOOPS, REFERENCE_LOOPS = 15, 20_000, 2_000
INSTRUCTION_RUNS = (200, 2_200)
CACHE = str(Path(tempfile.gettempdir()) / "fader-flagd-bench-pycache")
IN_FLIGHT = 8
WARMUP, WINDOW = 1.0, 5.0

# A side's typed resolve and its arguments (flag key, default, context): the loop calls it
# as an application does, with no closure around it (whose ~0.035 us is neither side's).
Resolve = tuple[Callable[[str, Any, Any], Any], str, Any, Any]


def testkit(generation: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(flagd_vector("evaluator/flags/testkit-flags.json").read_text())
    doc["fractional"] = generation
    return doc


def fader_resolve(snap: Any, flag: str, kind: str, context: dict[str, Any]) -> Resolve:
    """Fader's typed resolve (`fader.flagd.resolve.Resolver`): the value checked against
    the type asked for, the variant, flagd's reason and the flag's metadata."""
    data = {**context, "targetingKey": "user-1"}
    return Resolver(snap).for_kind(kind), flag, DEFAULTS[kind], data


def reference_resolve(core: FlagdCore, flag: str, kind: str, context: dict[str, Any]) -> Resolve:
    """openfeature-flagd-core's typed resolve of the same flag and context."""
    ctx = EvaluationContext("user-1", context)
    resolve = core.resolve_boolean_value if kind == "boolean" else core.resolve_string_value
    return resolve, flag, DEFAULTS[kind], ctx


def same_answer(fader: Resolution, reference: FlagResolutionDetails[Any]) -> bool:
    """Both sides answer the same value, variant and reason (checked once per case, out
    of the timed loops: each side is timed returning its own result type)."""
    ours = (fader.value, fader.variant, fader.reason)
    return ours == (reference.value, reference.variant, str(reference.reason))


def answer(call: Resolve) -> Any:
    resolve, flag, default, context = call
    return resolve(flag, default, context)


def cpu_per_call(call: Resolve, loops: int) -> float:
    """CPU microseconds per call over `loops` calls (process time: the other work on a
    shared machine slows it less than the wall clock)."""
    resolve, flag, default, context = call
    start = time.process_time_ns()
    for _ in range(loops):
        resolve(flag, default, context)
    return (time.process_time_ns() - start) / loops / 1e3


def in_process() -> list[tuple[str, float, float, float, float]]:
    """Per case: medians over the rounds of µs per call (Fader v2, Fader v3, flagd-core)
    and of the per-round ratio flagd-core / Fader v3 (both timed in the same round)."""
    snaps = {g: build_snapshot(testkit(g)) for g in ("v2", "v3")}
    core = FlagdCore()
    core.set_flags(json.dumps(testkit("v3")))
    rows = []
    for name, flag, kind, context in CASES:
        v2_call, v3_call = (fader_resolve(snaps[g], flag, kind, context) for g in ("v2", "v3"))
        reference = reference_resolve(core, flag, kind, context)
        fader_answer, reference_answer = answer(v3_call), answer(reference)
        assert same_answer(fader_answer, reference_answer), (fader_answer, reference_answer)
        samples: list[tuple[float, float, float, float]] = []
        for _ in range(ROUNDS):
            v2_us = cpu_per_call(v2_call, FADER_LOOPS)
            v3_us = cpu_per_call(v3_call, FADER_LOOPS)
            reference_us = cpu_per_call(reference, REFERENCE_LOOPS)
            samples.append((v2_us, v3_us, reference_us, reference_us / v3_us))
        v2_us, v3_us, reference_us, ratio = (
            median(column) for column in zip(*samples, strict=True)
        )
        rows.append((name, v2_us, v3_us, reference_us, ratio))
    return rows


class Sidecar:
    """`fader serve` on the testbed's flags, with OFREP and gRPC on free loopback ports."""

    def __init__(self, workdir: Path) -> None:
        path = workdir / "flags.json"
        path.write_text(json.dumps(testkit("v2")))
        self.grpc_port, self.ofrep_port = free_port(), free_port()
        args = [
            "serve",
            "--snapshot",
            str(path),
            "--grpc-listen",
            f"127.0.0.1:{self.grpc_port}",
            "--ofrep-listen",
            f"127.0.0.1:{self.ofrep_port}",
            "--mgmt-listen",
            "off",
            "--sync-listen",
            "off",
            "--log-level",
            "warning",
        ]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sidecar", *args], cwd=REPO, env=serve_env(), text=True
        )
        with grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)


OFREP_BODY = json.dumps({"context": {"targetingKey": "user-1", "user": {"name": "jack"}}}).encode()


async def ofrep_rate(sidecar: Sidecar) -> tuple[float, float]:
    """Requests/s and server CPU µs per request, OFREP single flag, keep-alive connections."""
    request = (
        b"POST /ofrep/v1/evaluate/flags/fractional-flag HTTP/1.1\r\nHost: bench\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
        + str(len(OFREP_BODY)).encode()
        + b"\r\n\r\n"
        + OFREP_BODY
    )
    connections = [
        await asyncio.open_connection("127.0.0.1", sidecar.ofrep_port) for _ in range(IN_FLIGHT)
    ]
    free = list(connections)

    async def call() -> None:
        reader, writer = free.pop()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        body = await reader.readexactly(length)
        assert b'"hearts"' in body, body
        free.append((reader, writer))

    latencies, elapsed, cpu = await closed_loop(call, IN_FLIGHT, WARMUP, WINDOW, sidecar.cpu)
    for _, writer in connections:
        writer.close()
    return len(latencies) / elapsed, cpu / len(latencies) * 1e6


async def grpc_rate(sidecar: Sidecar) -> tuple[float, float]:
    """Requests/s and server CPU µs per request, flagd v2 ResolveString on one channel."""
    request = v2.ResolveStringRequest(flag_key="fractional-flag")
    request.context.update({"targetingKey": "user-1", "user": {"name": "jack"}})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}") as channel:
        stub = v2_grpc.ServiceStub(channel)

        async def call() -> None:
            response = await stub.ResolveString(request)
            assert response.value == "hearts"

        latencies, elapsed, cpu = await closed_loop(call, IN_FLIGHT, WARMUP, WINDOW, sidecar.cpu)
    return len(latencies) / elapsed, cpu / len(latencies) * 1e6


def network() -> dict[str, tuple[float, float]]:
    with tempfile.TemporaryDirectory(prefix="flagd-bench-") as tmp:
        sidecar = Sidecar(Path(tmp))
        try:
            return {
                "OFREP single flag": asyncio.run(ofrep_rate(sidecar)),
                "gRPC flagd.evaluation.v2 ResolveString": asyncio.run(grpc_rate(sidecar)),
            }
        finally:
            stop(sidecar.process)


def resolver(side: str, case: str) -> Resolve:
    """One side's resolve of one case (by name), set up from scratch."""
    ((flag, kind, context),) = [(f, k, c) for name, f, k, c in CASES if name == case]
    if side == "flagd-core":
        core = FlagdCore()
        core.set_flags(json.dumps(testkit("v3")))
        return reference_resolve(core, flag, kind, context)
    return fader_resolve(build_snapshot(testkit(side)), flag, kind, context)


def instructions(side: str, case: str, count: int) -> int:
    """Instructions callgrind counts in a child process resolving `count` times."""
    # a fixed hash seed and a private bytecode cache: both runs execute the same instructions
    # (other work on the tree recompiling modules would otherwise land in one of them)
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPYCACHEPREFIX": CACHE}
    args = ["--run", side, case, str(count)]
    return callgrind_module("benchmarks.flagd_bench", args, env=env, cwd=REPO)


def per_call_instructions(side: str, case: str) -> int:
    """The difference of two runs of different lengths: start-up and imports cancel out."""
    low, high = INSTRUCTION_RUNS
    instructions(side, case, 1)  # fills the bytecode cache
    return (instructions(side, case, high) - instructions(side, case, low)) // (high - low)


def print_instructions() -> None:
    print("## In process: instructions per resolve (callgrind)")
    print(
        "| flag | Fader, fractional v2 | Fader, fractional v3 | flagd-core | flagd-core / Fader |"
    )
    print("|---|---|---|---|---|")
    for name, *_ in CASES:
        v2_count, v3_count, reference = (
            per_call_instructions(side, name) for side in ("v2", "v3", "flagd-core")
        )
        ratio = reference / v3_count
        print(f"| {name} | {v2_count:,} | {v3_count:,} | {reference:,} | {ratio:.1f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-process", action="store_true", help="skip the network part")
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions (valgrind) instead"
    )
    parser.add_argument("--run", nargs=3, metavar=("SIDE", "CASE", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        resolve, flag, default, context = resolver(args.run[0], args.run[1])
        for _ in range(int(args.run[2])):
            resolve(flag, default, context)
        return
    if args.instructions:
        print_instructions()
        return
    in_process_only = args.in_process
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print(f"## In process: CPU µs per resolve, median of {ROUNDS} rounds")
    print(
        "| flag | Fader, fractional v2 | Fader, fractional v3 | flagd-core | flagd-core / Fader |"
    )
    print("|---|---|---|---|---|")
    for name, fader_v2, fader_v3, reference, ratio in in_process():
        print(f"| {name} | {fader_v2:.3f} | {fader_v3:.3f} | {reference:.2f} | {ratio:.1f}x |")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if in_process_only:
        return
    print()
    print(f"## Over loopback: {IN_FLIGHT} in flight, {WINDOW:.0f} s window")
    print("| lane | requests/s | server CPU µs/request |")
    print("|---|---|---|")
    for lane, (rate, cpu) in network().items():
        print(f"| {lane} | {rate:,.0f} | {cpu:.0f} |")


if __name__ == "__main__":
    main()
