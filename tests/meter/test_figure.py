"""One remote device's figure: method and bound, agreement check, coverage, gaps, resets."""

from __future__ import annotations

import pytest

from perwatt.meter.figure import DeviceData, device_figure


def steps(t0: float, t1: float, dt: float, fn: object) -> list[tuple[float, float]]:
    out = []
    n = round((t1 - t0) / dt)
    for i in range(n + 1):
        t = t0 + i * dt
        out.append((t, fn(t)))  # type: ignore[operator]
    return out


def held(period: float, fn: object) -> object:
    """A value published every ``period`` s: what a sampler sees between refreshes."""
    return lambda t: fn(period * (t // period))  # type: ignore[operator]


def data(**kw: object) -> DeviceData:
    base: dict[str, object] = dict(device="n/gpu0", t0=29.9, t1=64.9, lag_s=0.1)
    base.update(kw)
    return DeviceData(**base)  # type: ignore[arg-type]


def test_counter_quantization_over_a_35s_window_falls_back_to_power() -> None:
    # 300 W, counter and gauge refreshed every 30 s; the window straddles two refreshes, so
    # the raw counter difference holds 60 s of energy: +71 %, the figure.
    counter = steps(0, 70, 0.1, held(30.0, lambda t: 300.0 * t))
    power = steps(0, 70, 0.1, held(30.0, lambda t: 300.0))
    fig = device_figure(
        data(counter=counter, power=power, counter_period_s=30.0, power_period_s=30.0)
    )
    truth = 300.0 * 35.0
    raw = 300.0 * 60.0
    assert raw / truth == pytest.approx(1.714, rel=1e-3)
    assert fig.method == "power-integral"
    assert fig.energy_j == pytest.approx(truth, rel=1e-3)
    assert fig.counter_bound_j == pytest.approx(300.0 * 30.0)
    assert fig.bound_j is not None and fig.bound_j < 0.01 * truth
    assert fig.partial is None


def test_long_window_keeps_the_counter_and_bounds_it() -> None:
    # Power changes every refresh: integrated power is looser than the counter over 10 min.
    def p(t: float) -> float:
        return 300.0 + 100.0 * ((t // 30) % 2)

    def e(t: float) -> float:
        k = t // 30
        return sum(p(30 * i) * 30 for i in range(int(k))) + p(t) * (t - 30 * k)

    counter = steps(0, 700, 0.5, held(30.0, e))
    power = steps(0, 700, 0.5, held(30.0, p))
    fig = device_figure(
        data(
            t0=10.0,
            t1=610.0,
            counter=counter,
            power=power,
            counter_period_s=30.0,
            power_period_s=30.0,
            lag_s=0.5,
        )
    )
    truth = e(610.0) - e(10.0)
    assert fig.method == "counter"
    assert fig.bound_j == pytest.approx(400.0 * 30.0)
    assert abs(fig.energy_j - truth) <= fig.bound_j


def test_frozen_counter_against_live_power_is_partial() -> None:
    counter = steps(0, 70, 0.1, lambda t: 1000.0)  # an exporter serving an old page
    power = steps(0, 70, 0.1, lambda t: 300.0)
    fig = device_figure(
        data(
            t0=10.0, t1=60.0, counter=counter, power=power, counter_period_s=1.0, power_period_s=1.0
        )
    )
    assert fig.partial is not None and "disagree" in fig.partial


def test_readings_that_stop_early_cover_part_of_the_window() -> None:
    counter = steps(0, 20, 0.1, lambda t: 300.0 * t)
    power = steps(0, 20, 0.1, lambda t: 300.0)
    gaps = [(20.0, float("inf"), "no sample in Prometheus for over 4 s: its target is down")]
    fig = device_figure(
        data(
            t0=10.0,
            t1=40.0,
            counter=counter,
            power=power,
            counter_period_s=1.0,
            power_period_s=1.0,
            gaps=gaps,
        )
    )
    assert fig.energy_j == pytest.approx(3000.0, rel=0.01)
    assert fig.partial is not None
    assert "+0.0 s to +10.0 s" in fig.partial and "target is down" in fig.partial


def test_no_reading_at_all_is_partial_not_a_silent_zero() -> None:
    fig = device_figure(
        data(
            t0=10.0,
            t1=20.0,
            counter=[],
            power=[],
            counter_period_s=1.0,
            power_period_s=1.0,
            gaps=[(0.0, float("inf"), "its target is down (up=0)")],
        )
    )
    assert fig.energy_j == 0.0 and fig.method == "none"
    assert fig.partial is not None and "unknown" in fig.partial and "up=0" in fig.partial


def test_gap_inside_is_spanned_by_the_counter_but_bounded_for_power() -> None:
    pts = [(t, v) for t, v in steps(0, 30, 0.1, lambda t: 200.0 * t) if not 10 < t < 14]
    pw = [(t, 200.0 if t < 12 else 400.0) for t, _ in pts]
    gaps = [(10.0, 14.0, "cannot connect to Prometheus")]
    fig = device_figure(
        data(
            t0=5.0,
            t1=25.0,
            counter=pts,
            power=pw,
            counter_period_s=0.1,
            power_period_s=0.1,
            gaps=gaps,
        )
    )
    assert fig.method == "counter" and fig.gap_effect_j == (0.0,)
    only_power = device_figure(
        data(
            t0=5.0,
            t1=25.0,
            counter=[],
            power=pw,
            counter_period_s=None,
            power_period_s=0.1,
            gaps=gaps,
        )
    )
    assert only_power.method == "power-integral"
    assert only_power.gap_effect_j[0] == pytest.approx(4.0 * 400.0)  # 0 W to the peak
    assert only_power.partial is not None and "without readings" in only_power.partial


def test_counter_reset_states_the_energy_lost() -> None:
    counter = [
        (t, 300.0 * t if t < 10 else 300.0 * 9.5 + 300.0 * (t - 10.0))
        for t, _ in steps(0, 20, 0.5, lambda t: 0)
    ]
    power = steps(0, 20, 0.5, lambda t: 300.0)
    fig = device_figure(
        data(
            t0=0.0,
            t1=20.0,
            counter=counter,
            power=power,
            counter_period_s=0.5,
            power_period_s=0.5,
            resets=[(9.5, 10.0, 0.0)],
            lag_s=0.5,
        )
    )
    said = " ".join(fig.notes) + (fig.partial or "")
    assert "restarted from zero" in said and "about 150.0 J" in said
