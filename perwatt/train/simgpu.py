"""A simulated GPU whose time and energy depend on the SM clock, for tests and demos.

Nothing here is a measurement: every figure it produces is labelled ``simulated``.

Model (per instruction, per SM frequency ``f``)::

    time(f)  = a * f_max / f + b                  a: SM-bound seconds at f_max, b: the rest
    power(f) = static_w + dynamic_w * (f / f_max) * (V(f) / V(f_max))**2
    V(f)     = v_min + (1 - v_min) * (f - f_min) / (f_max - f_min)      (normalised voltage)
    energy   = power(f) * time(f)

Why this shape:

* CMOS dynamic power is ``alpha * C * V**2 * f`` (Weste & Harris, *CMOS VLSI Design*, 4th ed.,
  §5.1); DVFS lowers the voltage with the clock, so dynamic power falls faster than linearly.
  The linear V(f) curve is a simplification of the GPU's voltage/frequency table.
* Only the SM-bound part of an instruction stretches as ``1/f``; memory- and communication-bound
  time does not depend on the SM clock (the time–frequency curves in Zeus, NSDI'23, Fig. 2, and
  Perseus, SOSP'24, §2.2, flatten at low clocks for this reason).
* Static (leakage + board) power is paid for as long as the instruction runs, so energy has an
  interior minimum: below some clock the longer runtime costs more static energy than the lower
  clock saves — exactly the point where the profiler's descending sweep stops.

The default parameters are chosen so that a forward step on the ``A100`` preset looks like stage 0
of the Perseus GPT-3 A100 profile (``data/perseus-sosp24``: ~50 ms, minimum energy near
1.1 GHz); they are not a calibration of any real GPU.

The GPU runs on *virtual time*: :meth:`SimulatedGPU.run` advances its clock by the instruction's
duration instantly, so a profiling sweep over dozens of frequencies takes milliseconds in tests.
:class:`SimulatedGPUSource` exposes its energy counter to :class:`perwatt.meter.Meter` (build the
meter with ``clock=gpu.clock`` and ``sampler=False``); ``counter_period_s`` reproduces the
quantised counter of real GPUs (~100 ms on an H100, ARCHITECTURE.md).

The GPU also offers the clock-control calls of perwatt's NVML wrapper (``supported_sm_clocks_mhz``,
``lock_sm_clocks``, ``reset_sm_clocks``, ``can_set_clocks``), so the profiler and the frequency
controller drive it exactly as they drive a real GPU.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from perwatt.errors import ConfigError, NoPermissionError
from perwatt.meter.source import PowerSource


@dataclass(frozen=True, slots=True, kw_only=True)
class InstructionModel:
    """Time model of one instruction (e.g. stage 2's forward): ``time = a*f_max/f + b``."""

    sm_bound_s: float  # a: seconds that scale with 1/f, measured at f_max
    fixed_s: float = 0.0  # b: seconds independent of the SM clock (memory, launch overhead)
    activity: float = 1.0  # switching activity: scales dynamic power (backward > forward)

    def __post_init__(self) -> None:
        if not (self.sm_bound_s > 0 and math.isfinite(self.sm_bound_s)):
            raise ConfigError(f"sm_bound_s must be a positive number, got {self.sm_bound_s}")
        if not (self.fixed_s >= 0 and math.isfinite(self.fixed_s)):
            raise ConfigError(f"fixed_s must be a non-negative number, got {self.fixed_s}")
        if not (0 < self.activity <= 2):
            raise ConfigError(f"activity must be in (0, 2], got {self.activity}")


@dataclass(frozen=True, slots=True, kw_only=True)
class GPUModel:
    """Clock range and power model of one simulated GPU generation."""

    name: str
    max_mhz: int
    min_mhz: int
    step_mhz: int
    static_w: float  # power drawn while an instruction runs, independent of the clock
    dynamic_w: float  # extra power at f_max with activity 1
    idle_w: float  # power while waiting (communication, bubbles)
    v_min: float = 0.6  # normalised voltage at min_mhz
    source: str = ""

    def __post_init__(self) -> None:
        if not 0 < self.min_mhz < self.max_mhz:
            raise ConfigError(f"need 0 < min_mhz < max_mhz, got {self.min_mhz}, {self.max_mhz}")
        if self.step_mhz <= 0:
            raise ConfigError(f"step_mhz must be positive, got {self.step_mhz}")
        if min(self.static_w, self.dynamic_w, self.idle_w) < 0:
            raise ConfigError("simulated powers must be non-negative")
        if not 0 < self.v_min <= 1:
            raise ConfigError(f"v_min must be in (0, 1], got {self.v_min}")

    @property
    def supported_mhz(self) -> tuple[int, ...]:
        """Supported SM clocks, highest first (the order NVML lists them)."""
        return tuple(range(self.max_mhz, self.min_mhz - 1, -self.step_mhz))

    def voltage(self, freq_mhz: float) -> float:
        span = self.max_mhz - self.min_mhz
        return self.v_min + (1.0 - self.v_min) * (freq_mhz - self.min_mhz) / span

    def busy_power_w(self, freq_mhz: float, activity: float = 1.0) -> float:
        x = freq_mhz / self.max_mhz
        v = self.voltage(freq_mhz)
        return self.static_w + self.dynamic_w * activity * x * v * v

    def time_s(self, inst: InstructionModel, freq_mhz: float) -> float:
        return inst.sm_bound_s * self.max_mhz / freq_mhz + inst.fixed_s

    def energy_j(self, inst: InstructionModel, freq_mhz: float) -> float:
        return self.busy_power_w(freq_mhz, inst.activity) * self.time_s(inst, freq_mhz)


# Clock ranges: max SM clock and step from NVIDIA's datasheets and `nvidia-smi -q -d
# SUPPORTED_CLOCKS` (A100 SXM4: 1410 MHz boost, 15 MHz steps, NVIDIA A100 Tensor Core GPU
# datasheet; H100 SXM5: 1980 MHz boost, NVIDIA H100 datasheet; the same ranges as the fake NVML
# presets in perwatt.meter.testing). Powers are model parameters, not datasheet values: chosen so
# busy power at f_max stays under the TDP (A100 SXM 400 W, H100 SXM 700 W, same datasheets).
GPU_MODELS: Mapping[str, GPUModel] = {
    "A100": GPUModel(
        name="simulated A100-SXM4",
        max_mhz=1410,
        min_mhz=210,
        step_mhz=15,
        static_w=110.0,
        dynamic_w=260.0,
        idle_w=80.0,
        v_min=0.55,
        source="clock range: NVIDIA A100 datasheet; powers: model parameters",
    ),
    "H100": GPUModel(
        name="simulated H100-SXM5",
        max_mhz=1980,
        min_mhz=345,
        step_mhz=15,
        static_w=170.0,
        dynamic_w=480.0,
        idle_w=110.0,
        v_min=0.55,
        source="clock range: NVIDIA H100 datasheet; powers: model parameters",
    ),
}


def gpu_model(name: str) -> GPUModel:
    """The preset ``name`` (case-insensitive): ``A100`` or ``H100``."""
    try:
        return GPU_MODELS[name.strip().upper()]
    except KeyError:
        raise ConfigError(
            f"unknown simulated GPU {name!r}; choose one of {', '.join(GPU_MODELS)}"
        ) from None


def default_stage_models(num_stages: int) -> list[dict[str, InstructionModel]]:
    """Per-stage forward/backward models for a demo pipeline: backward ~2x forward, stages
    mildly imbalanced (the last stage also computes the loss), so plans have bloat to remove."""
    if num_stages < 1:
        raise ConfigError(f"need at least one stage, got {num_stages}")
    out = []
    for s in range(num_stages):
        # Deterministic imbalance in [0.9, 1.1] plus a heavier last stage.
        scale = 0.9 + 0.2 * ((s * 7) % 5) / 4
        if s == num_stages - 1:
            scale *= 1.15
        fwd = InstructionModel(sm_bound_s=0.042 * scale, fixed_s=0.008 * scale, activity=0.95)
        bwd = InstructionModel(sm_bound_s=0.080 * scale, fixed_s=0.013 * scale, activity=1.0)
        out.append({"forward": fwd, "backward": bwd})
    return out


class SimulatedGPU:
    """One simulated GPU on virtual time. See the module docstring for the model.

    ``run(name)`` executes instruction ``name`` at the current SM clock; ``wait(s)`` idles.
    Clock control mirrors perwatt's NVML wrapper so profilers and controllers can drive it.
    """

    label = "simulated"

    def __init__(
        self,
        model: GPUModel | str = "A100",
        instructions: Mapping[str, InstructionModel] | None = None,
        *,
        start_s: float = 0.0,
        privileged: bool = True,
    ) -> None:
        self.model = gpu_model(model) if isinstance(model, str) else model
        self.instructions = dict(instructions or default_stage_models(1)[0])
        self._lock = threading.Lock()
        self._now_s = start_s
        self._energy_j = 0.0
        # Energy history at every state change; power is constant in between, so energy at
        # any past instant is a linear interpolation (used by the quantised counter).
        self._hist_t: list[float] = [start_s]
        self._hist_e: list[float] = [0.0]
        self._locked: tuple[int, int] | None = None
        self.privileged = privileged
        #: Every clock change: (virtual time, (min, max) or None for a reset).
        self.clock_changes: list[tuple[float, tuple[int, int] | None]] = []
        #: Every instruction run: (name, start_s, end_s, freq_mhz, energy_j).
        self.runs: list[tuple[str, float, float, int, float]] = []

    # ---------------------------------------------------------------- time and energy
    def clock(self) -> float:
        """Virtual time in seconds; pass as the Meter's ``clock``."""
        with self._lock:
            return self._now_s

    def energy_counter_j(self) -> float:
        """Exact cumulative energy in joules."""
        with self._lock:
            return self._energy_j

    def energy_at_j(self, t: float) -> float:
        """Exact cumulative energy at virtual time ``t`` (not after now)."""
        with self._lock:
            ts, es = self._hist_t, self._hist_e
            if t >= ts[-1]:
                return es[-1]
            i = bisect.bisect_right(ts, t)
            if i == 0:
                return es[0]
            t0, t1, e0, e1 = ts[i - 1], ts[i], es[i - 1], es[i]
            return e0 + (e1 - e0) * (t - t0) / (t1 - t0) if t1 > t0 else e1

    def _record(self) -> None:
        # Called under the lock after time/energy advanced.
        self._hist_t.append(self._now_s)
        self._hist_e.append(self._energy_j)

    @property
    def freq_mhz(self) -> int:
        """The SM clock an instruction runs at now: the top of the locked range, else f_max."""
        return self._locked[1] if self._locked is not None else self.model.max_mhz

    def instruction_time_s(self, name: str, freq_mhz: float | None = None) -> float:
        return self.model.time_s(self._inst(name), self.freq_mhz if freq_mhz is None else freq_mhz)

    def instruction_energy_j(self, name: str, freq_mhz: float | None = None) -> float:
        f = self.freq_mhz if freq_mhz is None else freq_mhz
        return self.model.energy_j(self._inst(name), f)

    def _inst(self, name: str) -> InstructionModel:
        try:
            return self.instructions[name]
        except KeyError:
            raise ConfigError(
                f"simulated GPU has no instruction {name!r}; known: {', '.join(self.instructions)}"
            ) from None

    def run(self, name: str) -> float:
        """Execute ``name`` at the current clock; advance virtual time. Returns its duration."""
        inst = self._inst(name)
        with self._lock:
            f = self._locked[1] if self._locked is not None else self.model.max_mhz
            dt = self.model.time_s(inst, f)
            e = self.model.busy_power_w(f, inst.activity) * dt
            t0 = self._now_s
            self._now_s += dt
            self._energy_j += e
            self._record()
            self.runs.append((name, t0, self._now_s, f, e))
        return dt

    def wait(self, seconds: float) -> None:
        """Idle (communication, pipeline bubble) for ``seconds`` at idle power."""
        if seconds < 0:
            raise ConfigError(f"cannot wait a negative time ({seconds} s)")
        with self._lock:
            self._now_s += seconds
            self._energy_j += self.model.idle_w * seconds
            self._record()

    # ---------------------------------------------------------------- clock control
    def supported_sm_clocks_mhz(self) -> tuple[int, ...]:
        return self.model.supported_mhz

    def can_set_clocks(self) -> bool:
        return self.privileged

    def lock_sm_clocks(self, min_mhz: int, max_mhz: int) -> None:
        if not self.privileged:
            raise NoPermissionError("simulated GPU: changing clocks needs privileges")
        supported = self.model.supported_mhz
        for f in (min_mhz, max_mhz):
            if f not in supported:
                raise ConfigError(
                    f"{self.model.name} does not support {f} MHz; "
                    f"supported: {supported[-1]}..{supported[0]} in {self.model.step_mhz} MHz steps"
                )
        if min_mhz > max_mhz:
            raise ConfigError(f"locked clock range is empty: {min_mhz} > {max_mhz} MHz")
        with self._lock:
            self._locked = (int(min_mhz), int(max_mhz))
            self.clock_changes.append((self._now_s, self._locked))

    def reset_sm_clocks(self) -> None:
        with self._lock:
            self._locked = None
            self.clock_changes.append((self._now_s, None))

    def source(
        self, *, counter_period_s: float | None = None, device: str = "simgpu0"
    ) -> SimulatedGPUSource:
        """A PowerSource over this GPU's energy counter, for :class:`perwatt.meter.Meter`."""
        return SimulatedGPUSource(self, counter_period_s=counter_period_s, device=device)


class SimulatedGPUSource(PowerSource):
    """Energy counter of a :class:`SimulatedGPU`, labelled ``simulated``.

    With ``counter_period_s`` the counter only publishes its value at multiples of that period
    of virtual time, like the NVML counter on an H100 (~100 ms, ARCHITECTURE.md). The source is
    counter-only (no instant power), so the meter always takes counter differences and flags
    windows shorter than the period.
    """

    name = "simulated"
    energy_label = "simulated"
    power_label = "simulated"

    def __init__(
        self, gpu: SimulatedGPU, *, counter_period_s: float | None = None, device: str = "simgpu0"
    ) -> None:
        if counter_period_s is not None and not counter_period_s > 0:
            raise ConfigError(f"counter period must be positive, got {counter_period_s}")
        self.gpu = gpu
        self.counter_period_s = counter_period_s
        self._device = device
        self._t0 = gpu.clock()

    @property
    def devices(self) -> tuple[str, ...]:
        return (self._device,)

    @property
    def has_energy_counter(self) -> bool:
        return True

    def read_energy_j(self) -> Mapping[str, float]:
        return {self._device: self._quantised(self.gpu.clock(), self.gpu.energy_counter_j())}

    def _quantised(self, t: float, e: float) -> float:
        if self.counter_period_s is None:
            return e
        # The counter publishes the energy at the last period boundary before now.
        p = self.counter_period_s
        boundary = self._t0 + math.floor((t - self._t0) / p + 1e-9) * p
        return self.gpu.energy_at_j(min(boundary, t))

    def describe(self) -> str:
        period = (
            ""
            if self.counter_period_s is None
            else f", counter every {self.counter_period_s * 1e3:g} ms"
        )
        return f"simulated GPU {self.gpu.model.name}{period} (a model, not a measurement)"


def sweep_curve(
    gpu: SimulatedGPU, name: str, freqs_mhz: Sequence[int] | None = None
) -> list[tuple[int, float, float]]:
    """Exact (freq_mhz, time_s, energy_j) of instruction ``name`` over ``freqs_mhz``."""
    freqs = gpu.supported_sm_clocks_mhz() if freqs_mhz is None else freqs_mhz
    return [(f, gpu.instruction_time_s(name, f), gpu.instruction_energy_j(name, f)) for f in freqs]


def one_f_one_b_order(stage: int, num_stages: int, microbatches: int) -> list[tuple[str, int]]:
    """(instruction, microbatch) in synchronous-1F1B order for one stage (Narayanan et al.,
    PipeDream-Flush, SC'21): ``num_stages - stage - 1`` warm-up forwards, then alternate one
    forward and one backward, then the remaining backwards."""
    if not 0 <= stage < num_stages:
        raise ConfigError(f"stage {stage} is outside 0..{num_stages - 1}")
    if microbatches < 1:
        raise ConfigError(f"need at least one microbatch, got {microbatches}")
    warmup = min(num_stages - stage - 1, microbatches)
    order: list[tuple[str, int]] = [("forward", m) for m in range(warmup)]
    for i in range(microbatches - warmup):
        order.append(("forward", warmup + i))
        order.append(("backward", i))
    order.extend(("backward", m) for m in range(microbatches - warmup, microbatches))
    return order
