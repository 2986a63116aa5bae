"""Durations as people type them: ``500ms``, ``1s``, ``10m``, ``2h``, ``30d`` or plain seconds."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in ``text``; ValueError saying what is accepted."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration (e.g. 90s, 10m, 2h, 1d, or seconds)")
    return float(match.group(1)) * _SECONDS[match.group(2) or "s"]


def format_duration(seconds: float) -> str:
    """``600`` -> ``10m``; the largest unit that divides it, else seconds."""
    for unit in ("d", "h", "m"):
        if seconds >= _SECONDS[unit] and seconds % _SECONDS[unit] == 0:
            return f"{int(seconds // _SECONDS[unit])}{unit}"
    return f"{seconds:g}s"
