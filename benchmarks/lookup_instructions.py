"""Instructions per lookup on the lanes' in-process path, counted by callgrind.

Wall-clock benchmarks on a shared 2-core machine move by 20-50 % with the load; callgrind
counts instructions, which do not. This measures what a code change to the lanes or the
evaluation core costs: each fader.v1 and fast-lane lookup kind is run N1 and N2 times under
`valgrind --tool=callgrind`, and the difference divided by N2 - N1 is the cost of one call
(start-up and imports cancel out). No gRPC, no sockets: the translation and evaluation only.

    python -m benchmarks.lookup_instructions          # needs valgrind (Debian's package)
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections.abc import Callable

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
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "benchmarks.lookup_instructions",
        "--run",
        lane,
        kind,
        str(count),
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stderr
    match = re.search(r"Collected : (\d+)", output)
    if match is None:
        raise RuntimeError(f"no callgrind total in:\n{output}")
    return int(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", nargs=3, metavar=("LANE", "KIND", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        workload(args.run[0], args.run[1], int(args.run[2]))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
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
