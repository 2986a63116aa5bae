"""Is a peer's port accepting connections? A bare TCP connect, nothing sent.

Used while a retry waits out its backoff: a port that refused connections and now accepts
them means the peer is back, and waiting out the rest of the backoff would only delay what it
has to say (a kill switch, say). A connect refused costs the peer nothing, unlike a TLS
handshake or an RPC.
"""

from __future__ import annotations

import socket

TIMEOUT_SECONDS = 0.5


def tcp_address(target: str) -> tuple[str, int] | None:
    """(host, port) of a gRPC target `HOST:PORT`, `[V6]:PORT` or `dns:///HOST:PORT`; None for
    any other form (a Unix socket, a name resolver), which is then not probed."""
    if target.startswith("dns:///"):
        target = target[len("dns:///") :]
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or "/" in target or host.startswith("unix"):
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def accepts(address: tuple[str, int], timeout: float = TIMEOUT_SECONDS) -> bool:
    """True when a TCP connection to ``address`` is accepted within ``timeout`` seconds."""
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False
