"""Track events as the telemetry pipeline carries them (validated in sidecar.core.events)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    key: str
    traffic_type: str
    event_type: str
    value: float | None
    properties: dict[str, object] | None
    timestamp_ms: int
