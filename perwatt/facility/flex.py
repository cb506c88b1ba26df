"""The flex optimiser: meet a grid load target losing the least value.

Each job has a **flexibility tier** (the slowdown it tolerates: 0, 10, 25 or 50%, so its
throughput may fall to ``1/(1+flex)`` of normal, as :mod:`.workload` defines it) and the
**actions** it allows:

* ``cap`` — lower the GPUs' power cap (training/batch throughput from the compute phase curve,
  communication unaffected; inference capacity from the decode curve against its load);
* ``shrink`` — consolidate an inference service onto fewer GPUs and park the rest (power of a
  parked GPU: ``parked_w``, default idle); throughput is kept while the remaining GPUs can
  serve the load; ``movable`` is the share of the load that may be *moved* to another site
  (kept, not served here);
* ``pause`` — checkpoint and pause (lowest tier only, ``flex = 0.5``); a paused job keeps 0.

Storage discharge costs no throughput and is used first, spread evenly over what is left of the
target's window so it is not spent in the first minutes.

**Why the greedy is exact.** For each job the reachable (power, throughput) points are the
union of its actions' settings; their *upper concave hull* is reachable too, by time-sharing
two settings within the interval (alternate two caps, or pause part of the interval). So every
job has a concave, piecewise-linear value curve ``v_j(P)``, and the problem

    maximize  Σ_j value_j · gpus_j · thr_j(P_j)   s.t.  Σ_j P_j ≤ budget,  P_j ≥ floor_j

is a single-constraint separable concave program: filling the hull segments in decreasing
slope order is optimal (the fractional knapsack argument). ``tests/facility/test_flex.py``
checks it against the same problem written as an LP for SciPy's HiGHS on random instances.

The optimiser is a plain object (:class:`FlexOptimiser`) that takes the jobs' present state
and a budget in watts: the scenario simulator (:mod:`.flexsim`) calls it every control step,
and a live controller would call the same object with the same inputs built from telemetry.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from perwatt.errors import ConfigError
from perwatt.facility.curves import GPUModel, gpu_model
from perwatt.facility.workload import FLEX_TIERS, Job

F64 = npt.NDArray[np.float64]
ACTIONS: Final = ("cap", "shrink", "pause")
_CAP_POINTS: Final = 33


@dataclass(frozen=True, slots=True, kw_only=True)
class FlexJob:
    """One job as the flex optimiser sees it."""

    name: str
    kind: str  # inference | training | batch
    gpus: int
    flex: float = 0.0
    value: float = 1.0  # value of one GPU's full throughput for one interval (weight)
    actions: tuple[str, ...] = ("cap",)
    load: float = 1.0  # inference: demand / full-power capacity
    movable: float = 0.0  # inference: share of the load that may move to another site
    compute_fraction: float = 0.85  # training: share of an iteration in compute
    sku: str = "A100-SXM4-80GB"
    parked_w: float | None = None  # a parked/paused GPU's power (default: the SKU's idle)
    note: str = ""

    def __post_init__(self) -> None:
        w = f"job {self.name!r}"
        if self.kind not in ("inference", "training", "batch"):
            raise ConfigError(f"{w}: kind must be inference, training or batch")
        if isinstance(self.gpus, bool) or not isinstance(self.gpus, int) or self.gpus < 1:
            raise ConfigError(f"{w}: gpus must be an integer >= 1")
        if self.flex not in FLEX_TIERS:
            raise ConfigError(f"{w}: flex must be one of 0, 0.1, 0.25, 0.5")
        if not (math.isfinite(self.value) and self.value > 0):
            raise ConfigError(f"{w}: value must be > 0")
        bad = [a for a in self.actions if a not in ACTIONS]
        if bad or not self.actions:
            raise ConfigError(f"{w}: actions must be a non-empty subset of {', '.join(ACTIONS)}")
        if "shrink" in self.actions and self.kind != "inference":
            raise ConfigError(f"{w}: only inference can shrink")
        if "pause" in self.actions and self.flex != max(FLEX_TIERS):
            raise ConfigError(f"{w}: only the lowest tier (flex 0.5) may pause")
        if not 0 < self.load <= 1:
            raise ConfigError(f"{w}: load must be in (0, 1]")
        if not 0 <= self.movable <= 1:
            raise ConfigError(f"{w}: movable must be in [0, 1]")
        if not 0 < self.compute_fraction <= 1:
            raise ConfigError(f"{w}: compute_fraction must be in (0, 1]")
        if self.parked_w is not None and not self.parked_w >= 0:
            raise ConfigError(f"{w}: parked_w must be >= 0")

    @classmethod
    def from_job(cls, job: Job, gpus: int, *, sku: str, **kw: Any) -> FlexJob:
        """The optimiser's view of a site :class:`~perwatt.facility.workload.Job`."""
        base: dict[str, Any] = {
            "name": job.name,
            "kind": job.kind,
            "gpus": gpus,
            "flex": job.flex,
            "sku": sku,
        }
        if job.kind == "inference":
            base["load"] = min(1.0, job.peak_load)
        elif job.kind == "training":
            base["compute_fraction"] = job.compute_fraction
        base.update(kw)
        return cls(**base)

    @property
    def floor(self) -> float:
        """Least throughput the tier tolerates (0 when the job may pause)."""
        return 0.0 if "pause" in self.actions else 1.0 / (1.0 + self.flex)


@dataclass(frozen=True, slots=True)
class Curve:
    """A job's upper concave hull: power (W, whole job) → throughput kept (0..1)."""

    power_w: F64  # increasing
    thr: F64
    delay: F64  # seconds for the action that reaches each vertex to take effect

    def thr_at(self, p: float) -> float:
        return float(np.interp(p, self.power_w, self.thr))

    def power_for(self, thr: float) -> float:
        """Least power reaching ``thr`` (on the hull)."""
        i = int(np.searchsorted(self.thr, thr - 1e-12))
        if i == 0:
            return float(self.power_w[0])
        if i >= len(self.thr):
            return float(self.power_w[-1])
        t0, t1 = self.thr[i - 1], self.thr[i]
        p0, p1 = self.power_w[i - 1], self.power_w[i]
        return float(p0 + (thr - t0) / (t1 - t0) * (p1 - p0)) if t1 > t0 else float(p1)


@dataclass(frozen=True, slots=True, kw_only=True)
class Latency:
    """Seconds from a decision to the power change, per action (assumptions, see flexsim)."""

    cap_s: float = 2.0
    shrink_s: float = 20.0
    pause_s: float = 60.0
    storage_s: float = 0.2

    def __post_init__(self) -> None:
        for k in ("cap_s", "shrink_s", "pause_s", "storage_s"):
            v = getattr(self, k)
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"latency {k} must be >= 0")


def _hull(p: F64, t: F64, d: F64) -> Curve:
    o = np.lexsort((-t, p))
    p, t, d = p[o], t[o], d[o]
    # keep points not dominated (more power must buy more throughput)
    keep = [0]
    for i in range(1, len(p)):
        if t[i] > t[keep[-1]] + 1e-12:
            keep.append(i)
    p, t, d = p[keep], t[keep], d[keep]
    h: list[int] = []
    for i in range(len(p)):
        while len(h) >= 2:
            a, b = h[-2], h[-1]
            # drop b if it lies on or under the chord a→i
            if (t[b] - t[a]) * (p[i] - p[a]) <= (t[i] - t[a]) * (p[b] - p[a]) + 1e-15:
                h.pop()
            else:
                break
        h.append(i)
    return Curve(p[h].copy(), t[h].copy(), d[h].copy())


def job_curve(job: FlexJob, model: GPUModel | None = None, lat: Latency | None = None) -> Curve:
    """The (power, throughput) hull of ``job`` over its allowed actions (module docstring)."""
    m = model or gpu_model(job.sku)
    lt = lat or Latency()
    n = job.gpus
    idle = m.idle_w
    parked = idle if job.parked_w is None else job.parked_w
    caps = np.linspace(m.sku.min_limit_w, m.sku.max_limit_w, _CAP_POINTS)
    if "cap" not in job.actions:
        caps = caps[-1:]
    P: list[F64] = []
    T: list[F64] = []
    D: list[F64] = []
    cap_delay = np.where(caps < caps[-1], lt.cap_s, 0.0)
    if job.kind == "inference":
        dec = m.curve("decode")
        fd = dec.throughput(caps)
        pd = dec.power(caps)
        ks = np.linspace(0.05, 1.0, 39) if "shrink" in job.actions else np.array([1.0])
        moves = np.linspace(0.0, job.movable, 5) if "shrink" in job.actions else np.zeros(1)
        for mv in moves:
            load = job.load * (1 - mv)
            for k in ks:
                cap_ = k * fd  # serving capacity of the active share at each cap
                busy = np.minimum(load / np.maximum(cap_, 1e-12), 1.0)  # busy share of active
                served = (
                    np.minimum(1.0, cap_ / max(load, 1e-12)) if load > 0 else np.ones_like(cap_)
                )
                pw = n * (k * (idle + busy * (pd - idle)) + (1 - k) * parked)
                kept = (served * load + mv * job.load) / job.load
                P.append(pw)
                T.append(np.minimum(kept, 1.0))
                D.append(np.maximum(cap_delay, lt.shrink_s if (k < 1 or mv > 0) else 0.0))
    else:
        tr = m.curve("train")
        cm = m.curve("comm")
        cf = job.compute_fraction if job.kind == "training" else 1.0
        f = tr.throughput(caps)
        pw = n * (cf * tr.power(caps) + (1 - cf) * cm.power(caps))
        thr = 1.0 / (cf / f + (1 - cf))
        P.append(pw)
        T.append(thr)
        D.append(cap_delay)
    if "pause" in job.actions:
        P.append(np.array([n * parked]))
        T.append(np.array([0.0]))
        D.append(np.array([lt.pause_s]))
    return _hull(np.concatenate(P), np.concatenate(T), np.concatenate(D))


@dataclass(frozen=True, slots=True, kw_only=True)
class FlexDecision:
    """What the optimiser chose for one budget."""

    power_w: F64  # per job, whole job
    thr: F64  # per job, kept (0..1)
    delay_s: F64  # per job, when its new power takes effect
    budget_w: float
    shortfall_w: float  # > 0: even every job at its floor exceeds the budget
    value: float
    below_floor: tuple[str, ...] = ()  # jobs taken below their tier's floor (strict targets)

    @property
    def feasible(self) -> bool:
        return self.shortfall_w <= 1e-6


@dataclass(slots=True)
class FlexOptimiser:
    """Allocate a GPU power budget across jobs (see the module docstring)."""

    jobs: Sequence[FlexJob]
    latency: Latency = field(default_factory=Latency)
    models: dict[str, GPUModel] = field(default_factory=dict)
    curves: list[Curve] = field(init=False)
    name: str = "flex"

    def __post_init__(self) -> None:
        self.curves = [job_curve(j, self.models.get(j.sku), self.latency) for j in self.jobs]

    def refresh(self, jobs: Sequence[FlexJob]) -> None:
        """New job states (a live controller calls this when loads change)."""
        self.jobs = list(jobs)
        self.__post_init__()

    @property
    def full_w(self) -> F64:
        return np.array([c.power_w[-1] for c in self.curves])

    @property
    def floor_w(self) -> F64:
        """Least power per job that keeps its tier's throughput floor."""
        return np.array([c.power_for(j.floor) for j, c in zip(self.jobs, self.curves, strict=True)])

    @property
    def min_w(self) -> F64:
        """Least power per job with the tier floors ignored (every action at its limit)."""
        return np.array([c.power_w[0] for c in self.curves])

    @property
    def weights(self) -> F64:
        return np.array([j.value * j.gpus for j in self.jobs], dtype=np.float64)

    def segments(self, *, relax: bool = False) -> tuple[F64, F64, F64]:
        """Hull segments above each job's floor: (job index, length W, value per W)."""
        jj: list[int] = []
        ln: list[float] = []
        sl: list[float] = []
        fw = self.min_w if relax else self.floor_w
        wt = self.weights
        for i, c in enumerate(self.curves):
            p, t = c.power_w, c.thr
            for k in range(len(p) - 1):
                lo, hi = max(p[k], fw[i]), p[k + 1]
                if hi <= lo + 1e-12:
                    continue
                jj.append(i)
                ln.append(hi - lo)
                sl.append(wt[i] * (t[k + 1] - t[k]) / (p[k + 1] - p[k]))
        return np.array(jj, dtype=np.float64), np.array(ln), np.array(sl)

    def solve(self, budget_w: float, *, strict: bool = False) -> FlexDecision:
        """Best per-job power under ``budget_w`` (GPU power of all the jobs together).

        When even every job at its tier floor is over the budget, a ``strict`` target (a grid
        obligation) is met by going below the floors, still losing the least value; otherwise
        the jobs stay at their floors and the shortfall is reported.
        """
        if strict and budget_w < float(self.floor_w.sum()):
            return self._solve(budget_w, relax=True)
        return self._solve(budget_w, relax=False)

    def _solve(self, budget_w: float, *, relax: bool) -> FlexDecision:
        full = self.full_w
        fw = self.min_w if relax else self.floor_w
        power = fw.copy()
        rest = budget_w - float(fw.sum())
        short = max(0.0, -rest)
        if budget_w >= float(full.sum()):
            power = full.copy()
        elif rest > 0:
            jj, ln, sl = self.segments(relax=relax)
            for o in np.argsort(-sl, kind="stable"):
                if rest <= 0:
                    break
                take = min(float(ln[o]), rest)
                power[int(jj[o])] += take
                rest -= take
        thr = np.array([c.thr_at(float(p)) for c, p in zip(self.curves, power, strict=True)])
        delay = np.array(
            [
                float(np.interp(p, c.power_w, c.delay)) if p < c.power_w[-1] - 1e-9 else 0.0
                for c, p in zip(self.curves, power, strict=True)
            ]
        )
        # interp of delays between two vertices: take the slower of the two (both are used)
        for i, c in enumerate(self.curves):
            k = int(np.searchsorted(c.power_w, power[i]))
            if 0 < k < len(c.power_w) and power[i] < c.power_w[-1] - 1e-9:
                delay[i] = max(c.delay[k - 1], c.delay[k])
        return FlexDecision(
            power_w=power,
            thr=thr,
            delay_s=delay,
            budget_w=budget_w,
            shortfall_w=short,
            value=float((self.weights * thr).sum()),
            below_floor=tuple(
                j.name for j, t in zip(self.jobs, thr, strict=True) if t < j.floor - 1e-9
            ),
        )


def solve_lp(opt: FlexOptimiser, budget_w: float, *, relax: bool = False) -> float:
    """The same allocation as an LP for SciPy's HiGHS: the optimal value (test oracle)."""
    from scipy.optimize import linprog  # heavy import, only for the oracle

    _, ln, sl = opt.segments(relax=relax)
    fw = opt.min_w if relax else opt.floor_w
    rest = budget_w - float(fw.sum())
    base = float(
        (
            opt.weights
            * np.array([c.thr_at(float(p)) for c, p in zip(opt.curves, fw, strict=True)])
        ).sum()
    )
    if rest <= 0 or len(ln) == 0:
        return base
    res = linprog(
        -sl,
        A_ub=np.ones((1, len(ln))),
        b_ub=[rest],
        bounds=list(zip(np.zeros(len(ln)), ln, strict=True)),
        method="highs",
    )
    if res.status != 0:
        raise ConfigError(f"HiGHS failed: {res.message}")
    return base - float(res.fun)


def uniform_cap(
    jobs: Sequence[FlexJob], budget_w: float, models: dict[str, GPUModel] | None = None
) -> FlexDecision:
    """The baseline: one power cap for every GPU, the highest that fits ``budget_w``."""
    ms = [(models or {}).get(j.sku) or gpu_model(j.sku) for j in jobs]

    def at(cap: float) -> tuple[F64, F64]:
        pw, th = [], []
        for j, m in zip(jobs, ms, strict=True):
            c = min(max(cap, m.sku.min_limit_w), m.sku.max_limit_w)
            p, t = _cap_point(j, m, c)  # caps only, whatever else the job allows
            pw.append(p)
            th.append(t)
        return np.array(pw), np.array(th)

    lo = min(m.sku.min_limit_w for m in ms)
    hi = max(m.sku.max_limit_w for m in ms)
    p_hi, t_hi = at(hi)
    if p_hi.sum() <= budget_w:
        pw, th = p_hi, t_hi
    else:
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if at(mid)[0].sum() <= budget_w:
                lo = mid
            else:
                hi = mid
        pw, th = at(lo)
    wt = np.array([j.value * j.gpus for j in jobs], dtype=np.float64)
    return FlexDecision(
        power_w=pw,
        thr=th,
        delay_s=np.full(len(jobs), Latency().cap_s),
        budget_w=budget_w,
        shortfall_w=max(0.0, float(pw.sum()) - budget_w),
        value=float((wt * th).sum()),
    )


def _cap_point(job: FlexJob, m: GPUModel, cap: float) -> tuple[float, float]:
    """Power and throughput of ``job`` with every GPU at ``cap`` (no other action)."""
    n = job.gpus
    if job.kind == "inference":
        dec = m.curve("decode")
        f = float(dec.throughput(cap))
        busy = min(job.load / f, 1.0)
        p = n * (m.idle_w + busy * (float(dec.power(cap)) - m.idle_w))
        return p, min(1.0, f / job.load)
    tr, cm = m.curve("train"), m.curve("comm")
    cf = job.compute_fraction if job.kind == "training" else 1.0
    f = float(tr.throughput(cap))
    p = n * (cf * float(tr.power(cap)) + (1 - cf) * float(cm.power(cap)))
    return p, 1.0 / (cf / f + (1 - cf))


__all__ = [
    "ACTIONS",
    "Curve",
    "FlexDecision",
    "FlexJob",
    "FlexOptimiser",
    "Latency",
    "job_curve",
    "solve_lp",
    "uniform_cap",
]
