"""Online stage profiler: time and energy of every forward and backward at every SM clock.

The frequency planner needs, for each pipeline stage, the time and energy of one microbatch's
forward and backward at each GPU SM frequency (the ``stage,instruction,frequency,time,energy``
CSV of ``data/perseus-sosp24/stage_profile``). This module measures it *during real
training*: the training loop calls two hooks around each instruction and one at the end of each
iteration, and the profiler walks the clock down while training runs::

    prof = StageProfiler(stage=rank, meter=meter, clocks=gpu)   # gpu: perwatt NVML wrapper
    prof.start()                                               # locks the max clock
    while not prof.done:
        for inst, mb in my_schedule:                           # "forward" | "backward"
            prof.on_instruction_begin(inst)
            run(inst, mb)
            prof.on_instruction_end(inst)
        prof.on_iteration_end()                                # may change the clock
    prof.close()                                               # resets the clocks
    write_profile_csv(prof.rows(), "stage3.csv")

Sweep (one *step* per frequency, highest first)::

    f_max ─ warm-up iters ─ measured iters ─┐ f_max-Δ ─ warm-up ─ measured ─┐ …  stop
                                            energy(f) compared to the best so far

* Frequencies: the GPU's supported SM clocks from the maximum down, every ``step``-th one, or an
  explicit list. After each change ``warmup_iterations`` iterations run unmeasured: the clock
  change, caches and the power-management loop need time to settle.
* Early stop: after each step the energy of one forward plus one backward is compared to the
  lowest so far; once it has been above that minimum (by more than ``noise_tolerance``) for
  ``patience`` steps without a new minimum, lower clocks would only be slower *and* costlier,
  so the sweep ends. Those ``patience`` extra points stay in the profile (the planner drops
  dominated options itself).
* The sweep locks clocks. :func:`profile_script` (and ``perwatt train profile --script``)
  refuses without the explicit flag and the privilege; a caller building a
  :class:`StageProfiler` on a real GPU takes that responsibility itself.

How it measures: at every hook edge the profiler synchronises CUDA and reads the meter once
(:meth:`perwatt.meter.Meter.sample_now`: the energy counter and instant power of every source,
recorded on the meter's timeline). Consecutive edges bound *intervals*: a forward, a backward, a
gap in which the GPU waits on its neighbours (pipeline blocking), or the stretch between two
iterations (optimizer step, data loading; excluded). Interval energy is the counter difference;
GPUs without a counter (pre-Volta) use the instant power read as each interval ends.

Why aggregate: a microbatch's forward or backward takes 10–100 ms, while the NVML energy counter
of an H100 only changes about every 100 ms (ARCHITECTURE.md, measured facts) and instant power is a ~50 ms
average. A single instruction's counter difference is therefore quantised to the counter's
period and can be off by ±100%. The profiler never uses one interval alone: at each frequency
it sums the energy and the time of every forward (and every backward) over all measured
iterations, and reports ``energy/count`` and ``time/count``. Each interval's quantisation error
is at most one counter period of power; over ``n`` intervals the part of that error that
depends on where the counter's update falls averages out like 1/√n. What does not average out
is a bias when the power just before an interval's start differs systematically from the power
just before its end (idle bubble → busy step). Simulated here (3-stage 1F1B, 8 microbatches,
H100-like 100 ms counter, ``profile_simulated_pipeline``), mean |error| of a row against the
model is 10% with 2 measured iterations per clock, 2.5% with 10 and 1.8% with 30 (worst row
82%, 11%, 4.6%); with an exact counter it is 0. That noise also ends the sweep too early: on
the simulated H100 (step 3 = 45 MHz, 10 measured iterations) the sweep stopped 450–495 MHz above
the energy minimum on two of four stages; with ``noise_tolerance=0.03`` every stage swept past
it and the measured minimum landed within one step of the model's. So on an H100 use
``measure_iterations ≥ 10`` and ``noise_tolerance ≈ 0.03`` (CLI ``--iterations 10
--noise-tolerance 0.03``). A least-squares
deconvolution of the counter's box filter was tried and rejected: in 1F1B forward and backward
alternate faster than the counter updates, so their powers are not separable from the counter
alone. Time figures come from the edges (CUDA synchronised), so they are exact whatever the
counter does.

The gap intervals also give the power the GPU draws while blocked on communication,
:meth:`StageProfiler.blocking_power_w` — a measured ``P_block`` for the planner.

Overhead: one CUDA synchronisation and one meter read per edge (a counter read took ~4 ms on an
H100, ARCHITECTURE.md), only while profiling.

PyTorch pipelining: :func:`attach_to_pipeline_stage` wraps a ``torch.distributed.pipelining``
stage's ``forward_one_chunk`` / ``backward_one_chunk`` so the built-in schedules (``Schedule1F1B``,
``ScheduleGPipe``, interleaved) call the hooks; call ``on_iteration_end()`` after each
``schedule.step(...)``. Scripts run by ``perwatt train profile --script`` call the module-level
:func:`on_instruction_begin`, :func:`on_instruction_end` and :func:`on_iteration_end`, which
forward to the active profiler (and do nothing when there is none).
"""

from __future__ import annotations

import csv
import functools
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from perwatt.errors import (
    ConfigError,
    DataFormatError,
    NoPermissionError,
    NVMLNotFoundError,
    PartialRunError,
    PerwattError,
)
from perwatt.meter import Meter
from perwatt.meter.detect import FAKE_NVML_ENV, nvml_module
from perwatt.meter.meter import sync_cuda
from perwatt.meter.nvml import NVMLSource
from perwatt.train.plan import MAX_INSTRUCTIONS
from perwatt.train.simgpu import SimulatedGPU, default_stage_models, one_f_one_b_order

INSTRUCTIONS = ("forward", "backward")
_MAX_ITERATIONS_PER_CLOCK = 1000
CSV_HEADER = ("stage", "instruction", "frequency", "time", "energy")


class ClockControl(Protocol):
    """What the profiler needs from a GPU: perwatt's NVML wrapper and SimulatedGPU provide it."""

    def supported_sm_clocks_mhz(self) -> Sequence[int]: ...

    def lock_sm_clocks(self, min_mhz: int, max_mhz: int) -> None: ...

    def reset_sm_clocks(self) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepConfig:
    """How the descending-frequency sweep runs."""

    frequencies_mhz: tuple[int, ...] | None = None  # explicit list; default: supported clocks
    step: int = 1  # use every step-th supported clock (e.g. 2 → 30 MHz apart on A100/H100)
    min_freq_mhz: int | None = None  # never go below this clock
    warmup_iterations: int = 1  # unmeasured iterations after each clock change
    measure_iterations: int = 2  # measured iterations per clock
    patience: int = 3  # steps without improvement before stopping
    min_improvement: float = 0.0  # relative energy drop that counts as an improvement
    # A step counts towards `patience` only if its energy is above the minimum by more than this
    # (relative): measurement noise then cannot end the sweep early. ~0.03 suits a 100 ms counter.
    noise_tolerance: float = 0.0

    def __post_init__(self) -> None:
        # Each message names the field and its `perwatt train profile` flag.
        if self.step < 1:
            raise ConfigError(f"sweep step (--step) must be ≥ 1, got {self.step}")
        if self.warmup_iterations < 0:
            raise ConfigError(
                f"warm-up iterations (--warmup) must be ≥ 0, got {self.warmup_iterations}"
            )
        if self.measure_iterations < 1:
            raise ConfigError(
                f"measured iterations (--iterations) must be ≥ 1, got {self.measure_iterations}"
            )
        # Upper bounds: the sweep runs (warm-up + measured) iterations at each of up to ~100
        # clocks; 10 measured per clock suffice on an H100 (module docstring), and a thousand
        # already means ~100,000 training iterations per profile.
        for flag, value in (
            ("--iterations", self.measure_iterations),
            ("--warmup", self.warmup_iterations),
        ):
            if value > _MAX_ITERATIONS_PER_CLOCK:
                raise ConfigError(
                    f"{flag} {value} is more than {_MAX_ITERATIONS_PER_CLOCK:,} iterations per "
                    "clock; 10 measured iterations per clock average a 100 ms counter to ~2.5%"
                )
        if self.patience < 1:
            raise ConfigError(f"patience (--patience) must be ≥ 1, got {self.patience}")
        if not 0.0 <= self.noise_tolerance < 1.0:
            raise ConfigError(
                f"noise_tolerance (--noise-tolerance) must be in [0, 1), got {self.noise_tolerance}"
            )
        if not 0.0 <= self.min_improvement < 1.0:
            raise ConfigError(
                f"min_improvement (--min-improvement) must be in [0, 1), got {self.min_improvement}"
            )
        if self.min_freq_mhz is not None and self.min_freq_mhz <= 0:
            raise ConfigError(f"lowest clock (--min-freq) must be > 0 MHz, got {self.min_freq_mhz}")
        if self.frequencies_mhz is not None and not self.frequencies_mhz:
            raise ConfigError("the explicit frequency list is empty")


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileRow:
    """Mean time and energy of one instruction of one stage at one SM clock."""

    stage: int
    instruction: str
    freq_mhz: int
    time_s: float
    energy_j: float
    count: int  # instructions averaged
    source: str  # the meter's label: nvml-counter, simulated, …
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.stage < 0:
            raise ValueError(f"negative stage {self.stage}")
        if self.instruction not in INSTRUCTIONS:
            raise ValueError(f"unknown instruction {self.instruction!r}")
        if self.count < 1:
            raise ValueError("a profile row needs at least one measured instruction")
        if not (self.time_s >= 0 and self.energy_j >= 0):
            raise ValueError("time and energy must be non-negative")


# State of the GPU between two hook edges. _OTHER: from the last instruction of an iteration to
# the first of the next (optimizer step, data loading), kept out of every figure.
_GAP, _FWD, _BWD, _OTHER = 0, 1, 2, 3
_STATE = {"forward": _FWD, "backward": _BWD}


@dataclass(slots=True)
class _Step:
    """Everything read at one frequency: one counter/power reading per hook edge."""

    freq_mhz: int
    t: list[float] = field(default_factory=list)  # edge times (meter clock)
    c: list[float] = field(default_factory=list)  # energy counter at each edge (J), if any
    p: list[float] = field(default_factory=list)  # instant power at each edge (W), if any
    state: list[int] = field(default_factory=list)  # state from this edge on
    durations: dict[str, list[float]] = field(default_factory=lambda: {i: [] for i in INSTRUCTIONS})
    power_w: dict[int, float] = field(default_factory=dict)  # estimated, per state
    label: str = ""
    warnings: list[str] = field(default_factory=list)


def estimate_state_power(
    t: Sequence[float], c: Sequence[float], state: Sequence[int]
) -> tuple[dict[int, float], dict[int, float]]:
    """Per state: (average power in W, total time in s) from counter readings at state edges.

    Interval ``j`` runs from edge ``j`` to edge ``j + 1`` in state ``state[j]``; its energy is the
    counter difference. Summing energy and time over all intervals of one state before dividing
    is what averages the counter's quantisation over many instructions (module docstring).
    """
    energy: dict[int, float] = {}
    time_s: dict[int, float] = {}
    for j in range(len(t) - 1):
        k = state[j]
        energy[k] = energy.get(k, 0.0) + max(0.0, c[j + 1] - c[j])
        time_s[k] = time_s.get(k, 0.0) + (t[j + 1] - t[j])
    power = {k: energy[k] / time_s[k] for k in energy if time_s[k] > 0}
    return power, time_s


def _frequency_list(clocks: ClockControl, config: SweepConfig) -> tuple[int, ...]:
    supported = sorted({int(f) for f in clocks.supported_sm_clocks_mhz()}, reverse=True)
    if not supported:
        raise ConfigError("the GPU reports no supported SM clocks; cannot sweep")
    if config.frequencies_mhz is not None:
        bad = [f for f in config.frequencies_mhz if f not in supported]
        if bad:
            raise ConfigError(
                f"frequencies {bad} MHz are not supported by this GPU "
                f"(supported: {supported[-1]}..{supported[0]} MHz); pick from its list"
            )
        freqs = sorted(set(config.frequencies_mhz), reverse=True)
    else:
        freqs = supported[:: config.step]
    if config.min_freq_mhz is not None:
        freqs = [f for f in freqs if f >= config.min_freq_mhz]
        if not freqs:
            raise ConfigError(f"no supported clock is at or above {config.min_freq_mhz} MHz")
    return tuple(freqs)


class StageProfiler:
    """Profiles one pipeline stage on one GPU; see the module docstring."""

    def __init__(
        self,
        *,
        stage: int,
        meter: Meter,
        clocks: ClockControl,
        config: SweepConfig | None = None,
        device: str | None = None,
        counter_period_s: float | None = None,
        on_frequency: Callable[[int], None] | None = None,
    ) -> None:
        if stage < 0:
            raise ConfigError(f"stage must be ≥ 0, got {stage}")
        self.stage = stage
        self.meter = meter
        self.clocks = clocks
        self.config = config or SweepConfig()
        if device is None:
            if len(meter.devices) != 1:
                raise ConfigError(
                    f"the meter has {len(meter.devices)} devices ({', '.join(meter.devices)}); "
                    "pass device= to name this stage's GPU"
                )
            device = meter.devices[0]
        owner = [src for src in meter.sources if device in src.devices]
        if not owner:
            raise ConfigError(f"device {device!r} is not in the meter ({', '.join(meter.devices)})")
        self.device = device
        self._source = owner[0]
        if counter_period_s is None:
            counter_period_s = self._source.counter_period_s or 0.0
        if not (counter_period_s >= 0 and math.isfinite(counter_period_s)):
            raise ConfigError(f"counter period must be ≥ 0 s, got {counter_period_s}")
        self.counter_period_s = counter_period_s
        self.frequencies_mhz = _frequency_list(clocks, self.config)
        self._on_frequency = on_frequency
        self._index = -1  # position in frequencies_mhz
        self._iter_in_step = 0
        self._open: str | None = None
        self._begin_t = 0.0
        self._steps: dict[int, _Step] = {}
        self._best_j = math.inf
        self._best_f = 0
        self._since_best = 0
        self._started = False
        self.done = False
        self.stop_reason = ""

    # ------------------------------------------------------------------ lifecycle
    @property
    def freq_mhz(self) -> int | None:
        """The clock the sweep is at, or None before start / after the end."""
        if self._index < 0 or self.done:
            return None
        return self.frequencies_mhz[self._index]

    @property
    def measuring(self) -> bool:
        return (
            not self.done and self._started and self._iter_in_step >= self.config.warmup_iterations
        )

    def start(self) -> StageProfiler:
        if self._started:
            return self
        self._started = True
        self._goto(0)
        return self

    def close(self) -> None:
        """Stop sweeping and give the GPU its default clocks back. Safe to call twice."""
        self._open = None
        if self._started and not getattr(self, "_reset", False):
            self._reset = True
            self.clocks.reset_sm_clocks()
        self.done = True
        if not self.stop_reason:
            self.stop_reason = "closed"

    def __enter__(self) -> StageProfiler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _goto(self, index: int) -> None:
        self._index = index
        self._iter_in_step = 0
        f = self.frequencies_mhz[index]
        self.clocks.lock_sm_clocks(f, f)
        if self._on_frequency is not None:
            self._on_frequency(f)

    # ------------------------------------------------------------------ hooks
    def _edge(self, state: int) -> float:
        """Read the meter once at a hook edge; the state holds from now on. Returns the time."""
        if self.meter.sync_cuda:
            sync_cuda()
        sample = self.meter.sample_now()
        f = self.frequencies_mhz[self._index]
        step = self._steps.setdefault(f, _Step(freq_mhz=f))
        step.t.append(sample.t_s)
        step.c.append(sample.energy_j.get(self.device, math.nan))
        step.p.append(sample.power_w.get(self.device, math.nan))
        step.state.append(state)
        return sample.t_s

    def on_instruction_begin(self, name: str) -> None:
        """Call right before the stage starts a forward or backward of one microbatch."""
        if name not in INSTRUCTIONS:
            raise ConfigError(f"instruction must be 'forward' or 'backward', got {name!r}")
        if not self._started:
            raise ConfigError("call StageProfiler.start() before the first instruction")
        if self._open is not None:
            raise ConfigError(
                f"on_instruction_begin({name!r}) while {self._open!r} is still open; "
                "call on_instruction_end first"
            )
        self._open = name
        if self.measuring:
            self._begin_t = self._edge(_STATE[name])

    def on_instruction_end(self, name: str) -> None:
        """Call right after the stage's forward or backward of one microbatch returns."""
        if self._open != name:
            raise ConfigError(f"on_instruction_end({name!r}) without a matching begin")
        self._open = None
        if not self.measuring:
            return
        t = self._edge(_GAP)
        self._steps[self.frequencies_mhz[self._index]].durations[name].append(t - self._begin_t)

    def on_iteration_end(self) -> None:
        """Call after each training iteration; the sweep moves on at iteration boundaries."""
        if self.done or not self._started:
            return
        if self._open is not None:
            raise ConfigError(f"iteration ended while {self._open!r} is still open")
        if self.measuring:
            step = self._steps.get(self.frequencies_mhz[self._index])
            if step is not None and step.state:
                step.state[-1] = _OTHER  # until the next instruction: not pipeline blocking
        self._iter_in_step += 1
        cfg = self.config
        if self._iter_in_step < cfg.warmup_iterations + cfg.measure_iterations:
            return
        self._finish_step()

    def _estimate(self, step: _Step) -> None:
        src = self._source
        if all(math.isfinite(c) for c in step.c):
            step.power_w, _ = estimate_state_power(step.t, step.c, step.state)
            step.label = src.energy_label
            shortest = min((min(d) for d in step.durations.values() if d), default=0.0)
            measured_s = sum(sum(d) for d in step.durations.values())
            if measured_s < 2.0 * self.counter_period_s:
                # Averaging cannot help when the counter ticked at most once or twice in all:
                # the figure is mostly where the ticks happened to fall (0 J if none did).
                need = math.ceil(
                    self.config.measure_iterations * 2.0 * self.counter_period_s / measured_s
                    if measured_s > 0
                    else 0
                )
                more = f" (--iterations {need} or more)" if need else " (--iterations)"
                step.warnings = [
                    f"only {measured_s * 1e3:.1f} ms measured at {step.freq_mhz} MHz, less than "
                    f"two energy-counter periods ({self.counter_period_s * 1e3:.0f} ms each): "
                    f"its energy is unreliable; measure more iterations per clock{more}"
                ]
            elif self.counter_period_s > shortest:
                step.warnings = [
                    f"instructions ({shortest * 1e3:.0f} ms) are shorter than the counter period "
                    f"({self.counter_period_s * 1e3:.0f} ms): averaged over "
                    f"{sum(len(d) for d in step.durations.values())} windows"
                ]
        elif all(math.isfinite(p) for p in step.p):
            # No counter (pre-Volta): instant power read as each state ends, averaged.
            acc: dict[int, list[float]] = {}
            for j in range(1, len(step.t)):
                if step.state[j - 1] != step.state[j]:  # the reading that ends a state
                    acc.setdefault(step.state[j - 1], []).append(step.p[j])
            step.power_w = {k: sum(v) / len(v) for k, v in acc.items()}
            step.label = src.power_label
            step.warnings = ["no energy counter: instant power sampled at instruction ends"]
        else:
            raise ConfigError(f"{self.device}: the meter returned neither energy nor power")

    def _finish_step(self) -> None:
        f = self.frequencies_mhz[self._index]
        step = self._steps.get(f)
        if step is None or not any(step.durations.values()):
            raise ConfigError(
                f"no instructions were measured at {f} MHz: the training loop must call "
                "on_instruction_begin/end between on_iteration_end calls"
            )
        self._estimate(step)
        per = [r.energy_j for r in self._rows_for(step)]
        energy = sum(per)
        cfg = self.config
        if energy < self._best_j * (1.0 - cfg.min_improvement):
            self._best_j = energy
            self._best_f = f
            self._since_best = 0
        elif energy >= self._best_j * (1.0 + cfg.noise_tolerance):
            self._since_best += 1  # clearly no better; within the tolerance counts as neither
        if self._since_best >= cfg.patience:
            tol = f" by more than {cfg.noise_tolerance:.1%}" if cfg.noise_tolerance else ""
            self.stop_reason = (
                f"energy has not fallen below its minimum (at {self._best_f} MHz){tol} "
                f"for {self._since_best} steps"
            )
            self.close()
            return
        if self._index + 1 >= len(self.frequencies_mhz):
            self.stop_reason = "reached the lowest frequency in the sweep"
            self.close()
            return
        self._goto(self._index + 1)

    # ------------------------------------------------------------------ results
    def _rows_for(self, step: _Step) -> list[ProfileRow]:
        out = []
        for inst in INSTRUCTIONS:
            d = step.durations[inst]
            p = step.power_w.get(_STATE[inst])
            if not d or p is None:
                continue
            mean_s = sum(d) / len(d)
            out.append(
                ProfileRow(
                    stage=self.stage,
                    instruction=inst,
                    freq_mhz=step.freq_mhz,
                    time_s=mean_s,
                    energy_j=p * mean_s,
                    count=len(d),
                    source=step.label,
                    warnings=tuple(step.warnings),
                )
            )
        return out

    def rows(self) -> list[ProfileRow]:
        """One row per (instruction, frequency) measured, frequencies descending. A step cut
        short by :meth:`close` is estimated from what it has."""
        out: list[ProfileRow] = []
        for f in self.frequencies_mhz:
            step = self._steps.get(f)
            if step is None or not any(step.durations.values()):
                continue
            if not step.label:
                self._estimate(step)
            out.extend(self._rows_for(step))
        return out

    def blocking_power_w(self) -> dict[int, float]:
        """Power while the GPU waits between instructions, per clock (MHz → W): a measured
        ``P_block`` for the planner (labelled like the rows).

        Only gaps at least two counter periods long count: a short gap's counter difference is
        dominated by the busy energy the counter's lag shifts into it (a 2 ms gap after a
        forward, read through a 100 ms counter, can show several hundred watts). Clocks with no
        such gap are left out; in steady-state 1F1B the long gaps are the warm-up and cool-down
        bubbles of the middle and last stages.
        """
        out: dict[int, float] = {}
        min_len = 2.0 * self.counter_period_s
        for f, st in self._steps.items():
            if not st.c or not all(math.isfinite(c) for c in st.c):
                continue
            e = t = 0.0
            for j in range(len(st.t) - 1):
                dt = st.t[j + 1] - st.t[j]
                if st.state[j] == _GAP and dt >= min_len and dt > 0:
                    e += max(0.0, st.c[j + 1] - st.c[j])
                    t += dt
            if t > 0:
                out[f] = e / t
        return out


# ---------------------------------------------------------------------- CSV
def check_plannable(rows: Sequence[ProfileRow], path: str | Path) -> None:
    """Raise a one-line ConfigError if a row has no energy or time: ``perwatt train plan`` cannot
    read it (a 0 J instruction is not physics), so such a file is not written.

    The usual cause is a window shorter than the energy counter's update period (~100 ms on an
    H100): the counter did not advance while the instructions ran."""
    bad = [r for r in rows if not (r.time_s > 0 and r.energy_j > 0)]
    if not bad:
        return
    r = bad[0]
    why = (
        r.warnings[0]
        if r.warnings
        else "the energy counter did not advance during its windows (shorter than the "
        "counter's update period)"
    )
    if "--iterations" not in why:
        why += "; measure more iterations per clock (--iterations), so its windows add up to "
        why += "several counter updates"
    raise ConfigError(
        f"refusing to write {path}: {len(bad)} of {len(rows)} rows measured 0 J or 0 s (first: "
        f"stage {r.stage} {r.instruction} at {r.freq_mhz} MHz, {r.time_s * 1e3:.3g} ms, "
        f"{r.energy_j:g} J), which `perwatt train plan` cannot use: {why}"
    )


def write_profile_csv(rows: Iterable[ProfileRow], path: str | Path) -> Path:
    """Write ``stage,instruction,frequency,time,energy`` (the Perseus stage-profile format),
    atomically. Rows are sorted by stage, frequency (descending), forward before backward.
    Rows the planner cannot read (0 J or 0 s) are refused: see :func:`check_plannable`."""
    rows = sorted(rows, key=lambda r: (r.stage, -r.freq_mhz, INSTRUCTIONS.index(r.instruction)))
    check_plannable(rows, path)
    seen: set[tuple[int, str, int]] = set()
    for r in rows:
        key = (r.stage, r.instruction, r.freq_mhz)
        if key in seen:
            raise ConfigError(
                f"duplicate profile row: stage {r.stage} {r.instruction} {r.freq_mhz} MHz"
            )
        seen.add(key)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(CSV_HEADER)
            for r in rows:
                w.writerow([r.stage, r.instruction, r.freq_mhz, repr(r.time_s), repr(r.energy_j)])
        os.replace(tmp, path)
    except OSError as e:
        # A bad --out is the user's to fix: one line, and no stray .tmp left behind.
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {e.strerror or e}") from e
    return path


def read_profile_rows(path: str | Path) -> list[ProfileRow]:
    """Read a profile CSV back (for merging per-rank files). Strict about the header."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a leading byte-order mark is not data
    except OSError as e:
        raise DataFormatError(f"{path}: cannot read profile: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}: not a UTF-8 CSV profile ({e})") from None
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if header is None or tuple(h.strip() for h in header) != CSV_HEADER:
        raise DataFormatError(f"{path}: header must be {','.join(CSV_HEADER)}, got {header}")
    out = []
    for lineno, rec in enumerate(reader, start=2):
        if not rec:
            continue
        try:
            stage, inst, freq, t_s, e_j = rec
            row = ProfileRow(
                stage=int(stage),
                instruction=inst.strip(),
                freq_mhz=int(float(freq)),
                time_s=float(t_s),
                energy_j=float(e_j),
                count=1,
                source="file",
            )
        except (ValueError, TypeError) as exc:
            raise DataFormatError(f"{path}:{lineno}: bad profile row {rec}: {exc}") from exc
        out.append(row)
    return out


def merge_profile_csvs(paths: Sequence[str | Path], out: str | Path) -> Path:
    """Concatenate per-stage profile files (one per pipeline rank) into one profile CSV."""
    rows: list[ProfileRow] = []
    for p in paths:
        rows.extend(read_profile_rows(p))
    return write_profile_csv(rows, out)


# ---------------------------------------------------------------------- active-profiler hooks
_active: list[Any] = []


def activate(hooks: Any) -> None:
    """Make ``hooks`` (a StageProfiler or FrequencyController) receive the module-level hooks."""
    _active.append(hooks)


def deactivate(hooks: Any) -> None:
    """Stop ``hooks`` receiving the module-level hooks (no-op when it does not)."""
    if hooks in _active:
        _active.remove(hooks)


def on_instruction_begin(name: str) -> None:
    """Module-level hook for training scripts: forwards to the active profiler/controller."""
    for h in _active:
        h.on_instruction_begin(name)


def on_instruction_end(name: str) -> None:
    """Module-level hook for training scripts: forwards to the active profiler/controller."""
    for h in _active:
        h.on_instruction_end(name)


def on_iteration_end() -> None:
    """Module-level hook for training scripts: forwards to the active profiler/controller."""
    for h in _active:
        h.on_iteration_end()


# ---------------------------------------------------------------------- torch.distributed.pipelining
def attach_to_pipeline_stage(stage: Any, hooks: Any) -> Callable[[], None]:
    """Make a ``torch.distributed.pipelining`` stage call ``hooks`` around each microbatch.

    PyTorch's schedules (``Schedule1F1B``, ``ScheduleGPipe``, ``ScheduleInterleaved1F1B``) run a
    stage's work through ``stage.forward_one_chunk(...)`` and ``stage.backward_one_chunk(...)``
    (torch/distributed/pipelining/stage.py). This replaces those two bound methods *on this
    instance* with wrappers that call ``hooks.on_instruction_begin/end("forward"|"backward")``,
    so the schedule needs no change. ``hooks`` is a :class:`StageProfiler` or a
    ``FrequencyController``. Call ``hooks.on_iteration_end()`` after each ``schedule.step()``.

    Zero-bubble schedules split backward into ``backward_one_chunk(full_backward=False)`` and
    ``backward_weight_one_chunk``; Perseus' model has one backward per microbatch, so those
    schedules are not supported (the wrapper raises). Returns a function that undoes the patch.
    """
    for attr in ("forward_one_chunk", "backward_one_chunk"):
        if not callable(getattr(stage, attr, None)):
            raise ConfigError(f"{type(stage).__name__} has no {attr}(); is it a PipelineStage?")
    orig_fwd = stage.forward_one_chunk
    orig_bwd = stage.backward_one_chunk

    @functools.wraps(orig_fwd)
    def forward_one_chunk(*args: Any, **kwargs: Any) -> Any:
        hooks.on_instruction_begin("forward")
        try:
            return orig_fwd(*args, **kwargs)
        finally:
            hooks.on_instruction_end("forward")

    @functools.wraps(orig_bwd)
    def backward_one_chunk(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("full_backward", True) is False:
            raise ConfigError(
                "split backward (zero-bubble schedules) is not supported: use Schedule1F1B, "
                "ScheduleGPipe or ScheduleInterleaved1F1B"
            )
        hooks.on_instruction_begin("backward")
        try:
            return orig_bwd(*args, **kwargs)
        finally:
            hooks.on_instruction_end("backward")

    stage.forward_one_chunk = forward_one_chunk
    stage.backward_one_chunk = backward_one_chunk

    def detach() -> None:
        # Removing the instance attributes exposes the class methods again.
        for attr in ("forward_one_chunk", "backward_one_chunk"):
            if attr in vars(stage):
                delattr(stage, attr)

    return detach


# ---------------------------------------------------------------------- simulated pipeline
@dataclass(frozen=True, slots=True, kw_only=True)
class SimulatedProfile:
    """What :func:`profile_simulated_pipeline` returns: rows plus how each stage's sweep ended."""

    rows: tuple[ProfileRow, ...]
    blocking_power_w: tuple[float, ...]  # per stage, gap power at the top clock (NaN: no long gap)
    stop_reasons: tuple[str, ...]
    iterations: tuple[int, ...]  # training iterations each stage ran while profiling
    gpu: str
    source: str = "simulated"


def profile_simulated_pipeline(
    *,
    num_stages: int,
    microbatches: int,
    gpu: str = "A100",
    config: SweepConfig | None = None,
    counter_period_s: float | None = None,
    comm_gap_s: float = 0.002,
    max_iterations: int = 10_000,
) -> SimulatedProfile:
    """Profile every stage of a simulated 1F1B pipeline end to end, through the same hooks and
    Meter a real run uses. Each stage runs on its own :class:`SimulatedGPU` (virtual time); a
    fake training loop executes the stage's 1F1B order with ``comm_gap_s`` idle between
    instructions (point-to-point communication) and calls the profiler's hooks. Every figure is
    labelled ``simulated``."""
    if comm_gap_s < 0:
        raise ConfigError(f"communication gap must be ≥ 0, got {comm_gap_s}")
    instructions = 2 * num_stages * microbatches
    if instructions > MAX_INSTRUCTIONS:
        # Its profile could not be planned anyway, and simulating it takes hours.
        raise ConfigError(
            f"--stages {num_stages} × --microbatches {microbatches} is {instructions:,} "
            f"instructions per iteration; `perwatt train plan` takes up to {MAX_INSTRUCTIONS:,}"
        )
    models = default_stage_models(num_stages)
    rows: list[ProfileRow] = []
    reasons: list[str] = []
    iters: list[int] = []
    blocking: list[float] = []
    for s in range(num_stages):
        sim = SimulatedGPU(gpu, models[s])
        order = one_f_one_b_order(s, num_stages, microbatches)
        meter = Meter(
            sim.source(counter_period_s=counter_period_s, device=f"simgpu{s}"),
            clock=sim.clock,
            sampler=False,
            sync_cuda=False,
        )
        with meter, StageProfiler(stage=s, meter=meter, clocks=sim, config=config) as prof:
            n = 0
            while not prof.done:
                if n >= max_iterations:
                    raise ConfigError(
                        f"stage {s}: sweep did not finish in {max_iterations} iterations"
                    )
                for inst, _mb in order:
                    sim.wait(comm_gap_s)
                    prof.on_instruction_begin(inst)
                    sim.run(inst)
                    prof.on_instruction_end(inst)
                prof.on_iteration_end()
                n += 1
            rows.extend(prof.rows())
            pb = prof.blocking_power_w()
            blocking.append(pb[max(pb)] if pb else math.nan)  # NaN: no gap long enough
        reasons.append(prof.stop_reason)
        iters.append(n)
    return SimulatedProfile(
        rows=tuple(rows),
        blocking_power_w=tuple(blocking),
        stop_reasons=tuple(reasons),
        iterations=tuple(iters),
        gpu=gpu,
    )


# ---------------------------------------------------------------------- user scripts on a GPU
def done() -> bool:
    """True when no active profiler is still sweeping: a script's loop condition.

    ``while not perwatt.train.profiler.done(): train_one_iteration()`` runs until the sweep
    ends under ``perwatt train profile --script``, and never runs when there is no profiler
    (use your own iteration count then)."""
    sweeping = [h for h in _active if isinstance(h, StageProfiler)]
    return not sweeping or all(h.done for h in sweeping)


@dataclass(frozen=True, slots=True, kw_only=True)
class ScriptProfile:
    """What :func:`profile_script` returns."""

    path: Path
    rows: tuple[ProfileRow, ...]
    stop_reason: str
    partial: bool  # the script ended (or failed) before the sweep finished: path is *.partial.csv
    source: str
    blocking_power_w: Mapping[int, float]  # clock (MHz) → power while blocked between instructions
    # A FakeNVML stood in for the GPU (PERWATT_FAKE_NVML): every figure is a model, not measured.
    fake: bool = False


class ProfileInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped :func:`profile_script`; ``profile`` says what was written
    (``*.partial.csv``). A ``KeyboardInterrupt``, raised ``from`` the interrupt."""

    def __init__(self, profile: ScriptProfile) -> None:
        super().__init__(f"interrupted; {len(profile.rows)} rows written to {profile.path}")
        self.profile = profile


def profile_script(
    script: str | Path,
    script_args: Sequence[str] = (),
    *,
    stage: int,
    out: str | Path,
    gpu_index: int = 0,
    config: SweepConfig | None = None,
    allow_clock_changes: bool = False,
    nvml: Any | None = None,
) -> ScriptProfile:
    """Run a training script under the profiler on one GPU and write its stage's profile.

    The script runs in this process (``runpy``, as ``__main__``, with ``sys.argv`` set to
    ``[script, *script_args]``) and calls the module-level hooks of this module around each
    forward/backward and at each iteration end, looping while :func:`done` is False.

    The sweep locks SM clocks, so like :class:`~perwatt.train.controller.FrequencyController` it
    refuses, in this order and before touching any GPU state: without ``allow_clock_changes``
    (checked first, so the answer does not depend on the machine), then without NVML, then
    without the privilege (checked read-only). ``nvml`` defaults to the fake named by
    ``PERWATT_FAKE_NVML`` when that is set (demos and tests, as every perwatt command; the
    result then has ``fake=True`` and its rows are labelled ``simulated``), else the real
    library. Whatever was measured is written even if the script stops early or raises
    (``partial=True``); the default clocks are restored in every case. A script that raises
    (other than a perwatt error, Ctrl-C or ``sys.exit``) ends in :class:`PartialRunError`
    whose ``__cause__`` is the script's exception and whose message says what was kept. Interrupted (Ctrl-C,
    SIGTERM) after some rows, it raises :class:`ProfileInterrupted` carrying what was written.
    """
    import runpy
    import sys

    if not allow_clock_changes:
        raise ConfigError(
            "refusing to sweep GPU clocks without the explicit flag "
            "--i-understand-this-changes-clocks (Python: allow_clock_changes=True): the sweep "
            f"locks the SM clock of GPU {gpu_index} (reset at the end); on a real GPU it also "
            "needs root or CAP_SYS_ADMIN"
        )
    script = Path(script)
    if not script.is_file():
        raise ConfigError(f"training script {script} does not exist")
    if nvml is None:
        nvml = nvml_module()
    try:
        src = NVMLSource([gpu_index], nvml=nvml)
    except NVMLNotFoundError as e:
        why = str(e).split("; ")[0]  # the rest suggests `--source`, which is not ours
        raise NVMLNotFoundError(
            f"--script profiles a real NVIDIA GPU, but NVML is unusable here ({why}); "
            f"without a GPU use --simulate, or set {FAKE_NVML_ENV}=A100 to try the script's "
            "hooks on a fake GPU (figures simulated)"
        ) from e
    try:
        gpu = src.gpus[0]
        check = gpu.can_set_clocks()
        if not check.allowed:
            raise NoPermissionError(
                f"refusing to sweep GPU clocks: missing the privilege to change clocks "
                f"({check.reason})"
            )
        meter = Meter(src)
        prof = StageProfiler(stage=stage, meter=meter, clocks=gpu, config=config)
        failure: BaseException | None = None
        old_argv = sys.argv
        with meter:
            prof.start()
            activate(prof)
            try:
                sys.argv = [str(script), *script_args]
                runpy.run_path(str(script), run_name="__main__")
            except BaseException as e:  # write what was measured, then re-raise
                failure = e
            finally:
                sys.argv = old_argv
                deactivate(prof)
                partial = not prof.done
                prof.close()
        rows = prof.rows()
        path = Path(out)
        if partial:  # an unfinished sweep is never mistaken for a full profile
            path = path.with_name(f"{path.stem}.partial{path.suffix or '.csv'}")
        kept = "nothing was measured before it"
        written = False
        if rows:
            try:
                write_profile_csv(rows, path)
                kept = f"the {len(rows)} rows measured before it are in {path}"
                written = True
            except ConfigError as e:
                if failure is None:
                    raise
                kept = str(e)  # the script's failure comes first; this says why nothing was kept
        if isinstance(failure, KeyboardInterrupt) and written:  # Ctrl-C or SIGTERM
            raise ProfileInterrupted(
                ScriptProfile(
                    path=path,
                    rows=tuple(rows),
                    stop_reason=prof.stop_reason,
                    partial=partial,
                    source=rows[0].source,
                    blocking_power_w=prof.blocking_power_w(),
                    fake=src.fake,
                )
            ) from failure
        if isinstance(failure, PerwattError) or (
            failure is not None and not isinstance(failure, Exception)
        ):
            raise failure  # perwatt's own one-line errors, Ctrl-C and sys.exit() pass through
        if failure is not None:
            # The user's bug, not perwatt's: one clear line; the CLI shows their traceback
            # (the cause) once, above it.
            raise PartialRunError(
                f"training script {script} raised {type(failure).__name__}: {failure}; {kept}"
            ) from failure
        if not rows:
            raise ConfigError(
                f"{script} ran no measured instruction: call perwatt.train.profiler."
                "on_instruction_begin/end around each forward/backward and on_iteration_end "
                "after each iteration, looping while not perwatt.train.profiler.done()"
            )
        return ScriptProfile(
            path=path,
            rows=tuple(rows),
            stop_reason=prof.stop_reason,
            partial=partial,
            source=rows[0].source,
            blocking_power_w=prof.blocking_power_w(),
            fake=src.fake,
        )
    finally:
        src.close()
