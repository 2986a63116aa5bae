"""Churn and faults benchmark: what the sidecar holds when snapshots come fast, consumers get
stuck and the control plane flaps. Real `fader serve` processes on loopback, side by side in
one run, each figure next to its baseline from the same run:

1. lookup latency (p50, p99) and lookups past the clients' 100 ms deadline (answered
   "control") during SWAPS swaps of a FLAGS-flag snapshot, with no watch stream and with
   STREAMS WatchChanges streams that are never read (same sidecar, one phase after the other);
2. RSS after RSS_SWAPS back-to-back pushes of that snapshot, against RSS with one loaded;
3. the time from a kill published on the control plane to the sidecar serving it: with the
   stream up (baseline), and as the control plane comes back after a flapping period (up 1 s,
   down 4 s, FLAPS times, then down OUTAGE s while the kill is published).

Run: ``python -m benchmarks.churn_bench`` (about 4 minutes; ``--quick`` for a smaller run).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.integration.churn import (
    Gate,
    LookupLoad,
    Lookups,
    big_snapshot,
    pushable_sidecar,
    rss_mb,
    unread_watch_streams,
)
from tests.integration.harness import (
    free_port,
    serve_process,
    start_sidecar,
    treatment,
    write_snapshot,
)
from tests.waiting import wait_for


@dataclass
class Sizes:
    flags: int = 2000
    swaps: int = 30
    streams: int = 300
    rss_swaps: int = 100
    flaps: int = 5
    outage: float = 10.0
    kills: int = 3


def lookups_during_swaps(sizes: Sizes, workdir: Path) -> tuple[Lookups, Lookups]:
    documents = {v: big_snapshot(v, sizes.flags) for v in range(1, 2 * sizes.swaps + 2)}
    with pushable_sidecar(workdir, name="streams.log") as sidecar:
        sidecar.pusher.push(1, documents[1])

        def phase(first: int) -> Lookups:
            with LookupLoad(sidecar.grpc_target, "flag-1") as load:
                for version in range(first, first + sizes.swaps):
                    sidecar.pusher.push(version, documents[version])
            return load.result

        alone = phase(2)
        with unread_watch_streams(sidecar.grpc_target, sizes.streams):
            watched = phase(2 + sizes.swaps)
    return alone, watched


def rss_after_swaps(sizes: Sizes, workdir: Path) -> dict[str, float]:
    with pushable_sidecar(workdir, name="rss.log") as sidecar:
        time.sleep(0.5)
        empty = rss_mb(sidecar.pid)
        sidecar.pusher.push(1, big_snapshot(1, sizes.flags))
        time.sleep(1.0)
        one = rss_mb(sidecar.pid)
        started = time.monotonic()
        for version in range(2, sizes.rss_swaps + 2):
            sidecar.pusher.push(version, big_snapshot(version, sizes.flags))
        seconds = time.monotonic() - started
        after = rss_mb(sidecar.pid)
        time.sleep(10.0)
        settled = rss_mb(sidecar.pid)
    return {"empty": empty, "one": one, "after": after, "settled": settled, "seconds": seconds}


def kill_latencies(sizes: Sizes, workdir: Path) -> tuple[list[float], list[float], list[float]]:
    """(steady, after flapping from the comeback, after flapping from the publication)"""
    snapshot, upstream = workdir / "flags.json", free_port()
    gate = Gate(free_port(), upstream)
    write_snapshot(snapshot, 1)
    cp_args = ["--listen", f"127.0.0.1:{upstream}", "--forward", str(snapshot)]
    steady: list[float] = []
    comeback: list[float] = []
    published: list[float] = []
    version = 1
    with (
        serve_process([*cp_args, "--http-listen", "off"], workdir, command="controlplane"),
        start_sidecar(["--control-plane", f"127.0.0.1:{gate.port}"], workdir, "kill.log") as sc,
    ):
        gate.open()
        target = sc.wait_listening()["grpc"]
        wait_for(lambda: treatment(target) == "v1", timeout=30, what="v1 served")
        for _ in range(sizes.kills):
            version += 1
            steady.append(_publish(snapshot, version, target))
            for _ in range(sizes.flaps):  # the sidecar reconnects when it can, or not
                gate.shut()
                time.sleep(4.0)
                gate.open()
                time.sleep(1.0)
            gate.shut()
            version += 1
            killed = f"k{version}"
            publish = time.monotonic()
            write_snapshot(snapshot, version, killed=True, defaultTreatment=killed)
            time.sleep(sizes.outage)
            gate.open()
            back = time.monotonic()
            _wait_served(target, killed)
            comeback.append(time.monotonic() - back)
            published.append(time.monotonic() - publish)
        delays = [float(d) for d in re.findall(r"reconnecting in (\S+) s", sc.log)]
        print(f"  backoff delays the sidecar logged: max {max(delays):.1f} s over {len(delays)}")
        gate.shut()
    return steady, comeback, published


def _publish(snapshot: Path, version: int, target: str) -> float:
    started = time.monotonic()
    write_snapshot(snapshot, version, killed=True, defaultTreatment=f"k{version}")
    _wait_served(target, f"k{version}")
    return time.monotonic() - started


def _wait_served(target: str, answer: str) -> None:
    wait_for(lambda: treatment(target) == answer, timeout=60, what=f"{answer} served")


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller snapshot, fewer swaps")
    args = parser.parse_args(argv)
    sizes = Sizes(1000, 10, 150, 30, 3, 10.0, 1) if args.quick else Sizes()
    print(
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average before "
        f"{os.getloadavg()[0]:.2f}; {sizes}"
    )
    workdir = Path(tempfile.mkdtemp(prefix="fchurn", dir="/tmp"))
    try:
        alone, watched = lookups_during_swaps(sizes, workdir)
        print(f"\n1. lookups during {sizes.swaps} swaps of a {sizes.flags}-flag snapshot")
        print("| watch streams (never read) | lookups | answered control | p50 | p99 |")
        print("|---|---|---|---|---|")
        for streams, lookups in ((0, alone), (sizes.streams, watched)):
            share = 100 * lookups.control / max(1, lookups.count)
            print(
                f"| {streams} | {lookups.count} | {lookups.control} ({share:.1f} %) | "
                f"{_ms(lookups.percentile(0.5))} | {_ms(lookups.percentile(0.99))} |"
            )
        p99 = watched.percentile(0.99) / alone.percentile(0.99)
        print(f"p99 with {sizes.streams} streams / without: {p99:.2f}")

        rss = rss_after_swaps(sizes, workdir)
        one = rss["one"] - rss["empty"]
        print(f"\n2. RSS after {sizes.rss_swaps} back-to-back pushes ({rss['seconds']:.0f} s)")
        print(
            f"empty {rss['empty']:.0f} MB; one snapshot loaded {rss['one']:.0f} MB "
            f"(+{one:.0f} MB); after {sizes.rss_swaps} pushes {rss['after']:.0f} MB, 10 s later "
            f"{rss['settled']:.0f} MB = empty + {(rss['after'] - rss['empty']) / one:.1f} "
            "snapshots"
        )

        steady, comeback, published = kill_latencies(sizes, workdir)
        print("\n3. a kill published on the control plane, until the sidecar serves it")
        print(f"stream up (baseline): median {statistics.median(steady):.2f} s")
        print(
            f"after {sizes.flaps} flaps and a {sizes.outage:.0f} s outage: median "
            f"{statistics.median(comeback):.2f} s after the control plane came back (max "
            f"{max(comeback):.2f} s), {statistics.median(published):.2f} s after publication"
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
