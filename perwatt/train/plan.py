"""Choosing a point on the frontier, and what it saves.

Targets (Perseus, SOSP'24 §3):

* ``target="fastest"`` — no slowdown at all: the frontier's ``T_min``. Only *intrinsic* bloat is
  removed (instructions off the critical path are slowed; the iteration time is unchanged).
* ``straggler_s=T′`` / ``straggler_ratio=r`` (``T′ = r·T_min``) — another pipeline straggles and
  every pipeline waits for it at the gradient sync, so this one may take up to ``T′`` for free
  (*extrinsic* bloat). ``deadline_s`` and ``max_slowdown_pct`` (``T′ = T_min·(1 + p/100)``) set
  the same limit from a per-iteration deadline or an accepted slowdown.

Among the points no slower than ``T′`` the one with the least energy is chosen (with P_block
counted, points just below ``T_max`` can cost more than faster ones, so "the slowest point that
meets ``T′``" is not always the cheapest; ties go to the slower point). Because frontier times
are quantised, the chosen point's clocks are replayed on the profile and a point is only taken
if the replayed iteration meets ``T′`` too (for ratio and slowdown targets: the same ratio over
the fastest plan's replay); otherwise the next cheapest is tried.

Savings compare *profile-replay* energies — each plan's profiled per-clock time and energy
replayed on the DAG with blocking power for the gaps (simulated from measured profiles, not
measured during training). When a limit ``T′`` is set, every compared plan is charged for the
whole ``T′`` (a pipeline that finishes early blocks until the straggler arrives), so the
comparison is at equal iteration time.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perwatt._files import atomic_write_text
from perwatt.errors import ConfigError, FieldError
from perwatt.train.frontier import (
    FrequencyPlan,
    Frontier,
    FrontierPoint,
    compute_frontier,
    time_bounds,
)
from perwatt.train.pipeline import MAX_INSTRUCTIONS, PipelineSpec
from perwatt.train.plausibility import check_p_block, check_profile_units
from perwatt.train.profile import combine_ranks, load_profile

__all__ = [
    "ENERGY_SOURCE",
    "MAX_FRONTIER_POINTS",
    "MAX_INSTRUCTIONS",
    "PlanChoice",
    "PlanReport",
    "Savings",
    "choice_as_dict",
    "choose_plan",
    "format_choice",
    "plan_pipeline",
    "write_frontier_csv",
    "write_plans",
]

ENERGY_SOURCE = "simulated (profile replay)"
# Sane upper bound on the frontier, checked before any work (the bound on instructions,
# MAX_INSTRUCTIONS, is PipelineSpec's). Each point keeps its plan's changes; beyond this many the quantum is finer than any clock
# change can matter (1 µs steps over a 1 s range is a million points).
MAX_FRONTIER_POINTS = 2_000_000
# Candidates whose replay is checked against a time limit before falling back to T_min.
_MAX_REPLAY_TRIES = 400
_J_PER_KWH = 3.6e6


@dataclass(frozen=True, slots=True, kw_only=True)
class Savings:
    """Energy of the chosen plan against a reference plan, per iteration and per 1,000.

    Both plans are counted up to the same ``horizon_s``: each one's replayed iteration (time,
    energy), then its GPUs blocked at ``p_block_total_w`` until the horizon. ``saved_pct`` is a
    percentage of the *reference's energy up to the horizon*, so under a far deadline it
    shrinks as the horizon grows while ``saved_j`` stays the same.
    """

    reference: str
    reference_time_s: float
    reference_replay_energy_j: float
    chosen_time_s: float
    chosen_replay_energy_j: float
    horizon_s: float
    p_block_total_w: float  # Σ over stages (and ranks) of P_block
    source: str = ENERGY_SOURCE

    def __post_init__(self) -> None:
        if not (self.reference_replay_energy_j > 0 and self.chosen_replay_energy_j > 0):
            raise ValueError("energies must be > 0")
        if not (self.reference_time_s > 0 and self.chosen_time_s > 0):
            raise ValueError("iteration times must be > 0")
        if self.horizon_s < max(self.reference_time_s, self.chosen_time_s) * (1 - 1e-12):
            raise ValueError("the horizon must cover both iterations")
        if not (math.isfinite(self.p_block_total_w) and self.p_block_total_w >= 0):
            raise ValueError("blocking power must be ≥ 0 W")

    @property
    def reference_blocked_j(self) -> float:
        """The reference's GPUs blocked from the end of its iteration to the horizon."""
        return self.p_block_total_w * max(0.0, self.horizon_s - self.reference_time_s)

    @property
    def chosen_blocked_j(self) -> float:
        return self.p_block_total_w * max(0.0, self.horizon_s - self.chosen_time_s)

    @property
    def reference_energy_j(self) -> float:
        """The reference plan's energy up to the horizon (what ``saved_pct`` is a share of)."""
        return self.reference_replay_energy_j + self.reference_blocked_j

    @property
    def chosen_energy_j(self) -> float:
        return self.chosen_replay_energy_j + self.chosen_blocked_j

    @property
    def saved_j(self) -> float:
        # The horizon's blocking term is common to both and cancels exactly here; subtracting
        # the two energies at the horizon instead loses the saving to rounding once the horizon
        # is far (a 1e8 s deadline: two 6.7e10 J figures whose difference is 3,924 J).
        return (self.reference_replay_energy_j - self.chosen_replay_energy_j) + (
            self.p_block_total_w * (self.chosen_time_s - self.reference_time_s)
        )

    @property
    def saved_pct(self) -> float:
        """``saved_j`` as a percentage of the reference's energy up to the horizon."""
        return 100.0 * self.saved_j / self.reference_energy_j

    @property
    def saved_j_per_1000_iterations(self) -> float:
        return 1000.0 * self.saved_j

    @property
    def saved_kwh_per_1000_iterations(self) -> float:
        return 1000.0 * self.saved_j / _J_PER_KWH

    def as_dict(self) -> dict[str, float | str]:
        return {
            "reference": self.reference,
            "horizon_s": self.horizon_s,
            "reference_replay_time_s": self.reference_time_s,
            "reference_replay_energy_j": self.reference_replay_energy_j,
            "reference_blocked_to_horizon_j": self.reference_blocked_j,
            "reference_energy_j": self.reference_energy_j,
            "chosen_replay_time_s": self.chosen_time_s,
            "chosen_replay_energy_j": self.chosen_replay_energy_j,
            "chosen_blocked_to_horizon_j": self.chosen_blocked_j,
            "chosen_energy_j": self.chosen_energy_j,
            "saved_j": self.saved_j,
            "saved_pct": self.saved_pct,
            "saved_pct_of": "reference_energy_j (the reference's energy up to horizon_s)",
            "saved_j_per_1000_iterations": self.saved_j_per_1000_iterations,
            "saved_kwh_per_1000_iterations": self.saved_kwh_per_1000_iterations,
            "source": self.source,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanChoice:
    """The chosen frontier point, its plan, and its savings."""

    target: str
    time_limit_s: float
    point: FrontierPoint
    plan: FrequencyPlan
    fastest_plan: FrequencyPlan
    baseline: FrequencyPlan
    vs_baseline: Savings
    vs_fastest: Savings
    #: Savings count every plan up to this time (a GPU that finishes early blocks until it).
    horizon_s: float

    def __post_init__(self) -> None:
        if self.point.time_s > self.time_limit_s * (1 + 1e-9):
            raise ValueError("chosen point is slower than the time limit")

    @property
    def slowdown_pct(self) -> float:
        """Iteration time of the chosen point over ``T_min``, in percent."""
        return 100.0 * (self.point.time_s / self.fastest_plan.time_s - 1.0)


def _limit(
    frontier: Frontier,
    target: str | None,
    straggler_s: float | None,
    straggler_ratio: float | None,
    deadline_s: float | None,
    max_slowdown_pct: float | None,
) -> tuple[str, float]:
    given = {
        "target": target,
        "straggler_s": straggler_s,
        "straggler_ratio": straggler_ratio,
        "deadline_s": deadline_s,
        "max_slowdown_pct": max_slowdown_pct,
    }
    chosen = [k for k, v in given.items() if v is not None]
    if len(chosen) > 1:
        raise ConfigError(f"give one target, not {', '.join(chosen)}")
    t_min = frontier.t_min_s
    if not chosen or target is not None:
        if target not in (None, "fastest"):
            raise ConfigError(f"unknown target {target!r}; use 'fastest' or a time limit")
        return "fastest (no slowdown)", t_min
    for name in ("straggler_s", "straggler_ratio", "deadline_s", "max_slowdown_pct"):
        v = given[name]
        if isinstance(v, (int, float)) and not math.isfinite(v):
            raise ConfigError(f"{name} must be a finite number, got {v}")
    if straggler_ratio is not None:
        if straggler_ratio < 1.0:
            raise ConfigError(
                f"straggler ratio must be ≥ 1 (T′ = ratio × T_min), got {straggler_ratio}"
            )
        return (
            f"straggler ratio {straggler_ratio:g} (T′ = {straggler_ratio * t_min:.4f} s)",
            straggler_ratio * t_min,
        )
    if max_slowdown_pct is not None:
        if max_slowdown_pct < 0:
            raise ConfigError(f"max slowdown must be ≥ 0 %, got {max_slowdown_pct}")
        limit = t_min * (1.0 + max_slowdown_pct / 100.0)
        return f"max slowdown {max_slowdown_pct:g}% (T′ = {limit:.4f} s)", limit
    limit = float(straggler_s if straggler_s is not None else deadline_s)  # type: ignore[arg-type]
    what = "straggler time" if straggler_s is not None else "deadline"
    # A hair of slack: a limit typed as 2.818 must admit the point at 2.818 s.
    if limit < t_min * (1 - 1e-9):
        raise ConfigError(
            f"{what} {limit:.4f} s is below this pipeline's minimum iteration time "
            f"T_min = {t_min:.4f} s; no plan can meet it (use ≥ T_min, or --target fastest)"
        )
    return f"{what} {limit:.4f} s", max(limit, t_min)


def choose_plan(
    frontier: Frontier,
    *,
    target: str | None = None,
    straggler_s: float | None = None,
    straggler_ratio: float | None = None,
    deadline_s: float | None = None,
    max_slowdown_pct: float | None = None,
) -> PlanChoice:
    """Pick the least-energy frontier point no slower than the limit; see the module docstring."""
    label, limit = _limit(
        frontier, target, straggler_s, straggler_ratio, deadline_s, max_slowdown_pct
    )
    tol = 1e-9 * limit
    eligible = [p for p in frontier.points if p.time_s <= limit + tol]
    fastest = frontier.plan_for(frontier.fastest)
    # Frontier times are quantised (each clock's time rounded down), so a plan's replayed
    # iteration can run a little past its point's time. Under a limit, keep the cheapest point
    # whose *replay* still meets it: the limit itself for an absolute time (straggler,
    # deadline), the same ratio over the fastest plan's replay for a relative one.
    relative = straggler_ratio is not None or max_slowdown_pct is not None
    replay_limit = fastest.replay_time_s * limit / frontier.t_min_s if relative else limit
    best, plan = frontier.fastest, fastest
    if limit > frontier.t_min_s + tol:
        ordered = sorted(eligible, key=lambda p: (p.energy_j, -p.time_s))
        for cand in ordered[:_MAX_REPLAY_TRIES]:
            cand_plan = frontier.plan_for(cand)
            if cand_plan.replay_time_s <= replay_limit * (1 + 1e-9):
                best, plan = cand, cand_plan
                break
    baseline = frontier.baseline
    # Compare at equal iteration time: whoever finishes before the limit blocks until it.
    horizon = max(limit, plan.replay_time_s, fastest.replay_time_s, baseline.replay_time_s)
    psum = sum(frontier.p_block_w)

    def versus(reference: str, ref: FrequencyPlan) -> Savings:
        return Savings(
            reference=reference,
            reference_time_s=ref.replay_time_s,
            reference_replay_energy_j=ref.replay_energy_j,
            chosen_time_s=plan.replay_time_s,
            chosen_replay_energy_j=plan.replay_energy_j,
            horizon_s=horizon,
            p_block_total_w=psum,
        )

    return PlanChoice(
        target=label,
        time_limit_s=limit,
        point=best,
        plan=plan,
        fastest_plan=fastest,
        baseline=baseline,
        vs_baseline=versus("all GPUs at max clock", baseline),
        vs_fastest=versus("frontier's fastest point", fastest),
        horizon_s=horizon,
    )


# ---- end-to-end: what `perwatt train plan` runs ------------------------------------------


def write_frontier_csv(frontier: Frontier, path: str | Path) -> None:
    """``time,energy`` rows, slowest first — the layout of the Perseus reference files."""
    lines = ["time,energy"] + [f"{t!r},{e!r}" for t, e in frontier.to_csv_rows()]
    atomic_write_text(Path(path), "\n".join(lines) + "\n")


def write_plans(frontier: Frontier, path: str | Path) -> int:
    """Every frontier point's plan: one JSON document (``*.json``) or one file per point.

    Each plan lists, per stage, the clock (MHz) of each instruction in program order; the
    order itself (instruction, microbatch, chunk) is written once. Returns the number of plans.
    """
    p = Path(path)
    order = [
        [[n.instruction, n.microbatch, n.chunk] for n in stage_nodes]
        for stage_nodes in frontier.schedule.order
    ]
    plans = [
        {
            "index": pt.index,
            "time_s": pt.time_s,
            "energy_j": pt.energy_j,
            "freq_mhz": frontier.frequencies_for(pt),
        }
        for pt in frontier.points
    ]
    meta = {
        "schedule": frontier.schedule.name,
        "stages": frontier.schedule.num_stages,
        "microbatches": frontier.schedule.num_microbatches,
        "chunks": frontier.schedule.chunks,
        "p_block_w": list(frontier.p_block_w),
        "time_quantum_s": frontier.time_quantum_s,
        "cost_model": frontier.cost_model,
        "energy_source": "model (planner cost model, from the profile)",
        "order": order,
    }
    if p.suffix == ".json":
        atomic_write_text(p, json.dumps({**meta, "plans": plans}))
    else:
        p.mkdir(parents=True, exist_ok=True)
        atomic_write_text(p / "schedule.json", json.dumps(meta))
        for plan in plans:
            atomic_write_text(p / f"plan_{plan['index']:05d}.json", json.dumps(plan))
    return len(plans)


def choice_as_dict(choice: PlanChoice, frontier: Frontier) -> dict[str, object]:
    """The chosen plan, its point and its savings as a JSON-ready dict (``--json``)."""
    return {
        "target": choice.target,
        "time_limit_s": choice.time_limit_s,
        "t_min_s": frontier.t_min_s,
        "t_max_s": frontier.t_max_s,
        "frontier_points": len(frontier.points),
        "chosen": {
            "index": choice.point.index,
            "time_s": choice.point.time_s,
            "model_energy_j": choice.point.energy_j,
            "replay_time_s": choice.plan.replay_time_s,
            "replay_energy_j": choice.plan.replay_energy_j,
            "slowdown_pct": choice.slowdown_pct,
            "freq_mhz": [[p.freq_mhz for p in stage] for stage in choice.plan.stages],
        },
        "baseline_all_max": {
            "replay_time_s": choice.baseline.replay_time_s,
            "replay_energy_j": choice.baseline.replay_energy_j,
        },
        "vs_baseline": choice.vs_baseline.as_dict(),
        "vs_fastest": choice.vs_fastest.as_dict(),
        "notes": list(frontier.notes),
    }


def _compress(freqs: list[int]) -> str:
    """``1410 1080×11 1095`` — runs of equal clocks collapsed."""
    out, i = [], 0
    while i < len(freqs):
        j = i
        while j + 1 < len(freqs) and freqs[j + 1] == freqs[i]:
            j += 1
        out.append(f"{freqs[i]}" + (f"×{j - i + 1}" if j > i else ""))
        i = j + 1
    return " ".join(out)


def _seconds(t: float) -> str:
    return f"{t:.4f} s" if t < 1e5 else f"{t:.4g} s"


def _savings_lines(choice: PlanChoice) -> list[str]:
    """The figures each saving is computed from, then the savings: every compared plan's
    replayed iteration plus its blocking up to the common horizon, so the printed energies
    subtract to the printed saving."""
    b, f = choice.vs_baseline, choice.vs_fastest
    h = choice.horizon_s
    limited = not choice.target.startswith("fastest") and h <= choice.time_limit_s * (1 + 1e-12)
    why = "the time limit T′" if limited else "the latest end among the compared iterations"
    lines = [
        f"energy per iteration, each plan counted to {_seconds(h)} ({why}; GPUs that finish "
        f"earlier block at P_block, {b.p_block_total_w:g} W in all, until then):"
    ]
    rows = (
        ("chosen plan", b.chosen_time_s, b.chosen_replay_energy_j, b.chosen_blocked_j),
        (b.reference, b.reference_time_s, b.reference_replay_energy_j, b.reference_blocked_j),
        (f.reference, f.reference_time_s, f.reference_replay_energy_j, f.reference_blocked_j),
    )
    width = max(len(r[0]) for r in rows) + 1
    for name, t, e, blocked in rows:
        lines.append(
            f"  {name + ':':<{width}} {t:.4f} s, {e:,.1f} J replayed + {blocked:,.1f} J "
            f"blocked = {e + blocked:,.1f} J"
        )
    for sv in (b, f):
        lines.append(
            f"saved vs {sv.reference}: {sv.saved_j:,.1f} J/iteration = {sv.saved_pct:.2f}% of "
            f"its {sv.reference_energy_j:,.1f} J up to {_seconds(h)} "
            f"({sv.saved_j_per_1000_iterations / 1e3:,.1f} kJ = "
            f"{sv.saved_kwh_per_1000_iterations:.4f} kWh per 1,000 iterations)"
        )
    latest = max(b.chosen_time_s, b.reference_time_s, f.reference_time_s)
    if limited and h > latest * (1 + 1e-9):
        lines.append(
            "note: the percentages are of the energy up to the time limit, blocking included; "
            "a later limit adds blocking energy to every plan, so they shrink while the joules "
            "saved per iteration stay the same"
        )
    return lines


def format_choice(choice: PlanChoice, frontier: Frontier) -> str:
    """The chosen plan and its savings, as the CLI prints them."""
    b = choice.vs_baseline
    lines = [
        f"frontier: {len(frontier.points)} points, T_min {frontier.t_min_s:.4f} s, "
        f"T_max {frontier.t_max_s:.4f} s ({frontier.schedule.name}, "
        f"{frontier.schedule.num_stages} stages, {frontier.schedule.num_microbatches} microbatches; "
        f"solved in {frontier.solve_duration_s:.3f} s, {frontier.solver} sweep)",
        f"target: {choice.target}",
        f"chosen: {choice.point.time_s:.4f} s/iteration (+{choice.slowdown_pct:.2f}% vs T_min), "
        f"model energy {choice.point.energy_j:.1f} J",
        f"replay of the chosen clocks on the profile: {choice.plan.replay_time_s:.4f} s, "
        f"{choice.plan.replay_energy_j:.1f} J; all max clock: "
        f"{choice.baseline.replay_time_s:.4f} s, {choice.baseline.replay_energy_j:.1f} J",
        "plan (MHz per instruction in program order, F/B interleaved as scheduled):",
    ]
    for s, stage in enumerate(choice.plan.stages):
        lines.append(f"  stage {s}: {_compress([p.freq_mhz for p in stage])}")
    lines.extend(_savings_lines(choice))
    pbs = sorted(set(frontier.p_block_w))
    if len(pbs) == 1:
        pb_text = f"{pbs[0]:g} W per stage"
    else:
        pb_text = ", ".join(f"{p:g}" for p in frontier.p_block_w) + " W by stage"
    lines.append(f"energy source: {b.source}; P_block {pb_text}")
    lines.extend(f"note: {n}" for n in frontier.notes)
    skipped = [q for q in frontier.points if choice.point.time_s < q.time_s <= choice.time_limit_s]
    cheaper = [q for q in skipped if q.energy_j < choice.point.energy_j]
    if cheaper:
        # choose_plan keeps a point only if its *replayed* iteration meets the limit; frontier
        # times are floored to the quantum, so a point just under the limit can replay past it.
        lines.append(
            f"note: {len(cheaper)} cheaper point(s) up to {choice.time_limit_s:.4f} s were "
            f"skipped: their clocks replay past the limit (times are rounded down to the "
            f"{frontier.time_quantum_s * 1e3:g} ms quantum); a smaller --quantum-ms narrows this"
        )
    elif skipped:
        # The frontier's energy rises again past its minimum (blocked GPUs still draw
        # P_block), so a point slower than this one, up to the limit, would cost more.
        lines.append(
            f"note: the least-energy point within the limit is {choice.point.time_s:.4f} s; "
            f"slower points up to {choice.time_limit_s:.4f} s cost more (GPUs waiting at "
            "P_block), so none is chosen"
        )
    slower = choice.plan.replay_time_s / choice.baseline.replay_time_s - 1.0
    if choice.point.index == 0 and slower > 0:
        # Perseus' quantisation: an instruction's time is floored to the quantum, so a lower
        # clock whose real time is within the same quantum looks as fast as the top clock.
        lines.append(
            f"note: the fastest plan replays {slower:.2%} slower than all GPUs at max clock: "
            f"clocks within one {frontier.time_quantum_s * 1e3:g} ms time quantum count as "
            "equally fast; a smaller --quantum-ms narrows this"
        )
    return "\n".join(lines)


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanReport:
    """What ``perwatt train plan`` computed: the frontier, the choice, files written."""

    frontier: Frontier
    choice: PlanChoice
    frontier_csv: str | None
    plans_path: str | None
    solve_s: float


def plan_pipeline(
    profile_paths: Sequence[str | Path],
    pipeline: PipelineSpec | None = None,
    *,
    frontier_csv: str | Path | None = None,
    plans_path: str | Path | None = None,
    target: str | None = None,
    straggler_s: float | None = None,
    straggler_ratio: float | None = None,
    deadline_s: float | None = None,
    max_slowdown_pct: float | None = None,
    progress: Callable[[float], object] | None = None,
    **fields: Any,
) -> PlanReport:
    """Profile(s) → schedule → frontier → chosen plan, writing the frontier and plans.

    ``pipeline`` describes the pipeline (:class:`~perwatt.train.pipeline.PipelineSpec`); or give
    its fields as keywords (``stages=8, microbatches=24, p_block_w=83.64`` …), checked the same.
    Several profiles are the data/tensor-parallel ranks of one pipeline: they are combined
    (max time, summed energy) and each stage's blocking power is counted once per rank.
    A pipeline or quantum beyond :data:`MAX_INSTRUCTIONS` / :data:`MAX_FRONTIER_POINTS` is
    refused before any work; ``progress`` is passed to :func:`compute_frontier` (the fraction
    of the iteration-time range swept, now and then during a long solve).
    """
    if pipeline is None:
        pipeline = PipelineSpec(**fields)
    elif fields:
        raise TypeError(f"give a PipelineSpec or its fields, not both: {sorted(fields)}")
    if not profile_paths:
        raise ConfigError("give at least one profile CSV")
    spec = pipeline
    profiles = [load_profile(p) for p in profile_paths]
    # Units first (one GPU per file, before ranks are summed): a profile in ms or kJ, or a
    # P_block in mW, is refused here, not solved into a confident, wrong saving.
    for prof in profiles:
        check_profile_units(prof)
    check_p_block(profiles[0], spec.p_block_w)
    profile = profiles[0] if len(profiles) == 1 else combine_ranks(profiles)
    if spec.supported_freqs_mhz is not None:
        profile.check_supported(spec.supported_freqs_mhz)
    if profile.num_stages not in {spec.stages, spec.stages * spec.chunks}:
        raise FieldError(
            f"{profile_paths[0]} has {profile.num_stages} stages but {{s}} is {spec.stages}; "
            "they must match",
            s="stages",
        )
    sched = spec.build_schedule()
    quantum_s = spec.time_quantum_s
    t_min, t_start = time_bounds(
        profile, sched, time_quantum_s=quantum_s, noise_factor=spec.noise_factor
    )
    points = round((t_start - t_min) / quantum_s)
    if points > MAX_FRONTIER_POINTS:
        coarser = quantum_s * points / MAX_FRONTIER_POINTS
        raise FieldError(
            f"a {quantum_s * 1e3:g} ms time quantum over {t_min:.4f}–{t_start:.4f} s makes "
            f"~{points:,} frontier points; the planner takes up to {MAX_FRONTIER_POINTS:,}: use "
            f"a time quantum of {coarser * 1e3:.2g} ms or more ({{q}})",
            q="time_quantum_s",
        )
    ranks = len(profiles)
    pb = [x * ranks for x in spec.p_block_per_stage_w]
    t0 = time.perf_counter()
    frontier = compute_frontier(
        profile,
        sched,
        p_block_w=pb,
        time_quantum_s=quantum_s,
        cost_model=spec.cost_model,
        noise_factor=spec.noise_factor,
        progress=progress,
    )
    solve_s = time.perf_counter() - t0
    choice = choose_plan(
        frontier,
        target=target,
        straggler_s=straggler_s,
        straggler_ratio=straggler_ratio,
        deadline_s=deadline_s,
        max_slowdown_pct=max_slowdown_pct,
    )
    # A bad output path is the user's to fix: one line, not an OSError traceback.
    for out, write in ((frontier_csv, write_frontier_csv), (plans_path, write_plans)):
        if out is None:
            continue
        try:
            write(frontier, out)
        except OSError as e:
            raise ConfigError(f"cannot write {out}: {e.strerror or e}") from e
    return PlanReport(
        frontier=frontier,
        choice=choice,
        frontier_csv=None if frontier_csv is None else str(frontier_csv),
        plans_path=None if plans_path is None else str(plans_path),
        solve_s=solve_s,
    )
