"""A tiny SVG chart: lines, step lines, bands, horizontal rules and vertical marks on shared axes.

Why our own: the release page must work offline and behind a mesh, so it can load no script
or stylesheet from anywhere; a chart library for the browser is out, and a server-side one
would be a large dependency for four kinds of mark. The SVG is inline markup the page embeds;
every text is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563")
_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 64, 16, 28, 44


@dataclass(frozen=True)
class Line:
    """A series of (x, y); ``step`` holds each value until the next point (a dial)."""

    label: str
    points: Sequence[tuple[float, float]]
    color: str
    step: bool = False


@dataclass(frozen=True)
class Band:
    """A shaded range (x, low, high), e.g. a confidence sequence."""

    label: str
    points: Sequence[tuple[float, float, float]]
    color: str


@dataclass(frozen=True)
class Rule:
    """A horizontal line at ``y`` (zero, a tolerance)."""

    y: float
    label: str
    color: str = "#6b7280"
    left: bool = False  # label at the left end (when two rules lie close together)


@dataclass(frozen=True)
class Mark:
    """A vertical line at ``x`` (a decision)."""

    x: float
    label: str
    color: str = "#6b7280"


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten) covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(0.0 if abs(value) < step * 1e-9 else value)
        value += step
    return ticks


def chart(
    title: str,
    *,
    lines: Sequence[Line] = (),
    bands: Sequence[Band] = (),
    rules: Sequence[Rule] = (),
    marks: Sequence[Mark] = (),
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
    x_format: Callable[[float], str] = _fmt,
    y_format: Callable[[float], str] = _fmt,
    width: int = 720,
    height: int = 240,
) -> str:
    """The chart as an ``<svg>`` element (a string of markup)."""
    xs = [x for line in lines for x, _ in line.points] + [x for b in bands for x, _, _ in b.points]
    ys = [y for line in lines for _, y in line.points]
    ys += [v for b in bands for _, lo, hi in b.points for v in (lo, hi)]
    ys += [r.y for r in rules]
    empty = not xs
    x0, x1 = x_range if x_range is not None else (min(xs, default=0.0), max(xs, default=1.0))
    if x1 <= x0:
        x1 = x0 + 1.0
    y0, y1 = y_range if y_range is not None else _padded(ys)
    left, right = _MARGIN_LEFT, width - _MARGIN_RIGHT
    top, bottom = _MARGIN_TOP, height - _MARGIN_BOTTOM

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (right - left)

    def sy(y: float) -> float:
        return bottom - (min(max(y, y0), y1) - y0) / (y1 - y0) * (bottom - top)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text x="{left}" y="16" class="chart-title" font-size="13" font-weight="600">'
        f"{escape(title)}</text>",
        f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" '
        'fill="#fff" stroke="#d1d5db"/>',
    ]
    for tick in nice_ticks(y0, y1):
        y = sy(tick)
        parts.append(
            f'<line x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#f3f4f6"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" '
            f'fill="#374151">{escape(y_format(tick))}</text>'
        )
    for i in range(5):
        x = x0 + (x1 - x0) * i / 4
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        parts.append(
            f'<text x="{sx(x):.1f}" y="{bottom + 16}" font-size="11" text-anchor="{anchor}" '
            f'fill="#374151">{escape(x_format(x))}</text>'
        )
    for band in bands:
        if band.points:
            upper = [f"{sx(x):.1f},{sy(hi):.1f}" for x, _, hi in band.points]
            lower = [f"{sx(x):.1f},{sy(lo):.1f}" for x, lo, _ in reversed(band.points)]
            parts.append(
                f'<polygon class="band" points="{" ".join(upper + lower)}" fill="{band.color}" '
                f'fill-opacity="0.18" stroke="none"><title>{escape(band.label)}</title></polygon>'
            )
    for rule in rules:
        if y0 <= rule.y <= y1:
            y = sy(rule.y)
            parts.append(
                f'<line class="rule" x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" '
                f'stroke="{rule.color}" stroke-dasharray="4 3"/>'
                f'<text x="{left + 4 if rule.left else right - 4}" y="{y - 4:.1f}" '
                f'font-size="10" text-anchor="{"start" if rule.left else "end"}" '
                f'fill="{rule.color}">{escape(rule.label)}</text>'
            )
    for mark in marks:
        if x0 <= mark.x <= x1:
            x = sx(mark.x)
            parts.append(
                f'<line class="mark" x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{bottom}" '
                f'stroke="{mark.color}" stroke-width="1.5"><title>{escape(mark.label)}</title>'
                "</line>"
            )
    for line in lines:
        if line.points:
            parts.append(
                f'<polyline class="series" points="{_path(line, sx, sy, x1)}" fill="none" '
                f'stroke="{line.color}" stroke-width="2"><title>{escape(line.label)}</title>'
                "</polyline>"
            )
    if empty:
        parts.append(
            f'<text x="{(left + right) / 2:.0f}" y="{(top + bottom) / 2:.0f}" font-size="12" '
            'text-anchor="middle" fill="#6b7280">no data yet</text>'
        )
    parts.append(_legend(lines, bands, left, height - 8))
    parts.append("</svg>")
    return "".join(parts)


def _padded(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    low, high = min(finite), max(finite)
    if high == low:
        return low - 1.0, high + 1.0
    pad = (high - low) * 0.08
    return low - pad, high + pad


def _path(
    line: Line, sx: Callable[[float], float], sy: Callable[[float], float], x_end: float
) -> str:
    points: list[tuple[float, float]] = []
    for i, (x, y) in enumerate(line.points):
        if line.step and i > 0:
            points.append((x, line.points[i - 1][1]))
        points.append((x, y))
    if line.step and points:
        points.append((max(x_end, points[-1][0]), points[-1][1]))
    return " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)


def _legend(lines: Sequence[Line], bands: Sequence[Band], x: int, y: int) -> str:
    items = [(line.label, line.color) for line in lines] + [(b.label, b.color) for b in bands]
    parts = []
    for label, color in dict.fromkeys(items):
        parts.append(
            f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{color}"/>'
            f'<text x="{x + 14}" y="{y}" font-size="11" fill="#374151">{escape(label)}</text>'
        )
        x += 24 + 7 * len(label)
    return "".join(parts)
