"""Snapshot load benchmark: 10,000 flags and 1,000,000 segment keys.

Run: ``python -m benchmarks.snapshot_bench``. Measures, in fresh child processes:

* time to decode + validate + compile + swap the snapshot (msgpack and JSON files), with
  nothing else running: wall clock, and the process's CPU time (steadier on a shared
  machine);
* the worst lateness of lookups made once per millisecond (as requests would arrive) while
  a second copy is loaded and swapped in and the first one is freed, against the worst
  lateness of the same lookups while nothing is loading (the baseline, same run);
* the process RSS with the snapshot loaded (and before; and after it was replaced by a
  second copy and freed, which leaves the allocator's high-water mark behind).

The snapshot has 100 segments of 10,000 keys; each flag has a whitelist condition, a
segment condition with a 50/50 split and a two-attribute condition with a 10/90 split.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgpack

FLAGS = 10_000
SEGMENTS = 100
KEYS_PER_SEGMENT = 10_000


def _flag(i: int) -> dict[str, Any]:
    def matcher(matcher_type: str, attribute: str | None, **data: Any) -> dict[str, Any]:
        return {
            "keySelector": {"trafficType": "user", "attribute": attribute},
            "matcherType": matcher_type,
            "negate": False,
            **data,
        }

    def condition(
        kind: str, matchers: list[dict[str, Any]], parts: dict[str, int], label: str
    ) -> dict[str, Any]:
        return {
            "conditionType": kind,
            "matcherGroup": {"combiner": "AND", "matchers": matchers},
            "partitions": [{"treatment": t, "size": s} for t, s in parts.items()],
            "label": label,
        }

    return {
        "name": f"flag-{i}",
        "trafficTypeName": "user",
        "seed": (i * 7919) % 2**31,
        "trafficAllocation": 100,
        "trafficAllocationSeed": i,
        "algo": 2,
        "status": "ACTIVE",
        "killed": False,
        "defaultTreatment": "off",
        "changeNumber": i,
        "sets": [f"set_{i % 10}"],
        "configurations": {"on": '{"a":1}'},
        "conditions": [
            condition(
                "WHITELIST",
                [
                    matcher(
                        "WHITELIST",
                        None,
                        whitelistMatcherData={"whitelist": [f"u{j}" for j in range(5)]},
                    )
                ],
                {"on": 100},
                "whitelisted",
            ),
            condition(
                "ROLLOUT",
                [
                    matcher(
                        "IN_SEGMENT",
                        None,
                        userDefinedSegmentMatcherData={"segmentName": f"seg-{i % SEGMENTS}"},
                    )
                ],
                {"on": 50, "off": 50},
                "in segment",
            ),
            condition(
                "ROLLOUT",
                [
                    matcher("WHITELIST", "plan", whitelistMatcherData={"whitelist": ["pro"]}),
                    matcher(
                        "GREATER_THAN_OR_EQUAL_TO",
                        "age",
                        unaryNumericMatcherData={"dataType": "NUMBER", "value": 18},
                    ),
                ],
                {"on": 10, "off": 90},
                "pro adults",
            ),
        ],
    }


def document(version: int) -> dict[str, Any]:
    return {
        "version": version,
        "flags": [_flag(i) for i in range(FLAGS)],
        "segments": {
            f"seg-{s}": [f"key-{s}-{k}" for k in range(KEYS_PER_SEGMENT)] for s in range(SEGMENTS)
        },
        "ruleBasedSegments": [],
    }


def rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class PacedLookups(threading.Thread):
    """One lookup every millisecond, like requests arriving at random times; records how
    late each one completes against its due time (the stall a caller would see)."""

    def __init__(self, store: Any) -> None:
        super().__init__(daemon=True)
        self.store = store
        self.stop = threading.Event()
        self.lateness: list[float] = []

    def run(self) -> None:
        attrs = {"plan": "pro", "age": 30}
        due = time.perf_counter()
        i = 0
        while not self.stop.is_set():
            due += 0.001
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            snap = self.store.current
            snap.evaluate(f"key-{i % SEGMENTS}-{i}", f"flag-{i % FLAGS}", None, attrs)
            done = time.perf_counter()
            self.lateness.append(done - due)
            due = max(due, done)  # a late lookup does not make the next ones "late" too
            i += 1

    def worst_ms(self) -> float:
        worst = max(self.lateness) * 1000
        self.lateness.clear()
        return worst


def child(small: str, big: str) -> None:
    """Runs in a fresh process: time a load with nothing else running, then measure lookup
    stalls while a second load is swapped in and the first one is freed."""
    from fader.snapshot.loader import load_file

    from sidecar.delivery.store import Store

    store = Store()
    store.swap(load_file(small))
    rss_before = rss_mb()
    start, cpu_start = time.perf_counter(), time.process_time()
    store.swap(load_file(big))
    load_seconds = time.perf_counter() - start
    load_cpu_seconds = time.process_time() - cpu_start
    rss_loaded = rss_mb()
    lookups = PacedLookups(store)
    lookups.start()
    time.sleep(1.0)
    idle = lookups.worst_ms()
    store.swap(load_file(big), force=True)
    time.sleep(1.0)  # the reaper frees the replaced snapshot meanwhile
    loading = lookups.worst_ms()
    lookups.stop.set()
    lookups.join()
    print(
        json.dumps(
            {
                "load_seconds": load_seconds,
                "load_cpu_seconds": load_cpu_seconds,
                "max_gap_ms_loading": loading,
                "max_gap_ms_idle": idle,
                "rss_mb_loaded": rss_loaded,
                "rss_mb_replaced": rss_mb(),
                "rss_mb_small": rss_before,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory(prefix="fader-bench-") as tmp:
        folder = Path(tmp)
        doc = document(2)
        small = {"version": 1, "flags": doc["flags"][:1], "segments": {}, "ruleBasedSegments": []}
        (folder / "small.json").write_text(json.dumps(small))
        (folder / "big.msgpack").write_bytes(msgpack.packb(doc))
        (folder / "big.json").write_text(json.dumps(doc))
        del doc
        sizes = {name: (folder / name).stat().st_size / 1e6 for name in ("big.msgpack", "big.json")}
        print(
            f"snapshot: {FLAGS} flags, {SEGMENTS * KEYS_PER_SEGMENT} segment keys; "
            f"msgpack {sizes['big.msgpack']:.1f} MB, JSON {sizes['big.json']:.1f} MB; "
            f"{args.rounds} rounds, medians; {os.cpu_count()} cores"
        )
        header = (
            "encoding", "load s", "CPU s", "stall ms", "idle stall ms", "RSS MB", "before",
            "replaced",
        )  # fmt: skip
        print("{:9} {:>7} {:>6} {:>9} {:>14} {:>7} {:>7} {:>9}".format(*header))
        keys = (
            "load_seconds",
            "load_cpu_seconds",
            "max_gap_ms_loading",
            "max_gap_ms_idle",
            "rss_mb_loaded",
            "rss_mb_small",
            "rss_mb_replaced",
        )
        for name in ("big.msgpack", "big.json"):
            runs = [_run_child(folder / "small.json", folder / name) for _ in range(args.rounds)]
            load, cpu, stall, idle, rss, before, after = (
                statistics.median(r[k] for r in runs) for k in keys
            )
            encoding = name.split(".")[1]
            print(
                f"{encoding:9} {load:7.2f} {cpu:6.2f} {stall:9.1f} {idle:14.1f} {rss:7.0f}"
                f" {before:7.0f} {after:9.0f}"
            )


def _run_child(small: Path, big: Path) -> dict[str, float]:
    command = [sys.executable, "-m", "benchmarks.snapshot_bench", "--child", str(small), str(big)]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return dict(json.loads(result.stdout))


if __name__ == "__main__":
    main()
