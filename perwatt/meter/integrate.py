"""Numerical helpers: integrating a sampled power trace and reading a counter between samples.

Both work on sorted sample times. Values between samples are linearly interpolated, which makes the
power integral the trapezoid rule and keeps it exact for piecewise-linear power.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence


def interpolate(ts: Sequence[float], ys: Sequence[float], t: float) -> float:
    """Linear interpolation of ``ys`` at ``t``; held constant outside ``[ts[0], ts[-1]]``."""
    if not ts:
        raise ValueError("interpolate() needs at least one sample")
    if t <= ts[0]:
        return ys[0]
    if t >= ts[-1]:
        return ys[-1]
    i = bisect.bisect_right(ts, t)
    t0, t1 = ts[i - 1], ts[i]
    if t1 == t0:
        return ys[i]
    w = (t - t0) / (t1 - t0)
    return ys[i - 1] + w * (ys[i] - ys[i - 1])


def trapezoid_between(ts: Sequence[float], ys: Sequence[float], a: float, b: float) -> float:
    """Integral of the piecewise-linear curve through ``(ts, ys)`` over ``[a, b]``.

    Outside the sampled range the first/last value is held, so a window that starts before the
    first sample is integrated at that sample's power (the best the trace can say).
    """
    if b < a:
        raise ValueError(f"integration bounds reversed: [{a}, {b}]")
    if not ts or b == a:
        return 0.0
    lo = bisect.bisect_right(ts, a)
    hi = bisect.bisect_left(ts, b)
    # Points strictly inside (a, b), bracketed by the interpolated edge values.
    xs = [a, *ts[lo:hi], b]
    vs = [interpolate(ts, ys, a), *ys[lo:hi], interpolate(ts, ys, b)]
    total = 0.0
    for i in range(1, len(xs)):
        total += 0.5 * (vs[i] + vs[i - 1]) * (xs[i] - xs[i - 1])
    return total


def cumulative_trapezoid(ts: Sequence[float], ys: Sequence[float]) -> list[float]:
    """Running integral at each sample time, starting from 0."""
    out = [0.0] * len(ts)
    for i in range(1, len(ts)):
        out[i] = out[i - 1] + 0.5 * (ys[i] + ys[i - 1]) * (ts[i] - ts[i - 1])
    return out
