"""Property tests: trapezoid integration of analytic power traces against closed forms.

The trapezoid rule is exact for piecewise-linear power whose breakpoints are samples, so those
cases are checked to rounding error; a sinusoid is checked against the rule's error bound
``(b - a) * h**2 * max|f''| / 12``.
"""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perwatt.meter.integrate import cumulative_trapezoid, interpolate, trapezoid_between

finite = st.floats(min_value=0.0, max_value=2000.0, allow_nan=False, allow_infinity=False)
SETTINGS = settings(max_examples=150, deadline=None)


def close(a: float, b: float, scale: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9 * max(1.0, scale))


@st.composite
def sorted_times(draw: st.DrawFn, min_size: int = 2, max_size: int = 40) -> list[float]:
    start = draw(st.floats(min_value=-1e3, max_value=1e3))
    gaps = draw(
        st.lists(
            st.floats(min_value=1e-3, max_value=10.0), min_size=min_size - 1, max_size=max_size
        )
    )
    ts = [start]
    for g in gaps:
        ts.append(ts[-1] + g)
    return ts


@SETTINGS
@given(ts=sorted_times(), p=finite, data=st.data())
def test_constant_power_is_exact(ts: list[float], p: float, data: st.DataObject) -> None:
    a = data.draw(st.floats(min_value=ts[0], max_value=ts[-1]))
    b = data.draw(st.floats(min_value=a, max_value=ts[-1]))
    got = trapezoid_between(ts, [p] * len(ts), a, b)
    assert close(got, p * (b - a), p * (ts[-1] - ts[0]))


@SETTINGS
@given(ts=sorted_times(), p0=finite, slope=st.floats(-50, 50), data=st.data())
def test_linear_power_is_exact(
    ts: list[float], p0: float, slope: float, data: st.DataObject
) -> None:
    def f(t: float) -> float:
        return p0 + slope * (t - ts[0])

    a = data.draw(st.floats(min_value=ts[0], max_value=ts[-1]))
    b = data.draw(st.floats(min_value=a, max_value=ts[-1]))
    want = p0 * (b - a) + slope * ((b - ts[0]) ** 2 - (a - ts[0]) ** 2) / 2
    got = trapezoid_between(ts, [f(t) for t in ts], a, b)
    scale = (abs(p0) + abs(slope) * (ts[-1] - ts[0])) * (ts[-1] - ts[0])
    assert close(got, want, scale)


@SETTINGS
@given(knots=sorted_times(min_size=2, max_size=8), data=st.data())
def test_piecewise_linear_is_exact_when_knots_are_sampled(
    knots: list[float], data: st.DataObject
) -> None:
    values = data.draw(st.lists(finite, min_size=len(knots), max_size=len(knots)))
    # Extra samples anywhere inside: on a straight segment they change nothing.
    extra = data.draw(st.lists(st.floats(knots[0], knots[-1]), max_size=20))
    ts = sorted(set(knots) | set(extra))
    ys = [interpolate(knots, values, t) for t in ts]
    a = data.draw(st.floats(min_value=knots[0], max_value=knots[-1]))
    b = data.draw(st.floats(min_value=a, max_value=knots[-1]))
    # Closed form: sum of exact segment integrals of the piecewise-linear function over [a, b].
    want = 0.0
    for i in range(1, len(knots)):
        lo, hi = max(a, knots[i - 1]), min(b, knots[i])
        if hi > lo:
            want += (
                (hi - lo) * (interpolate(knots, values, lo) + interpolate(knots, values, hi)) / 2
            )
    got = trapezoid_between(ts, ys, a, b)
    assert close(got, want, 2000.0 * (knots[-1] - knots[0]))


@SETTINGS
@given(
    amp=st.floats(0.0, 300.0),
    offset=st.floats(300.0, 700.0),
    period=st.floats(0.5, 20.0),
    n=st.integers(20, 400),
    span=st.floats(1.0, 60.0),
)
def test_sinusoid_within_the_trapezoid_error_bound(
    amp: float, offset: float, period: float, n: int, span: float
) -> None:
    w = 2 * math.pi / period

    def f(t: float) -> float:
        return offset + amp * math.sin(w * t)

    h = span / n
    ts = [i * h for i in range(n + 1)]
    got = trapezoid_between(ts, [f(t) for t in ts], 0.0, span)
    want = offset * span + amp * (1 - math.cos(w * span)) / w
    bound = span * h**2 * amp * w**2 / 12  # max |f''| = amp * w^2
    assert abs(got - want) <= bound + 1e-9 * offset * span


@SETTINGS
@given(ts=sorted_times(), data=st.data())
def test_additive_over_adjacent_intervals(ts: list[float], data: st.DataObject) -> None:
    ys = data.draw(st.lists(finite, min_size=len(ts), max_size=len(ts)))
    a, m, b = sorted(data.draw(st.floats(ts[0] - 5, ts[-1] + 5)) for _ in range(3))
    whole = trapezoid_between(ts, ys, a, b)
    parts = trapezoid_between(ts, ys, a, m) + trapezoid_between(ts, ys, m, b)
    assert close(whole, parts, 2000.0 * (b - a + 1))


@SETTINGS
@given(ts=sorted_times(), data=st.data())
def test_cumulative_matches_between(ts: list[float], data: st.DataObject) -> None:
    ys = data.draw(st.lists(finite, min_size=len(ts), max_size=len(ts)))
    cum = cumulative_trapezoid(ts, ys)
    assert cum[0] == 0.0
    i = data.draw(st.integers(0, len(ts) - 1))
    assert close(cum[i], trapezoid_between(ts, ys, ts[0], ts[i]), 2000.0 * (ts[-1] - ts[0]))
    assert all(b >= a for a, b in itertools.pairwise(cum))  # power >= 0


def test_outside_the_samples_the_edge_value_is_held() -> None:
    ts, ys = [10.0, 20.0], [100.0, 300.0]
    assert trapezoid_between(ts, ys, 0.0, 10.0) == 1000.0
    assert trapezoid_between(ts, ys, 20.0, 25.0) == 1500.0
    assert interpolate(ts, ys, -1.0) == 100.0 and interpolate(ts, ys, 99.0) == 300.0
    assert interpolate(ts, ys, 15.0) == 200.0


def test_degenerate_inputs() -> None:
    assert trapezoid_between([], [], 0.0, 1.0) == 0.0
    assert trapezoid_between([1.0], [5.0], 0.0, 2.0) == 10.0
    assert trapezoid_between([0.0, 1.0], [1.0, 1.0], 0.5, 0.5) == 0.0
    with pytest.raises(ValueError, match="reversed"):
        trapezoid_between([0.0, 1.0], [1.0, 1.0], 1.0, 0.0)
    with pytest.raises(ValueError):
        interpolate([], [], 0.0)
