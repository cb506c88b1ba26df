"""One device's energy over one window from remote telemetry: which method, how sure, how whole.

A remote counter (dcgm-exporter's ``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION``, read directly or
through Prometheus) changes only every *update period* T: the exporter's collect interval, or the
scrape interval, whichever is longer. Each window edge then reads a value up to one period old,
so the counter difference is uncertain by up to one period's energy::

    counter:          |E_c - E| <= P_peak * T                     (P_peak: peak power seen)

The power gauge is published on the same schedule; integrated, its error comes from the power
*changes* it sees late, at most one period each (assuming power changes at most once a period)::

    power integral:   |E_p - E| <= T * sum(|P[k+1] - P[k]|)  +  gaps * P_peak

Here T is the longest a value can lag the truth: the update period, twice over through
Prometheus (the exporter's cache, then the scrape). The counter is read at its *update
instants* (when each new value was first seen), interpolated between them, and completed at
the window edges by the power integral over the part of a period not yet published: the same
figure a perfect reading of the stored samples gives, without waiting for the next update.

The tighter of the two is used (the counter wherever it is already within 1%), and the figure
says which (``method``) and by how much it may be off (``bound_j``). The two must also agree
within their bounds (plus 10% slack for power that changes faster than the gauge shows): when
they do not, the telemetry is stale or broken and the figure is marked partial.

Coverage: a device whose readings stop before the window ends (stale series, exporter gone) or
start after it begins gets the energy of the part that was read, marked partial with the reason,
never a silent 0 J. A gap in the middle is spanned exactly by the counter; the power integral
interpolates across it and the gap's share of the bound is stated. A counter reset loses the
energy between the last reading before it and the restart: estimated from the power integral
and stated.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from perwatt.meter.integrate import interpolate, trapezoid_between

#: Below this relative bound the counter is used even where integrated power claims to be tighter.
COUNTER_GOOD_ENOUGH = 0.01
#: A gap, reset or coverage loss whose effect exceeds this share of the figure makes it partial.
PARTIAL_SHARE = 0.05
#: Slack on the counter/power agreement check, for power that changes faster than the gauge.
AGREEMENT_SLACK = 0.10


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceData:
    """What the meter recorded about one device around one window (meter clock, seconds)."""

    device: str
    t0: float
    t1: float
    counter: Sequence[tuple[float, float]]  # (t, cumulative J), fresh readings only, sorted
    power: Sequence[tuple[float, float]]  # (t, W), fresh readings only, sorted
    counter_period_s: float | None  # the longest a value can lag the truth (update period x
    power_period_s: float | None  # how many caches it passes through), not just the period
    gaps: Sequence[tuple[float, float, str]] = ()  # (start, end, why) with no fresh reading
    resets: Sequence[tuple[float, float, float]] = ()  # (last before, first after, J since)
    lag_s: float = 0.0  # how late a change can be seen (the sampling interval)


@dataclass(frozen=True, slots=True, kw_only=True)
class Figure:
    """One device's energy over a window, how it was obtained, and its error bound."""

    energy_j: float
    method: str  # "counter", "power-integral" or "none"
    bound_j: float | None  # worst-case error under the module's assumptions; None: unknown
    partial: str | None = None  # why the figure covers only part of the window
    notes: tuple[str, ...] = ()
    gap_effect_j: tuple[float, ...] = ()  # per input gap: its share of bound_j (0: spanned)
    counter_bound_j: float | None = None
    power_bound_j: float | None = None


def _between(pts: Sequence[tuple[float, float]], a: float, b: float) -> list[tuple[float, float]]:
    ts = [t for t, _ in pts]
    lo = max(0, bisect.bisect_left(ts, a) - 1)
    hi = min(len(pts), bisect.bisect_right(ts, b) + 1)
    return list(pts[lo:hi])


def _updates(pts: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points where the counter's value changed: when each new value was first seen.

    A remote counter is a staircase; its value is the energy *at the update*, so the update
    instants, not the held readings between them, are where it is known."""
    out: list[tuple[float, float]] = []
    for (_, e_prev), (t, e) in itertools.pairwise(pts):
        if e != e_prev:
            out.append((t, e))
    return out


def _counter_at(
    updates: Sequence[tuple[float, float]], power: Sequence[tuple[float, float]], t: float
) -> float:
    """Energy at ``t``: linear between the updates around it; beyond the first or last
    update, that update plus the integrated power up to ``t`` (the part of a period the
    counter has not published yet)."""
    ts = [u for u, _ in updates]
    es = [e for _, e in updates]
    if ts[0] <= t <= ts[-1]:
        return interpolate(ts, es, t)
    anchor_t, anchor_e = (ts[-1], es[-1]) if t > ts[-1] else (ts[0], es[0])
    if power:
        pts, pvs = [p for p, _ in power], [v for _, v in power]
        lo, hi = sorted((anchor_t, t))
        extra = trapezoid_between(pts, pvs, lo, hi)
    else:  # no gauge: the slope of the nearest stretch between updates
        i = len(ts) - 1 if t > ts[-1] else 1
        slope = (es[i] - es[i - 1]) / (ts[i] - ts[i - 1]) if ts[i] > ts[i - 1] else 0.0
        extra = slope * abs(t - anchor_t)
    return anchor_e + extra if t > anchor_t else anchor_e - extra


def _fmt(t: float, t0: float) -> str:
    return f"+{t - t0:.1f} s"


def device_figure(d: DeviceData) -> Figure:
    """The energy of ``d.device`` over ``[d.t0, d.t1]``; see the module docstring."""
    duration = d.t1 - d.t0
    tol = max(2.0 * d.lag_s, 1e-6)

    def fresh(pts: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
        # A reading inside a gap is one the meter judged stale after the fact (a frozen page).
        return [(t, v) for t, v in pts if not any(g0 < t < g1 for g0, g1, _ in d.gaps)]

    d_counter, d_power = fresh(d.counter), fresh(d.power)
    times = sorted({t for t, _ in d_counter} | {t for t, _ in d_power})
    if not times or times[-1] < d.t0 - tol or times[0] > d.t1 + tol:
        why = "; ".join(sorted({g[2] for g in d.gaps if g[1] >= d.t0 and g[0] <= d.t1}))
        return Figure(
            energy_j=0.0,
            method="none",
            bound_j=None,
            partial=f"{d.device}: no fresh reading in the window"
            + (f" ({why})" if why else "")
            + "; its energy is unknown and counted as 0 J",
            gap_effect_j=tuple(0.0 for _ in d.gaps),
        )
    a = d.t0 if times[0] <= d.t0 + tol else times[0]
    b = d.t1 if times[-1] >= d.t1 - tol else times[-1]
    notes: list[str] = []
    partial: list[str] = []
    if a > d.t0 or b < d.t1:
        why = (
            "; ".join(sorted({g[2] for g in d.gaps if g[1] >= d.t0 and g[0] <= d.t1 and g[2]}))
            or "no readings"
        )
        partial.append(
            f"{d.device}: fresh readings cover only {_fmt(a, d.t0)} to {_fmt(b, d.t0)} of the "
            f"{duration:.1f} s window ({why}); the energy outside it is not counted"
        )

    power = _between(d_power, a, b)
    inside_p = [p for t, p in power if a - tol <= t <= b + tol]
    p_hi = max(inside_p) if inside_p else None

    e_c: float | None = None
    b_c: float | None = None
    counter = _between(d_counter, a, b)
    updates = _updates(d_counter)
    if d_counter and (d.counter_period_s is not None and d.counter_period_s <= 2.0 * d.lag_s):
        # A counter that updates as often as it is sampled: every reading is an update.
        updates = [d_counter[0], *updates]
    if len(counter) >= 2 or (counter and a == b):
        if len(updates) >= 2 and updates[0][0] <= b and updates[-1][0] >= a:
            e_c = max(0.0, _counter_at(updates, d_power, b) - _counter_at(updates, d_power, a))
        else:
            cts = [t for t, _ in counter]
            ces = [e for _, e in counter]
            e_c = max(0.0, interpolate(cts, ces, b) - interpolate(cts, ces, a))
        if d.counter_period_s is not None:
            ref = p_hi if p_hi is not None else (e_c / (b - a) if b > a else 0.0)
            b_c = ref * d.counter_period_s

    e_p: float | None = None
    b_p: float | None = None
    gap_effect = [0.0] * len(d.gaps)
    if len(power) >= 1 and b > a:
        pts = [t for t, _ in power]
        pvs = [p for _, p in power]
        e_p = trapezoid_between(pts, pvs, a, b)
        period = d.power_period_s if d.power_period_s is not None else 0.0
        changes = sum(abs(y - x) for x, y in itertools.pairwise(pvs))
        b_p = period * changes + (p_hi or 0.0) * d.lag_s
        for i, (g0, g1, _why) in enumerate(d.gaps):
            lo, hi = max(g0, a), min(g1, b)
            if hi > lo and p_hi is not None:
                # Nothing was read: power may have been anywhere from 0 to the peak seen.
                gap_effect[i] = (hi - lo) * p_hi
                b_p += gap_effect[i]

    if e_c is not None and (
        e_p is None or b_p is None or b_c is None or b_c <= b_p or b_c <= COUNTER_GOOD_ENOUGH * e_c
    ):
        method, energy, bound = "counter", e_c, b_c
        gap_effect = [0.0] * len(d.gaps)  # the counter spans gaps inside its coverage
    elif e_p is not None:
        method, energy, bound = "power-integral", e_p, b_p
    else:
        method, energy, bound = "none", 0.0, None
        partial.append(f"{d.device}: too few readings in the window to measure it")

    if (
        e_c is not None
        and e_p is not None
        and b_c is not None
        and b_p is not None
        and p_hi is not None
    ):
        slack = AGREEMENT_SLACK * max(e_c, e_p) + p_hi * 2.0 * d.lag_s
        if e_c + b_c + slack < e_p - b_p or e_p + b_p + slack < e_c - b_c:
            partial.append(
                f"{d.device}: energy counter ({e_c:.1f} J ±{b_c:.1f}) and integrated power "
                f"({e_p:.1f} J ±{b_p:.1f}) disagree: the telemetry is stale or inconsistent "
                "(an exporter serving an old page, a counter reset, a frozen gauge)"
            )

    if d.counter_period_s is not None and duration < d.counter_period_s:
        notes.append(
            f"{d.device}: the {duration:.1f} s window is shorter than the telemetry's delay "
            f"(up to ~{d.counter_period_s:.3g} s): a change of power inside it may not show "
            "yet; treat the figure as approximate"
        )
    for tb, ta, since_j in d.resets:
        if ta < a or tb > b:
            continue
        seen = (
            trapezoid_between([t for t, _ in power], [p for _, p in power], tb, ta)
            if (power)
            else None
        )
        lost = None if seen is None else max(0.0, seen - since_j)
        most = None if p_hi is None else max(0.0, p_hi * (ta - tb) - since_j)
        msg = (
            f"{d.device}: energy counter restarted from zero between {_fmt(tb, d.t0)} and "
            f"{_fmt(ta, d.t0)} (driver reload, GPU reset or node reboot); the energy before the "
            "restart in that interval is not counted"
        )
        if lost is not None and most is not None:
            msg += f": about {lost:.1f} J by integrated power, at most {most:.1f} J"
            if method == "counter" and bound is not None:
                bound += most
            if most > PARTIAL_SHARE * max(energy, 1e-9):
                partial.append(msg)
                continue
        notes.append(msg)

    for i, (g0, g1, why) in enumerate(d.gaps):
        if gap_effect[i] > PARTIAL_SHARE * max(energy, 1e-9) and g1 > a and g0 < b:
            partial.append(
                f"{d.device}: {g1 - g0:.1f} s without readings from {_fmt(g0, d.t0)} ({why}); "
                f"power interpolated across it, uncertain by ±{gap_effect[i]:.1f} J"
            )
    return Figure(
        energy_j=energy,
        method=method,
        bound_j=bound,
        partial="; ".join(partial) if partial else None,
        notes=tuple(notes),
        gap_effect_j=tuple(gap_effect),
        counter_bound_j=b_c,
        power_bound_j=b_p,
    )
