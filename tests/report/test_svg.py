from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest

from perwatt.errors import ConfigError
from perwatt.report import svg

NS = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize(
    ("lo", "hi", "expected"),
    [
        (0.0, 1.0, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        (0.0, 97.0, [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]),
        (3.2, 7.9, [3.0, 4.0, 5.0, 6.0, 7.0, 8.0]),
        (-0.013, 0.041, [-0.02, 0.0, 0.02, 0.04, 0.06]),
        (250.0, 700.0, [200.0, 300.0, 400.0, 500.0, 600.0, 700.0]),
    ],
)
def test_nice_ticks(lo: float, hi: float, expected: list[float]) -> None:
    ticks = svg.nice_ticks(lo, hi)
    assert ticks == pytest.approx(expected)
    assert ticks[0] <= lo and ticks[-1] >= hi


def test_nice_ticks_degenerate_and_bad() -> None:
    t = svg.nice_ticks(5.0, 5.0)
    assert t[0] < 5.0 < t[-1]
    assert svg.nice_ticks(9.0, 1.0)[0] <= 1.0
    with pytest.raises(ConfigError):
        svg.nice_ticks(0.0, math.inf)


@pytest.mark.parametrize("noise", [1e-15, 1e-13, 1e-10])
def test_a_flat_series_with_float_noise_gets_a_frame(noise: float) -> None:
    """A simulated PUE of 1.2 that drifts by 1e-13 over a day: the facility report's chart
    raised "ticks must increase" (rounded ticks collapsed onto each other)."""
    frame = svg.make_frame([0.0, 2.0], [1.2, 1.2 + noise], y_zero=False)
    assert all(b > a for a, b in zip(frame.y_ticks, frame.y_ticks[1:], strict=False))
    assert frame.y_ticks[0] <= 1.2 <= 1.2 + noise <= frame.y_ticks[-1]


def test_fmt() -> None:
    assert svg.fmt(0.30000000000000004) == "0.3"
    assert svg.fmt(1234.5678) == "1235"
    assert svg.fmt(0.012345) == "0.01235"
    assert svg.fmt(2.5e7) == "2.500e+07"
    assert svg.fmt(float("nan")) == "–"
    assert svg.fmt(None) == "–"


def test_frame_maps_data_to_pixels() -> None:
    f = svg.make_frame([0, 10], [0, 100], width=600, height=400)
    assert f.x_ticks[0] == 0 and f.x_ticks[-1] == 10
    assert f.sx(0) == f.plot_x0 and f.sx(10) == f.plot_x1
    assert f.sy(0) == f.plot_y1 and f.sy(f.y_hi) == f.plot_y0  # y grows downwards
    # A maximum on the top tick gets one tick of headroom, so a flat line stays visible.
    assert f.y_ticks == (0.0, 20.0, 40.0, 60.0, 80.0, 100.0, 120.0)
    assert svg.make_frame([0, 1], [0, 93]).y_hi == 100.0
    assert f.sx(5) == pytest.approx((f.plot_x0 + f.plot_x1) / 2)


def _parse(doc: str) -> ET.Element:
    return ET.fromstring(doc)


def test_document_is_well_formed_and_escaped() -> None:
    evil = '<script>alert("x")</script> & "q"'
    f = svg.make_frame([0, 1, 2], [1, 4, 2], title=evil, x_label="t (s)", y_label="P (W)")
    doc = svg.document(
        f,
        svg.axes(f),
        svg.band(f, 0.5, 1.5, label=evil),
        svg.line(f, [0, 1, 2], [1, 4, 2], label=evil),
        svg.scatter(f, [0, 1, 2], [1, 4, 2], tooltips=[evil, "b", "c"], marker="diamond"),
        svg.legend(f, [(evil, svg.PALETTE[0], "line"), ("pts", svg.PALETTE[1], "square")]),
        svg.annotate(f, 1, 4, evil),
    )
    assert "<script>" not in doc
    root = _parse(doc)  # raises on malformed XML
    assert root.tag == f"{NS}svg"
    assert root.get("aria-label") == evil  # the parser unescapes it back: escaping was right
    assert len(root.findall(f".//{NS}polygon")) == 3
    assert any(t.text == evil for t in root.iter(f"{NS}title"))


def test_line_breaks_on_missing_values_and_clips() -> None:
    f = svg.make_frame([0, 4], [0, 10])
    path = svg.line(f, [0, 1, 2, 3, 4], [1, 2, None, 4, 1000.0])
    d = _parse(f'<svg xmlns="http://www.w3.org/2000/svg">{path}</svg>')[0].get("d")
    assert d is not None and d.count("M") == 2  # two segments
    # The outlier is clamped to the top edge of the plot box.
    last_y = float(d.rsplit(",", 1)[1])
    assert last_y == pytest.approx(f.plot_y0)
    assert svg.line(f, [None], [None]) == ""
    with pytest.raises(ConfigError):
        svg.line(f, [1, 2], [1])


def test_scatter_skips_nan_and_validates() -> None:
    f = svg.make_frame([0, 4], [0, 10])
    out = svg.scatter(f, [1, 2, 3], [1, math.nan, 3], hollow=True)
    root = _parse(f'<svg xmlns="http://www.w3.org/2000/svg">{out}</svg>')
    assert len(root.findall(f"{NS}circle")) == 2
    assert root.find(f"{NS}circle").get("fill") == "#fff"  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="marker"):
        svg.scatter(f, [1], [1], marker="star")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="tooltip"):
        svg.scatter(f, [1], [1], tooltips=[])


def test_band_covers_window() -> None:
    f = svg.make_frame([0, 10], [0, 1])
    rect = _parse(f'<svg xmlns="http://www.w3.org/2000/svg">{svg.band(f, 2, 8)}</svg>')[0]
    assert float(rect.get("x") or 0) == pytest.approx(f.sx(2), abs=0.01)
    assert float(rect.get("width") or 0) == pytest.approx(f.sx(8) - f.sx(2), abs=0.02)
    with pytest.raises(ConfigError):
        svg.band(f, 0, math.nan)


def test_decimate_keeps_peaks() -> None:
    xs = [float(i) for i in range(10_000)]
    ys = [1.0] * 10_000
    ys[5_432] = 99.0
    ys[7_001] = -5.0
    ox, oy = svg.decimate(xs, ys, max_points=200)
    assert len(ox) <= 200
    assert 99.0 in oy and -5.0 in oy
    assert ox == sorted(ox)
    assert svg.decimate([1.0], [2.0]) == ([1.0], [2.0])


def test_empty_chart() -> None:
    f = svg.make_frame([], [])
    doc = svg.empty_chart(f, "no timeline")
    assert "no timeline" in doc
    _parse(doc)


def test_ticks_inside_stay_within_a_fixed_axis() -> None:
    assert svg.ticks_inside(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    ticks = svg.ticks_inside(2.8, 3.4)
    assert ticks[0] >= 2.8 and ticks[-1] <= 3.4 and len(ticks) >= 3
    assert svg.ticks_inside(1.0, 1.0) == [1.0]
    assert svg.ticks_inside(0.0, math.inf) == [0.0]
