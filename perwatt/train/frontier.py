"""The iteration time–energy Pareto frontier of a pipeline, one frequency plan per point.

**Energy model** (Perseus, SOSP'24 §4). A GPU is either computing an instruction or blocked on
communication, drawing ``P_block`` watts. Over an iteration of length ``T`` on ``S`` stages::

    E(T) = Σ_i e_i(f_i) + Σ_s P_block,s · (T − busy_s)
         = Σ_i [e_i(f_i) − P_block,s(i) · t_i(f_i)] + T · Σ_s P_block,s

so minimising energy at a fixed ``T`` is a *time–cost trade-off* on the schedule DAG: every
instruction ``i`` picks a duration ``d_i`` whose *effective* cost ``e − P_block·t`` is convex
and decreasing, and the longest path must stay ≤ ``T``.

**Per-instruction options.** Each (stage, instruction) has one measured (time, energy) per clock.
Options slower *and* costlier than another are dropped; with a noise factor ``k > 1`` a slower
option must also be cheaper than every faster kept one by more than the factor (``e·k <
e_faster``) to stay, so measurement noise cannot make near-ties look like savings. Times are
quantised down to the time quantum (``q = floor(t / quantum)``) and, of options with the same ``q``, the costliest is kept (it is
the one whose real time is closest to ``q``). Like Perseus/lowtime we fit ``a·exp(b·q) + c`` to
the effective cost of the kept options (``cost_model="exponential"``, the default — it is what
produced the published frontiers), or use their lower convex hull (``"convex-hull"``).

**Solver.** Starting from every instruction at its slowest option, the iteration time is cut
by one quantum at a time; each step takes the cheapest way to do so — a minimum cut of the
*critical* sub-DAG whose forward arcs speed instructions up (capacity: cost of one quantum
faster) and whose backward arcs slow them down (lower bound: the saving), the
Phillips–Dessouky algorithm. With convex costs every step is optimal, so each point is the
minimum model energy at its iteration time (checked against a MILP in the tests). The sweep
stops when no cut is finite (``T_min``: every critical path is at top speed). The first point
is one quantum below the all-slowest plan, as in lowtime: with P_block counted, that plan is
slower *and* costlier than the next one.

What makes it fast (lowtime rebuilds the critical graph in networkx and solves a bounded
max-flow from zero at every step): (1) a step shortens every critical path by exactly one
quantum, so the critical sub-DAG only grows, and the longest-path pass is redone only when
some other path's slack could have run out; (2) while the critical sub-DAG is one chain, the
cut is its cheapest instruction — no flow at all; (3) otherwise the previous step's maximum
flow stays feasible (convex costs), so each step only augments it; (4) the whole sweep runs
in C (``_sweep.c``, built at install time when a compiler is present: a few µs per step).
Without the C build, ``perwatt.train.solver._sweep`` does the same in Python: plain-Python Dinic on small
networks, one call of SciPy's compiled max-flow on the residual network on mid-sized ones,
one SciPy BFS per augmenting path on the largest, longest paths as NumPy passes over
topological levels. Both take the unique *minimal* minimum cut (the source side reachable in
the residual network of any maximum flow), so they give the same frontier. The exponential
fits run batched over all option sets.

Each point's *model* energy is ``Σ cost_model(d_i) + T · Σ_s P_block,s``; a plan's
*profile-replay* energy (the measured time/energy of the clocks it picks, replayed on the DAG)
is computed on demand by :meth:`Frontier.plan_for`.
"""

from __future__ import annotations

import bisect
import itertools
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from perwatt.errors import ConfigError, DataFormatError
from perwatt.train.profile import StageProfile
from perwatt.train.schedule import InstructionName, Schedule
from perwatt.train.solver import (
    Solver,
    SweepResult,
    compiled_solver_available,
    dag_of,
    run_sweep,
)

__all__ = [
    "CostModel",
    "FrequencyPlan",
    "Frontier",
    "FrontierPoint",
    "NoisyProfileWarning",
    "OperationOptions",
    "PlannedInstruction",
    "compiled_solver_available",
    "compute_frontier",
    "operation_options",
    "replay",
    "time_bounds",
]

CostModel = Literal["exponential", "convex-hull"]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

# Frontier.durations_q replays the recorded changes from the nearest checkpoint this many
# steps apart (memory vs lookup time).
_CHECKPOINT_EVERY: Final = 64
# Warn when a lower clock measured this much faster than a higher one (2%: beyond the
# run-to-run spread of the Perseus A100 profiles, which the A40 backward passes exceed).
_NOISE_WARN: Final = 0.02


class NoisyProfileWarning(UserWarning):
    """A profile had time/energy points that contradict each other beyond noise."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OperationOptions:
    """Candidate clocks of one (stage, instruction), after Pareto filtering and quantisation.

    Arrays are sorted by quantised time ``q`` ascending (fastest first).
    """

    stage: int
    instruction: InstructionName
    q: IntArray
    time_s: FloatArray
    energy_j: FloatArray
    freq_mhz: IntArray
    dropped: int

    def knob_for(self, duration_q: int) -> int:
        """The slowest clock that still finishes within ``duration_q`` quanta (MHz)."""
        i = bisect.bisect_right(self.q.tolist(), duration_q)
        return int(self.freq_mhz[max(1, i) - 1])


def operation_options(
    freq_mhz: IntArray,
    time_s: FloatArray,
    energy_j: FloatArray,
    *,
    quantum_s: float,
    noise_factor: float = 1.0,
    stage: int = 0,
    instruction: InstructionName = "forward",
) -> OperationOptions:
    """Keep Pareto-optimal options, quantise times, de-duplicate (see module docstring)."""
    n = len(freq_mhz)
    # Fastest first; an option stays only if it is cheaper, by more than the noise factor, than
    # every strictly faster option kept. With k = 1 this is the Pareto filter (an option some
    # faster and cheaper one dominates is dropped). lowtime's rule scales the option itself by
    # k and also compares it with itself, so any k > 1 drops every option; the fastest option
    # is always kept here, so T_min does not depend on k.
    keep: list[int] = []
    cheapest_faster = math.inf  # over kept options strictly faster than the current group
    order = np.argsort(time_s, kind="stable").tolist()
    g = 0
    while g < n:
        h = g  # options g..h-1 share one measured time
        while h < n and time_s[order[h]] == time_s[order[g]]:
            h += 1
        group = [i for i in order[g:h] if energy_j[i] * noise_factor < cheapest_faster]
        keep.extend(group)
        for i in group:
            cheapest_faster = min(cheapest_faster, float(energy_j[i]))
        g = h
    # floor(t / quantum), guarded against 0.0499999 / 0.001 style representation error
    q_all = np.floor(time_s / quantum_s + 1e-9).astype(np.int64)
    best: dict[int, int] = {}
    for i in keep:
        j = best.get(int(q_all[i]))
        if j is None or energy_j[i] > energy_j[j]:
            best[int(q_all[i])] = i
    idx = np.array(sorted(best.values(), key=lambda k: q_all[k]), dtype=np.int64)
    if np.any(q_all[idx] < 1):
        raise ConfigError(
            f"stage {stage} {instruction}: an instruction shorter than the time quantum "
            f"({quantum_s * 1e3:g} ms); use a smaller --quantum-ms"
        )
    return OperationOptions(
        stage=stage,
        instruction=instruction,
        q=q_all[idx],
        time_s=time_s[idx].copy(),
        energy_j=energy_j[idx].copy(),
        freq_mhz=freq_mhz[idx].copy(),
        dropped=n - len(idx),
    )


def _fit_exponential(q: FloatArray, y: FloatArray) -> tuple[float, float, float]:
    """Least-squares fit of ``y ≈ a·exp(b·q) + c`` with ``a ≥ 0``, ``b < 0``.

    Variable projection: for a fixed ``b`` the best ``a, c`` are a linear least-squares
    solve, so only ``b`` is searched — a log-spaced scan, then golden-section refinement.
    This is the same objective lowtime's ``ExponentialModel`` hands to SciPy's
    ``curve_fit`` (which may stop at a local minimum; this finds the global one in ``b``).
    Returns ``(a, b, c)`` for ``a·exp(b·(q − q0)) + c`` with ``q0 = max(q)``.
    """
    a, b, c = _fit_exponential_batch(q[None, :], y[None, :])
    return float(a[0]), float(b[0]), float(c[0])


def _fit_exponential_batch(
    q: FloatArray, y: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """:func:`_fit_exponential` for ``k`` series of equal length at once (``q``, ``y``:
    ``[k, m]``): one set of NumPy calls per zoom round for all (stage, instruction) pairs
    rather than one per pair — the fits were ~5% of a 12-microbatch frontier."""
    q0 = q.max(axis=1)
    x = q - q0[:, None]  # ≤ 0: exp(b·x) ≥ 1 and well conditioned for b < 0
    y_mean = y.mean(axis=1)
    yc = y - y_mean[:, None]
    rows = np.arange(len(q))

    def solve(bs: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        z = np.exp(bs[:, :, None] * x[:, None, :])  # [k, len(bs), m]
        z_mean = z.mean(axis=2)
        zc = z - z_mean[:, :, None]
        denom = np.einsum("kij,kij->ki", zc, zc)
        ok = denom > 0
        a = np.where(ok, np.einsum("kij,kj->ki", zc, yc) / np.where(ok, denom, 1.0), 0.0)
        a = np.maximum(a, 0.0)
        c = y_mean[:, None] - a * z_mean
        r = y[:, None, :] - (a[:, :, None] * z + c[:, :, None])
        return np.einsum("kij,kij->ki", r, r), a, c

    span = q.max(axis=1) - q.min(axis=1)
    span = np.where(span > 0, span, 1.0)
    # b·span from −1e-4 to −100, descending
    grid = -np.logspace(-4, 2, 241)[None, :] / span[:, None]
    last = grid.shape[1] - 1
    for _ in range(6):  # zoom in around the best b, 1/120 of the bracket per round
        err, _, _ = solve(grid)
        k = np.argmin(err, axis=1)
        lo = grid[rows, np.minimum(k + 1, last)]
        hi = grid[rows, np.maximum(k - 1, 0)]
        grid = np.linspace(hi, lo, 241, axis=1)
    err, a_s, c_s = solve(grid)
    k = np.argmin(err, axis=1)
    return a_s[rows, k], grid[rows, k], c_s[rows, k]


def _cost_tables(
    items: Sequence[tuple[OperationOptions, FloatArray]], model: CostModel
) -> list[FloatArray]:
    """:func:`_cost_table` of every ``(options, effective cost)``, the exponential fits batched
    over option sets of equal size."""
    fits: dict[int, tuple[float, float, float]] = {}
    if model == "exponential":
        by_len: dict[int, list[int]] = {}
        for k, (opts, _) in enumerate(items):
            if len(opts.q) >= 3:
                by_len.setdefault(len(opts.q), []).append(k)
        for ks in by_len.values():
            q = np.stack([items[k][0].q.astype(np.float64) for k in ks])
            y = np.stack([np.asarray(items[k][1], dtype=np.float64) for k in ks])
            a, b, c = _fit_exponential_batch(q, y)
            for j, k in enumerate(ks):
                fits[k] = (float(a[j]), float(b[j]), float(c[j]))
    return [_cost_table(o, e, model, fits.get(k)) for k, (o, e) in enumerate(items)]


def _cost_table(
    opts: OperationOptions,
    eff_cost: FloatArray,
    model: CostModel,
    fit: tuple[float, float, float] | None = None,
) -> FloatArray:
    """Cost at each integer duration ``qmin .. qmax`` (index 0 = qmin)."""
    q = opts.q.astype(np.float64)
    grid = np.arange(opts.q[0], opts.q[-1] + 1, dtype=np.float64)
    if len(q) == 1:
        return np.array(eff_cost, dtype=np.float64)
    if model == "exponential" and len(q) >= 3:
        a, b, c = fit if fit is not None else _fit_exponential(q, eff_cost)
        return np.asarray(a * np.exp(b * (grid - q.max())) + c, dtype=np.float64)
    # Lower convex hull of the options, linearly interpolated (exact for the LP relaxation).
    hull: list[int] = []
    for i in range(len(q)):
        while len(hull) >= 2:
            i1, i2 = hull[-2], hull[-1]
            cross = (q[i2] - q[i1]) * (eff_cost[i] - eff_cost[i1]) - (
                eff_cost[i2] - eff_cost[i1]
            ) * (q[i] - q[i1])
            if cross <= 0:
                hull.pop()
            else:
                break
        hull.append(i)
    return np.interp(grid, q[hull], eff_cost[hull])


@dataclass(frozen=True, slots=True, kw_only=True)
class FrontierPoint:
    """One point: iteration time and the minimum model energy at that time."""

    index: int
    time_s: float
    energy_j: float

    def __post_init__(self) -> None:
        if self.time_s <= 0 or not math.isfinite(self.energy_j):
            raise ValueError(f"bad frontier point {self}")


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannedInstruction:
    """One instruction of a stage's plan: what it is, and the SM clock it runs at."""

    instruction: InstructionName
    microbatch: int
    freq_mhz: int
    chunk: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class FrequencyPlan:
    """Per stage, the SM clock of every instruction in program order.

    ``time_s``/``energy_j`` are the frontier point's (model) figures; ``replay_time_s`` and
    ``replay_energy_j`` replay the chosen clocks' *profiled* time and energy on the DAG
    (source: the profile; simulated, not measured in training).
    """

    stages: tuple[tuple[PlannedInstruction, ...], ...]
    time_s: float
    energy_j: float
    replay_time_s: float
    replay_energy_j: float

    def __post_init__(self) -> None:
        if self.replay_time_s <= 0 or self.replay_energy_j <= 0:
            raise ValueError("plan replay time and energy must be > 0")

    def for_stage(self, stage: int) -> list[tuple[InstructionName, int, int]]:
        """``[(instruction, microbatch, freq_mhz), …]`` in program order."""
        return [(p.instruction, p.microbatch, p.freq_mhz) for p in self.stages[stage]]

    def as_dict(self) -> dict[int, list[tuple[InstructionName, int, int]]]:
        return {s: self.for_stage(s) for s in range(len(self.stages))}


@dataclass(frozen=True, slots=True, kw_only=True)
class Frontier:
    """The time–energy frontier: ``points`` fastest first, plus the all-max-clock baseline."""

    points: tuple[FrontierPoint, ...]
    schedule: Schedule
    profile: StageProfile
    p_block_w: tuple[float, ...]
    time_quantum_s: float
    cost_model: CostModel
    options: tuple[OperationOptions, ...]
    baseline: FrequencyPlan
    notes: tuple[str, ...]
    #: per option set (see ``node_spec``): model cost (J, blocking power already subtracted)
    #: at each integer duration ``q[0] .. q[-1]`` quanta
    cost_tables: tuple[FloatArray, ...] = field(repr=False)
    #: False when ``stop_at_s`` cut the sweep short (the fastest point is then not T_min)
    complete: bool = True
    #: which implementation of the sweep ran (both give the same frontier)
    solver: Literal["compiled", "python"] = "python"
    #: wall time of :func:`compute_frontier` (options, fits, sweep, baseline), s
    solve_duration_s: float = math.nan
    _spec: IntArray = field(repr=False)
    #: durations after every ``_CHECKPOINT_EVERY``-th step, and per step the nodes it changed:
    #: step k moved ``_change_node[p[k]:p[k+1]]`` by ``_change_delta[…]`` (p = ``_change_ptr``)
    _checkpoints: tuple[IntArray, ...] = field(repr=False)
    _change_ptr: IntArray = field(repr=False)
    _change_node: IntArray = field(repr=False)
    _change_delta: IntArray = field(repr=False)

    def __post_init__(self) -> None:
        if not self.points:
            raise ValueError("a frontier needs at least one point")
        times = [p.time_s for p in self.points]
        if any(b <= a for a, b in itertools.pairwise(times)):
            raise ValueError("frontier points must be strictly increasing in time")

    @property
    def node_spec(self) -> IntArray:
        """For each schedule node, the index of its entry in ``options``/``cost_tables``."""
        out: IntArray = np.array(self._spec, dtype=np.int64)
        return out

    @property
    def fastest(self) -> FrontierPoint:
        return self.points[0]

    @property
    def slowest(self) -> FrontierPoint:
        return self.points[-1]

    @property
    def t_min_s(self) -> float:
        return self.points[0].time_s

    @property
    def t_max_s(self) -> float:
        return self.points[-1].time_s

    def durations_q(self, point: FrontierPoint | int) -> IntArray:
        """Each instruction's planned duration in time quanta (node order of the schedule)."""
        idx = point if isinstance(point, int) else point.index
        if not 0 <= idx < len(self.points):
            raise IndexError(f"no frontier point {idx}")
        # Steps are recorded slowest → fastest; point k (fastest first) is step n-1-k.
        step = len(self.points) - 1 - idx
        base = step // _CHECKPOINT_EVERY
        d = self._checkpoints[base].copy()
        lo = int(self._change_ptr[base * _CHECKPOINT_EVERY + 1])
        hi = int(self._change_ptr[step + 1])
        np.add.at(d, self._change_node[lo:hi], self._change_delta[lo:hi])
        return np.asarray(d, dtype=np.int64)

    def plan_for(self, point: FrontierPoint | int) -> FrequencyPlan:
        """The frequency plan of a frontier point (per stage, clocks in program order)."""
        idx = point if isinstance(point, int) else point.index
        d = self.durations_q(idx)
        freqs = np.array(
            [self.options[self._spec[i]].knob_for(int(d[i])) for i in range(len(d))],
            dtype=np.int64,
        )
        p = self.points[idx]
        return _make_plan(self.schedule, self.profile, self.p_block_w, freqs, p.time_s, p.energy_j)

    def frequencies_for(self, point: FrontierPoint | int) -> list[list[int]]:
        """Per stage, the clock (MHz) of each instruction in program order — no replay."""
        idx = point if isinstance(point, int) else point.index
        d = self.durations_q(idx)
        freqs = [
            self.options[int(k)].knob_for(int(di)) for k, di in zip(self._spec, d, strict=True)
        ]
        return [freqs[sl] for sl in self.schedule.stage_slices()]

    def to_csv_rows(self) -> list[tuple[float, float]]:
        """``(time, energy)`` slowest first — the layout of the Perseus reference files."""
        return [(p.time_s, p.energy_j) for p in reversed(self.points)]


def _node_profile(
    schedule: Schedule, profile: StageProfile, freqs: IntArray
) -> tuple[FloatArray, FloatArray]:
    """Profiled (time, energy) of each node at its planned clock."""
    t = np.empty(schedule.num_nodes)
    e = np.empty(schedule.num_nodes)
    scale = _chunk_scale(schedule, profile)
    index: dict[tuple[int, str], dict[int, int]] = {}
    fl = freqs.tolist()
    for i, n in enumerate(schedule.nodes):
        pstage = _profile_stage(schedule, profile, n.stage, n.chunk)
        ip = profile[(pstage, n.instruction)]
        pos = index.get((pstage, n.instruction))
        if pos is None:
            pos = {int(f): j for j, f in enumerate(ip.freq_mhz.tolist())}
            index[(pstage, n.instruction)] = pos
        k = pos[fl[i]]
        ti, ei = ip.time_s[k], ip.energy_j[k]
        if schedule.recompute and n.instruction == "backward":
            fp = profile[(pstage, "forward")]
            ti, ei = ti + fp.time_s[k], ei + fp.energy_j[k]
        t[i], e[i] = ti * scale, ei * scale
    return t, e


def _profile_stage(schedule: Schedule, profile: StageProfile, stage: int, chunk: int) -> int:
    if profile.num_stages == schedule.num_stages * schedule.chunks:
        return chunk * schedule.num_stages + stage
    return stage


def _chunk_scale(schedule: Schedule, profile: StageProfile) -> float:
    # A profile of whole stages used with an interleaved schedule: each chunk is 1/chunks of it.
    if schedule.chunks > 1 and profile.num_stages == schedule.num_stages:
        return 1.0 / schedule.chunks
    return 1.0


def replay(schedule: Schedule, durations_s: FloatArray) -> tuple[float, FloatArray]:
    """Longest path of the DAG with the given node durations: (iteration time, start times)."""
    dag = dag_of(schedule)
    start = dag.earliest_start(durations_s)
    return float(np.max(start + durations_s)), start


def _make_plan(
    schedule: Schedule,
    profile: StageProfile,
    p_block_w: tuple[float, ...],
    freqs: IntArray,
    time_s: float,
    energy_j: float,
) -> FrequencyPlan:
    t, e = _node_profile(schedule, profile, freqs)
    it_time, _ = replay(schedule, t)
    energy = float(e.sum())
    for s, sl in enumerate(schedule.stage_slices()):
        energy += p_block_w[s] * (it_time - float(t[sl].sum()))
    stages = tuple(
        tuple(
            PlannedInstruction(
                instruction=n.instruction,
                microbatch=n.microbatch,
                chunk=n.chunk,
                freq_mhz=int(freqs[i]),
            )
            for i, n in zip(range(sl.start, sl.stop), schedule.order[s], strict=True)
        )
        for s, sl in enumerate(schedule.stage_slices())
    )
    return FrequencyPlan(
        stages=stages,
        time_s=time_s,
        energy_j=energy_j,
        replay_time_s=it_time,
        replay_energy_j=energy,
    )


def compute_frontier(
    profile: StageProfile,
    schedule: Schedule,
    *,
    p_block_w: float | Sequence[float],
    time_quantum_s: float = 1e-3,
    cost_model: CostModel = "exponential",
    noise_factor: float = 1.0,
    stop_at_s: float | None = None,
    solver: Solver = "auto",
    progress: Callable[[float], object] | None = None,
) -> Frontier:
    """Compute the whole iteration time–energy frontier of ``schedule`` on ``profile``.

    ``stop_at_s`` ends the sweep (which runs from ``T_max`` down) once the iteration time is at
    or below it: the frontier then covers ``[stop_at_s, T_max]`` only (``complete`` is False) —
    enough to plan for a straggler or deadline above ``stop_at_s``, at a fraction of the cost.

    ``p_block_w`` is the power a GPU draws while blocked on communication: one figure, or one
    per stage for a heterogeneous pipeline (for a stage of several data/tensor-parallel GPUs,
    the sum over them). See the module docstring for the model and the algorithm.

    ``progress``, if given, is called every few hundred sweep steps with the fraction of the
    iteration-time range ``[T_min, T_max]`` swept so far (0 to 1; later steps cost more, so
    it is a position, not a time estimate) — for a caller that shows long solves moving.

    ``solver``: ``"compiled"`` (the C port of the sweep, built at install time),
    ``"python"`` (the NumPy/SciPy reference), or ``"auto"`` — compiled when it is built. Both
    give the same frontier (tested point by point); the compiled one is 13–18× faster on the
    Perseus GPT-3 cases (BENCHMARKS.md §4).
    """
    started = time.perf_counter()
    if time_quantum_s <= 0 or not math.isfinite(time_quantum_s):
        raise ConfigError(f"time quantum must be > 0 s, got {time_quantum_s}")
    if not noise_factor >= 1.0:  # also refuses NaN, which would silently act as 1
        raise ConfigError(f"noise factor must be ≥ 1, got {noise_factor}")
    if solver not in ("auto", "compiled", "python"):
        raise ConfigError(f"unknown solver {solver!r}; use auto, compiled or python")
    if solver == "compiled" and not compiled_solver_available():
        raise ConfigError(
            "the compiled frontier sweep is not built (perwatt/train/_sweep.c needs a C "
            "compiler at install time: reinstall with `pip install -e .`); use solver='python'"
        )
    if cost_model not in ("exponential", "convex-hull"):
        raise ConfigError(f"unknown cost model {cost_model!r}; use exponential or convex-hull")
    expected = {schedule.num_stages, schedule.num_stages * schedule.chunks}
    if profile.num_stages not in expected:
        raise DataFormatError(
            f"profile has {profile.num_stages} stages but the schedule has {schedule.num_stages}; "
            "the pipeline's stages must match the profile"
        )
    S = schedule.num_stages
    if isinstance(p_block_w, (int, float)):
        pb = tuple([float(p_block_w)] * S)
    else:
        pb = tuple(float(x) for x in p_block_w)
        if len(pb) != S:
            raise ConfigError(f"need one blocking power per stage ({S}), got {len(pb)}")
    if any(not math.isfinite(x) or x < 0 for x in pb):
        raise ConfigError(f"blocking power must be ≥ 0 W, got {pb}")

    # ---- options and cost tables, one per (profile stage, instruction) --------------------
    notes: list[str] = []
    noisy: list[str] = []
    spec_key: dict[tuple[int, InstructionName], int] = {}
    options: list[OperationOptions] = []
    effs: list[FloatArray] = []
    spec = np.empty(schedule.num_nodes, dtype=np.int64)
    scale = _chunk_scale(schedule, profile)
    for i, n in enumerate(schedule.nodes):
        ps = _profile_stage(schedule, profile, n.stage, n.chunk)
        key = (ps, n.instruction)
        if key not in spec_key:
            ip = profile[key]
            t, e = ip.time_s * scale, ip.energy_j * scale
            if schedule.recompute and n.instruction == "backward":
                fp = profile[(ps, "forward")]
                t, e = t + fp.time_s * scale, e + fp.energy_j * scale
            worst = _noise(t)
            if worst > _NOISE_WARN:
                noisy.append(f"stage {ps} {n.instruction} ({worst:.1%})")
            opts = operation_options(
                ip.freq_mhz,
                t,
                e,
                quantum_s=time_quantum_s,
                noise_factor=noise_factor,
                stage=ps,
                instruction=n.instruction,
            )
            eff = opts.energy_j - pb[n.stage] * opts.q * time_quantum_s
            spec_key[key] = len(options)
            options.append(opts)
            effs.append(eff)
        spec[i] = spec_key[key]
    tables = _cost_tables(list(zip(options, effs, strict=True)), cost_model)
    if noisy:
        warnings.warn(
            f"noisy profile: a lower clock measured faster than a higher one in "
            f"{', '.join(noisy)}; clocks slower and costlier than another are dropped "
            f"(only Pareto-optimal ones are planned"
            + (
                ""
                if noise_factor != 1.0
                else "; --noise-factor 1.02 also drops clocks that save < 2%"
            )
            + ") "
            "— consider re-profiling",
            NoisyProfileWarning,
            stacklevel=2,
        )
        notes.append(f"noisy profile: {', '.join(noisy)}")
    dropped = sum(o.dropped for o in options)
    if dropped:
        notes.append(
            f"{dropped} of {sum(o.dropped + len(o.q) for o in options)} profiled "
            "(stage, instruction, clock) points were dropped: not Pareto-optimal in "
            f"(time, energy) after {time_quantum_s * 1e3:g} ms quantisation"
            + (f" with noise factor {noise_factor:g}" if noise_factor != 1.0 else "")
        )

    qmin = np.array([o.q[0] for o in options], dtype=np.int64)[spec]
    qmax = np.array([o.q[-1] for o in options], dtype=np.int64)[spec]
    offset = np.zeros(len(options) + 1, dtype=np.int64)
    for k, tb in enumerate(tables):
        offset[k + 1] = offset[k] + len(tb)
    flat = np.concatenate(tables)
    base = offset[:-1][spec] - qmin  # flat[base[i] + d] = cost of node i at duration d

    dag = dag_of(schedule)
    stop_q = -1 if stop_at_s is None else math.floor(stop_at_s / time_quantum_s + 1e-9)
    on_step: Callable[[int], object] | None = None
    if progress is not None:
        report = progress
        t_slow = int(dag.longest(qmax)[2])
        span = max(1, t_slow - int(dag.longest(qmin)[2]))

        def on_step(t_q: int) -> None:
            report(min(1.0, max(0.0, (t_slow - t_q) / span)))

    sw = run_sweep(dag, qmin, qmax, flat, base, stop_q, solver, on_step)
    steps_t, steps_cost, complete = sw.steps_t.tolist(), sw.steps_cost.tolist(), sw.complete
    if not complete:
        notes.append(f"partial frontier: sweep stopped at {stop_at_s:g} s (stop_at_s)")
    if not steps_t:
        raise ConfigError(
            "the iteration time cannot be reduced at all (every instruction on the critical "
            "path has a single usable clock); nothing to plan"
        )
    psum = sum(pb)
    points = tuple(
        FrontierPoint(
            index=k,
            time_s=steps_t[j] * time_quantum_s,
            energy_j=steps_cost[j] + psum * steps_t[j] * time_quantum_s,
        )
        for k, j in enumerate(range(len(steps_t) - 1, -1, -1))
    )
    baseline_freqs = np.array(
        [
            profile[
                (_profile_stage(schedule, profile, n.stage, n.chunk), n.instruction)
            ].max_freq_mhz
            for n in schedule.nodes
        ],
        dtype=np.int64,
    )
    baseline = _make_plan(schedule, profile, pb, baseline_freqs, math.nan, math.nan)
    return Frontier(
        points=points,
        schedule=schedule,
        profile=profile,
        p_block_w=pb,
        time_quantum_s=time_quantum_s,
        cost_model=cost_model,
        options=tuple(options),
        baseline=baseline,
        notes=tuple(notes),
        cost_tables=tuple(tables),
        complete=complete,
        _spec=spec,
        solver=sw.solver,
        solve_duration_s=time.perf_counter() - started,
        _checkpoints=_checkpoints(qmax, sw),
        _change_ptr=sw.change_ptr,
        _change_node=sw.change_node,
        _change_delta=sw.change_delta,
    )


def time_bounds(
    profile: StageProfile,
    schedule: Schedule,
    *,
    time_quantum_s: float = 1e-3,
    noise_factor: float = 1.0,
) -> tuple[float, float]:
    """``(T_min, T_start)``: the iteration time with every instruction at its fastest option,
    and with every one at its slowest (the sweep's starting plan; the frontier's slowest point
    is one quantum faster, because the starting plan is dominated once P_block is counted).
    Cheap — no sweep."""
    q_fast = np.empty(schedule.num_nodes, dtype=np.int64)
    q_slow = np.empty(schedule.num_nodes, dtype=np.int64)
    cache: dict[tuple[int, InstructionName], tuple[int, int]] = {}
    scale = _chunk_scale(schedule, profile)
    for i, n in enumerate(schedule.nodes):
        key = (_profile_stage(schedule, profile, n.stage, n.chunk), n.instruction)
        if key not in cache:
            ip = profile[key]
            t, e = ip.time_s * scale, ip.energy_j * scale
            if schedule.recompute and n.instruction == "backward":
                fp = profile[(key[0], "forward")]
                t, e = t + fp.time_s * scale, e + fp.energy_j * scale
            o = operation_options(
                ip.freq_mhz, t, e, quantum_s=time_quantum_s, noise_factor=noise_factor
            )
            cache[key] = (int(o.q[0]), int(o.q[-1]))
        q_fast[i], q_slow[i] = cache[key]
    dag = dag_of(schedule)
    return dag.longest(q_fast)[2] * time_quantum_s, dag.longest(q_slow)[2] * time_quantum_s


def _noise(t: FloatArray) -> float:
    """How much faster (fraction) a lower clock measured than some higher one; 0 if never."""
    # clocks are descending, so time should be (weakly) ascending along the array
    running_max = np.maximum.accumulate(t)
    return float(np.max(running_max / t - 1.0))


def _checkpoints(qmax: IntArray, sw: SweepResult) -> tuple[IntArray, ...]:
    """All durations after steps 0, E, 2E, … (E = ``_CHECKPOINT_EVERY``), from the changes."""
    d = qmax.copy()
    out: list[IntArray] = []
    done = 0  # changes applied so far (entries of change_node)
    for step in range(0, len(sw.steps_t), _CHECKPOINT_EVERY):
        upto = int(sw.change_ptr[step + 1])
        np.add.at(d, sw.change_node[done:upto], sw.change_delta[done:upto])
        done = upto
        out.append(d.copy())
    return tuple(out)
