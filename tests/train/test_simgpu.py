"""The simulated GPU: frequency-dependent time and energy, virtual time, quantised counter."""

from __future__ import annotations

import itertools

import pytest

from perwatt.errors import ConfigError, NoPermissionError
from perwatt.meter import Meter
from perwatt.train.simgpu import (
    GPU_MODELS,
    InstructionModel,
    SimulatedGPU,
    default_stage_models,
    gpu_model,
    one_f_one_b_order,
    sweep_curve,
)


@pytest.mark.parametrize("name", sorted(GPU_MODELS))
def test_time_falls_and_energy_has_interior_minimum(name: str) -> None:
    gpu = SimulatedGPU(name)
    curve = sweep_curve(gpu, "forward")
    times = [t for _, t, _ in curve]
    energies = [e for _, _, e in curve]
    # Highest clock first: time rises monotonically as the clock falls.
    assert all(b > a for a, b in itertools.pairwise(times))
    i_min = energies.index(min(energies))
    # The energy minimum is neither at the top nor at the bottom clock.
    assert 0 < i_min < len(energies) - 1
    # Busy power at the top clock stays under the datasheet TDP (A100 400 W, H100 700 W).
    tdp = {"A100": 400.0, "H100": 700.0}[name]
    assert GPU_MODELS[name].busy_power_w(GPU_MODELS[name].max_mhz) < tdp


def test_run_advances_virtual_time_and_energy() -> None:
    inst = InstructionModel(sm_bound_s=0.04, fixed_s=0.01)
    gpu = SimulatedGPU("A100", {"forward": inst})
    assert gpu.run("forward") == pytest.approx(0.05)
    gpu.lock_sm_clocks(705, 705)
    dt = gpu.run("forward")
    assert dt == pytest.approx(0.04 * 2 + 0.01)
    model = gpu_model("a100")
    expected = model.busy_power_w(1410, 1.0) * 0.05 + model.busy_power_w(705, 1.0) * dt
    assert gpu.energy_counter_j() == pytest.approx(expected)
    gpu.wait(1.0)
    assert gpu.clock() == pytest.approx(0.05 + dt + 1.0)
    assert gpu.energy_counter_j() == pytest.approx(expected + model.idle_w)


def test_meter_measures_simulated_gpu() -> None:
    gpu = SimulatedGPU("H100")
    meter = Meter(gpu.source(), clock=gpu.clock, sampler=False, sync_cuda=False)
    with meter, meter.window("fwd") as w:
        gpu.run("forward")
    m = w.result
    assert m.source == "simulated"
    assert not m.measured
    assert m.total_energy_j == pytest.approx(gpu.instruction_energy_j("forward", 1980))
    assert m.duration_s == pytest.approx(gpu.instruction_time_s("forward", 1980))


def test_quantised_counter_publishes_only_at_period_boundaries() -> None:
    gpu = SimulatedGPU("H100")
    src = gpu.source(counter_period_s=0.1)
    gpu.wait(0.05)
    assert src.read_energy_j()["simgpu0"] == 0.0  # no boundary crossed yet
    gpu.wait(0.1)  # now at 0.15 s: the counter shows the energy at 0.1 s
    assert src.read_energy_j()["simgpu0"] == pytest.approx(gpu.model.idle_w * 0.1)


def test_unsupported_clock_and_privilege_errors() -> None:
    gpu = SimulatedGPU("A100")
    with pytest.raises(ConfigError, match="does not support 1000 MHz"):
        gpu.lock_sm_clocks(1000, 1000)
    with pytest.raises(NoPermissionError):
        SimulatedGPU("A100", privileged=False).lock_sm_clocks(1410, 1410)
    with pytest.raises(ConfigError, match="unknown simulated GPU"):
        SimulatedGPU("B200")
    with pytest.raises(ConfigError, match="no instruction"):
        gpu.run("optimizer")
    with pytest.raises(ConfigError):
        InstructionModel(sm_bound_s=-1.0)


def test_reset_restores_max_clock() -> None:
    gpu = SimulatedGPU("A100")
    gpu.lock_sm_clocks(900, 900)
    assert gpu.freq_mhz == 900
    gpu.reset_sm_clocks()
    assert gpu.freq_mhz == 1410
    assert gpu.clock_changes[-1][1] is None


@pytest.mark.parametrize(("stages", "mbs"), [(1, 1), (4, 8), (8, 3)])
def test_one_f_one_b_order(stages: int, mbs: int) -> None:
    for s in range(stages):
        order = one_f_one_b_order(s, stages, mbs)
        assert sorted(order) == sorted(
            [("forward", m) for m in range(mbs)] + [("backward", m) for m in range(mbs)]
        )
        # A microbatch's backward comes after its forward; warm-up is stages - s - 1 forwards.
        for m in range(mbs):
            assert order.index(("forward", m)) < order.index(("backward", m))
        warm = min(stages - s - 1, mbs)
        assert [i for i, _ in order[:warm]] == ["forward"] * warm
    assert len(default_stage_models(stages)) == stages
