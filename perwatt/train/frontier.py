"""The iteration time–energy Pareto frontier of a pipeline, one frequency plan per point.

**Energy model** (Perseus, SOSP'24 §4). A GPU is either computing an instruction or blocked on
communication, drawing ``P_block`` watts. Over an iteration of length ``T`` on ``S`` stages::

    E(T) = Σ_i e_i(f_i) + Σ_s P_block,s · (T − busy_s)
         = Σ_i [e_i(f_i) − P_block,s(i) · t_i(f_i)] + T · Σ_s P_block,s

so minimising energy at a fixed ``T`` is a *time–cost trade-off* on the schedule DAG: every
instruction ``i`` picks a duration ``d_i`` whose *effective* cost ``e − P_block·t`` is convex
and decreasing, and the longest path must stay ≤ ``T``.

**Per-instruction options.** Each (stage, instruction) has one measured (time, energy) per clock.
Options slower *and* costlier than another are dropped (a noise factor, as in lowtime, can widen
"costlier" to absorb measurement noise); times are quantised down to the time quantum
(``q = floor(t / quantum)``) and, of options with the same ``q``, the costliest is kept (it is
the one whose real time is closest to ``q``). Like Perseus/lowtime we fit ``a·exp(b·q) + c`` to
the effective cost of the kept options (``cost_model="exponential"``, the default — it is what
produced the published frontiers), or use their lower convex hull (``"convex-hull"``).

**Solver.** Starting from every instruction at its slowest option, the iteration time is cut
by one quantum at a time; each step takes the cheapest way to do so — a minimum cut of the
*critical* sub-DAG whose forward arcs speed instructions up (capacity: cost of one quantum
faster) and whose backward arcs slow them down (lower bound: the saving), the
Phillips–Dessouky algorithm. With convex costs every step is optimal, so each point is the
minimum model energy at its iteration time. Two things make it fast: steps whose critical
sub-DAG is a single chain (the common case away from ``T_min``) are taken in closed form, and
the minimum cuts use SciPy's compiled max-flow on index arrays, not a Python graph library.
The sweep stops when no cut is finite (``T_min``: every critical path is at top speed).

Each point's *model* energy is ``Σ cost_model(d_i) + T · Σ_s P_block,s``; a plan's
*profile-replay* energy (the measured time/energy of the clocks it picks, replayed on the DAG)
is computed on demand by :meth:`Frontier.plan_for`.
"""

from __future__ import annotations

import bisect
import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from perwatt.errors import ConfigError, DataFormatError
from perwatt.train.profile import StageProfile
from perwatt.train.schedule import InstructionName, Schedule

__all__ = [
    "CostModel",
    "FrequencyPlan",
    "Frontier",
    "FrontierPoint",
    "NoisyProfileWarning",
    "OperationOptions",
    "PlannedInstruction",
    "compute_frontier",
    "operation_options",
    "replay",
]

CostModel = Literal["exponential", "convex-hull"]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

# Flow capacities are integers (SciPy's max-flow): cost quanta of 1e-5 J. "Infinite" capacity
# stands for arcs that cannot be cut (dependencies, instructions already at top speed); lowtime
# uses 1e4 J for the same purpose. Energy slopes per quantum are a few joules at most.
_FLOW_UNIT_J: Final = 1e-5
_INF_CAP: Final = 2**30
_CHECKPOINT_EVERY: Final = 64


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
    keep = []
    for i in range(n):
        t, e = time_s[i] * noise_factor, energy_j[i] * noise_factor
        dominated = bool(np.any((time_s < t) & (energy_j < e)))
        if not dominated:
            keep.append(i)
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
    q0 = float(np.max(q))
    x = q - q0  # ≤ 0: exp(b·x) ≥ 1 and well conditioned for b < 0

    def solve(b: float) -> tuple[float, float, float]:
        z = np.exp(b * x)
        zc, yc = z - z.mean(), y - y.mean()
        denom = float(zc @ zc)
        a = float(zc @ yc) / denom if denom > 0 else 0.0
        a = max(a, 0.0)
        c = float(y.mean() - a * z.mean())
        r = y - (a * z + c)
        return float(r @ r), a, c

    span = float(np.max(q) - np.min(q)) or 1.0
    grid = -np.logspace(-4, 2, 121) / span  # b·span from −1e-4 to −100
    errs = [solve(float(b))[0] for b in grid]
    k = int(np.argmin(errs))
    lo, hi = float(grid[min(k + 1, len(grid) - 1)]), float(grid[max(k - 1, 0)])
    # golden-section on b in [lo, hi] (lo < hi < 0)
    g = (math.sqrt(5) - 1) / 2
    c1, c2 = hi - g * (hi - lo), lo + g * (hi - lo)
    f1, f2 = solve(c1)[0], solve(c2)[0]
    for _ in range(80):
        if f1 < f2:
            hi, c2, f2 = c2, c1, f1
            c1 = hi - g * (hi - lo)
            f1 = solve(c1)[0]
        else:
            lo, c1, f1 = c1, c2, f2
            c2 = lo + g * (hi - lo)
            f2 = solve(c2)[0]
    b = (lo + hi) / 2
    _, a, c = solve(b)
    return a, b, c


def _cost_table(opts: OperationOptions, eff_cost: FloatArray, model: CostModel) -> FloatArray:
    """Cost at each integer duration ``qmin .. qmax`` (index 0 = qmin)."""
    q = opts.q.astype(np.float64)
    grid = np.arange(opts.q[0], opts.q[-1] + 1, dtype=np.float64)
    if len(q) == 1:
        return np.array(eff_cost, dtype=np.float64)
    if model == "exponential" and len(q) >= 3:
        a, b, c = _fit_exponential(q, eff_cost)
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
    _spec: IntArray = field(repr=False)
    _checkpoints: tuple[IntArray, ...] = field(repr=False)
    _changes: tuple[tuple[IntArray, IntArray], ...] = field(repr=False)

    def __post_init__(self) -> None:
        if not self.points:
            raise ValueError("a frontier needs at least one point")
        times = [p.time_s for p in self.points]
        if any(b <= a for a, b in itertools.pairwise(times)):
            raise ValueError("frontier points must be strictly increasing in time")

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
        for k in range(base * _CHECKPOINT_EVERY + 1, step + 1):
            nodes, delta = self._changes[k]
            d[nodes] += delta
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

    def to_csv_rows(self) -> list[tuple[float, float]]:
        """``(time, energy)`` slowest first — the layout of the Perseus reference files."""
        return [(p.time_s, p.energy_j) for p in reversed(self.points)]


def _node_profile(
    schedule: Schedule, profile: StageProfile, freqs: IntArray
) -> tuple[FloatArray, FloatArray]:
    """Profiled (time, energy) of each node at its planned clock."""
    t = np.empty(schedule.num_nodes)
    e = np.empty(schedule.num_nodes)
    for i, n in enumerate(schedule.nodes):
        pstage = _profile_stage(schedule, profile, n.stage, n.chunk)
        scale = _chunk_scale(schedule, profile)
        ip = profile[(pstage, n.instruction)]
        k = int(np.nonzero(ip.freq_mhz == freqs[i])[0][0])
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
    dag = _Dag.build(schedule)
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


@dataclass(slots=True)
class _Dag:
    """Index arrays for fast longest-path passes over a schedule DAG."""

    n: int
    levels: list[IntArray]  # topological levels (every pred of a level is in an earlier one)
    preds: IntArray  # [n, k] padded with n (a sentinel)
    succs: IntArray  # [n, k] padded with n
    edges: IntArray

    @classmethod
    def build(cls, schedule: Schedule) -> _Dag:
        n = schedule.num_nodes
        edges = schedule.edges
        pl: list[list[int]] = [[] for _ in range(n)]
        sl: list[list[int]] = [[] for _ in range(n)]
        for u, v in edges.tolist():
            pl[v].append(u)
            sl[u].append(v)
        kp = max(1, max(len(p) for p in pl))
        ks = max(1, max(len(s) for s in sl))
        preds = np.full((n, kp), n, dtype=np.int64)
        succs = np.full((n, ks), n, dtype=np.int64)
        for i in range(n):
            preds[i, : len(pl[i])] = pl[i]
            succs[i, : len(sl[i])] = sl[i]
        level = np.zeros(n, dtype=np.int64)
        from perwatt.train.schedule import topological_order

        for v in topological_order(n, edges).tolist():
            if pl[v]:
                level[v] = 1 + max(int(level[u]) for u in pl[v])
        levels = [np.nonzero(level == k)[0] for k in range(int(level.max()) + 1)]
        return cls(n=n, levels=levels, preds=preds, succs=succs, edges=edges)

    def earliest_start(self, d: npt.NDArray[np.float64] | IntArray) -> FloatArray:
        ef = np.zeros(self.n + 1, dtype=np.float64)  # sentinel finish 0
        es = np.zeros(self.n, dtype=np.float64)
        dd = d.astype(np.float64)
        for lv in self.levels:
            s = ef[self.preds[lv]].max(axis=1)
            es[lv] = s
            ef[lv] = s + dd[lv]
        return es

    def longest(self, d: IntArray) -> tuple[IntArray, IntArray, int]:
        """Integer earliest start and latest start, and the makespan."""
        n = self.n
        ef = np.zeros(n + 1, dtype=np.int64)
        es = np.zeros(n, dtype=np.int64)
        for lv in self.levels:
            s = ef[self.preds[lv]].max(axis=1)
            es[lv] = s
            ef[lv] = s + d[lv]
        t = int(ef[:n].max())
        ls_ = np.full(n + 1, t, dtype=np.int64)  # sentinel latest start = T
        ls = np.zeros(n, dtype=np.int64)
        for lv in reversed(self.levels):
            lf = ls_[self.succs[lv]].min(axis=1)
            ls[lv] = lf - d[lv]
            ls_[lv] = ls[lv]
        return es, ls, t


def compute_frontier(
    profile: StageProfile,
    schedule: Schedule,
    *,
    p_block_w: float | Sequence[float],
    time_quantum_s: float = 1e-3,
    cost_model: CostModel = "exponential",
    noise_factor: float = 1.0,
) -> Frontier:
    """Compute the whole iteration time–energy frontier of ``schedule`` on ``profile``.

    ``p_block_w`` is the power a GPU draws while blocked on communication: one figure, or one
    per stage for a heterogeneous pipeline (for a stage of several data/tensor-parallel GPUs,
    the sum over them). See the module docstring for the model and the algorithm.
    """
    if time_quantum_s <= 0 or not math.isfinite(time_quantum_s):
        raise ConfigError(f"time quantum must be > 0 s, got {time_quantum_s}")
    if noise_factor < 1.0:
        raise ConfigError(f"noise factor must be ≥ 1, got {noise_factor}")
    if cost_model not in ("exponential", "convex-hull"):
        raise ConfigError(f"unknown cost model {cost_model!r}; use exponential or convex-hull")
    expected = {schedule.num_stages, schedule.num_stages * schedule.chunks}
    if profile.num_stages not in expected:
        raise DataFormatError(
            f"profile has {profile.num_stages} stages but the schedule has {schedule.num_stages}; "
            "pass --stages matching the profile"
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
    spec_key: dict[tuple[int, InstructionName], int] = {}
    options: list[OperationOptions] = []
    tables: list[FloatArray] = []
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
            _warn_if_noisy(ps, n.instruction, ip.freq_mhz, t, e)
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
            tables.append(_cost_table(opts, eff, cost_model))
        spec[i] = spec_key[key]
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

    dag = _Dag.build(schedule)
    steps_t, steps_cost, changes, checkpoints = _sweep(dag, qmin, qmax, flat, base)
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
        _spec=spec,
        _checkpoints=tuple(checkpoints),
        _changes=tuple(changes),
    )


def _warn_if_noisy(
    stage: int, inst: str, freq: IntArray, t: FloatArray, e: FloatArray, tol: float = 0.02
) -> None:
    """Warn when a lower clock ran clearly *faster* than a higher one (measurement noise)."""
    # freq is descending, so time should be (weakly) ascending along the array.
    running_max = np.maximum.accumulate(t)
    worst = float(np.max(running_max / t - 1.0))
    if worst > tol:
        warnings.warn(
            f"stage {stage} {inst}: a lower clock measured {worst:.1%} faster than a higher "
            "one (noisy profile); only Pareto-optimal points are used — consider re-profiling",
            NoisyProfileWarning,
            stacklevel=3,
        )


def _sweep(
    dag: _Dag, qmin: IntArray, qmax: IntArray, flat: FloatArray, base: IntArray
) -> tuple[list[int], list[float], list[tuple[IntArray, IntArray]], list[IntArray]]:
    """Phillips–Dessouky sweep from every node at ``qmax`` down to the minimum makespan.

    Returns, per step (slowest first): makespan in quanta, model cost, and the nodes changed
    (with ±1) since the previous step; plus checkpoints of all durations every
    ``_CHECKPOINT_EVERY`` steps.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import breadth_first_order, maximum_flow

    n = dag.n
    d = qmax.copy()
    edges = dag.edges
    has_pred = np.zeros(n, dtype=bool)
    has_pred[edges[:, 1]] = True
    has_succ = np.zeros(n, dtype=bool)
    has_succ[edges[:, 0]] = True
    steps_t: list[int] = []
    steps_cost: list[float] = []
    changes: list[tuple[IntArray, IntArray]] = []
    checkpoints: list[IntArray] = []
    empty = np.zeros(0, dtype=np.int64)

    def slope_caps(d: IntArray) -> tuple[IntArray, IntArray]:
        """Integer (lb, ub) per node, lowtime's convention (|Δcost| per quantum)."""
        c0 = flat[base + d]
        up = np.abs(flat[base + np.maximum(d - 1, qmin)] - c0)  # cost of one quantum faster
        down = np.abs(c0 - flat[base + np.minimum(d + 1, qmax)])  # saving of one slower
        can_fast = d > qmin
        can_slow = d < qmax
        ub = np.where(can_fast, np.floor(up / _FLOW_UNIT_J) + np.where(can_slow, 1, 0), _INF_CAP)
        lb = np.where(can_slow & can_fast, np.floor(down / _FLOW_UNIT_J), 0)
        lb = np.where(~can_fast & can_slow, np.floor(down / _FLOW_UNIT_J), lb)
        return lb.astype(np.int64), np.minimum(ub, _INF_CAP).astype(np.int64)

    src, snk = 2 * n, 2 * n + 1
    while True:
        es, ls, t = dag.longest(d)
        crit = es == ls
        ce = edges[crit[edges[:, 0]] & crit[edges[:, 1]]]
        ce = ce[es[ce[:, 0]] + d[ce[:, 0]] == es[ce[:, 1]]]
        cn = np.nonzero(crit)[0]
        starts = cn[es[cn] == 0]
        ends = cn[es[cn] + d[cn] == t]
        if steps_t:
            pass
        lb, ub = slope_caps(d)
        # ---- fast path: the critical sub-DAG is one chain → cut its cheapest instruction ----
        indeg = np.bincount(ce[:, 1], minlength=n)[cn]
        outdeg = np.bincount(ce[:, 0], minlength=n)[cn]
        if (
            len(starts) == 1
            and len(ends) == 1
            and indeg.max(initial=0) <= 1
            and outdeg.max(initial=0) <= 1
        ):
            k = cn[int(np.argmin(ub[cn]))]
            if ub[k] >= _INF_CAP:
                break
            speed = np.array([k], dtype=np.int64)
            slow = empty
        else:
            # ---- min cut with lower bounds on the critical sub-DAG (node-split arcs) -------
            # arcs: op i: (2i → 2i+1) [lb_i, ub_i]; dep u→v: (2u+1 → 2v) [0, inf];
            #       src → 2i for starts; 2i+1 → snk for ends.
            tails = np.concatenate(
                [2 * cn, 2 * ce[:, 0] + 1, np.full(len(starts), src), 2 * ends + 1]
            )
            heads = np.concatenate([2 * cn + 1, 2 * ce[:, 1], 2 * starts, np.full(len(ends), snk)])
            lo = np.concatenate(
                [lb[cn], np.zeros(len(ce) + len(starts) + len(ends), dtype=np.int64)]
            )
            hi = np.concatenate(
                [ub[cn], np.full(len(ce) + len(starts) + len(ends), _INF_CAP, dtype=np.int64)]
            )
            hi = np.maximum(hi, lo)
            sp, tp = 2 * n + 2, 2 * n + 3
            excess = np.zeros(2 * n + 4, dtype=np.int64)
            np.add.at(excess, heads, lo)
            np.subtract.at(excess, tails, lo)
            pos = np.nonzero(excess > 0)[0]
            neg = np.nonzero(excess < 0)[0]
            t1 = np.concatenate([tails, [snk], np.full(len(pos), sp), neg])
            h1 = np.concatenate([heads, [src], pos, np.full(len(neg), tp)])
            c1 = np.concatenate([hi - lo, [_INF_CAP], excess[pos], -excess[neg]])
            g1 = csr_matrix((c1.astype(np.int32), (t1, h1)), shape=(2 * n + 4, 2 * n + 4))
            r1 = maximum_flow(g1, sp, tp, method="dinic")
            if r1.flow_value < int(excess[pos].sum()):
                break  # no feasible flow: lowtime stops here too
            # residual of the original arcs (drop s', t' and the t→s arc)
            f1 = r1.flow.tocsr()
            cap_m = csr_matrix(((hi - lo).astype(np.int64), (tails, heads)), shape=g1.shape)
            res = (cap_m - f1).tocoo()
            keep = (res.data > 0) & (res.row < sp) & (res.col < sp)
            keep &= ~((res.row == snk) & (res.col == src)) & ~((res.row == src) & (res.col == snk))
            g2 = csr_matrix(
                (
                    np.minimum(res.data[keep], _INF_CAP).astype(np.int32),
                    (res.row[keep], res.col[keep]),
                ),
                shape=g1.shape,
            )
            r2 = maximum_flow(g2, src, snk, method="dinic")
            g3 = (g2 - r2.flow.tocsr()).tocsr()
            g3.data = (g3.data > 0).astype(np.int32)
            g3.eliminate_zeros()
            reach = breadth_first_order(g3, src, directed=True, return_predecessors=False)
            in_s = np.zeros(2 * n + 4, dtype=bool)
            in_s[reach] = True
            # speed up: op arcs S→T; slow down: op arcs T→S; a cut dependency arc is infinite
            speed = cn[in_s[2 * cn] & ~in_s[2 * cn + 1]]
            slow = cn[~in_s[2 * cn] & in_s[2 * cn + 1]]
            dep_cut = np.any(in_s[2 * ce[:, 0] + 1] & ~in_s[2 * ce[:, 1]])
            dep_cut |= bool(np.any(~in_s[2 * starts])) or bool(np.any(in_s[2 * ends + 1]))
            if (
                len(speed) == 0
                or dep_cut
                or np.any(d[speed] <= qmin[speed])
                or np.any(d[slow] >= qmax[slow])
            ):
                break
        d[speed] -= 1
        d[slow] += 1
        nodes = np.concatenate([speed, slow])
        delta = np.concatenate(
            [-np.ones(len(speed), dtype=np.int64), np.ones(len(slow), dtype=np.int64)]
        )
        _, _, t_new = dag.longest(d)
        if not steps_t:
            checkpoints.append(d.copy())
            changes.append((empty, empty))
        else:
            if len(steps_t) % _CHECKPOINT_EVERY == 0:
                checkpoints.append(d.copy())
            changes.append((nodes, delta))
        steps_t.append(t_new)
        steps_cost.append(float(flat[base + d].sum()))
        if t_new >= t:  # no progress (should not happen with an exact min cut)
            break
    return steps_t, steps_cost, changes, checkpoints
