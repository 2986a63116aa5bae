"""The control-plane source's wait between attempts: cut short when the control plane comes
back, waited out in full when it is up and refusing, reset by a stream that delivered."""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.config import Address
from sidecar.controlplane.main import ControlPlane
from sidecar.delivery.apply import Applier
from sidecar.delivery.store import Store
from sidecar.plumbing import probe
from sidecar.plumbing.backoff import Backoff
from sidecar.sources.controlplane import ControlPlaneSource, Identity
from tests.integration.harness import free_port, write_snapshot
from tests.waiting import wait_for


def _source(port: int, backoff: Backoff | None = None) -> ControlPlaneSource:
    return ControlPlaneSource(
        f"127.0.0.1:{port}", Applier(Store()), Identity("pod-a"), backoff=backoff
    )


@pytest.fixture
def listening() -> Iterator[int]:
    """A port that accepts connections (and never answers)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield int(listener.getsockname()[1])


def test_the_wait_ends_once_a_refusing_port_accepts_again() -> None:
    port = free_port()
    source = _source(port)
    listener = socket.socket()

    def come_back() -> None:
        time.sleep(0.3)
        listener.bind(("127.0.0.1", port))
        listener.listen(8)

    threading.Thread(target=come_back, daemon=True).start()
    started = time.monotonic()
    try:
        source._wait(20.0)
        waited = time.monotonic() - started
    finally:
        listener.close()
    assert 0.3 <= waited < 2.0  # the next probe after it came back (every 0.8-1.2 s)


def test_a_control_plane_that_is_up_is_not_probed_and_the_backoff_is_waited_out(
    listening: int,
) -> None:
    source = _source(listening)
    started = time.monotonic()
    source._wait(0.6)
    assert time.monotonic() - started >= 0.6


def test_a_stop_ends_the_wait() -> None:
    source = _source(free_port())
    threading.Timer(0.2, source._stop.set).start()
    started = time.monotonic()
    source._wait(20.0)
    assert time.monotonic() - started < 1.5


def test_probe_addresses() -> None:
    assert probe.tcp_address("127.0.0.1:8017") == ("127.0.0.1", 8017)
    assert probe.tcp_address("[::1]:8017") == ("::1", 8017)
    assert probe.tcp_address("dns:///cp.example:443") == ("cp.example", 443)
    assert probe.tcp_address("unix:///run/cp.sock") is None
    assert probe.tcp_address("cp.example") is None


def test_the_backoff_grows_while_down_and_restarts_after_a_stream_that_delivered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    snapshot, port = tmp_path / "snap.json", free_port()
    write_snapshot(snapshot, 1)
    source = _source(port, Backoff(initial=0.2, maximum=5.0, jitter=0.0))
    caplog.set_level(logging.WARNING, "sidecar.sources.controlplane")
    source.start()
    try:
        wait_for(lambda: len(_delays(caplog.text)) >= 2, what="two failed attempts")
        plane = ControlPlane(snapshot, Address("127.0.0.1", port))
        plane.start()
        wait_for(lambda: source.connected, what="connected once the control plane is up")
        before = len(_delays(caplog.text))
        plane.stop(0)
        wait_for(lambda: len(_delays(caplog.text)) > before, what="the wait after it delivered")
    finally:
        source.stop()
    delays = _delays(caplog.text)
    assert delays[:2] == [0.4, 0.8]  # attempts 1 and 2 while it was down
    assert delays[-1] == 0.2  # after a stream that delivered: the first step again


def _delays(log: str) -> list[float]:
    return [float(delay) for delay in re.findall(r"reconnecting in (\S+) s", log)]
