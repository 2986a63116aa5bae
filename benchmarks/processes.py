"""Helpers for benchmarks that run their server in a child process and load it from here."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def child_env() -> dict[str, str]:
    """This environment, with the repository and its Python client first on the path: what a
    benchmark's child process (a server, a sender) runs with."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), str(REPO / "clients" / "python"), env.get("PYTHONPATH", "")]
    )
    return env


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def callgrind_total(stderr: str) -> int:
    """The instructions callgrind reports it counted ("Collected : N") in its stderr."""
    match = re.search(r"Collected : (\d+)", stderr)
    if match is None:
        raise RuntimeError(f"no callgrind total in:\n{stderr}")
    return int(match.group(1))


def callgrind_module(
    module: str, args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> int:
    """Instructions callgrind counts in a child `python -m module args` (start-up included:
    callers difference two runs of different lengths)."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        module,
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=cwd, env=env)
    return callgrind_total(done.stderr)


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
