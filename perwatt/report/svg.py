"""Plot primitives that return SVG text: axes with nice ticks, lines, scatter, shaded bands, legends.

Pure functions, no state, no JavaScript, no external fonts or scripts, so the HTML report that
inlines them works offline and in any browser (and in a mail client). A chart is assembled as::

    frame = make_frame(xs, ys, title="Power", x_label="time (s)", y_label="power (W)")
    svg = document(frame, axes(frame), band(frame, 3, 9, label="steady state"),
                   line(frame, xs, ys, color=PALETTE[0]), legend(frame, [("GPU 0", PALETTE[0], "line")]))

Every piece of text passes through :func:`esc`; numbers are formatted with a fixed number of
significant digits so a file diff between two reports shows real changes only.

Ticks use Heckbert's "nice numbers" (Graphics Gems, 1990): steps of 1, 2 or 5 x 10^k.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from perwatt.errors import ConfigError

# Okabe & Ito (2008), "Color Universal Design": distinguishable with the common colour-vision
# deficiencies. https://jfly.uni-koeln.de/color/
PALETTE: Final = (
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#000000",  # black
    "#F0E442",  # yellow (last: low contrast on white)
)
FONT: Final = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif"
Marker = Literal["circle", "square", "diamond", "triangle"]
MARKERS: Final[tuple[Marker, ...]] = ("circle", "square", "diamond", "triangle")


def esc(text: object) -> str:
    """Escape text for SVG/HTML content and attribute values."""
    return html.escape(str(text), quote=True)


def fmt(v: float | None, digits: int = 4) -> str:
    """A number for humans: ``digits`` significant digits, no exponent for everyday magnitudes."""
    if v is None or not math.isfinite(v):
        return "–"
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e6 or a < 1e-3:
        return f"{v:.{max(1, digits - 1)}e}"
    decimals = max(0, digits - 1 - math.floor(math.log10(a)))
    s = f"{v:.{decimals}f}"
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s


def _c(v: float) -> str:
    """A pixel coordinate, two decimals."""
    return f"{v:.2f}".rstrip("0").rstrip(".")


def _nice(x: float, *, round_: bool) -> float:
    if x <= 0:
        return 1.0
    exp = math.floor(math.log10(x))
    f = x / 10**exp
    if round_:
        nf = 1 if f < 1.5 else 2 if f < 3 else 5 if f < 7 else 10
    else:
        nf = 1 if f <= 1 else 2 if f <= 2 else 5 if f <= 5 else 10
    return nf * 10.0**exp


def _tick_step(lo: float, hi: float, n: int) -> float:
    """The round step (1, 2 or 5 x 10^k) that puts about ``n`` ticks on [lo, hi]."""
    return _nice(_nice(hi - lo, round_=False) / (n - 1), round_=True)


def ticks_inside(lo: float, hi: float, n: int = 6) -> list[float]:
    """About ``n`` round tick values inside [lo, hi], for an axis whose range is fixed (a
    timeline from 0 to its end): the steps of :func:`nice_ticks`, none outside the range.
    ``[lo]`` when the range is empty or not finite."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo or n < 2:
        return [lo]
    step = _tick_step(lo, hi, n)
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    decimals = max(0, -math.floor(math.log10(step)) + 1)
    return [round(k * step, decimals) + 0.0 for k in range(first, last + 1)]


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi] (steps of 1, 2 or 5 x 10^k)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ConfigError(f"axis range must be finite, got [{lo}, {hi}]")
    if n < 2:
        raise ConfigError(f"need at least 2 ticks, got {n}")
    if hi < lo:
        lo, hi = hi, lo
    # A range within float noise of its magnitude (a simulated PUE of 1.2 and 1.2 + 1e-13) has
    # no round steps that survive rounding: draw it as the flat series it is.
    if hi - lo <= 1e-9 * max(abs(lo), abs(hi)):
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    step = _tick_step(lo, hi, n)
    start = math.floor(lo / step) * step
    stop = math.ceil(hi / step) * step
    decimals = max(0, -math.floor(math.log10(step)) + 1)
    count = round((stop - start) / step)
    return [round(start + i * step, decimals) + 0.0 for i in range(count + 1)]


@dataclass(frozen=True, slots=True, kw_only=True)
class Frame:
    """A chart's pixel box and data ranges; maps data to pixel coordinates."""

    width: float = 560
    height: float = 320
    left: float = 64
    right: float = 16
    top: float = 34
    bottom: float = 48
    x_ticks: tuple[float, ...]
    y_ticks: tuple[float, ...]
    title: str = ""
    x_label: str = ""
    y_label: str = ""

    def __post_init__(self) -> None:
        if len(self.x_ticks) < 2 or len(self.y_ticks) < 2:
            raise ConfigError("a frame needs at least two ticks per axis")
        if self.x_ticks[-1] <= self.x_ticks[0] or self.y_ticks[-1] <= self.y_ticks[0]:
            raise ConfigError("ticks must increase")
        if self.width <= self.left + self.right or self.height <= self.top + self.bottom:
            raise ConfigError("frame too small for its margins")

    @property
    def x_lo(self) -> float:
        return self.x_ticks[0]

    @property
    def x_hi(self) -> float:
        return self.x_ticks[-1]

    @property
    def y_lo(self) -> float:
        return self.y_ticks[0]

    @property
    def y_hi(self) -> float:
        return self.y_ticks[-1]

    @property
    def plot_x0(self) -> float:
        return self.left

    @property
    def plot_x1(self) -> float:
        return self.width - self.right

    @property
    def plot_y0(self) -> float:
        return self.top

    @property
    def plot_y1(self) -> float:
        return self.height - self.bottom

    def sx(self, x: float) -> float:
        """Data x to pixel x."""
        return self.plot_x0 + (x - self.x_lo) / (self.x_hi - self.x_lo) * (
            self.plot_x1 - self.plot_x0
        )

    def sy(self, y: float) -> float:
        """Data y to pixel y (SVG's y grows downwards)."""
        return self.plot_y1 - (y - self.y_lo) / (self.y_hi - self.y_lo) * (
            self.plot_y1 - self.plot_y0
        )


def _finite_values(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def make_frame(
    xs: Sequence[float | None],
    ys: Sequence[float | None],
    *,
    title: str = "",
    x_label: str = "",
    y_label: str = "",
    x_zero: bool = False,
    y_zero: bool = True,
    width: float = 560,
    height: float = 320,
    right: float = 16,
) -> Frame:
    """A frame whose nice-tick ranges cover all finite ``xs`` and ``ys`` (and 0 when asked).

    ``right`` is the right margin in pixels; widen it to hold a ``legend(position="right")``.
    """
    fx, fy = _finite_values(xs), _finite_values(ys)
    if x_zero:
        fx.append(0.0)
    if y_zero:
        fy.append(0.0)
    if not fx:
        fx = [0.0, 1.0]
    if not fy:
        fy = [0.0, 1.0]
    y_ticks = nice_ticks(min(fy), max(fy))
    if len(y_ticks) >= 2 and y_ticks[-1] - max(fy) < 0.02 * (y_ticks[-1] - y_ticks[0]):
        # The highest value sits on the top edge, where a flat series (a power cap, a
        # simulated constant) would merge with the frame: add one tick of headroom.
        step = y_ticks[-1] - y_ticks[-2]
        y_ticks.append(round(y_ticks[-1] + step, max(0, -math.floor(math.log10(step)) + 1)))
    return Frame(
        width=width,
        height=height,
        right=right,
        x_ticks=tuple(nice_ticks(min(fx), max(fx))),
        y_ticks=tuple(y_ticks),
        title=title,
        x_label=x_label,
        y_label=y_label,
    )


def axes(frame: Frame, *, grid: bool = True) -> str:
    """Axis lines, ticks with labels, optional grid, title and axis labels."""
    f = frame
    out: list[str] = ['<g class="axes" font-size="11" fill="#333">']
    for t in f.y_ticks:
        y = _c(f.sy(t))
        if grid:
            out.append(
                f'<line x1="{_c(f.plot_x0)}" y1="{y}" x2="{_c(f.plot_x1)}" y2="{y}" '
                'stroke="#e3e3e3" stroke-width="1"/>'
            )
        out.append(
            f'<text x="{_c(f.plot_x0 - 6)}" y="{y}" text-anchor="end" '
            f'dominant-baseline="middle">{esc(fmt(t))}</text>'
        )
    for t in f.x_ticks:
        x = _c(f.sx(t))
        if grid:
            out.append(
                f'<line x1="{x}" y1="{_c(f.plot_y0)}" x2="{x}" y2="{_c(f.plot_y1)}" '
                'stroke="#f0f0f0" stroke-width="1"/>'
            )
        out.append(
            f'<line x1="{x}" y1="{_c(f.plot_y1)}" x2="{x}" y2="{_c(f.plot_y1 + 4)}" stroke="#555"/>'
        )
        out.append(
            f'<text x="{x}" y="{_c(f.plot_y1 + 16)}" text-anchor="middle">{esc(fmt(t))}</text>'
        )
    out.append(
        f'<path d="M{_c(f.plot_x0)},{_c(f.plot_y0)} V{_c(f.plot_y1)} H{_c(f.plot_x1)}" '
        'fill="none" stroke="#555" stroke-width="1"/>'
    )
    if f.title:
        out.append(
            f'<text x="{_c(f.plot_x0)}" y="{_c(f.top - 14)}" font-size="13" font-weight="600" '
            f'fill="#111">{esc(f.title)}</text>'
        )
    if f.x_label:
        cx = _c((f.plot_x0 + f.plot_x1) / 2)
        out.append(
            f'<text x="{cx}" y="{_c(f.height - 10)}" text-anchor="middle">{esc(f.x_label)}</text>'
        )
    if f.y_label:
        cy = _c((f.plot_y0 + f.plot_y1) / 2)
        out.append(
            f'<text transform="translate(14,{cy}) rotate(-90)" text-anchor="middle">'
            f"{esc(f.y_label)}</text>"
        )
    out.append("</g>")
    return "".join(out)


def _clip(frame: Frame, x: float, y: float) -> tuple[float, float]:
    """Clamp a point into the plot box so an outlier draws at the edge, not outside the SVG."""
    px = min(max(frame.sx(x), frame.plot_x0), frame.plot_x1)
    py = min(max(frame.sy(y), frame.plot_y0), frame.plot_y1)
    return px, py


def decimate(
    xs: Sequence[float], ys: Sequence[float], max_points: int = 1500
) -> tuple[list[float], list[float]]:
    """Thin a long series for drawing, keeping each bucket's min and max so peaks stay visible."""
    if len(xs) != len(ys):
        raise ConfigError(f"x and y lengths differ ({len(xs)} vs {len(ys)})")
    n = len(xs)
    if n <= max_points:
        return list(xs), list(ys)
    buckets = max(1, max_points // 2)
    size = n / buckets
    ox: list[float] = []
    oy: list[float] = []
    for b in range(buckets):
        i0, i1 = int(b * size), min(n, int((b + 1) * size))
        if i1 <= i0:
            continue
        seg = range(i0, i1)
        lo = min(seg, key=lambda i: ys[i])
        hi = max(seg, key=lambda i: ys[i])
        for i in sorted({lo, hi}):
            ox.append(xs[i])
            oy.append(ys[i])
    return ox, oy


def line(
    frame: Frame,
    xs: Sequence[float | None],
    ys: Sequence[float | None],
    *,
    color: str = PALETTE[0],
    width: float = 1.6,
    dash: str | None = None,
    label: str | None = None,
) -> str:
    """A polyline through the points; a None/NaN value breaks the line into segments."""
    if len(xs) != len(ys):
        raise ConfigError(f"x and y lengths differ ({len(xs)} vs {len(ys)})")
    segments: list[list[tuple[float, float]]] = [[]]
    for x, y in zip(xs, ys, strict=True):
        if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
            if segments[-1]:
                segments.append([])
            continue
        segments[-1].append(_clip(frame, x, y))
    d = " ".join("M" + " L".join(f"{_c(px)},{_c(py)}" for px, py in seg) for seg in segments if seg)
    if not d:
        return ""
    dash_attr = f' stroke-dasharray="{esc(dash)}"' if dash else ""
    title = f"<title>{esc(label)}</title>" if label else ""
    return (
        f'<path d="{d}" fill="none" stroke="{esc(color)}" stroke-width="{_c(width)}" '
        f'stroke-linejoin="round"{dash_attr}>{title}</path>'
    )


def _marker(kind: Marker, px: float, py: float, r: float, fill: str, stroke: str) -> str:
    common = f'fill="{esc(fill)}" stroke="{esc(stroke)}" stroke-width="1.3"'
    if kind == "circle":
        return f'<circle cx="{_c(px)}" cy="{_c(py)}" r="{_c(r)}" {common}'
    if kind == "square":
        return f'<rect x="{_c(px - r)}" y="{_c(py - r)}" width="{_c(2 * r)}" height="{_c(2 * r)}" {common}'
    if kind == "diamond":
        pts = f"{_c(px)},{_c(py - r * 1.3)} {_c(px + r * 1.3)},{_c(py)} {_c(px)},{_c(py + r * 1.3)} {_c(px - r * 1.3)},{_c(py)}"
        return f'<polygon points="{pts}" {common}'
    pts = f"{_c(px)},{_c(py - r * 1.3)} {_c(px + r * 1.2)},{_c(py + r)} {_c(px - r * 1.2)},{_c(py + r)}"
    return f'<polygon points="{pts}" {common}'


def scatter(
    frame: Frame,
    xs: Sequence[float | None],
    ys: Sequence[float | None],
    *,
    color: str = PALETTE[0],
    marker: Marker = "circle",
    radius: float = 4.0,
    hollow: bool = False,
    tooltips: Sequence[str] | None = None,
) -> str:
    """Markers at the points (skipping None/NaN); each may carry a hover tooltip (<title>)."""
    if len(xs) != len(ys):
        raise ConfigError(f"x and y lengths differ ({len(xs)} vs {len(ys)})")
    if tooltips is not None and len(tooltips) != len(xs):
        raise ConfigError("one tooltip per point")
    if marker not in MARKERS:
        raise ConfigError(f"marker must be one of {MARKERS}, got {marker!r}")
    out: list[str] = []
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
            continue
        px, py = _clip(frame, x, y)
        fill = "#fff" if hollow else color
        tip = f"<title>{esc(tooltips[i])}</title>" if tooltips is not None else ""
        shape = _marker(marker, px, py, radius, fill, color)
        out.append(f"{shape}>{tip}</{shape.split()[0][1:]}>")
    return "".join(out)


def band(
    frame: Frame,
    x0: float,
    x1: float,
    *,
    color: str = "#2a9d8f",
    opacity: float = 0.14,
    label: str | None = None,
) -> str:
    """A vertical shaded band from ``x0`` to ``x1`` (e.g. the steady-state window), labelled."""
    if not (math.isfinite(x0) and math.isfinite(x1)):
        raise ConfigError("band edges must be finite")
    if not 0 <= opacity <= 1:
        raise ConfigError(f"opacity must be in [0, 1], got {opacity}")
    a, b = sorted((x0, x1))
    p0 = min(max(frame.sx(a), frame.plot_x0), frame.plot_x1)
    p1 = min(max(frame.sx(b), frame.plot_x0), frame.plot_x1)
    out = [
        f'<rect x="{_c(p0)}" y="{_c(frame.plot_y0)}" width="{_c(max(0.0, p1 - p0))}" '
        f'height="{_c(frame.plot_y1 - frame.plot_y0)}" fill="{esc(color)}" '
        f'fill-opacity="{_c(opacity)}" stroke="{esc(color)}" stroke-opacity="0.5" '
        'stroke-dasharray="4 3">'
    ]
    out.append(f"<title>{esc(label)}</title></rect>" if label else "</rect>")
    if label:
        out.append(
            f'<text x="{_c((p0 + p1) / 2)}" y="{_c(frame.plot_y1 - 6)}" text-anchor="middle" '
            f'font-size="11" fill="{esc(color)}">{esc(label)}</text>'
        )
    return "".join(out)


LegendKind = Literal["line", "dashed", "band"] | Marker


def legend(
    frame: Frame,
    entries: Sequence[tuple[str, str, LegendKind]],
    *,
    position: Literal["top-right", "top-left", "bottom-right", "right"] = "top-right",
) -> str:
    """A boxed legend: (label, colour, kind) per entry; kind is a line style, band or marker.

    ``"right"`` draws it in the frame's right margin, outside the data (make the margin wide
    enough with ``make_frame(right=...)``); the other positions draw over the plot area.
    """
    if not entries:
        return ""
    row_h = 16.0
    w = 32 + 6.4 * max(len(label) for label, _, _ in entries)
    h = 8 + row_h * len(entries)
    if position == "right":
        x, y = frame.plot_x1 + 10, frame.plot_y0
    elif position == "top-left":
        x, y = frame.plot_x0 + 8, frame.plot_y0 + 6
    elif position == "bottom-right":
        x, y = frame.plot_x1 - w - 6, frame.plot_y1 - h - 6
    else:
        x, y = frame.plot_x1 - w - 6, frame.plot_y0 + 6
    out = [
        f'<g class="legend" font-size="11"><rect x="{_c(x)}" y="{_c(y)}" width="{_c(w)}" '
        f'height="{_c(h)}" fill="#fff" fill-opacity="0.9" stroke="#ccc"/>'
    ]
    for i, (label, color, kind) in enumerate(entries):
        cy = y + 4 + row_h * i + row_h / 2
        sx = x + 8
        if kind in ("line", "dashed"):
            dash = ' stroke-dasharray="4 3"' if kind == "dashed" else ""
            out.append(
                f'<line x1="{_c(sx)}" y1="{_c(cy)}" x2="{_c(sx + 16)}" y2="{_c(cy)}" '
                f'stroke="{esc(color)}" stroke-width="2"{dash}/>'
            )
        elif kind == "band":
            out.append(
                f'<rect x="{_c(sx)}" y="{_c(cy - 5)}" width="16" height="10" fill="{esc(color)}" '
                f'fill-opacity="0.25" stroke="{esc(color)}"/>'
            )
        elif kind in MARKERS:
            shape = _marker(kind, sx + 8, cy, 4.0, color, color)
            out.append(shape + "/>")
        else:
            raise ConfigError(f"unknown legend kind {kind!r}")
        out.append(
            f'<text x="{_c(sx + 22)}" y="{_c(cy)}" dominant-baseline="middle" fill="#222">'
            f"{esc(label)}</text>"
        )
    out.append("</g>")
    return "".join(out)


def annotate(frame: Frame, x: float, y: float, text: str, *, color: str = "#333") -> str:
    """A small text label next to a data point."""
    px, py = _clip(frame, x, y)
    return (
        f'<text x="{_c(px + 6)}" y="{_c(py - 6)}" font-size="10" fill="{esc(color)}">'
        f"{esc(text)}</text>"
    )


def document(frame: Frame, *parts: str, description: str | None = None) -> str:
    """Wrap parts in an ``<svg>`` element sized to the frame, with an accessible name."""
    name = description or frame.title or "chart"
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_c(frame.width)} '
        f'{_c(frame.height)}" width="{_c(frame.width)}" height="{_c(frame.height)}" '
        f'role="img" aria-label="{esc(name)}" font-family="{esc(FONT)}">'
        f"<title>{esc(name)}</title>" + "".join(parts) + "</svg>"
    )


def empty_chart(frame: Frame, message: str) -> str:
    """A frame with a centred message instead of data (e.g. "no power timeline recorded")."""
    return document(
        frame,
        axes(frame, grid=False),
        f'<text x="{_c((frame.plot_x0 + frame.plot_x1) / 2)}" '
        f'y="{_c((frame.plot_y0 + frame.plot_y1) / 2)}" text-anchor="middle" font-size="13" '
        f'fill="#777">{esc(message)}</text>',
    )


__all__ = [
    "MARKERS",
    "PALETTE",
    "Frame",
    "annotate",
    "axes",
    "band",
    "decimate",
    "document",
    "empty_chart",
    "esc",
    "fmt",
    "legend",
    "line",
    "make_frame",
    "nice_ticks",
    "scatter",
    "ticks_inside",
]
