"""The Unix socket guard, mode and removal, without gRPC in the way."""

from __future__ import annotations

import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.api import uds
from tests.integration.harness import short_tmp


@pytest.fixture
def tmp() -> Iterator[Path]:
    with short_tmp() as path:
        yield path


def bind_plain(path: str) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path.removeprefix("unix:"))
    sock.close()


def test_socket_is_0660_whatever_the_umask(tmp: Path) -> None:
    for umask in (0o000, 0o022, 0o077):
        path = tmp / f"s{umask:o}.sock"
        previous = os.umask(umask)
        try:
            created = uds.bind_socket(path, None, bind_plain)
        finally:
            os.umask(previous)
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        assert os.umask(previous) == previous  # the process umask is restored
        assert created.remove() and not path.exists()


def test_claim_path(tmp: Path) -> None:
    missing = tmp / "none.sock"
    assert uds.claim_path(missing) is False
    stale = tmp / "stale.sock"
    bind_plain(str(stale))
    assert uds.claim_path(stale) is True and not stale.exists()
    live_path = tmp / "live.sock"
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(live_path))
        live.listen()
        with pytest.raises(uds.SocketError, match="another server is listening"):
            uds.claim_path(live_path)
    regular = tmp / "file"
    regular.write_text("x")
    with pytest.raises(uds.SocketError, match="is not a socket"):
        uds.claim_path(regular)


def test_remove_spares_a_socket_that_replaced_ours(tmp: Path) -> None:
    path = tmp / "s.sock"
    ours = uds.bind_socket(path, None, bind_plain)
    path.unlink()
    time.sleep(0.02)  # file times tick in milliseconds; a real replacement comes much later
    bind_plain(str(path))  # another process took the path (likely reusing the inode number)
    assert ours.remove() is False
    assert path.exists()


def test_path_checks(tmp: Path) -> None:
    with pytest.raises(uds.SocketError, match="gRPC binds at most 105"):
        uds.check_path(tmp / ("x" * 120))
    with pytest.raises(uds.SocketError, match="does not exist"):
        uds.check_path(tmp / "missing" / "s.sock")
    uds.check_path(tmp / "fine.sock")


def test_groups() -> None:
    assert uds.resolve_group("0") == 0
    assert uds.resolve_group("root") == 0
    with pytest.raises(uds.SocketError, match="unknown group 'no-such-group-x'"):
        uds.resolve_group("no-such-group-x")
