"""The sidecar's side of impressions: the hot path's recorder (`fader._modes.Recorder`, in C:
see there why), and its capacity. The modes themselves (optimized, debug, none; the
observer; counts and unique keys) live in `fader.impressions`, shared with the Python
client's in-process mode.
"""

from __future__ import annotations

from fader._modes import Recorder
from fader.impressions import (
    DAY_MS,
    DEFAULT_OBSERVER_SIZE,
    HOUR_MS,
    Answer,
    Impression,
    ImpressionModes,
    Mode,
    Observer,
    Pending,
    UniqueKeys,
    add_messages,
    hour_start,
    now_ms,
)

__all__ = [
    "DAY_MS",
    "DEFAULT_OBSERVER_SIZE",
    "DEFAULT_RECORDER_CAPACITY",
    "HOUR_MS",
    "Answer",
    "Impression",
    "ImpressionModes",
    "Mode",
    "Observer",
    "Pending",
    "Recorder",
    "UniqueKeys",
    "add_messages",
    "hour_start",
    "now_ms",
]

# lookups waiting for the modes; past that, a request's lookups are counted, not recorded
DEFAULT_RECORDER_CAPACITY = 100_000
