"""Release control benchmark: how fast a kill reaches a sidecar, and the flag store's write rate.

Run: ``python -m benchmarks.release_bench`` (about a minute). Measures:

* **Kill to sidecar**: a real ``fader controlplane`` (SQLite store) and a real ``fader serve``
  connected to it, on loopback. 50 times: ``POST /api/v1/flags/F/kill`` (what ``fader flags
  kill`` sends); from the moment that call returns, the sidecar is asked (GetTreatment on
  one open channel, back to back) until it answers the default treatment with the label
  ``killed``; then a revive, and the sidecar is waited for again before the next kill.
  Median and p99 of the 50 times. Baseline in the same run: the round trip of one
  GetTreatment on the same channel (the resolution of the measurement).
* **Store write rate**: ``FlagStore.dial`` in process, one transaction per write, on a store
  holding 1,000 flags (each write validates the whole resulting set and records the diff),
  on SQLite and, when a PostgreSQL server is installed, on PostgreSQL. Baseline in the same
  run: the same writes on a store holding 10 flags, so the ratio is what the set's size costs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from fader.pb.fader.v1 import evaluation_pb2 as pb
from fader.pb.fader.v1 import evaluation_pb2_grpc as pb_grpc

from benchmarks import processes
from sidecar.controlplane.apiclient import ApiClient, flag_path
from sidecar.controlplane.documents import parse_document
from sidecar.controlplane.store import FlagStore
from sidecar.controlplane.storedb import Database, SqliteDatabase

REPO = Path(__file__).resolve().parents[1]
FLAG = "checkout"


def flag(name: str, percent: int = 0) -> dict[str, Any]:
    return {
        "name": name,
        "trafficTypeName": "user",
        "seed": 1314120000 + len(name),
        "algo": 2,
        "status": "ACTIVE",
        "killed": False,
        "defaultTreatment": "off",
        "conditions": [
            {
                "conditionType": "ROLLOUT",
                "matcherGroup": {"combiner": "AND", "matchers": [{"matcherType": "ALL_KEYS"}]},
                "partitions": [
                    {"treatment": "on", "size": percent},
                    {"treatment": "off", "size": 100 - percent},
                ],
                "label": "default rule",
            }
        ],
    }


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


# --- kill to sidecar -----------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FADER_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "clients" / "python")])
    return env


def _wait_log(path: Path, pattern: str, process: subprocess.Popen[str]) -> re.Match[str]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = re.search(pattern, path.read_text())
        if match:
            return match
        if process.poll() is not None:
            raise RuntimeError(f"process exited:\n{path.read_text()}")
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {pattern!r}:\n{path.read_text()}")


@contextmanager
def _process(args: list[str], log: Path) -> Iterator[subprocess.Popen[str]]:
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "sidecar", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(),
            cwd=REPO,
            text=True,
        )
    try:
        yield process
    finally:
        processes.stop(process)


def kill_latency(kills: int, work: Path) -> dict[str, Any]:
    plane_args = [
        "controlplane", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
        "--data-dir", str(work / "data"),
    ]  # fmt: skip
    with _process(plane_args, work / "cp.log") as plane:
        pattern = r"control plane listening on \S+:(\d+) \(http \S+:(\d+),"
        found = _wait_log(work / "cp.log", pattern, plane)
        grpc_port, http_port = int(found.group(1)), int(found.group(2))
        api = ApiClient(f"http://127.0.0.1:{http_port}")
        api.post("/api/v1/apply", {"document": flag(FLAG, 50), "reason": "bench"})
        sidecar_args = [
            "serve", "--control-plane", f"127.0.0.1:{grpc_port}", "--grpc-listen",
            "127.0.0.1:0", "--mgmt-listen", "127.0.0.1:0", "--log-level", "info",
        ]  # fmt: skip
        with _process(sidecar_args, work / "sc.log") as sidecar:
            found = _wait_log(work / "sc.log", r"listening grpc=(\S+)", sidecar)
            with grpc.insecure_channel(found.group(1)) as channel:
                stub = pb_grpc.EvaluationServiceStub(channel)
                request = pb.GetTreatmentRequest(key="user-1", flag=FLAG)

                def label() -> str:
                    try:
                        return str(stub.GetTreatment(request, timeout=2).evaluation.label)
                    except grpc.RpcError:
                        return ""

                _until(lambda: label() == "default rule")
                round_trips = []
                for _ in range(200):
                    started = time.perf_counter()
                    label()
                    round_trips.append(time.perf_counter() - started)
                times = []
                for _ in range(kills):
                    api.post(flag_path(FLAG, "/kill"), {"reason": "bench"})
                    returned = time.perf_counter()
                    while label() != "killed":
                        pass
                    times.append(time.perf_counter() - returned)
                    api.post(flag_path(FLAG, "/revive"), {"reason": "bench"})
                    _until(lambda: label() == "default rule")
    ms = [t * 1000 for t in times]
    return {
        "kills": kills,
        "median_ms": statistics.median(ms),
        "p99_ms": percentile(ms, 0.99),
        "max_ms": max(ms),
        "baseline_get_treatment_ms": statistics.median(t * 1000 for t in round_trips),
    }


def _until(predicate: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.001)


# --- store write rate ----------------------------------------------------------------------


def write_rate(db: Database, flags: int, writes: int) -> float:
    """Dials per second on a store holding ``flags`` flags."""
    store = FlagStore(db)
    names = [f"flag-{i:04d}" for i in range(flags)]
    store.apply([parse_document([flag(name) for name in names])], author="bench", reason="load")
    started = time.perf_counter()
    for i in range(writes):
        store.dial(names[i % flags], 1 + i % 99, author="bench", reason="bench")
    elapsed = time.perf_counter() - started
    db.close()
    return writes / elapsed


def write_rates(work: Path, writes: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    results["sqlite_1000_flags_per_s"] = write_rate(SqliteDatabase(work / "w1000"), 1000, writes)
    results["sqlite_10_flags_per_s"] = write_rate(SqliteDatabase(work / "w10"), 10, writes)
    try:
        from tests.postgres import create_database, postgres_server, skip_reason
    except ImportError:
        return results
    if skip_reason() is not None:
        results["postgresql"] = f"skipped: {skip_reason()}"
        return results
    from sidecar.controlplane.postgres import PostgresDatabase

    with postgres_server() as server:
        big = PostgresDatabase(create_database(server, "w1000"))
        results["postgresql_1000_flags_per_s"] = write_rate(big, 1000, writes)
        small = PostgresDatabase(create_database(server, "w10"))
        results["postgresql_10_flags_per_s"] = write_rate(small, 10, writes)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--writes", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fader-release-bench") as tmp:
        work = Path(tmp)
        kill = kill_latency(args.kills, work)
        rates = write_rates(work, args.writes)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}"
    )
    print(
        f"kill -> sidecar answers the default ({kill['kills']} kills): "
        f"median {kill['median_ms']:.1f} ms, p99 {kill['p99_ms']:.1f} ms, max "
        f"{kill['max_ms']:.1f} ms (baseline GetTreatment round trip "
        f"{kill['baseline_get_treatment_ms']:.2f} ms)"
    )
    for key, value in rates.items():
        print(f"{key}: {value:.0f}" if isinstance(value, float) else f"{key}: {value}")
    for backend in ("sqlite", "postgresql"):
        big, small = (
            rates.get(f"{backend}_1000_flags_per_s"),
            rates.get(f"{backend}_10_flags_per_s"),
        )
        if isinstance(big, float) and isinstance(small, float):
            print(f"{backend}: 1,000 flags write at {big / small:.2f}x the rate of 10 flags")
    print(json.dumps({"kill": kill, "writes": rates}))


if __name__ == "__main__":
    main()
