"""Replay a frequency plan on a stage profile: the pipeline timeline, before and after.

An event simulation of one training iteration. Each stage is a GPU that runs its instructions
in program order; an instruction starts when its GPU is free *and* every instruction it depends
on (the schedule DAG: activations from the previous stage, gradients from the next) has
finished. Each instruction takes the profiled time of the clock the plan gives it and costs the
profiled energy; a GPU that waits draws ``P_block`` (Perseus, SOSP'24 §4)::

    E = Σ_i e_i(f_i) + Σ_s P_block,s · (T − busy_s)

Every schedule the planner plans replays here. An *interleaved* 1F1B schedule (Megatron-LM's
virtual pipeline) runs ``chunks`` model chunks per GPU: each bar carries its chunk, and its time
and energy come from the profile the way the planner reads them (virtual stage
``chunk · S + stage`` when the profile has ``S · chunks`` stages; else ``1/chunks`` of the whole
stage). With *recomputation* a backward re-runs its forward first: one bar, priced
``backward + forward`` at the same clock, as the planner prices it.

This is written independently of the planner's longest-path code, so matching the planner's
replay figures (``FrequencyPlan.replay_time_s``/``replay_energy_j``) is a real cross-check.
Every figure here is a *replay of profiled numbers* — label ``simulated`` — never a measurement
of the plan in training.

:func:`run_simulation` is what ``perwatt train simulate`` calls: profile → frontier → chosen plan
→ timelines of the all-max-clock baseline and of the plan → :class:`SimulationReport`, which
:mod:`perwatt.report.gantt` draws. Profile, schedule, frontier and choice come from
:func:`perwatt.train.plan.plan_pipeline`, so the options are checked, and the plan chosen,
exactly as ``perwatt train plan`` does.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perwatt.errors import ConfigError, FieldError
from perwatt.train.pipeline import PipelineSpec
from perwatt.train.plan import plan_pipeline

if TYPE_CHECKING:
    pass

SOURCE = "simulated"  # a replay of the profile, not a measurement


@dataclass(frozen=True, slots=True, kw_only=True)
class TimelineBar:
    """One instruction on the timeline."""

    stage: int
    instruction: str
    microbatch: int
    chunk: int
    start_s: float
    duration_s: float
    freq_mhz: int
    energy_j: float
    # A backward that re-runs its forward first (activation recomputation): the bar's time and
    # energy are backward + forward at ``freq_mhz``, as the planner prices it.
    recomputed: bool = False

    def __post_init__(self) -> None:
        if self.duration_s <= 0 or self.start_s < 0 or self.energy_j < 0:
            raise ValueError(f"bad timeline bar {self}")
        if self.recomputed and self.instruction != "backward":
            raise ValueError(f"only a backward recomputes its forward: {self}")

    def tag(self, chunks: int = 1) -> str:
        """``F3``/``B3`` (forward/backward of microbatch 3); ``F3c1`` for model chunk 1 when
        the schedule runs ``chunks`` > 1 chunks per GPU, where ``F3`` alone is ambiguous."""
        name = "F" if self.instruction == "forward" else "B"
        return f"{name}{self.microbatch}" + (f"c{self.chunk}" if chunks > 1 else "")

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s

    @property
    def power_w(self) -> float:
        return self.energy_j / self.duration_s


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeline:
    """One simulated iteration: bars per instruction and its time and energy."""

    label: str
    num_stages: int
    bars: tuple[TimelineBar, ...]
    p_block_w: tuple[float, ...]
    iteration_time_s: float
    compute_energy_j: float
    blocking_energy_j: float
    chunks: int = 1  # model chunks per GPU (interleaved 1F1B); bars carry their chunk
    recompute: bool = False  # backward bars include the recomputed forward
    source: str = SOURCE

    def __post_init__(self) -> None:
        if len(self.p_block_w) != self.num_stages:
            raise ValueError("one blocking power per stage")
        if self.chunks < 1:
            raise ValueError(f"chunks must be ≥ 1, got {self.chunks}")
        if self.iteration_time_s <= 0:
            raise ValueError("iteration time must be > 0")

    @property
    def energy_j(self) -> float:
        return self.compute_energy_j + self.blocking_energy_j

    def busy_s(self, stage: int) -> float:
        return sum(b.duration_s for b in self.bars if b.stage == stage)


# (instruction, microbatch, chunk or None when the plan does not say, freq_mhz)
_Entry = tuple[str, int, int | None, int]


def _stage_plans(plan: Any, num_stages: int) -> list[list[_Entry]]:
    """Per stage ``[(instruction, microbatch, chunk, freq_mhz)]`` from a ``FrequencyPlan``
    (which knows each instruction's chunk) or a mapping ``{stage: [(instruction, microbatch,
    freq_mhz[, chunk]), …]}``."""
    if hasattr(plan, "stages") and hasattr(plan, "for_stage"):
        rows = [
            [(p.instruction, p.microbatch, p.chunk, p.freq_mhz) for p in stage]
            for stage in plan.stages
        ]
    elif isinstance(plan, Mapping):
        n = len(plan)
        if sorted(plan) != list(range(n)):
            raise ConfigError(f"plan stages must be 0..{n - 1}, got {sorted(plan)}")
        rows = []
        for s in range(n):
            stage_rows: list[_Entry] = []
            for e in plan[s]:
                if len(e) not in (3, 4):
                    raise ConfigError(
                        f"stage {s}: a plan entry is (instruction, microbatch, freq_mhz[, chunk]),"
                        f" got {e!r}"
                    )
                chunk = int(e[3]) if len(e) == 4 else None
                stage_rows.append((str(e[0]), int(e[1]), chunk, int(e[2])))
            rows.append(stage_rows)
    else:
        raise ConfigError(f"cannot read a frequency plan from {type(plan).__name__}")
    if len(rows) != num_stages:
        raise FieldError(
            f"the plan has {len(rows)} stages but the schedule has {num_stages}: plan, profile "
            "and {s} must describe the same pipeline",
            s="stages",
        )
    return rows


def _lookup(profile: Any, stage: int, instruction: str, freq: int) -> tuple[float, float]:
    ip = profile[(stage, instruction)]
    freqs = [int(f) for f in ip.freq_mhz]
    if freq not in freqs:
        raise ConfigError(
            f"the plan runs stage {stage} {instruction} at {freq} MHz, which the profile does "
            f"not have (profiled {freqs[-1]}..{freqs[0]} MHz): plan and profile do not match"
        )
    k = freqs.index(freq)
    return float(ip.time_s[k]), float(ip.energy_j[k])


def simulate_plan(
    schedule: Any,
    profile: Any,
    plan: Any,
    *,
    p_block_w: float | Sequence[float],
    label: str = "plan",
) -> Timeline:
    """Event-simulate one iteration of ``schedule`` with each instruction at ``plan``'s clock.

    ``schedule``: the planner's :class:`~perwatt.train.schedule.Schedule`; ``profile``: a
    :class:`~perwatt.train.profile.StageProfile`; ``plan``: a ``FrequencyPlan`` or
    ``{stage: [(instruction, microbatch, freq_mhz), …]}`` in program order.
    """
    S = schedule.num_stages
    chunks = getattr(schedule, "chunks", 1)
    recompute = bool(getattr(schedule, "recompute", False))
    pb = (
        [float(p_block_w)] * S
        if isinstance(p_block_w, (int, float))
        else [float(p) for p in p_block_w]
    )
    if len(pb) != S or any(not (math.isfinite(p) and p >= 0) for p in pb):
        raise ConfigError(f"need one non-negative blocking power per stage ({S}), got {p_block_w}")
    if profile.num_stages not in (S, S * chunks):
        raise FieldError(
            f"the profile has {profile.num_stages} stages but the schedule has {S}"
            + (f" (x{chunks} chunks)" if chunks > 1 else "")
            + ": give {s} to match the profile",
            s="stages",
        )
    virtual_profile = chunks > 1 and profile.num_stages == S * chunks
    scale = 1.0 / chunks if chunks > 1 and not virtual_profile else 1.0
    plans = _stage_plans(plan, S)

    # Node → index; per-node planned clock, checked against the schedule's program order.
    index = {n: i for i, n in enumerate(schedule.nodes)}
    n_nodes = len(schedule.nodes)
    freq = [0] * n_nodes
    for s, order in enumerate(schedule.order):
        entries = plans[s]
        if len(entries) != len(order):
            raise ConfigError(
                f"stage {s}: the plan has {len(entries)} instructions, the schedule "
                f"{len(order)}: plan and schedule do not match (microbatches? schedule?)"
            )
        for pos, (node, (inst, mb, chunk, f)) in enumerate(zip(order, entries, strict=True)):
            if (
                node.instruction != inst
                or node.microbatch != mb
                or (chunk is not None and node.chunk != chunk)
            ):
                where = f" chunk {chunk}" if chunk is not None and chunks > 1 else ""
                theirs = f" chunk {node.chunk}" if chunks > 1 else ""
                raise ConfigError(
                    f"stage {s} position {pos}: the plan has {inst} {mb}{where}, the schedule "
                    f"{node.instruction} {node.microbatch}{theirs}: plan and schedule do not "
                    "match"
                )
            freq[index[node]] = f
    dur = [0.0] * n_nodes
    energy = [0.0] * n_nodes
    for i, node in enumerate(schedule.nodes):
        ps = node.chunk * S + node.stage if virtual_profile else node.stage
        t, e = _lookup(profile, ps, node.instruction, freq[i])
        if recompute and node.instruction == "backward":
            tf, ef = _lookup(profile, ps, "forward", freq[i])
            t, e = t + tf, e + ef
        dur[i], energy[i] = t * scale, e * scale

    preds: list[list[int]] = [[] for _ in range(n_nodes)]
    succs: list[list[int]] = [[] for _ in range(n_nodes)]
    for u, v in schedule.edges.tolist():
        preds[v].append(u)
        succs[u].append(v)

    # Event loop: a heap of finish events; each GPU starts its next instruction as soon as it
    # is idle and that instruction's inputs have arrived.
    finish = [math.nan] * n_nodes
    start = [math.nan] * n_nodes
    next_pos = [0] * S
    gpu_free = [0.0] * S
    orders = [[index[n] for n in order] for order in schedule.order]
    events: list[tuple[float, int]] = []

    def try_start(s: int) -> None:
        # Start this GPU's next instructions whose inputs are all known to finish.
        while next_pos[s] < len(orders[s]):
            i = orders[s][next_pos[s]]
            if any(math.isnan(finish[u]) for u in preds[i]):
                return
            t0 = max([gpu_free[s], *(finish[u] for u in preds[i])])
            start[i] = t0
            finish[i] = t0 + dur[i]
            gpu_free[s] = finish[i]
            next_pos[s] += 1
            heapq.heappush(events, (finish[i], i))

    for s in range(S):
        try_start(s)
    while events:
        _now, i = heapq.heappop(events)
        # A finish can unblock the GPUs that wait for this instruction's output.
        for s in {schedule.nodes[v].stage for v in succs[i]}:
            try_start(s)
    if any(math.isnan(f) for f in finish):
        raise ConfigError("the schedule deadlocks: some instructions never became ready")

    T = max(finish)
    bars = tuple(
        TimelineBar(
            stage=n.stage,
            instruction=n.instruction,
            microbatch=n.microbatch,
            chunk=n.chunk,
            start_s=start[i],
            duration_s=dur[i],
            freq_mhz=freq[i],
            energy_j=energy[i],
            recomputed=recompute and n.instruction == "backward",
        )
        for i, n in enumerate(schedule.nodes)
    )
    busy = [0.0] * S
    for i, n in enumerate(schedule.nodes):
        busy[n.stage] += dur[i]
    blocking = sum(pb[s] * (T - busy[s]) for s in range(S))
    return Timeline(
        label=label,
        num_stages=S,
        bars=bars,
        p_block_w=tuple(pb),
        iteration_time_s=T,
        compute_energy_j=sum(energy),
        blocking_energy_j=blocking,
        chunks=chunks,
        recompute=recompute,
    )


def all_max_plan(schedule: Any, profile: Any) -> dict[int, list[tuple[str, int, int]]]:
    """Every instruction at its stage's highest profiled clock (the baseline)."""
    chunks = getattr(schedule, "chunks", 1)
    S = schedule.num_stages
    virtual = chunks > 1 and profile.num_stages == S * chunks
    out: dict[int, list[tuple[str, int, int]]] = {}
    for s, order in enumerate(schedule.order):
        out[s] = [
            (
                n.instruction,
                n.microbatch,
                int(profile[(n.chunk * S + s if virtual else s, n.instruction)].freq_mhz[0]),
            )
            for n in order
        ]
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulationReport:
    """Everything ``perwatt train simulate`` prints and draws."""

    profile_path: str
    schedule_name: str
    num_stages: int
    num_microbatches: int
    p_block_w: tuple[float, ...]
    target: str
    before: Timeline
    after: Timeline
    frontier: tuple[tuple[float, float], ...]  # (time_s, energy_j), fastest first (model)
    chosen: tuple[float, float]  # the chosen frontier point (model figures)
    planner_replay: tuple[float, float]  # the planner's replay of the chosen plan
    baseline_replay: tuple[float, float]  # the planner's replay of the all-max baseline
    time_limit_s: float  # the plan's time limit
    # Both runs are counted up to this time (GPUs that finish early block until the straggler),
    # the planner's rule for its savings figures.
    horizon_s: float
    chunks: int = 1  # model chunks per GPU (interleaved 1F1B)
    recompute: bool = False  # activation recomputation: a backward re-runs its forward
    source: str = SOURCE

    def __post_init__(self) -> None:
        if self.horizon_s < max(self.before.iteration_time_s, self.after.iteration_time_s) - 1e-12:
            raise ValueError("the horizon must cover both iterations")

    def blocked_to_horizon_j(self, tl: Timeline) -> float:
        """Energy of ``tl``'s GPUs blocked from its iteration end until the horizon."""
        return sum(tl.p_block_w) * max(0.0, self.horizon_s - tl.iteration_time_s)

    def energy_at_horizon_j(self, tl: Timeline) -> float:
        """Energy of ``tl`` if every GPU then blocks until the horizon (a straggler's pace)."""
        return tl.energy_j + self.blocked_to_horizon_j(tl)

    @property
    def saved_j(self) -> float:
        """Saved per iteration, both runs counted up to the same horizon (the planner's rule).

        The blocking up to the horizon is common to both runs and cancels exactly; it is not
        subtracted as two large figures (under a 1e8 s deadline each is ~6.7e10 J, and their
        difference would lose the 3,924 J saving to rounding)."""
        b, a = self.before, self.after
        return (b.energy_j - a.energy_j) + sum(b.p_block_w) * (
            a.iteration_time_s - b.iteration_time_s
        )

    @property
    def saved_pct(self) -> float:
        """``saved_j`` as a percentage of the all-max-clock run's energy up to the horizon."""
        return 100.0 * self.saved_j / self.energy_at_horizon_j(self.before)

    @property
    def slowdown_pct(self) -> float:
        return 100.0 * (self.after.iteration_time_s / self.before.iteration_time_s - 1.0)

    def _p_block_text(self) -> str:
        if len(set(self.p_block_w)) == 1:
            return f"{self.p_block_w[0]:g} W per stage"
        return "/".join(f"{p:g}" for p in self.p_block_w) + " W (per stage)"

    def _schedule_text(self) -> str:
        text = self.schedule_name
        if self.chunks > 1:
            text += f" ({self.chunks} model chunks per GPU)"
        if self.recompute:
            text += " with recompute"  # each backward re-runs its forward: one bar, both priced
        return text

    def summary_lines(self) -> list[str]:
        b, a = self.before, self.after
        return [
            f"profile {self.profile_path}: {self._schedule_text()}, {self.num_stages} stages, "
            f"{self.num_microbatches} microbatches, P_block {self._p_block_text()}",
            f"plan: {self.target}",
            f"before (all max clock): iteration {b.iteration_time_s:.4f} s, "
            f"energy {b.energy_j:.1f} J  [{self.source}: profile replay]",
            f"after  (plan):          iteration {a.iteration_time_s:.4f} s, "
            f"energy {a.energy_j:.1f} J  [{self.source}: profile replay]",
            # The saving counts both runs to one horizon: print the blocking that adds, so the
            # two energies it is computed from are on screen and subtract to it.
            f"both counted to {self._horizon_text()} (GPUs that finish earlier block at "
            f"P_block, {sum(b.p_block_w):g} W in all): before {b.energy_j:,.1f} + "
            f"{self.blocked_to_horizon_j(b):,.1f} = {self.energy_at_horizon_j(b):,.1f} J, "
            f"after {a.energy_j:,.1f} + {self.blocked_to_horizon_j(a):,.1f} = "
            f"{self.energy_at_horizon_j(a):,.1f} J",
            f"saved {self.saved_j:,.1f} J per iteration = {self.saved_pct:.2f}% of the before "
            f"energy up to {self._seconds(self.horizon_s)}, "
            f"{self.saved_j * 1000 / 3.6e6:.4f} kWh per 1,000 iterations, "
            f"time {self.slowdown_pct:+.2f}%",
            f"planner's frontier point: {self.chosen[0]:.4f} s, {self.chosen[1]:.1f} J (model fit)",
            *self._limit_note(),
        ]

    @staticmethod
    def _seconds(t: float) -> str:
        return f"{t:.4f} s" if t < 1e5 else f"{t:.4g} s"

    def _horizon_text(self) -> str:
        latest = max(self.before.iteration_time_s, self.after.iteration_time_s)
        if self.horizon_s > latest * (1 + 1e-12):
            return f"{self._seconds(self.horizon_s)}, the time limit"
        return f"{self._seconds(self.horizon_s)}, the later iteration end"

    def _limit_note(self) -> list[str]:
        # Without this, "T′ = 7.8210 s" above "after: iteration 7.8347 s" reads as a broken
        # promise; the planner meets its limits on its own quantised model (see choose_plan).
        over_s = self.after.iteration_time_s - self.time_limit_s
        if over_s <= 1e-9 * self.time_limit_s:
            return []
        return [
            f"note: the replayed plan ends {over_s * 1e3:.1f} ms after the time limit "
            f"{self.time_limit_s:.4f} s, which the planner computes on its model (each time "
            "rounded down to the time quantum); a smaller --quantum-ms narrows the gap"
        ]


def run_simulation(
    profile_path: str | Path,
    pipeline: PipelineSpec | None = None,
    *,
    progress: Callable[[float], object] | None = None,
    **choice_or_fields: Any,
) -> SimulationReport:
    """Profile → frontier → chosen plan → simulated timelines before/after. Checks the replay
    against the planner's own figures and fails loudly if they disagree.

    ``pipeline`` is what :func:`perwatt.train.plan.plan_pipeline` (what ``perwatt train plan``
    runs) takes, which builds the schedule, solves the frontier and picks the plan here too; or
    give its fields as keywords (``stages=``, ``p_block_w=`` …). The other keywords go to
    ``choose_plan`` (``target=``, ``straggler_ratio=`` …).
    """
    names = {f.name for f in fields(PipelineSpec)}
    spec_fields = {k: v for k, v in choice_or_fields.items() if k in names}
    choice = {k: v for k, v in choice_or_fields.items() if k not in spec_fields}
    if pipeline is None:
        pipeline = PipelineSpec(**spec_fields)
    elif spec_fields:
        raise TypeError(f"give a PipelineSpec or its fields, not both: {sorted(spec_fields)}")
    planned = plan_pipeline([profile_path], pipeline, progress=progress, **choice)
    frontier, picked = planned.frontier, planned.choice
    sched, profile = frontier.schedule, frontier.profile
    pb = list(frontier.p_block_w)
    plan = picked.plan
    before = simulate_plan(
        sched, profile, all_max_plan(sched, profile), p_block_w=pb, label="all max clock"
    )
    after = simulate_plan(sched, profile, plan, p_block_w=pb, label="plan")
    base = frontier.baseline
    # Two independent computations of the same sums: equal up to rounding, whose size is that of
    # the figures summed (each bar's energy, each stage's blocked time), not of the result.
    for name, tl, ref in (("plan", after, plan), ("baseline", before, base)):
        if not (
            math.isclose(tl.iteration_time_s, ref.replay_time_s, rel_tol=1e-9)
            and math.isclose(
                tl.energy_j,
                ref.replay_energy_j,
                rel_tol=1e-9,
                abs_tol=1e-9 * (tl.compute_energy_j + abs(tl.blocking_energy_j)),
            )
        ):
            raise RuntimeError(
                f"simulator and planner disagree on the {name}: {tl.iteration_time_s} s / "
                f"{tl.energy_j} J vs {ref.replay_time_s} s / {ref.replay_energy_j} J"
            )
    chosen = (picked.point.time_s, picked.point.energy_j)
    # Count both runs to the planner's own comparison horizon, so the saving is the same figure.
    horizon = picked.horizon_s
    saved_planner = picked.vs_baseline.saved_j
    saved_here = (before.energy_j - after.energy_j) + sum(before.p_block_w) * (
        after.iteration_time_s - before.iteration_time_s
    )
    # The saving is a difference of energies: its rounding error is relative to their size
    # (and the horizon's blocking, were it not cancelled), not to the saving itself.
    magnitude = before.energy_j + after.energy_j + sum(before.p_block_w) * max(horizon, 0.0)
    if not math.isclose(saved_here, saved_planner, rel_tol=1e-9, abs_tol=1e-9 * magnitude):
        raise RuntimeError(
            f"simulator and planner disagree on the energy saved: {saved_here} J vs {saved_planner} J"
        )
    return SimulationReport(
        profile_path=str(profile_path),
        schedule_name=sched.name,
        num_stages=pipeline.stages,
        num_microbatches=pipeline.microbatches,
        chunks=sched.chunks,
        recompute=sched.recompute,
        p_block_w=tuple(float(p) for p in pb),
        target=picked.target,
        time_limit_s=picked.time_limit_s,
        horizon_s=horizon,
        before=before,
        after=after,
        frontier=tuple((p.time_s, p.energy_j) for p in frontier.points),
        chosen=chosen,
        planner_replay=(plan.replay_time_s, plan.replay_energy_j),
        baseline_replay=(base.replay_time_s, base.replay_energy_j),
    )
