"""Drives the example checkers (clients/node/check.mjs, clients/go, clients/java): checks in
on stdin as JSON lines, verdicts out on stdout, "all N answers right" or exit status 1."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
from pathlib import Path
from typing import Any

TIMEOUT = 120.0


def check(kind: str, flag: str, default: Any, context: dict[str, Any], expect: dict[str, Any]):
    return {"type": kind, "flag": flag, "default": default, "context": context, "expect": expect}


def expected(answer: dict[str, Any]) -> dict[str, Any]:
    """What a checker must see, from an answer read as a provider reports it."""
    return {
        "value": answer["value"],
        "variant": answer["variant"],
        "reason": answer["reason"],
        "errorCode": answer["error_code"],
    }


class Checker:
    """A checker process: checks in on stdin, verdicts out on stdout."""

    def __init__(self, command: list[str], cwd: Path, env: dict[str, str]) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("FLAGD_", "OFREP_"))}
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env={**base, **env},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put("")

    def send(self, *messages: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        for message in messages:
            self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def wait_for(self, text: str) -> list[str]:
        seen: list[str] = []
        while True:
            try:
                line = self.lines.get(timeout=TIMEOUT)
            except queue.Empty:
                raise AssertionError(f"no {text!r} from check.mjs: {seen[-5:]}") from None
            seen.append(line)
            if line == text:
                return seen
            if line == "" and self.process.poll() is not None:
                raise AssertionError(f"check.mjs ended before {text!r}: {seen[-10:]}")

    def finish(self) -> tuple[int, list[str]]:
        assert self.process.stdin is not None
        self.process.stdin.close()
        code = self.process.wait(TIMEOUT)
        out: list[str] = []
        while not self.lines.empty():
            out.append(self.lines.get())
        return code, [line for line in out if line]
