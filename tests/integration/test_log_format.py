"""`--log-format json`: every line `fader serve` writes is one JSON object."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import serve_process, short_tmp
from tests.waiting import wait_for


@pytest.fixture
def tmp() -> Iterator[Path]:
    with short_tmp() as path:
        yield path


def test_json_lines_logs(tmp: Path) -> None:
    args = ["--demo", "--log-format", "json", "--grpc-listen", "127.0.0.1:0"]
    with serve_process([*args, "--mgmt-listen", "127.0.0.1:0"], tmp) as sc:
        wait_for(lambda: "listening grpc=" in sc.log, what="listening")
        sc.signal(signal.SIGTERM)
        assert sc.wait(20) == 0
    lines = [json.loads(line) for line in sc.log.splitlines()]
    assert len(lines) >= 3
    assert all(set(line) >= {"time", "level", "logger", "message"} for line in lines)
    applied = next(line for line in lines if line["message"].startswith("applied snapshot"))
    assert applied["level"] == "info" and applied["logger"] == "sidecar.delivery.apply"
    assert applied["time"].endswith("+00:00")
