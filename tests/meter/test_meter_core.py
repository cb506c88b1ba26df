"""The Meter: windows, nesting, short windows, idle baseline, measure_between, sampler.

Everything runs on a fake clock shared by the meter and the simulated source
(``sampler=False`` + ``sample_now()``), so energies are exact and no test sleeps, except one
short check that the real background thread samples and stops.
"""

from __future__ import annotations

import csv
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perwatt.errors import ConfigError
from perwatt.meter import Measurement, Meter, PowerSource, SimulatedSource


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def sim(clock: Clock, **kw: object) -> SimulatedSource:
    return SimulatedSource(clock=clock, **kw)  # type: ignore[arg-type]


def meter_for(sources: PowerSource | list[PowerSource], clock: Clock, **kw: object) -> Meter:
    return Meter(sources, sampler=False, sync_cuda=False, clock=clock, **kw)  # type: ignore[arg-type]


class PowerOnly(PowerSource):
    """A counterless source (like a pre-Volta GPU): instant power from a function of time."""

    name = "poweronly"
    energy_label = "nvml-counter"
    power_label = "nvml-power-integral"

    def __init__(self, clock: Clock, fn: object, period: float | None = None) -> None:
        self.clock = clock
        self.fn = fn
        self.counter_period_s = period

    @property
    def devices(self) -> tuple[str, ...]:
        return ("gpu0",)

    def read_power_w(self) -> Mapping[str, float]:
        return {"gpu0": float(self.fn(self.clock()))}  # type: ignore[operator]


# ---------------------------------------------------------------------------- windows


def test_constant_power_window_is_exact() -> None:
    clock = Clock()
    src = sim(clock, power_w=250.0, num_devices=2)
    with meter_for(src, clock) as meter:
        meter.begin("w")
        clock.advance(4.0)
        meter.sample_now()
        clock.advance(6.0)
        m = meter.end("w")
    assert m.duration_s == 10.0
    assert m.energy_j == {"sim0": 2500.0, "sim1": 2500.0}
    assert m.total_energy_j == 5000.0
    assert m.avg_power_w == 500.0
    assert m.peak_power_w == 500.0
    assert m.sources == {"sim0": "simulated", "sim1": "simulated"}
    assert m.source == "simulated"
    assert not m.measured
    assert not m.idle_subtracted and m.idle_power_w is None
    assert m.warnings == ()


def test_context_manager_window_and_result() -> None:
    clock = Clock()
    src = sim(clock, idle_w=50.0, busy_w=350.0)
    with meter_for(src, clock) as meter, meter.window("decode") as w:
        with pytest.raises(RuntimeError, match="not ended"):
            _ = w.result
        src.set_load(1.0)
        clock.advance(2.0)
    assert w.result.name == "decode"
    assert w.result.energy_j["sim0"] == pytest.approx(700.0)


def test_nested_and_overlapping_windows() -> None:
    clock = Clock()
    src = sim(clock, idle_w=100.0, busy_w=300.0)
    with meter_for(src, clock) as meter:
        meter.begin("outer")  # t=0
        clock.advance(1.0)  # idle: 100 J
        meter.begin("a")  # t=1
        src.set_load(1.0)
        clock.advance(2.0)  # busy: 600 J
        meter.begin("b")  # t=3, overlaps a
        clock.advance(1.0)  # busy: 300 J
        a = meter.end("a")  # t=4
        src.set_load(0.5)
        clock.advance(2.0)  # 200 W: 400 J
        b = meter.end("b")  # t=6
        with meter.window("inner") as w:  # nested in outer
            clock.advance(1.0)  # 200 J
        outer = meter.end("outer")  # t=7
    assert a.energy_j["sim0"] == pytest.approx(900.0)
    assert b.energy_j["sim0"] == pytest.approx(700.0)
    assert w.result.energy_j["sim0"] == pytest.approx(200.0)
    assert outer.energy_j["sim0"] == pytest.approx(100 + 600 + 300 + 400 + 200)
    assert (a.start_s, a.end_s, b.start_s, b.end_s) == (1001.0, 1004.0, 1003.0, 1006.0)


def test_window_name_errors() -> None:
    clock = Clock()
    with meter_for(sim(clock), clock) as meter:
        meter.begin("x")
        with pytest.raises(ConfigError, match="already open"):
            meter.begin("x")
        with pytest.raises(ConfigError, match="never begun"):
            meter.end("y")
        meter.end("x")
        with pytest.raises(ConfigError, match="never begun"):
            meter.end("x")


def test_bad_meter_arguments() -> None:
    clock = Clock()
    with pytest.raises(ConfigError, match="at least one"):
        Meter([])
    with pytest.raises(ConfigError, match="sample interval"):
        Meter(sim(clock), sample_interval_s=0)
    with pytest.raises(ConfigError, match="reported by two sources"):
        Meter([sim(clock), sim(clock)])


def test_short_window_is_flagged_and_integrated_from_power() -> None:
    clock = Clock()
    src = sim(clock, power_w=120.0, counter_period_s=0.1)
    with meter_for(src, clock) as meter:
        meter.begin("tiny")
        clock.advance(0.02)
        m = meter.end("tiny")
        meter.begin("long")
        clock.advance(0.5)
        long = meter.end("long")
    assert m.energy_j["sim0"] == pytest.approx(120.0 * 0.02)
    assert len(m.warnings) == 1
    assert "shorter than the simulated counter update period (~100 ms)" in m.warnings[0]
    assert "integrated sampled power" in m.warnings[0]
    assert long.warnings == ()


def test_short_window_without_power_readings_keeps_the_quantized_counter() -> None:
    class CounterOnly(SimulatedSource):
        def read_power_w(self) -> Mapping[str, float]:
            return {}

    clock = Clock()
    src = CounterOnly(power_w=100.0, counter_period_s=0.1, clock=clock)
    with meter_for(src, clock) as meter:
        meter.begin("tiny")
        clock.advance(0.05)
        m = meter.end("tiny")
    assert m.energy_j["sim0"] == pytest.approx(5.0)
    assert "counter difference is quantized" in m.warnings[0]


def test_counterless_source_is_trapezoid_integrated() -> None:
    clock = Clock(0.0)
    src = PowerOnly(clock, lambda t: 100.0 + 10.0 * t)  # linear: trapezoid is exact
    with meter_for(src, clock) as meter:
        for _ in range(10):
            clock.advance(1.0)
            meter.sample_now()
        meter.begin("w")  # t = 10
        for _ in range(5):
            clock.advance(1.0)
            meter.sample_now()
        clock.advance(0.5)
        m = meter.end("w")  # t = 15.5, edge power read at the end
    want = 100.0 * 5.5 + 10.0 * (15.5**2 - 10.0**2) / 2
    assert m.energy_j["gpu0"] == pytest.approx(want)
    assert m.sources == {"gpu0": "nvml-power-integral"}
    assert m.peak_power_w == pytest.approx(100.0 + 155.0)


def test_counterless_window_with_few_samples_warns() -> None:
    clock = Clock(0.0)
    with meter_for(PowerOnly(clock, lambda t: 50.0), clock) as meter:  # sample at t=0
        clock.advance(0.5)
        meter.begin("w")
        clock.advance(1.0)
        m = meter.end("w")  # only the closing edge lies inside the window
    assert m.energy_j["gpu0"] == pytest.approx(50.0)
    assert any("fewer than 2 power samples" in w for w in m.warnings)


def test_edge_point_stays_sorted_when_the_sampler_interleaves() -> None:
    """A sample taken between end()'s clock read and its integration must not break ordering."""
    clock = Clock(0.0)
    meter_ref: list[Meter] = []

    class Racy(SimulatedSource):
        calls = 0

        def read_energy_j(self) -> Mapping[str, float]:
            out = super().read_energy_j()
            Racy.calls += 1
            if Racy.calls == 4:  # inside end(): the "sampler" fires a moment later
                clock.advance(0.01)  # the sampler thread's own "now"...
                meter_ref[0].sample_now()
                clock.advance(-0.01)  # ...while end() carries on at its t1
            return out

    src = Racy(power_fn=lambda t: 100.0 + 1000.0 * t, counter_period_s=1.0, clock=clock)
    meter = meter_for(src, clock)
    meter_ref.append(meter)
    with meter:  # call 1: start()'s sample
        meter.begin("w")  # call 2
        clock.advance(0.1)
        meter.sample_now()  # call 3
        clock.advance(0.1)
        m = meter.end("w")  # call 4 (+ the interleaved sample at t = 0.21)
    assert m.energy_j["sim0"] == pytest.approx(100.0 * 0.2 + 500.0 * 0.2**2)


def test_window_reads_only_its_slice_of_a_long_timeline() -> None:
    """A window after hours of samples integrates exactly the same as on a fresh meter."""
    clock = Clock(0.0)
    src = PowerOnly(clock, lambda t: 100.0 + 10.0 * (t % 7.0))
    with meter_for(src, clock) as meter:
        for _ in range(5000):  # a long history before the window
            clock.advance(1.0)
            meter.sample_now()
        meter.begin("w")
        for _ in range(3):
            clock.advance(1.0)
            meter.sample_now()
        m = meter.end("w")
        t1 = clock()
        t0 = t1 - 3.0
        around = meter._samples_around(t0, t1)
    # The slice holds the window's samples plus one before it, nothing older.
    assert around[0].t_s == t0 - 1.0 and around[-1].t_s == t1
    ts = [t0 - 1.0, t0, t0 + 1, t0 + 2, t1]
    ps = [100.0 + 10.0 * (t % 7.0) for t in ts]
    want = sum(0.5 * (ps[i] + ps[i - 1]) for i in range(2, len(ts)))
    assert m.energy_j["gpu0"] == pytest.approx(want)


def test_window_edges_are_stamped_at_the_middle_of_a_slow_counter_read() -> None:
    clock = Clock(100.0)

    class SlowRead(SimulatedSource):
        def read_energy_j(self) -> Mapping[str, float]:
            clock.advance(0.01)  # the driver answers after 10 ms...
            out = super().read_energy_j()  # ...with the counter as it stands then
            clock.advance(0.01)  # ...and the call returns 10 ms later
            return out

    src = SlowRead(power_w=100.0, clock=clock)
    with meter_for(src, clock) as meter:
        meter.begin("w")
        clock.advance(1.0)
        m = meter.end("w")
    # Each read took 20 ms and saw the counter at its middle: the stamps sit there too, so the
    # window's duration and energy agree exactly.
    assert m.start_s == pytest.approx(100.0 + 0.02 + 0.01)
    assert m.duration_s == pytest.approx(1.02)
    assert m.energy_j["sim0"] == pytest.approx(100.0 * m.duration_s)


def test_samples_taken_out_of_order_are_kept_sorted() -> None:
    clock = Clock(10.0)
    with meter_for(sim(clock, power_w=10.0), clock) as meter:
        clock.t = 12.0
        meter.sample_now()
        clock.t = 11.0  # a second thread whose clock read came earlier appends later
        meter.sample_now()
        assert [s.t_s for s in meter.timeline()] == [10.0, 11.0, 12.0]


def test_counter_going_backwards_is_clamped_and_warned() -> None:
    class Backwards(SimulatedSource):
        values = iter([10.0, 10.0, 4.0])

        def read_energy_j(self) -> Mapping[str, float]:
            return {"sim0": next(self.values)}

    clock = Clock()
    with meter_for(Backwards(clock=clock), clock) as meter:
        meter.begin("w")
        clock.advance(1.0)
        m = meter.end("w")
    assert m.energy_j["sim0"] == 0.0
    assert any("went backwards" in w for w in m.warnings)


def test_mixed_sources_report_each_label() -> None:
    clock = Clock(0.0)
    a = sim(clock, power_w=10.0, prefix="s")
    b = PowerOnly(clock, lambda t: 20.0)
    with meter_for([a, b], clock) as meter:
        meter.begin("w")
        clock.advance(1.0)
        meter.sample_now()
        m = meter.end("w")
    assert m.sources == {"s0": "simulated", "gpu0": "nvml-power-integral"}
    assert m.source == "mixed(nvml-power-integral,simulated)"
    assert not m.measured
    assert m.total_energy_j == pytest.approx(30.0)


# ---------------------------------------------------------------------------- idle


def test_idle_baseline_reported_and_subtracted_only_when_asked() -> None:
    clock = Clock()
    src = sim(clock, idle_w=60.0, busy_w=300.0)
    with meter_for(src, clock) as meter:
        idle = meter.idle_baseline(5.0, sleep=clock.advance)
        assert idle.power_w == {"sim0": pytest.approx(60.0)}
        assert idle.duration_s == pytest.approx(5.0)
        assert idle.total_power_w == pytest.approx(60.0)
        src.set_load(1.0)
        meter.begin("w")
        clock.advance(10.0)
        meter.sample_now()
        m = meter.end("w")
    assert not m.idle_subtracted
    assert m.idle_power_w == {"sim0": pytest.approx(60.0)}
    assert m.energy_j["sim0"] == pytest.approx(3000.0)

    clock = Clock()
    src = sim(clock, idle_w=60.0, busy_w=300.0)
    with meter_for(src, clock, subtract_idle=True) as meter:
        meter.idle_baseline(5.0, sleep=clock.advance)
        src.set_load(1.0)
        meter.begin("w")
        clock.advance(10.0)
        meter.sample_now()
        m = meter.end("w")
    assert m.idle_subtracted
    assert m.energy_j["sim0"] == pytest.approx((300.0 - 60.0) * 10.0)
    assert m.avg_power_w == pytest.approx(240.0)
    assert m.peak_power_w == pytest.approx(240.0)
    assert m.to_dict()["idle_subtracted"] is True


def test_idle_baseline_needs_a_positive_duration() -> None:
    clock = Clock()
    with meter_for(sim(clock), clock) as meter, pytest.raises(ConfigError, match="positive"):
        meter.idle_baseline(0.0, sleep=clock.advance)


# ---------------------------------------------------------------------------- after the fact


def test_measure_between_interpolates_the_recorded_counter() -> None:
    clock = Clock(0.0)
    src = sim(clock, idle_w=100.0, busy_w=500.0)
    with meter_for(src, clock) as meter:  # sample at t=0
        for t in range(1, 21):
            if t == 11:
                src.set_load(1.0)  # busy from t=10 on
            clock.advance(1.0)
            meter.sample_now()
        m = meter.measure_between(5.5, 14.25, name="steady")
        outside = meter.measure_between(18.0, 25.0)
        with pytest.raises(ConfigError, match="ends before"):
            meter.measure_between(3.0, 2.0)
    assert m.name == "steady"
    assert m.energy_j["sim0"] == pytest.approx(100.0 * 4.5 + 500.0 * 4.25)
    assert m.duration_s == pytest.approx(8.75)
    assert any("beyond the recorded timeline" in w for w in outside.warnings)


def test_measure_between_needs_samples() -> None:
    clock = Clock()
    meter = meter_for(sim(clock), clock)
    with pytest.raises(ConfigError, match="no samples"):
        meter.measure_between(0.0, 1.0)


def test_measure_between_counterless() -> None:
    clock = Clock(0.0)
    with meter_for(PowerOnly(clock, lambda t: 2.0 * t), clock) as meter:
        for _ in range(10):
            clock.advance(1.0)
            meter.sample_now()
        m = meter.measure_between(2.0, 8.0)
    assert m.energy_j["gpu0"] == pytest.approx(8.0**2 - 2.0**2)


# ---------------------------------------------------------------------------- timeline, sampler


def test_write_timeline_csv_is_atomic_and_labelled(tmp_path: Path) -> None:
    clock = Clock(0.0)
    with meter_for(sim(clock, power_w=42.0), clock) as meter:
        clock.advance(1.0)
        meter.sample_now()
        out = tmp_path / "tl.csv"
        meter.write_timeline(out)
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["time_s"] for r in rows] == ["0.000000", "1.000000"]
    assert rows[1] == {
        "time_s": "1.000000",
        "device": "sim0",
        "power_w": "42.000",
        "energy_j": "42.000000",
        "source": "simulated",
    }
    assert not list(tmp_path.glob("*.tmp"))


def test_write_timeline_to_a_bad_path_is_a_config_error(tmp_path: Path) -> None:
    clock = Clock(0.0)
    with meter_for(sim(clock, power_w=42.0), clock) as meter:
        meter.sample_now()
        with pytest.raises(ConfigError, match="cannot write"):
            meter.write_timeline(tmp_path)  # a directory: the rename fails
        with pytest.raises(ConfigError, match="cannot write"):
            meter.write_timeline(tmp_path / "absent" / "tl.csv")
    assert not list(tmp_path.parent.glob(f"{tmp_path.name}.tmp"))


def test_background_sampler_runs_and_stops() -> None:
    src = SimulatedSource(power_w=10.0)
    meter = Meter(src, sample_interval_s=0.01, sync_cuda=False)
    with meter:
        deadline = time.monotonic() + 5.0
        while len(meter.timeline()) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
    n = len(meter.timeline())
    assert n >= 5
    assert not any(t.name == "perwatt-sampler" for t in threading.enumerate())
    time.sleep(0.03)
    assert len(meter.timeline()) == n


def test_sampler_failure_is_reported_on_the_next_window() -> None:
    class Flaky(SimulatedSource):
        fail = False

        def read_power_w(self) -> Mapping[str, float]:
            if self.fail:
                raise OSError("sensor glitch")
            return super().read_power_w()

    src = Flaky(power_w=10.0)
    meter = Meter(src, sample_interval_s=0.005, sync_cuda=False)
    with meter:
        meter.begin("w")
        src.fail = True
        deadline = time.monotonic() + 5.0
        while meter._sampler_error is None and time.monotonic() < deadline:
            time.sleep(0.005)
        src.fail = False
        m = meter.end("w")
        # A window opened after the sampler recovered has a complete timeline: no warning.
        n = len(meter.timeline())
        while len(meter.timeline()) <= n and time.monotonic() < deadline + 5.0:
            time.sleep(0.005)  # one good sample: no failing read can still be in flight
        meter.begin("later")
        time.sleep(0.02)
        later = meter.end("later")
    assert any("background sampler failed: sensor glitch" in w for w in m.warnings)
    assert not any("sampler failed" in w for w in later.warnings)


def test_measurement_validation_and_dict() -> None:
    kw: dict[str, object] = dict(
        name="x",
        start_s=0.0,
        end_s=1.0,
        duration_s=1.0,
        energy_j={"a": 1.0},
        total_energy_j=1.0,
        avg_power_w=1.0,
        peak_power_w=None,
        sources={"a": "rapl"},
        idle_subtracted=False,
    )
    m = Measurement(**kw)  # type: ignore[arg-type]
    assert m.measured and m.to_dict()["source"] == "rapl"
    with pytest.raises(ValueError, match="negative"):
        Measurement(**{**kw, "duration_s": -1.0})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same devices"):
        Measurement(**{**kw, "sources": {"b": "rapl"}})  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        m.name = "y"  # type: ignore[misc]


# ---------------------------------------------------------------------------- property


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["advance", "load", "begin", "end", "sample"]),
            st.integers(0, 3),
            st.floats(0.0, 5.0),
        ),
        max_size=40,
    )
)
def test_random_overlapping_windows_match_the_exact_integral(
    steps: list[tuple[str, int, float]],
) -> None:
    """Any interleaving of windows, load changes and samples: energy = integral of the model."""
    clock = Clock(0.0)
    src = sim(clock, idle_w=50.0, busy_w=450.0)
    load = 0.0
    exact = 0.0  # running integral of the model's power
    started: dict[str, float] = {}
    with meter_for(src, clock) as meter:
        for op, k, x in steps:
            name = f"w{k}"
            if op == "advance":
                exact += (50.0 + 400.0 * load) * x
                clock.advance(x)
            elif op == "load":
                load = x / 5.0
                src.set_load(load)
            elif op == "sample":
                meter.sample_now()
            elif op == "begin" and name not in started:
                meter.begin(name)
                started[name] = exact
            elif op == "end" and name in started:
                m = meter.end(name)
                assert m.energy_j["sim0"] == pytest.approx(exact - started.pop(name), abs=1e-6)
        for name, e0 in started.items():
            assert meter.end(name).energy_j["sim0"] == pytest.approx(exact - e0, abs=1e-6)
