"""What every snapshot source is to its owner: something to start, stop and ask about.

A source offers snapshots to the one Applier it was given; the Applier decides what is
served. The owner (`sidecar.app.sources`) starts every source once the sidecar listens,
stops them first on shutdown, and shows each one's `status()` on `/status`.
"""

from __future__ import annotations

from typing import Any, Protocol


class Source(Protocol):
    def start(self) -> None:
        """Begin taking snapshots in (a thread, a stream, a listener); returns at once."""

    def stop(self) -> None:
        """Stop taking snapshots in; returns when no more offers will be made."""

    def status(self) -> dict[str, Any]:
        """What an operator needs to know about this source, as JSON-ready values."""
