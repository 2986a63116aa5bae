"""The Unix-socket listener: a stale-socket guard, mode 0660 with a chosen group, safe removal.

Why each step:
- gRPC core unlinks whatever socket is at the path when it binds, so a second sidecar would
  silently steal the path from a live one. `claim_path` refuses when something answers there,
  and removes the file only when nothing does (a leftover from a killed process).
- gRPC creates the socket with mode `0777 & ~umask`: 0755 under the usual umask 022, which
  other users cannot connect to (connect(2) needs write permission), and 0777 under umask 0,
  which anyone can. `bind_socket` sets umask 0177 around the bind, so the file is born 0600
  and is never more open than intended, then hands it to the group and widens it to 0660.
  The umask is process-wide; this runs once at startup before the management thread starts.
- On shutdown the file is removed only if it is still the one this process created (same
  inode and change time), so a stopping sidecar never deletes the socket of one that replaced
  it.
"""

from __future__ import annotations

import errno
import grp
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SOCKET_MODE = 0o660
BIND_UMASK = 0o177
# Longest path gRPC binds (sun_path is 108 bytes; gRPC 1.85 refuses from 106 on).
MAX_PATH_BYTES = 105


class SocketError(RuntimeError):
    """The socket path cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class SocketFile:
    path: Path
    identity: tuple[int, int, int]

    def remove(self) -> bool:
        """Unlinks the socket if it is still ours; returns whether it did."""
        try:
            info = self.path.lstat()
        except FileNotFoundError:
            return False
        if _identity(info) != self.identity:
            return False
        self.path.unlink(missing_ok=True)
        return True


def check_path(path: Path) -> None:
    if len(os.fsencode(path)) > MAX_PATH_BYTES:
        raise SocketError(
            f"socket path {path} is {len(os.fsencode(path))} bytes; gRPC binds at most "
            f"{MAX_PATH_BYTES}: choose a shorter path"
        )
    if not path.parent.is_dir():
        raise SocketError(f"socket directory {path.parent} does not exist")


def claim_path(path: Path) -> bool:
    """Makes `path` free to bind; returns True when it removed a stale socket.

    Raises SocketError if a live server answers on it or the path is not a socket.
    """
    try:
        info = path.lstat()
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(info.st_mode):
        raise SocketError(f"{path} exists and is not a socket; refusing to replace it")
    if _answers(path):
        raise SocketError(
            f"another server is listening on {path}; stop it or choose another --uds path"
        )
    path.unlink()
    return True


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(os.fspath(path))
        except OSError as err:
            if err.errno in (errno.ECONNREFUSED, errno.ENOENT):
                return False
            raise SocketError(f"cannot tell whether {path} is in use: {err}") from None
    return True


def resolve_group(group: str) -> int:
    """A group name or numeric id, as a gid."""
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise SocketError(f"unknown group {group!r} for the socket") from None


def bind_socket(path: Path, gid: int | None, bind: Callable[[str], object]) -> SocketFile:
    """Calls `bind("unix:PATH")` (gRPC's add_insecure_port) with a tight umask, then sets
    the group and mode 0660."""
    previous = os.umask(BIND_UMASK)
    try:
        bind(f"unix:{path}")
    finally:
        os.umask(previous)
    try:
        if gid is not None:
            os.chown(path, -1, gid)
        os.chmod(path, SOCKET_MODE)
    except OSError as err:
        path.unlink(missing_ok=True)
        raise SocketError(f"cannot set group/mode of {path}: {err}") from None
    return SocketFile(path, _identity(path.lstat()))


def _identity(info: os.stat_result) -> tuple[int, int, int]:
    """Device, inode and change time: the inode number alone is reused at once after an
    unlink, the change time of a replacement differs (it was created later)."""
    return info.st_dev, info.st_ino, info.st_ctime_ns
