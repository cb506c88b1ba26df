"""The simulated source: exact counter, load changes, analytic power_fn, always 'simulated'."""

from __future__ import annotations

import itertools
import math
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perwatt.errors import ConfigError
from perwatt.meter import SimulatedSource, is_measured


class Clock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def test_labels_and_description_never_claim_a_measurement() -> None:
    src = SimulatedSource(num_devices=3, prefix="gpu")
    assert src.devices == ("gpu0", "gpu1", "gpu2")
    assert src.energy_label == src.power_label == "simulated"
    assert not is_measured(src.energy_label)
    assert "not a measurement" in src.describe()
    assert src.has_energy_counter


def test_idle_then_busy_counter_is_exact() -> None:
    clock = Clock(42.0)
    src = SimulatedSource(idle_w=60.0, busy_w=300.0, clock=clock)
    assert src.read_power_w() == {"sim0": 60.0}
    clock.advance(10.0)
    src.set_load(0.5)
    assert src.read_power_w() == {"sim0": 180.0}
    clock.advance(4.0)
    src.set_load(1.0)
    clock.advance(1.0)
    assert src.read_energy_j() == {"sim0": pytest.approx(600.0 + 720.0 + 300.0)}


def test_fixed_power_and_many_devices() -> None:
    clock = Clock()
    src = SimulatedSource(power_w=123.0, num_devices=2, clock=clock)
    clock.advance(2.0)
    assert src.read_energy_j() == {"sim0": 246.0, "sim1": 246.0}
    assert src.read_power_w() == {"sim0": 123.0, "sim1": 123.0}


@settings(max_examples=50, deadline=None)
@given(p0=st.floats(0, 500), slope=st.floats(0, 50), span=st.floats(0.01, 5.0))
def test_power_fn_linear_counter_is_exact(p0: float, slope: float, span: float) -> None:
    clock = Clock(7.0)
    src = SimulatedSource(power_fn=lambda t: p0 + slope * t, clock=clock, resolution_s=0.01)
    clock.advance(span)
    want = p0 * span + slope * span**2 / 2
    assert math.isclose(src.read_energy_j()["sim0"], want, rel_tol=1e-9, abs_tol=1e-9)


def test_power_fn_sinusoid_counter_within_trapezoid_bound() -> None:
    clock = Clock()
    w = 2 * math.pi / 2.0
    src = SimulatedSource(
        power_fn=lambda t: 400 + 200 * math.sin(w * t), clock=clock, resolution_s=1e-3
    )
    for _ in range(7):  # read in uneven steps: the counter must not depend on read times
        clock.advance(0.37)
        src.read_energy_j()
    span = 7 * 0.37
    want = 400 * span + 200 * (1 - math.cos(w * span)) / w
    bound = span * (1e-3) ** 2 * 200 * w**2 / 12
    assert abs(src.read_energy_j()["sim0"] - want) <= bound + 1e-9


def test_counter_period_is_passed_through() -> None:
    assert SimulatedSource(counter_period_s=0.1).counter_period_s == 0.1
    assert SimulatedSource().counter_period_s is None


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="at least one device"):
        SimulatedSource(num_devices=0)
    with pytest.raises(ConfigError, match="non-negative"):
        SimulatedSource(idle_w=-1.0)
    src = SimulatedSource()
    for bad in (-0.1, 1.1):
        with pytest.raises(ConfigError, match=r"\[0, 1\]"):
            src.set_load(bad)


def test_concurrent_reads_and_load_changes_keep_the_counter_monotonic() -> None:
    src = SimulatedSource(idle_w=10.0, busy_w=20.0)  # real clock
    seen: list[float] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.wait(0.0005):
            seen.append(src.read_energy_j()["sim0"])

    th = threading.Thread(target=reader)
    th.start()
    for i in range(100):
        src.set_load(i % 2)
    stop.wait(0.02)
    stop.set()
    th.join()
    assert seen and all(b >= a for a, b in itertools.pairwise(seen))
