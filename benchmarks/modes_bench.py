"""What the impressions modes cost a lookup as the keys outgrow the caches.

Run: ``python -m benchmarks.modes_bench`` (about 10 s).

The pipeline's own step, in this process, no server: `ImpressionModes.encode_all` over
batches of 100 lookups of the demo snapshot's `new-checkout` flag (each key a new string, as
requests decode them), every key seen once before the timed passes, so `optimized` counts
repeats and `debug` writes an entry with its previous time, as in steady state. The observer
then holds one hash per key: 1,000 keys fit the caches, 50,000 and 200,000 (the default
observer size is 100,000) do not, and each probe of its table may wait for memory. Each cell
is the median of the passes, in ns per lookup, with its ratio to 1,000 keys measured in the
same run (the baseline: the same work with every probe served from the caches).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from fader.impressions import ImpressionModes, Mode, Pending
from fader.snapshot.snapshot import Snapshot

from sidecar.sources.initial import demo_snapshot

FLAG = "new-checkout"
BATCH = 100
KEYS = (1_000, 50_000, 200_000)
T0 = 1_764_000_000_000


def requests(snap: Snapshot, keys: list[str], time_ms: int) -> list[Pending]:
    """Batches of `keys`, each key a new str object (its hash not cached)."""
    results = {key: snap.evaluate(key, FLAG, None, None) for key in keys}
    return [
        (
            snap,
            time_ms,
            [((key + " ")[:-1], None, FLAG, results[key]) for key in keys[at : at + BATCH]],
        )
        for at in range(0, len(keys), BATCH)
    ]


def ns_per_lookup(mode: Mode, count: int, passes: int) -> float:
    snap = demo_snapshot()
    keys = [f"user-{i}" for i in range(count)]
    modes = ImpressionModes(mode)
    modes.encode_all(requests(snap, keys, T0), 4)  # every key seen once, not timed
    timings = []
    for number in range(passes):
        work = requests(snap, keys, T0 + 1 + number)
        started = time.perf_counter()
        modes.encode_all(work, 4)
        timings.append((time.perf_counter() - started) / count * 1e9)
    return statistics.median(timings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=7)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    print(f"encode_all, ns per lookup (median of {args.passes} passes), ratio to 1,000 keys:")
    for mode in (Mode.OPTIMIZED, Mode.DEBUG):
        cells = {count: ns_per_lookup(mode, count, args.passes) for count in KEYS}
        base = cells[KEYS[0]]
        parts = [f"{count:>7,} keys {ns:6.0f} ns ({ns / base:.2f})" for count, ns in cells.items()]
        print(f"  {mode.value:9} " + "   ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
