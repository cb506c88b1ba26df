"""Pipeline timelines (Gantt charts) and the time–energy frontier as one self-contained HTML file.

Reads a :class:`perwatt.train.simulate.SimulationReport` and writes inline SVG — no JavaScript,
no external fonts, styles or images — so the file can be mailed, attached to a ticket or opened
offline. Each instruction is a bar (one row per pipeline stage, time to the right) labelled
``F3``/``B3`` (forward/backward of microbatch 3) where it fits — ``F3c1`` for model chunk 1 of an
interleaved schedule, whose odd chunks also get a dashed outline; hovering shows its clock, time,
energy and power (SVG ``<title>``). With recomputation a backward bar includes the forward it
re-runs (one bar, priced backward + forward, as the planner prices it). The same iteration is
drawn twice, coloured by SM clock and by power, before (every GPU at its maximum clock) and
after the plan, on one time axis so that a slowdown is visible. Gaps are where a GPU blocks on
communication, at ``P_block``.

Colour maps are sampled from matplotlib's *viridis* (clock) and *magma* (power) (Smith & van der
Walt, 2015, CC0): perceptually uniform and readable in greyscale.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path

from perwatt._files import atomic_write_text
from perwatt.report.svg import ticks_inside as nice_ticks
from perwatt.train.simulate import SimulationReport, Timeline

# Five anchors of each map; colours in between are linear interpolations in sRGB.
_VIRIDIS = ("#440154", "#3b528b", "#21918c", "#5ec962", "#fde725")
_MAGMA = ("#000004", "#51127c", "#b73779", "#fc8961", "#fcfdbf")

_ROW_H = 22
_ROW_GAP = 4
_LEFT = 70
_RIGHT = 20
_TOP = 26
_BOTTOM = 34


def _hex(c: str) -> tuple[int, int, int]:
    return int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16)


def colour(x: float, cmap: Sequence[str] = _VIRIDIS) -> str:
    """Colour for ``x`` in [0, 1] (clamped) from a list of anchor colours."""
    if not math.isfinite(x):
        x = 0.0
    x = min(1.0, max(0.0, x))
    pos = x * (len(cmap) - 1)
    i = min(int(pos), len(cmap) - 2)
    f = pos - i
    a, b = _hex(cmap[i]), _hex(cmap[i + 1])
    r, g, bl = (round(a[k] + (b[k] - a[k]) * f) for k in range(3))
    return f"#{r:02x}{g:02x}{bl:02x}"


def _text_colour(fill: str) -> str:
    r, g, b = _hex(fill)
    # Relative luminance (ITU-R BT.709 weights) decides black or white text.
    return "#000" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 140 else "#fff"


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def gantt_svg(
    tl: Timeline,
    *,
    colour_by: str = "freq",
    t_max_s: float | None = None,
    value_range: tuple[float, float] | None = None,
    width: int = 1100,
    title: str = "",
) -> str:
    """One Gantt chart as an ``<svg>`` string. ``colour_by``: ``freq`` or ``power``."""
    if colour_by not in ("freq", "power"):
        raise ValueError(f"colour_by must be 'freq' or 'power', got {colour_by!r}")
    t_max = t_max_s if t_max_s is not None else tl.iteration_time_s
    t_max = max(t_max, tl.iteration_time_s)
    vals = [b.freq_mhz if colour_by == "freq" else b.power_w for b in tl.bars]
    lo, hi = value_range if value_range is not None else (min(vals), max(vals))
    cmap = _VIRIDIS if colour_by == "freq" else _MAGMA
    plot_w = width - _LEFT - _RIGHT
    height = _TOP + tl.num_stages * (_ROW_H + _ROW_GAP) + _BOTTOM

    def x(t: float) -> float:
        return _LEFT + plot_w * t / t_max

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="{_LEFT}" y="16" class="t">{html.escape(title)}</text>',
    ]
    for s in range(tl.num_stages):
        y = _TOP + s * (_ROW_H + _ROW_GAP)
        out.append(
            f'<rect x="{_LEFT}" y="{y}" width="{x(tl.iteration_time_s) - _LEFT:.2f}" '
            f'height="{_ROW_H}" class="idle"><title>stage {s}: blocked at '
            f"{tl.p_block_w[s]:g} W when no bar</title></rect>"
        )
        out.append(
            f'<text x="{_LEFT - 6}" y="{y + _ROW_H * 0.7:.1f}" class="lbl" text-anchor="end">stage {s}</text>'
        )
    for b, v in zip(tl.bars, vals, strict=True):
        y = _TOP + b.stage * (_ROW_H + _ROW_GAP)
        fill = colour((v - lo) / (hi - lo) if hi > lo else 1.0, cmap)
        x0, x1 = x(b.start_s), x(b.end_s)
        tip = (
            f"stage {b.stage} {b.instruction} mb {b.microbatch}"
            + (f" chunk {b.chunk}" if tl.chunks > 1 or b.chunk else "")
            + (" (re-runs its forward first)" if b.recomputed else "")
            + f": {b.freq_mhz} MHz, {b.duration_s * 1e3:.2f} ms, {b.energy_j:.3g} J, "
            f"{b.power_w:.0f} W, start {b.start_s * 1e3:.2f} ms"
        )
        cls = "f" if b.instruction == "forward" else "b"
        # The fill is the clock or the power, so the chunk shows in the outline and the label.
        cls += " odd" if b.chunk % 2 else ""
        out.append(
            f'<rect x="{x0:.2f}" y="{y}" width="{max(0.5, x1 - x0):.2f}" height="{_ROW_H}" '
            f'fill="{fill}" class="{cls}"><title>{html.escape(tip)}</title></rect>'
        )
        if x1 - x0 > max(18.0, 6.5 * len(b.tag(tl.chunks))):  # ~6.5 px a character
            out.append(
                f'<text x="{(x0 + x1) / 2:.2f}" y="{y + _ROW_H * 0.7:.1f}" class="bar" '
                f'text-anchor="middle" fill="{_text_colour(fill)}">{b.tag(tl.chunks)}</text>'
            )
    axis_y = _TOP + tl.num_stages * (_ROW_H + _ROW_GAP) + 2
    out.append(f'<line x1="{_LEFT}" y1="{axis_y}" x2="{_LEFT + plot_w}" y2="{axis_y}" class="ax"/>')
    for t in nice_ticks(0.0, t_max):
        out.append(
            f'<line x1="{x(t):.2f}" y1="{axis_y}" x2="{x(t):.2f}" y2="{axis_y + 4}" class="ax"/>'
            f'<text x="{x(t):.2f}" y="{axis_y + 16}" class="lbl" text-anchor="middle">{_fmt(t)} s</text>'
        )
    xe = x(tl.iteration_time_s)
    out.append(
        f'<line x1="{xe:.2f}" y1="{_TOP - 4}" x2="{xe:.2f}" y2="{axis_y}" class="end"/>'
        f'<text x="{xe:.2f}" y="{_TOP - 6}" class="lbl" text-anchor="end">'
        f"T = {tl.iteration_time_s:.4f} s</text>"
    )
    out.append("</svg>")
    return "\n".join(out)


def colourbar_svg(
    lo: float, hi: float, unit: str, *, cmap: Sequence[str] = _VIRIDIS, width: int = 320
) -> str:
    """A horizontal colour bar from ``lo`` to ``hi``."""
    n = 32
    w = (width - 20) / n
    cells = "".join(
        f'<rect x="{10 + i * w:.2f}" y="4" width="{w + 0.5:.2f}" height="12" fill="{colour(i / (n - 1), cmap)}"/>'
        for i in range(n)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="34" viewBox="0 0 {width} 34">'
        f'{cells}<text x="10" y="30" class="lbl">{lo:.0f} {unit}</text>'
        f'<text x="{width - 10}" y="30" class="lbl" text-anchor="end">{hi:.0f} {unit}</text></svg>'
    )


def frontier_svg(
    frontier: Sequence[tuple[float, float]],
    *,
    chosen: tuple[float, float],
    baseline: tuple[float, float],
    time_limit_s: float | None = None,
    width: int = 640,
    height: int = 380,
) -> str:
    """The time–energy frontier as a line, with the chosen point and the all-max baseline."""
    pts = sorted(frontier)
    xs = [p[0] for p in pts] + [chosen[0], baseline[0]]
    ys = [p[1] for p in pts] + [chosen[1], baseline[1]]
    if time_limit_s is not None and math.isfinite(time_limit_s):
        xs.append(time_limit_s)
    x_lo, x_hi = min(xs), max(xs)
    y_lo, y_hi = min(ys), max(ys)
    pad_x = (x_hi - x_lo) * 0.05 or 0.05 * max(abs(x_hi), 1e-9)
    pad_y = (y_hi - y_lo) * 0.08 or 0.05 * max(abs(y_hi), 1e-9)
    x_lo, x_hi, y_lo, y_hi = x_lo - pad_x, x_hi + pad_x, y_lo - pad_y, y_hi + pad_y
    left, right, top, bottom = 70, 20, 20, 44

    def px(t: float) -> float:
        return left + (width - left - right) * (t - x_lo) / (x_hi - x_lo)

    def py(e: float) -> float:
        return top + (height - top - bottom) * (1 - (e - y_lo) / (y_hi - y_lo))

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="time-energy frontier">'
    ]
    for t in nice_ticks(x_lo, x_hi):
        out.append(
            f'<line x1="{px(t):.2f}" y1="{top}" x2="{px(t):.2f}" y2="{height - bottom}" class="grid"/>'
            f'<text x="{px(t):.2f}" y="{height - bottom + 16}" class="lbl" text-anchor="middle">{_fmt(t)}</text>'
        )
    for e in nice_ticks(y_lo, y_hi):
        out.append(
            f'<line x1="{left}" y1="{py(e):.2f}" x2="{width - right}" y2="{py(e):.2f}" class="grid"/>'
            f'<text x="{left - 6}" y="{py(e) + 4:.2f}" class="lbl" text-anchor="end">{_fmt(e)}</text>'
        )
    out.append(
        f'<text x="{(left + width - right) / 2}" y="{height - 6}" class="lbl" text-anchor="middle">'
        "iteration time (s)</text>"
        f'<text x="14" y="{(top + height - bottom) / 2}" class="lbl" text-anchor="middle" '
        f'transform="rotate(-90 14 {(top + height - bottom) / 2})">energy per iteration (J)</text>'
    )
    if time_limit_s is not None and math.isfinite(time_limit_s):
        out.append(
            f'<line x1="{px(time_limit_s):.2f}" y1="{top}" x2="{px(time_limit_s):.2f}" '
            f'y2="{height - bottom}" class="limit"><title>time limit {time_limit_s:.4f} s</title></line>'
        )
    path = " ".join(
        f"{'M' if i == 0 else 'L'}{px(t):.2f},{py(e):.2f}" for i, (t, e) in enumerate(pts)
    )
    out.append(f'<path d="{path}" class="front"><title>frontier ({len(pts)} points)</title></path>')
    bx, by = px(baseline[0]), py(baseline[1])
    out.append(
        f'<rect x="{bx - 5:.2f}" y="{by - 5:.2f}" width="10" height="10" class="base">'
        f"<title>all max clock: {baseline[0]:.4f} s, {baseline[1]:.1f} J</title></rect>"
    )
    cx, cy = px(chosen[0]), py(chosen[1])
    out.append(
        f'<circle cx="{cx:.2f}" cy="{cy:.2f}" r="6" class="chosen">'
        f"<title>chosen: {chosen[0]:.4f} s, {chosen[1]:.1f} J</title></circle>"
    )
    lx = width - right - 170
    out.append(
        f'<rect x="{lx}" y="{top + 6}" width="10" height="10" class="base"/>'
        f'<text x="{lx + 16}" y="{top + 15}" class="lbl">all GPUs at max clock</text>'
        f'<circle cx="{lx + 5}" cy="{top + 29}" r="5" class="chosen"/>'
        f'<text x="{lx + 16}" y="{top + 33}" class="lbl">chosen plan</text>'
    )
    out.append("</svg>")
    return "\n".join(out)


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
pre { background: #f6f6f6; padding: 10px; font-size: 13px; }
table { border-collapse: collapse; font-size: 13px; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
.note { color: #8a4b00; font-size: 13px; }
svg text { font-size: 11px; font-family: inherit; }
svg text.t { font-size: 13px; font-weight: 600; }
rect.idle { fill: #eeeeee; }
rect.f { stroke: #ffffff; stroke-width: 0.6; }
rect.b { stroke: #222222; stroke-width: 0.6; }
rect.odd { stroke-dasharray: 3 1.5; stroke-width: 1.4; }
line.ax { stroke: #444; } line.end { stroke: #c00; stroke-dasharray: 3 2; }
line.grid { stroke: #e4e4e4; } line.limit { stroke: #c00; stroke-dasharray: 4 3; }
path.front { fill: none; stroke: #21918c; stroke-width: 2; }
rect.base { fill: #fc8961; stroke: #333; } circle.chosen { fill: #440154; stroke: #fff; stroke-width: 1.5; }
"""


def stage_table_html(report: SimulationReport) -> str:
    """Per stage: busy time, compute and blocking energy, before and after (both counted to
    their own iteration end), and the clocks the plan uses."""
    head = (
        "<tr><th>stage</th><th>busy before (s)</th><th>busy after (s)</th>"
        "<th>energy before (J)</th><th>energy after (J)</th><th>saved</th>"
        "<th>plan clocks (MHz)</th></tr>"
    )
    rows = []
    for s in range(report.num_stages):
        cells = []
        energies = []
        for tl in (report.before, report.after):
            busy = tl.busy_s(s)
            compute = sum(b.energy_j for b in tl.bars if b.stage == s)
            energies.append(compute + tl.p_block_w[s] * (tl.iteration_time_s - busy))
            cells.append(busy)
        freqs = sorted({b.freq_mhz for b in report.after.bars if b.stage == s})
        clocks = f"{freqs[0]}–{freqs[-1]}" if len(freqs) > 1 else str(freqs[0])
        saved = 100.0 * (1 - energies[1] / energies[0]) if energies[0] > 0 else 0.0
        rows.append(
            f"<tr><td>{s}</td><td>{cells[0]:.4f}</td><td>{cells[1]:.4f}</td>"
            f"<td>{energies[0]:.1f}</td><td>{energies[1]:.1f}</td><td>{saved:.1f}%</td>"
            f"<td>{clocks}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def render_html(report: SimulationReport, *, title: str = "perwatt train simulate") -> str:
    """The whole report as one HTML document (a string)."""
    before, after = report.before, report.after
    t_max = max(before.iteration_time_s, after.iteration_time_s)
    freqs = [b.freq_mhz for tl in (before, after) for b in tl.bars]
    powers = [b.power_w for tl in (before, after) for b in tl.bars]
    f_rng = (float(min(freqs)), float(max(freqs)))
    p_rng = (min(powers), max(powers))
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        '<p class="note">Source: <b>simulated</b> — a replay of the stage profile\'s time and '
        "energy on the schedule DAG, with blocked GPUs at P_block. Not a measurement of training.</p>",
        "<pre>" + esc("\n".join(report.summary_lines())) + "</pre>",
        "<h2>Pipeline timeline coloured by SM clock</h2>",
        colourbar_svg(*f_rng, "MHz", cmap=_VIRIDIS),
        gantt_svg(
            before,
            colour_by="freq",
            t_max_s=t_max,
            value_range=f_rng,
            title="before: all GPUs at max clock",
        ),
        gantt_svg(
            after,
            colour_by="freq",
            t_max_s=t_max,
            value_range=f_rng,
            title=f"after: {report.target}",
        ),
        "<h2>Pipeline timeline coloured by power</h2>",
        colourbar_svg(*p_rng, "W", cmap=_MAGMA),
        gantt_svg(
            before,
            colour_by="power",
            t_max_s=t_max,
            value_range=p_rng,
            title="before: all GPUs at max clock",
        ),
        gantt_svg(
            after,
            colour_by="power",
            t_max_s=t_max,
            value_range=p_rng,
            title=f"after: {report.target}",
        ),
        "<p>Bars: F<i>n</i>/B<i>n</i> = forward/backward of microbatch <i>n</i> (backward bars have "
        "a dark outline)"
        + (
            f"; F<i>n</i>c<i>k</i> = model chunk <i>k</i> of {report.chunks} per GPU "
            "(odd chunks have a dashed outline)"
            if report.chunks > 1
            else ""
        )
        + (
            "; each backward bar includes the forward it recomputes (backward + forward "
            "time and energy at its clock)"
            if report.recompute
            else ""
        )
        + "; grey = blocked on communication. Hover a bar for its clock, time, energy and "
        "power.</p>",
        "<h2>Per stage</h2>",
        stage_table_html(report),
        "<p>Energy = the stage's instructions + P_block × its blocked time, each run to its own "
        "iteration end (the summary's saving counts both runs to the same horizon).</p>",
        "<h2>Iteration time–energy frontier</h2>",
        frontier_svg(
            report.frontier,
            chosen=report.chosen,
            baseline=report.baseline_replay,
            time_limit_s=report.time_limit_s,
        ),
        "<p>Line: the planner's frontier (model energy at each iteration time). Square: every "
        "GPU at its maximum clock (profile replay). Dot: the chosen point. Dashed: the time limit.</p>",
        "</body></html>",
    ]
    return "\n".join(parts)


def write_html(
    report: SimulationReport, path: str | Path, *, title: str = "perwatt train simulate"
) -> Path:
    """Write :func:`render_html` to ``path`` atomically (temp file, then rename)."""
    return atomic_write_text(path, render_html(report, title=title))
