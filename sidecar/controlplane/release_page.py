"""The release pages as server-rendered HTML: ``/releases`` and ``/releases/FLAG``.

Everything is inline (styles, SVG charts from ``svgchart``), with no script and no external
asset, so the page works offline, behind a mesh, and in a headless browser. Times are UTC.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any, Final

from sidecar.controlplane.decisions import Decision, Kind
from sidecar.controlplane.releases import Timeline
from sidecar.controlplane.statistics import Direction, MetricKind
from sidecar.controlplane.svgchart import PALETTE, Band, Line, Mark, Rule, chart

_STYLE: Final = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#111827;
background:#f9fafb;max-width:1180px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px}
a{color:#1d4ed8}table{border-collapse:collapse;background:#fff;width:100%;font-size:13px}
th,td{border:1px solid #e5e7eb;padding:5px 8px;text-align:left}th{background:#f3f4f6}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;border-radius:9px;padding:1px 9px;font-size:12px;font-weight:600;
color:#fff}
.s-running,.v-healthy,.k-advance{background:#2563eb}.s-complete,.k-complete{background:#16a34a}
.s-killed,.v-breach,.k-breach,.k-kill{background:#dc2626}
.s-paused,.v-srm,.k-srm_pause{background:#ea580c}.v-hold,.k-hold{background:#6b7280}
.charts{display:flex;flex-wrap:wrap;gap:12px}.chart{background:#fff}
.meta{color:#4b5563;font-size:13px}ol.decisions{font-size:13px;padding-left:20px}
ol.decisions li{margin:3px 0}
"""

_MARK_COLOR: Final = {
    Kind.BREACH: "#dc2626",
    Kind.KILL: "#dc2626",
    Kind.SRM_PAUSE: "#ea580c",
    Kind.HOLD: "#9ca3af",
    Kind.ADVANCE: "#2563eb",
    Kind.COMPLETE: "#16a34a",
}


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def clock_time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%H:%M:%S")


def full_time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _link(flag: str) -> str:
    return "/releases/" + urllib.parse.quote(flag, safe="")


def _badge(prefix: str, value: str | None) -> str:
    if value is None:
        return ""
    return f'<span class="badge {prefix}-{escape(value)}">{escape(value)}</span>'


def render_index(summaries: Sequence[Mapping[str, Any]], now: float) -> str:
    """``/releases``: one row per flag with a plan or guardrail."""
    rows = []
    for s in summaries:
        units = "—" if s["units"] is None else f"{s['units']:,}"
        rows.append(
            f'<tr><td><a href="{_link(s["flag"])}">{escape(s["flag"])}</a></td>'
            f"<td>{_badge('s', s['state'])}</td><td class=num>{s['dial']} %</td>"
            f"<td>{escape(s['plan'] or '—')}</td><td class=num>{units}</td>"
            f"<td>{_badge('v', s['outcome'])} {escape(s['worst'] or '')}</td></tr>"
        )
    table = (
        "<table><tr><th>flag</th><th>state</th><th>dial</th><th>rollout</th><th>units</th>"
        "<th>worst metric</th></tr>" + "".join(rows) + "</table>"
        if rows
        else "<p>No releases: no flag has a rollout plan or a guardrail.</p>"
    )
    body = (
        f"<h1>Releases</h1><p class=meta>{len(summaries)} release(s), {full_time(now)}. "
        'JSON: <a href="/api/v1/releases">/api/v1/releases</a></p>' + table
    )
    return _page("Fader releases", body)


def render_release(
    report: Mapping[str, Any],
    timeline: Timeline,
    decisions: Sequence[Decision],
    metric_info: Mapping[str, tuple[MetricKind, Direction, float]],
) -> str:
    """``/releases/FLAG``: the state, the metric table, the charts and the decisions.

    ``metric_info``: per metric its kind, direction and tolerated regression (for units
    and the tolerance line)."""
    flag = report["flag"]
    marks = [
        Mark(d.time, f"{d.kind.value}: {d.message}", _MARK_COLOR[d.kind])
        for d in decisions
        if d.kind is not Kind.HOLD
    ]
    x_range = (timeline.start, max(timeline.end, timeline.start + 1))
    charts = [_dial_chart(timeline, marks, x_range), _units_chart(timeline, marks, x_range)]
    for metric in timeline.metrics:
        kind, direction, tolerance = metric_info.get(
            metric.metric.name, (metric.metric.kind, metric.metric.direction, 0.0)
        )
        charts.append(_metric_chart(metric.metric.name, metric.bands, kind, direction, tolerance,
                                    marks, x_range, metric.rule.baseline))  # fmt: skip
    body = (
        f'<p class=meta><a href="/releases">← all releases</a></p>'
        f"<h1>{escape(flag)} {_badge('s', report['state'])}</h1>"
        f"<p class=meta>dial <b>{report['dial']} %</b> · evidence since "
        f"{full_time(timeline.start)} · bucket {timeline.bucket_seconds:g} s · JSON: "
        f'<a href="/api/v1/releases/{urllib.parse.quote(flag, safe="")}">'
        f"/api/v1/releases/{escape(flag)}</a></p>"
        "<h2>Guardrail metrics</h2>"
        + _metric_table(report["metrics"], metric_info)
        + '<h2>Over time</h2><div class="charts">'
        + "".join(charts)
        + "</div><h2>Decisions</h2>"
        + _decision_list(decisions)
    )
    return _page(f"{flag}: release", body)


def _dial_chart(timeline: Timeline, marks: list[Mark], x_range: tuple[float, float]) -> str:
    points = [(p.time, float(p.percent)) for p in timeline.dial]
    before = [p for p in points if p[0] <= x_range[0]]
    shown = ([(x_range[0], before[-1][1])] if before else []) + [
        p for p in points if p[0] > x_range[0]
    ]
    return chart(
        "dial (% of keys on the release's treatment)",
        lines=[Line("dial", shown, PALETTE[0], step=True)],
        marks=marks,
        x_range=x_range,
        y_range=(0.0, 100.0),
        x_format=clock_time,
        y_format=lambda v: f"{v:.0f} %",
    )


def _units_chart(timeline: Timeline, marks: list[Mark], x_range: tuple[float, float]) -> str:
    lines = [
        Line(treatment, [(t, float(n)) for t, n in points], PALETTE[i % len(PALETTE)])
        for i, (treatment, points) in enumerate(sorted(timeline.units.items()))
    ]
    return chart(
        "units exposed per treatment (cumulative)",
        lines=lines,
        marks=marks,
        x_range=x_range,
        x_format=clock_time,
        y_format=lambda v: f"{v:,.0f}",
    )


def _metric_chart(
    name: str,
    bands: Mapping[str, Sequence[Any]],
    kind: MetricKind,
    direction: Direction,
    tolerance: float,
    marks: list[Mark],
    x_range: tuple[float, float],
    baseline: str,
) -> str:
    lines, shaded = [], []
    for i, (treatment, points) in enumerate(sorted(bands.items())):
        color = PALETTE[(i + 1) % len(PALETTE)]
        lines.append(Line(f"{treatment} vs {baseline}", [(p.time, p.delta) for p in points], color))
        shaded.append(
            Band(f"{treatment} confidence sequence", [(p.time, p.lower, p.upper) for p in points],
                 color)
        )  # fmt: skip
    harmful = tolerance if direction is Direction.DECREASE else -tolerance
    rules = [
        Rule(0.0, "no difference", left=True),
        Rule(harmful, "tolerated regression", "#dc2626"),
    ]
    return chart(
        f"{name}: difference with its confidence sequence",
        lines=lines,
        bands=shaded,
        rules=rules,
        marks=marks,
        x_range=x_range,
        x_format=clock_time,
        y_format=lambda v: f"{v * 100:+.3g} pts" if kind is MetricKind.CONVERSION else f"{v:+.3g}",
    )


def format_delta(value: float | None, kind: MetricKind) -> str:
    if value is None:
        return "—"
    if kind is MetricKind.CONVERSION:
        return f"{value * 100:+.2f} pts"
    return f"{value:+.4g}"


def format_mean(value: float | None, kind: MetricKind) -> str:
    if value is None:
        return "—"
    if kind is MetricKind.CONVERSION:
        return f"{value * 100:.2f} %"
    return f"{value:.4g}"


def _metric_table(
    rows: Sequence[Mapping[str, Any]], info: Mapping[str, tuple[MetricKind, Direction, float]]
) -> str:
    if not rows:
        return "<p>No metric data yet (no guardrail, or no exposure store on this replica).</p>"
    out = [
        "<table><tr><th>metric</th><th>treatment vs baseline</th><th>units</th><th>mean</th>"
        "<th>baseline mean</th><th>difference</th><th>confidence sequence</th><th>p-value</th>"
        "<th>verdict</th></tr>"
    ]
    for row in rows:
        kind, _, _ = info.get(row["metric"], (MetricKind.MEAN, Direction.DECREASE, 0.0))
        ci = row["ci"]
        shown_ci = (
            "—" if ci is None else f"[{format_delta(ci[0], kind)}, {format_delta(ci[1], kind)}]"
        )
        p_value = "—" if row["p_value"] is None else f"{row['p_value']:.3g}"
        out.append(
            f"<tr><td>{escape(row['metric'])}</td>"
            f"<td>{escape(row['treatment'])} vs {escape(row['baseline'])}</td>"
            f"<td class=num>{row['units']:,}</td>"
            f"<td class=num>{format_mean(row['mean'], kind)}</td>"
            f"<td class=num>{format_mean(row['baseline_mean'], kind)}</td>"
            f"<td class=num>{format_delta(row['delta'], kind)}</td>"
            f"<td class=num>{escape(shown_ci)}</td><td class=num>{p_value}</td>"
            f"<td>{_badge('v', row['verdict'])}</td></tr>"
        )
    out.append("</table>")
    return "".join(out)


def _decision_list(decisions: Sequence[Decision]) -> str:
    if not decisions:
        return "<p>No decisions yet.</p>"
    items = [
        f'<li class="decision"><time>{full_time(d.time)}</time> '
        f"{_badge('k', d.kind.value)} {escape(d.message)}</li>"
        for d in decisions
    ]
    return '<ol class="decisions">' + "".join(items) + "</ol>"
