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
Without the C build, :func:`_sweep` does the same in Python: plain-Python Dinic on small
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

try:  # the C port of _sweep, built by `pip install` when a C compiler is present
    from perwatt.train import _sweep as _compiled_sweep
except ImportError:  # pragma: no cover - depends on the install
    _compiled_sweep = None  # type: ignore[assignment]

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
Solver = Literal["auto", "compiled", "python"]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

# Flow capacities are integers (SciPy's max-flow): cost quanta of 1e-5 J. "Infinite" capacity
# stands for arcs that cannot be cut (dependencies, instructions already at top speed); lowtime
# uses 1e4 J for the same purpose. Energy slopes per quantum are a few joules at most.
_FLOW_UNIT_J: Final = 1e-5
_INF_CAP: Final = 2**30
_CHECKPOINT_EVERY: Final = 64
# Steps between progress reports of a sweep; must equal SIGNAL_CHECK_EVERY in _sweep.c.
_PROGRESS_EVERY: Final = 256
# Above this many arcs one call of SciPy's compiled max-flow per step beats plain-Python
# augmentation (measured, 2-core VM: ~380 arcs at 8 stages × 12 microbatches favour Python,
# ~930 at 24 favour SciPy, 0.42 s vs 0.60 s for the whole frontier).
_PY_BFS_MAX_ARCS: Final = 600
# Above this many, a step's few augmenting paths are cheaper found one SciPy BFS at a time
# than with a whole max-flow call (measured: 96 microbatches 2.26 s vs 2.49 s; equal at 48).
_MAXFLOW_MAX_ARCS: Final = 2500
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


_DAG_CACHE: dict[int, tuple[Schedule, _Dag]] = {}


def _dag_of(schedule: Schedule) -> _Dag:
    """The index arrays of ``schedule`` (built once per schedule object; schedules are frozen)."""
    hit = _DAG_CACHE.get(id(schedule))
    if hit is not None and hit[0] is schedule:
        return hit[1]
    dag = _Dag.build(schedule)
    if len(_DAG_CACHE) > 32:
        _DAG_CACHE.clear()
    _DAG_CACHE[id(schedule)] = (schedule, dag)
    return dag


def replay(schedule: Schedule, durations_s: FloatArray) -> tuple[float, FloatArray]:
    """Longest path of the DAG with the given node durations: (iteration time, start times)."""
    dag = _dag_of(schedule)
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
    """Index arrays for fast longest-path passes over a schedule DAG.

    Nodes are renumbered by topological level (``rank``), so each level is one contiguous
    slice and a pass costs a handful of NumPy calls per level rather than per node.
    """

    n: int
    bounds: list[tuple[int, int]]  # level k = ranks bounds[k][0] : bounds[k][1]
    preds: list[IntArray]  # per level: [size, kp] ranks of predecessors, padded with n
    succs: list[IntArray]  # per level: [size, ks] ranks of successors, padded with n
    rank: IntArray  # node id → rank
    node: IntArray  # rank → node id
    edges: IntArray
    # CSR predecessor/successor lists by node id (for the compiled sweep)
    pred_ptr: IntArray
    pred_idx: IntArray
    succ_ptr: IntArray
    succ_idx: IntArray

    @classmethod
    def build(cls, schedule: Schedule) -> _Dag:
        from perwatt.train.schedule import topological_order

        n = schedule.num_nodes
        edges = schedule.edges
        pl: list[list[int]] = [[] for _ in range(n)]
        sl: list[list[int]] = [[] for _ in range(n)]
        for u, v in edges.tolist():
            pl[v].append(u)
            sl[u].append(v)
        level = np.zeros(n, dtype=np.int64)
        for v in topological_order(n, edges).tolist():
            if pl[v]:
                level[v] = 1 + max(int(level[u]) for u in pl[v])
        node = np.argsort(level, kind="stable")
        rank = np.empty(n, dtype=np.int64)
        rank[node] = np.arange(n)
        counts = np.bincount(level)
        ends = np.cumsum(counts)
        bounds = [(int(e - c), int(e)) for c, e in zip(counts, ends, strict=True)]
        kp = max(1, max(len(p) for p in pl))
        ks = max(1, max(len(x) for x in sl))
        preds, succs = [], []
        for lo, hi in bounds:
            pm = np.full((hi - lo, kp), n, dtype=np.int64)
            sm = np.full((hi - lo, ks), n, dtype=np.int64)
            for r in range(lo, hi):
                v = int(node[r])
                pm[r - lo, : len(pl[v])] = rank[pl[v]]
                sm[r - lo, : len(sl[v])] = rank[sl[v]]
            preds.append(pm)
            succs.append(sm)
        by_head = np.argsort(edges[:, 1], kind="stable")
        by_tail = np.argsort(edges[:, 0], kind="stable")
        pred_ptr = np.zeros(n + 1, dtype=np.int64)
        succ_ptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(edges[:, 1], minlength=n), out=pred_ptr[1:])
        np.cumsum(np.bincount(edges[:, 0], minlength=n), out=succ_ptr[1:])
        return cls(
            n=n,
            bounds=bounds,
            preds=preds,
            succs=succs,
            rank=rank,
            node=node,
            edges=edges,
            pred_ptr=pred_ptr,
            pred_idx=np.ascontiguousarray(edges[by_head, 0], dtype=np.int64),
            succ_ptr=succ_ptr,
            succ_idx=np.ascontiguousarray(edges[by_tail, 1], dtype=np.int64),
        )

    def earliest_start(self, d: npt.NDArray[np.float64] | IntArray) -> FloatArray:
        dr = np.asarray(d, dtype=np.float64)[self.node]
        ef = np.zeros(self.n + 1, dtype=np.float64)  # sentinel finish 0
        for (lo, hi), pm in zip(self.bounds, self.preds, strict=True):
            ef[lo:hi] = ef[pm].max(axis=1) + dr[lo:hi]
        es = np.empty(self.n, dtype=np.float64)
        es[self.node] = ef[: self.n] - dr
        return es

    def longest(self, d: IntArray) -> tuple[IntArray, IntArray, int]:
        """Integer earliest start and latest start (node order), and the makespan."""
        n = self.n
        dr = d[self.node]
        ef = np.zeros(n + 1, dtype=np.int64)
        for (lo, hi), pm in zip(self.bounds, self.preds, strict=True):
            ef[lo:hi] = ef[pm].max(axis=1) + dr[lo:hi]
        t = int(ef[:n].max())
        ls = np.full(n + 1, t, dtype=np.int64)  # sentinel latest start = T
        for (lo, hi), sm in zip(reversed(self.bounds), reversed(self.succs), strict=True):
            ls[lo:hi] = ls[sm].min(axis=1) - dr[lo:hi]
        es = np.empty(n, dtype=np.int64)
        out_ls = np.empty(n, dtype=np.int64)
        es[self.node] = ef[:n] - dr
        out_ls[self.node] = ls[:n]
        return es, out_ls, t


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
    if solver == "compiled" and _compiled_sweep is None:
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

    dag = _dag_of(schedule)
    stop_q = -1 if stop_at_s is None else math.floor(stop_at_s / time_quantum_s + 1e-9)
    on_step: Callable[[int], object] | None = None
    if progress is not None:
        report = progress
        t_slow = int(dag.longest(qmax)[2])
        span = max(1, t_slow - int(dag.longest(qmin)[2]))

        def on_step(t_q: int) -> None:
            report(min(1.0, max(0.0, (t_slow - t_q) / span)))

    sw = _run_sweep(dag, qmin, qmax, flat, base, stop_q, solver, on_step)
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
    dag = _dag_of(schedule)
    return dag.longest(q_fast)[2] * time_quantum_s, dag.longest(q_slow)[2] * time_quantum_s


def _noise(t: FloatArray) -> float:
    """How much faster (fraction) a lower clock measured than some higher one; 0 if never."""
    # clocks are descending, so time should be (weakly) ascending along the array
    running_max = np.maximum.accumulate(t)
    return float(np.max(running_max / t - 1.0))


def compiled_solver_available() -> bool:
    """True when the compiled frontier sweep (``perwatt/train/_sweep.c``) is built."""
    return _compiled_sweep is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class _SweepResult:
    """What a sweep returns, per step slowest first (step k's changes: ``change_node`` and
    ``change_delta`` over ``change_ptr[k]:change_ptr[k+1]``)."""

    steps_t: IntArray  # makespan, quanta
    steps_cost: FloatArray  # model cost without the P_block · T term, J
    change_ptr: IntArray
    change_node: IntArray
    change_delta: IntArray
    final_d: IntArray
    complete: bool
    solver: Literal["compiled", "python"]


def _run_sweep(
    dag: _Dag,
    qmin: IntArray,
    qmax: IntArray,
    flat: FloatArray,
    base: IntArray,
    stop_q: int,
    solver: Solver,
    progress: Callable[[int], object] | None = None,
) -> _SweepResult:
    """Run the compiled or the Python sweep, then check its bookkeeping once. ``progress`` is
    called now and then with the makespan (quanta) the sweep has reached."""
    if solver != "python" and _compiled_sweep is not None:
        i64 = np.int64

        def c(a: npt.NDArray[np.generic], dt: type = i64) -> npt.NDArray[np.generic]:
            return np.ascontiguousarray(a, dtype=dt)

        t_b, cost_b, ptr_b, node_b, delta_b, d_b, complete = _compiled_sweep.sweep(
            c(dag.node),
            c(dag.pred_ptr),
            c(dag.pred_idx),
            c(dag.succ_ptr),
            c(dag.succ_idx),
            c(dag.edges[:, 0]),
            c(dag.edges[:, 1]),
            c(qmin),
            c(qmax),
            c(flat, np.float64),
            c(base),
            max(-1, min(int(stop_q), 2**62)),  # a stop beyond any makespan = no stop
            progress,
        )
        res = _SweepResult(
            steps_t=np.frombuffer(t_b, dtype=np.int64),
            steps_cost=np.frombuffer(cost_b, dtype=np.float64),
            change_ptr=np.frombuffer(ptr_b, dtype=np.int64),
            change_node=np.frombuffer(node_b, dtype=np.int64),
            change_delta=np.frombuffer(delta_b, dtype=np.int64),
            final_d=np.frombuffer(d_b, dtype=np.int64).copy(),
            complete=bool(complete),
            solver="compiled",
        )
    else:
        res = _sweep(dag, qmin, qmax, flat, base, stop_q, progress)
    # The makespan and cost were tracked incrementally; check both once against a recount.
    if len(res.steps_t):
        _, _, t_check = dag.longest(res.final_d)
        exact = float(flat[base + res.final_d].sum())
        last_t, last_cost = int(res.steps_t[-1]), float(res.steps_cost[-1])
        if t_check != last_t or abs(exact - last_cost) > 1e-6 * max(1.0, abs(exact)):
            raise RuntimeError(
                f"frontier sweep ({res.solver}) lost track: makespan {t_check} vs {last_t}, "
                f"cost {exact} vs {last_cost}"
            )
    return res


def _checkpoints(qmax: IntArray, sw: _SweepResult) -> tuple[IntArray, ...]:
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


def _sweep(
    dag: _Dag,
    qmin: IntArray,
    qmax: IntArray,
    flat: FloatArray,
    base: IntArray,
    stop_q: int = -1,
    progress: Callable[[int], object] | None = None,
) -> _SweepResult:
    """Phillips–Dessouky sweep from every node at ``qmax`` down to the minimum makespan.

    Returns, per step (slowest first): makespan in quanta, model cost, and the nodes it
    changed (with ±1). ``_sweep.c`` is a port of this function; keep the two in step.

    Three facts keep each step cheap. (1) A step shortens *every* critical path by exactly one
    quantum, so critical instructions stay critical; the critical sub-DAG only grows, and it
    can only grow when some other path's slack reaches zero. Slack falls by at most
    ``1 + (instructions slowed this step)`` per step, so the longest-path pass is redone only
    when the smallest slack could have run out. (2) While the critical sub-DAG is one chain the
    minimum cut is its cheapest instruction, taken without any flow. (3) Otherwise the flow of
    the previous step stays feasible after the step (convex costs: a sped-up instruction's new
    lower bound is its old capacity, a slowed one's new capacity is its old lower bound), so
    each step only augments the previous maximum flow instead of starting over.
    """
    try:
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import breadth_first_order, maximum_flow
    except ImportError as err:  # scipy is not a core dependency of perwatt
        raise ConfigError(
            "the frontier solver needs SciPy's compiled max-flow: pip install 'scipy>=1.11'"
        ) from err

    n = dag.n
    d = qmax.copy()
    edges = dag.edges
    nv = 2 * n + 4  # node-split network: in(i)=2i, out(i)=2i+1, then src, snk, s', t'
    src, snk, sp, tp = 2 * n, 2 * n + 1, 2 * n + 2, 2 * n + 3
    steps_t: list[int] = []
    steps_cost: list[float] = []
    changes: list[tuple[IntArray, IntArray]] = []

    def caps(idx: IntArray) -> tuple[IntArray, IntArray]:
        """Integer (lb, ub) of nodes ``idx``, lowtime's convention (|Δcost| per quantum)."""
        dd, lo_q, hi_q, b = d[idx], qmin[idx], qmax[idx], base[idx]
        c0 = flat[b + dd]
        up = np.abs(flat[b + np.maximum(dd - 1, lo_q)] - c0)  # cost of one quantum faster
        down = np.abs(c0 - flat[b + np.minimum(dd + 1, hi_q)])  # saving of one quantum slower
        can_fast, can_slow = dd > lo_q, dd < hi_q
        ub = np.where(can_fast, np.floor(up / _FLOW_UNIT_J) + can_slow, _INF_CAP)
        lb = np.where(can_slow, np.floor(down / _FLOW_UNIT_J), 0)
        return lb.astype(np.int64), np.minimum(ub, _INF_CAP).astype(np.int64)

    def record(nodes: IntArray, delta: IntArray, t_new: int, cost: float) -> None:
        changes.append((nodes, delta))
        steps_t.append(t_new)
        steps_cost.append(cost)

    cost = float(flat[base + d].sum())
    t = -1
    slack_budget = 0  # steps left before the critical sub-DAG may change
    net: dict[str, IntArray] | None = None  # arcs of the critical network and their flow
    chain: IntArray | None = None
    complete = True
    while True:
        if steps_t and steps_t[-1] <= stop_q:
            complete = False
            break
        if progress is not None and len(steps_t) % _PROGRESS_EVERY == _PROGRESS_EVERY - 1:
            progress(steps_t[-1])  # as _sweep.c: the makespan reached, every few hundred steps
        if slack_budget <= 0:
            es, ls, t = dag.longest(d)
            crit = es == ls
            ce = edges[crit[edges[:, 0]] & crit[edges[:, 1]]]
            ce = ce[es[ce[:, 0]] + d[ce[:, 0]] == es[ce[:, 1]]]
            cn = np.nonzero(crit)[0]
            starts = cn[es[cn] == 0]
            ends = cn[es[cn] + d[cn] == t]
            # smallest slack of any non-critical path: through a non-critical node, or through
            # a non-tight edge
            node_slack = (ls - es)[~crit]
            eslack = ls[edges[:, 1]] - (es[edges[:, 0]] + d[edges[:, 0]])
            eslack = eslack[eslack > 0]
            slack_budget = int(min(node_slack.min(initial=t + 1), eslack.min(initial=t + 1)))
            indeg = np.bincount(ce[:, 1], minlength=n)[cn]
            outdeg = np.bincount(ce[:, 0], minlength=n)[cn]
            is_chain = (
                len(starts) == 1 and len(ends) == 1 and indeg.max() <= 1 and outdeg.max() <= 1
            )
            chain = cn if is_chain else None
            if not is_chain and (net is None or not _same_network(net, cn, ce, starts, ends, n)):
                net = _grow_network(net, cn, ce, starts, ends, n)
        if chain is not None:
            # ---- one chain: cut its cheapest instruction, step after step, no flow --------
            _, ub = caps(chain)
            k = int(np.argmin(ub))
            if ub[k] >= _INF_CAP:
                break
            node = chain[k : k + 1]
            old = float(flat[base[node[0]] + d[node[0]]])
            d[node] -= 1
            cost += float(flat[base[node[0]] + d[node[0]]]) - old
            t -= 1
            slack_budget -= 1
            record(node, -np.ones(1, dtype=np.int64), t, cost)
            continue
        assert net is not None
        speed, slow = _min_cut(
            net, caps, n, nv, src, snk, sp, tp, csr_matrix, maximum_flow, breadth_first_order
        )
        if speed is None or slow is None:
            break
        if len(speed) == 0 or np.any(d[speed] <= qmin[speed]) or np.any(d[slow] >= qmax[slow]):
            break
        moved = np.concatenate([speed, slow])
        old_c = flat[base[moved] + d[moved]].sum()
        d[speed] -= 1
        d[slow] += 1
        cost += float(flat[base[moved] + d[moved]].sum() - old_c)
        t -= 1
        slack_budget -= 1 + len(slow)
        if net["recheck"][0]:
            slack_budget = 0
        delta = np.concatenate(
            [-np.ones(len(speed), dtype=np.int64), np.ones(len(slow), dtype=np.int64)]
        )
        record(moved, delta, t, cost)
    ptr = np.zeros(len(changes) + 1, dtype=np.int64)
    np.cumsum([len(c[0]) for c in changes], out=ptr[1:])
    empty = np.zeros(0, dtype=np.int64)
    return _SweepResult(
        steps_t=np.array(steps_t, dtype=np.int64),
        steps_cost=np.array(steps_cost, dtype=np.float64),
        change_ptr=ptr,
        change_node=np.concatenate([c[0] for c in changes]) if changes else empty,
        change_delta=np.concatenate([c[1] for c in changes]) if changes else empty,
        final_d=d,
        complete=complete,
        solver="python",
    )


def _adjacency(r_t: IntArray, r_h: IntArray, nv: int) -> list[list[tuple[int, int]]]:
    """Per node, its residual entries as (entry id, head node)."""
    adj: list[list[tuple[int, int]]] = [[] for _ in range(nv)]
    for e, (u, v) in enumerate(zip(r_t.tolist(), r_h.tolist(), strict=True)):
        adj[u].append((e, v))
    return adj


def _same_network(
    net: dict[str, IntArray],
    cn: IntArray,
    ce: IntArray,
    starts: IntArray,
    ends: IntArray,
    n: int,
) -> bool:
    """True when the critical sub-DAG has exactly the arcs of ``net``. (Equal arc counts are
    not enough: an instruction can stop ending a critical path in the step where a new
    critical edge appears, and a stale network then cuts the wrong arcs.)"""
    if len(net["tails"]) != len(cn) + len(ce) + len(starts) + len(ends):
        return False
    tails, heads = _arcs(cn, ce, starts, ends, n)
    return bool(np.array_equal(net["key"], tails * (2 * n + 4) + heads))


def _arcs(
    cn: IntArray, ce: IntArray, starts: IntArray, ends: IntArray, n: int
) -> tuple[IntArray, IntArray]:
    """Tails and heads of the critical network's arcs: instructions (in → out), dependencies
    (out → in), source → first instructions, last instructions → sink."""
    src, snk = 2 * n, 2 * n + 1
    tails = np.concatenate([2 * cn, 2 * ce[:, 0] + 1, np.full(len(starts), src), 2 * ends + 1])
    heads = np.concatenate([2 * cn + 1, 2 * ce[:, 1], 2 * starts, np.full(len(ends), snk)])
    return tails, heads


def _grow_network(
    net: dict[str, IntArray] | None,
    cn: IntArray,
    ce: IntArray,
    starts: IntArray,
    ends: IntArray,
    n: int,
) -> dict[str, IntArray]:
    """Arcs of the critical network, keeping the flow of arcs that were already there."""
    tails, heads = _arcs(cn, ce, starts, ends, n)
    is_op = np.zeros(len(tails), dtype=bool)
    is_op[: len(cn)] = True
    node = np.full(len(tails), -1, dtype=np.int64)
    node[: len(cn)] = cn
    key = tails * (2 * n + 4) + heads
    x = np.zeros(len(tails), dtype=np.int64)
    valid = np.zeros(1, dtype=np.int64)
    if net is not None:
        old_key, old_x = net["key"], net["x"]
        order = np.argsort(old_key)
        pos = np.searchsorted(old_key[order], key)
        pos = np.minimum(pos, len(order) - 1)
        hit = old_key[order][pos] == key
        x[hit] = old_x[order][pos[hit]]
        # every old arc must survive (critical paths stay critical); else start the flow over
        valid[0] = int(hit.sum() == len(old_key))
    # CSR layout of the residual graph (every arc forward and backward), fixed until the
    # network grows again: each step then only refills the capacities.
    nv = 2 * n + 4
    r_t = np.concatenate([tails, heads])
    r_h = np.concatenate([heads, tails])
    perm = np.lexsort((r_h, r_t))
    small = len(tails) <= _PY_BFS_MAX_ARCS  # the same test as _min_cut's
    indptr = np.zeros(nv + 1, dtype=np.int32)
    np.cumsum(np.bincount(r_t, minlength=nv), out=indptr[1:])
    return {
        "tails": tails,
        "heads": heads,
        "is_op": is_op,
        "node": node,
        "key": key,
        "rkeys": np.sort(r_t * nv + r_h),
        # plain-Python adjacency (entry ids per tail node) for the small-network BFS
        # (only built for networks small enough to use it: ~10 ms of a 24-microbatch frontier)
        "adj": _adjacency(r_t, r_h, nv) if small else [],  # type: ignore[dict-item]
        "ent_head_l": r_h.tolist() if small else [],  # type: ignore[dict-item]
        "ent_tail_l": r_t.tolist() if small else [],  # type: ignore[dict-item]
        "rorder": np.argsort(r_t * nv + r_h),
        "x": x,
        "valid": valid,
        "recheck": np.zeros(1, dtype=np.int64),
        "perm": perm,
        "indices": r_h[perm].astype(np.int32),
        "indptr": indptr,
    }


def _min_cut(
    net: dict[str, IntArray],
    caps: object,
    n: int,
    nv: int,
    src: int,
    snk: int,
    sp: int,
    tp: int,
    csr_matrix: object,
    maximum_flow: object,
    breadth_first_order: object,
) -> tuple[IntArray | None, IntArray | None]:
    """Minimum cut (with lower bounds) of the critical network, warm-started from its flow."""
    tails, heads, x = net["tails"], net["heads"], net["x"]
    op = net["is_op"]
    lo = np.zeros(len(tails), dtype=np.int64)
    hi = np.full(len(tails), _INF_CAP, dtype=np.int64)
    lb, ub = caps(net["node"][op])  # type: ignore[operator]
    lo[op], hi[op] = lb, np.maximum(ub, lb)
    if not net["valid"][0] or np.any(x < lo) or np.any(x > hi):
        fresh = _feasible_flow(tails, heads, lo, hi, nv, src, snk, sp, tp, csr_matrix, maximum_flow)
        if fresh is None:
            return None, None
        x = fresh
        net["valid"][0] = 1
    # Augment s → t along shortest residual paths until none is left (Edmonds–Karp, warm
    # started: the previous step's flow is already close to maximal, so this takes a few
    # paths). Residual entries: arc a forward (cap hi − x) is entry a, backward (x − lo) a + A.
    # Small networks: breadth-first search in plain Python over prebuilt adjacency lists (no
    # per-search allocation of SciPy matrices); large ones: one SciPy max-flow call.
    n_arcs = len(tails)
    rc = np.concatenate([hi - x, x - lo])
    if n_arcs <= _PY_BFS_MAX_ARCS:
        reached = _augment_py(net, rc, n_arcs, nv, src, snk)
    elif n_arcs <= _MAXFLOW_MAX_ARCS:
        reached = _augment_scipy(net, rc, n_arcs, nv, src, snk, csr_matrix, breadth_first_order)
    else:
        reached = _augment_scipy_paths(
            net, rc, n_arcs, nv, src, snk, csr_matrix, breadth_first_order
        )
    x = hi - rc[:n_arcs]
    net["x"] = x
    in_s = np.zeros(nv, dtype=bool)
    in_s[reached] = True
    crossing_fwd = in_s[tails] & ~in_s[heads]
    crossing_bwd = ~in_s[tails] & in_s[heads]
    if np.any(crossing_fwd & ~op):  # a dependency (infinite) arc is cut: nothing to speed up
        return None, None
    nodes = net["node"]
    # A dependency arc crossing backwards lets some critical path shorten by more than one
    # quantum, so criticality must be recomputed before the next step (flagged via "recheck").
    net["recheck"][0] = int(bool(np.any(crossing_bwd & ~op)))
    return nodes[crossing_fwd & op], nodes[crossing_bwd & op]


def _augment_py(
    net: dict[str, IntArray], rc: IntArray, n_arcs: int, nv: int, src: int, snk: int
) -> IntArray:
    """Augment to a maximum flow (Dinic: BFS levels, then blocking flow by DFS); ``rc`` is
    updated in place. Returns the nodes reachable from ``src`` in the final residual network.
    """
    adj: list[list[tuple[int, int]]] = net["adj"]  # type: ignore[assignment]
    ent_head: list[int] = net["ent_head_l"]  # type: ignore[assignment]
    ent_tail: list[int] = net["ent_tail_l"]  # type: ignore[assignment]
    cap: list[int] = rc.tolist()
    while True:
        level = [-1] * nv
        level[src] = 0
        queue = [src]
        limit = nv  # once the sink is labelled, deeper levels cannot be on a shortest path
        for u in queue:
            lu = level[u] + 1
            if lu > limit:
                break
            for e, v in adj[u]:
                if cap[e] > 0 and level[v] < 0:
                    level[v] = lu
                    queue.append(v)
                    if v == snk:
                        limit = lu
        if level[snk] < 0:
            rc[:] = cap
            return np.array(queue, dtype=np.int64)
        # blocking flow on the level graph; ptr[u] = next adjacency entry to try at u
        ptr = [0] * nv
        path: list[int] = []
        u = src
        while True:
            if u == snk:
                delta = min(cap[e] for e in path)
                back = len(path)
                for k, e in enumerate(path):
                    cap[e] -= delta
                    cap[e + n_arcs if e < n_arcs else e - n_arcs] += delta
                    if cap[e] == 0 and k < back:
                        back = k
                # retreat to the tail of the first saturated arc
                del path[back:]
                u = src if not path else ent_head[path[-1]]
                continue
            lst = adj[u]
            i, n_l = ptr[u], len(lst)
            lu = level[u] + 1
            while i < n_l:
                e, v = lst[i]
                if cap[e] > 0 and level[v] == lu:
                    break
                i += 1
            ptr[u] = i
            if i < n_l:
                path.append(e)
                u = v
                continue
            # dead end: prune u and step back
            level[u] = -1
            if not path:
                break
            e = path.pop()
            u = ent_tail[e]
            ptr[u] += 1


def _augment_scipy(
    net: dict[str, IntArray],
    rc: IntArray,
    n_arcs: int,
    nv: int,
    src: int,
    snk: int,
    csr_matrix: object,
    breadth_first_order: object,
) -> IntArray:
    """Same as :func:`_augment_py` for large networks: one call of SciPy's compiled max-flow
    (Dinic) on the residual network, then SciPy's compiled BFS for the source side."""
    from scipy.sparse.csgraph import maximum_flow

    perm, indices, indptr = net["perm"], net["indices"], net["indptr"]
    # The residual network holds every arc in both directions (the critical network has no
    # antiparallel arcs), so its CSR layout is fixed and SciPy adds no reverse entries: the
    # returned flow lines up entry by entry (checked, with a fallback that looks entries up).
    data = rc[perm]
    g = csr_matrix((data.astype(np.int32), indices, indptr), shape=(nv, nv))  # type: ignore[operator]
    flow = maximum_flow(g, src, snk, method="dinic").flow  # type: ignore[operator]
    if np.array_equal(flow.indptr, indptr) and np.array_equal(flow.indices, indices):
        f = np.asarray(flow.data, dtype=np.int64)
    else:
        f = np.asarray(flow[np.repeat(np.arange(nv), np.diff(indptr)), indices], dtype=np.int64)
        f = f.ravel()
    # skew-symmetric flow: entry u→v loses f(u,v), its partner v→u gains it (f(v,u) = −f(u,v))
    data = data - f
    rc[perm] = data
    r = csr_matrix(((data > 0).astype(np.int8), indices.copy(), indptr.copy()), shape=(nv, nv))  # type: ignore[operator]
    r.eliminate_zeros()
    reach = breadth_first_order(r, src, directed=True, return_predecessors=False)  # type: ignore[operator]
    return np.asarray(reach, dtype=np.int64)


def _augment_scipy_paths(
    net: dict[str, IntArray],
    rc: IntArray,
    n_arcs: int,
    nv: int,
    src: int,
    snk: int,
    csr_matrix: object,
    breadth_first_order: object,
) -> IntArray:
    """Same as :func:`_augment_py` with one SciPy BFS per augmenting path, for the largest
    networks (there a step needs few paths, and a whole max-flow call costs more)."""
    perm, indices, indptr, sorted_keys = net["perm"], net["indices"], net["indptr"], net["rkeys"]
    while True:
        data = (rc[perm] > 0).astype(np.int8)
        g = csr_matrix((data, indices.copy(), indptr.copy()), shape=(nv, nv))  # type: ignore[operator]
        g.eliminate_zeros()
        reach, pred = breadth_first_order(g, src, directed=True, return_predecessors=True)  # type: ignore[operator]
        if pred[snk] < 0:
            return np.asarray(reach, dtype=np.int64)
        path: list[int] = []
        pl = pred.tolist()
        v = snk
        while v != src:
            u = pl[v]
            path.append(u * nv + v)
            v = u
        entries = net["rorder"][np.searchsorted(sorted_keys, np.array(path, dtype=np.int64))]
        delta = int(rc[entries].min())
        rc[entries] -= delta
        partner = np.where(entries < n_arcs, entries + n_arcs, entries - n_arcs)
        rc[partner] += delta


def _feasible_flow(
    tails: IntArray,
    heads: IntArray,
    lo: IntArray,
    hi: IntArray,
    nv: int,
    src: int,
    snk: int,
    sp: int,
    tp: int,
    csr_matrix: object,
    maximum_flow: object,
) -> IntArray | None:
    """A flow with ``lo ≤ x ≤ hi`` on every arc (classic s'/t' construction), or None."""
    excess = np.zeros(nv, dtype=np.int64)
    np.add.at(excess, heads, lo)
    np.subtract.at(excess, tails, lo)
    pos = np.nonzero(excess > 0)[0]
    neg = np.nonzero(excess < 0)[0]
    t1 = np.concatenate([tails, [snk], np.full(len(pos), sp), neg])
    h1 = np.concatenate([heads, [src], pos, np.full(len(neg), tp)])
    c1 = np.concatenate([hi - lo, [_INF_CAP], excess[pos], -excess[neg]])
    g1 = csr_matrix((c1.astype(np.int32), (t1, h1)), shape=(nv, nv))  # type: ignore[operator]
    r1 = maximum_flow(g1, sp, tp, method="dinic")  # type: ignore[operator]
    if r1.flow_value < int(excess[pos].sum()):
        return None
    f = np.asarray(r1.flow[tails, heads]).ravel().astype(np.int64)
    return np.asarray(lo + f, dtype=np.int64)
