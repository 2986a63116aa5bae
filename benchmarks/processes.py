"""Helpers for benchmarks that run their server in a child process and load it from here."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 10 s."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def closed_loop(
    call: Callable[[], Awaitable[Any]],
    in_flight: int,
    warmup: float,
    window: float,
    cpu_seconds: Callable[[], float],
) -> tuple[list[int], float, float]:
    """Keep `in_flight` calls going for `warmup` + `window` seconds; return the latencies (ns)
    of the calls completed in the window, its length (s) and the server CPU it used (s)."""
    latencies: list[int] = []
    recording = False
    end = time.monotonic() + warmup + window

    async def worker() -> None:
        clock = time.perf_counter_ns
        while time.monotonic() < end:
            start = clock()
            await call()
            if recording:
                latencies.append(clock() - start)

    tasks = [asyncio.create_task(worker()) for _ in range(in_flight)]
    await asyncio.sleep(warmup)
    recording, cpu_start, started = True, cpu_seconds(), time.monotonic()
    await asyncio.sleep(window)
    recording = False
    elapsed, cpu = time.monotonic() - started, cpu_seconds() - cpu_start
    await asyncio.gather(*tasks)
    return latencies, elapsed, cpu
