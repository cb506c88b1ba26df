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
meets ``T′``" is not always the cheapest; ties go to the slower point).

Savings compare *profile-replay* energies — each plan's profiled per-clock time and energy
replayed on the DAG with blocking power for the gaps (simulated from measured profiles, not
measured during training). When a limit ``T′`` is set, every compared plan is charged for the
whole ``T′`` (a pipeline that finishes early blocks until the straggler arrives), so the
comparison is at equal iteration time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from perwatt.errors import ConfigError
from perwatt.train.frontier import FrequencyPlan, Frontier, FrontierPoint

__all__ = ["ENERGY_SOURCE", "PlanChoice", "Savings", "choose_plan"]

ENERGY_SOURCE = "simulated (profile replay)"
_J_PER_KWH = 3.6e6


@dataclass(frozen=True, slots=True, kw_only=True)
class Savings:
    """Energy of the chosen plan against a reference plan, per iteration and per 1,000."""

    reference: str
    reference_energy_j: float
    chosen_energy_j: float
    source: str = ENERGY_SOURCE

    def __post_init__(self) -> None:
        if not (self.reference_energy_j > 0 and self.chosen_energy_j > 0):
            raise ValueError("energies must be > 0")

    @property
    def saved_j(self) -> float:
        return self.reference_energy_j - self.chosen_energy_j

    @property
    def saved_pct(self) -> float:
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
            "reference_energy_j": self.reference_energy_j,
            "chosen_energy_j": self.chosen_energy_j,
            "saved_j": self.saved_j,
            "saved_pct": self.saved_pct,
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

    def __post_init__(self) -> None:
        if self.time_limit_s < self.point.time_s - 1e-12:
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
    # Half a quantum of slack: a limit typed as 2.818 must admit the point at 2.818 s.
    if limit < t_min - frontier.time_quantum_s / 2:
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
    tol = frontier.time_quantum_s / 2
    eligible = [p for p in frontier.points if p.time_s <= limit + tol]
    best = min(eligible, key=lambda p: (p.energy_j, -p.time_s))
    plan = frontier.plan_for(best)
    fastest = frontier.plan_for(frontier.fastest)
    baseline = frontier.baseline
    # Compare at equal iteration time: whoever finishes before the limit blocks until it.
    horizon = max(limit, plan.replay_time_s, fastest.replay_time_s, baseline.replay_time_s)
    psum = sum(frontier.p_block_w)

    def at_horizon(p: FrequencyPlan) -> float:
        return p.replay_energy_j + psum * (horizon - p.replay_time_s)

    chosen_e = at_horizon(plan)
    return PlanChoice(
        target=label,
        time_limit_s=limit + tol,
        point=best,
        plan=plan,
        fastest_plan=fastest,
        baseline=baseline,
        vs_baseline=Savings(
            reference="all GPUs at max clock",
            reference_energy_j=at_horizon(baseline),
            chosen_energy_j=chosen_e,
        ),
        vs_fastest=Savings(
            reference="frontier's fastest point",
            reference_energy_j=at_horizon(fastest),
            chosen_energy_j=chosen_e,
        ),
    )
