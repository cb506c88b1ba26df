"""Simulate a site answering grid load targets: per target met or missed, response, throughput.

A **flex scenario** (JSON, ``"schema": "perwatt.flex-scenario/1"``) names the jobs as the flex
optimiser sees them (:class:`~perwatt.facility.flex.FlexJob`), the non-GPU power per GPU, the
feed, optional storage, how fast each action takes effect, and a load-target file
(:mod:`.loadtarget`: CloudEvents JSON lines or CSV). Each step (``step_s``, default 1 s):

1. the target in force is looked up (most recent wins); a % reduction is taken from the site's
   power in the step before the target starts;
2. at the start of a target and every ``control_interval_s`` the *strategy* decides each job's
   power — ``flex`` (:class:`~perwatt.facility.flex.FlexOptimiser`) or ``uniform`` (one cap for
   every GPU, the baseline) — and each job's new power takes effect after its action's latency;
3. storage (if any) covers what is still over the target, within its power limit, spread over
   what is left of the window; it recharges after the target ends, at a quarter of its power
   limit (*assumption*: recharge is not allowed to create a new peak);
4. site power = (GPU power + other power) x ``overhead`` - storage discharge.

A target is **met** only if the site is at or under it at every step from ``start +
allowed_response_s`` to its end; otherwise it is reported missed with its largest excess and the
energy above target — never rounded to met. Every figure is simulated.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from perwatt.errors import ConfigError, DataFormatError
from perwatt.facility.flex import FlexDecision, FlexJob, FlexOptimiser, Latency, uniform_cap
from perwatt.facility.loadtarget import (
    LoadTarget,
    active_target,
    breach,
    load_targets,
    status,
)
from perwatt.facility.storage import Storage, storage_from_dict

F64 = npt.NDArray[np.float64]
SCENARIO_SCHEMA: Final = "perwatt.flex-scenario/1"
RESULT_SCHEMA: Final = "perwatt.flex-result/1"
STRATEGIES: Final = ("flex", "uniform")


@dataclass(frozen=True, slots=True, kw_only=True)
class FlexScenario:
    name: str
    jobs: tuple[FlexJob, ...]
    targets: tuple[LoadTarget, ...]
    feed: str
    duration_s: float
    step_s: float = 1.0
    control_interval_s: float = 60.0
    other_w_per_gpu: float = 0.0
    overhead: float = 1.0
    allowed_response_s: float = 60.0
    latency: Latency = field(default_factory=Latency)
    storage: Storage | None = None
    source: str = "<python>"
    published: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    origin: datetime | None = None  # wall-clock time of the run's t = 0, when known

    def __post_init__(self) -> None:
        for k in ("duration_s", "step_s", "control_interval_s"):
            v = getattr(self, k)
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(f"{self.source}: {k} must be > 0")
        if self.duration_s < self.step_s:
            raise ConfigError(f"{self.source}: duration_s must be at least one step")
        if not (math.isfinite(self.other_w_per_gpu) and self.other_w_per_gpu >= 0):
            raise ConfigError(f"{self.source}: other_w_per_gpu must be >= 0")
        if not (math.isfinite(self.overhead) and self.overhead >= 1):
            raise ConfigError(f"{self.source}: overhead must be >= 1")
        if not self.allowed_response_s >= 0:
            raise ConfigError(f"{self.source}: allowed_response_s must be >= 0")
        names = [j.name for j in self.jobs]
        if not names or len(set(names)) != len(names):
            raise ConfigError(f"{self.source}: jobs must be non-empty with unique names")

    @property
    def gpus(self) -> int:
        return sum(j.gpus for j in self.jobs)

    @property
    def floor_w(self) -> float:
        """The least the site can draw: every job at its lowest power, plus other power."""
        return self.site_w(float(FlexOptimiser(list(self.jobs)).min_w.sum()))

    def site_w(self, gpu_w: float) -> float:
        return (gpu_w + self.other_w_per_gpu * self.gpus) * self.overhead


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetOutcome:
    """How the site answered one load target."""

    id: str
    mode: str
    start_s: float
    end_s: float
    baseline_w: float
    target_w: float
    met: bool
    response_s: float | None  # first time at or under target after the start (None: never)
    max_over_w: float  # largest excess after the allowed response time
    over_energy_j: float
    warning_s: float
    critical_s: float
    throughput: Mapping[str, float]  # per job, mean over the window
    weighted_throughput: float  # GPU-and-value weighted mean over the window

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "mode": self.mode,
            "start_s": self.start_s,
            "end_s": self.end_s,
            "baseline_w": self.baseline_w,
            "target_w": self.target_w,
            "reduction": 1 - self.target_w / self.baseline_w if self.baseline_w > 0 else None,
            "met": self.met,
            "response_s": self.response_s,
            "max_over_w": self.max_over_w,
            "over_energy_j": self.over_energy_j,
            "breach_warning_s": self.warning_s,
            "breach_critical_s": self.critical_s,
            "throughput": dict(self.throughput),
            "weighted_throughput": self.weighted_throughput,
            "source": "simulated",
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class FlexResult:
    scenario: str
    strategy: str
    step_s: float
    time_s: F64
    site_w: F64
    target_w: F64  # NaN where no target
    storage_w: F64
    soc: F64
    outcomes: tuple[TargetOutcome, ...]
    status_changes: tuple[tuple[float, str], ...]
    storage_loss_j: float
    partial: str | None = None

    @property
    def all_met(self) -> bool:
        return all(o.met for o in self.outcomes)

    def to_dict(self, points: int = 2000) -> dict[str, Any]:
        k = max(1, math.ceil(len(self.time_s) / points))

        def ds(a: F64, f: str = "mean") -> list[float | None]:
            m = len(a) // k
            b = a[: m * k].reshape(m, k)
            v = np.nanmax(b, axis=1) if f == "max" else np.nanmean(b, axis=1)
            return [None if not math.isfinite(x) else float(x) for x in v]

        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN buckets: no target
            timeline = {
                "source": "simulated",
                "time_s": [float(x) for x in self.time_s[: (len(self.time_s) // k) * k : k]],
                "site_w": ds(self.site_w),
                "site_w_max": ds(self.site_w, "max"),
                "target_w": ds(self.target_w),
                "storage_w": ds(self.storage_w),
                "soc": ds(self.soc),
            }
        return {
            "schema": RESULT_SCHEMA,
            "scenario": self.scenario,
            "strategy": self.strategy,
            "step_s": self.step_s,
            "partial": self.partial,
            "all_targets_met": self.all_met,
            "targets": [o.to_dict() for o in self.outcomes],
            "status_changes": [{"time_s": t, "state": s} for t, s in self.status_changes],
            "storage_loss_j": self.storage_loss_j,
            "energy_j": float(self.site_w.sum() * self.step_s),
            "energy_source": "simulated",
            "timeline": timeline,
        }


def simulate_flex(sc: FlexScenario, strategy: str = "flex") -> FlexResult:
    """Run ``sc`` under ``strategy`` (``flex`` or ``uniform``); see the module docstring."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}")
    opt = FlexOptimiser(list(sc.jobs), latency=sc.latency)
    full = opt.full_w
    J = len(sc.jobs)
    dt = sc.step_s
    n = math.ceil(sc.duration_s / dt)
    t_axis: F64 = np.arange(n, dtype=np.float64) * dt
    other = sc.other_w_per_gpu * sc.gpus
    weights = opt.weights
    cur = full.copy()
    pending: list[tuple[float, int, float]] = []
    site = np.zeros(n)
    tgt = np.full(n, np.nan)
    sto = np.zeros(n)
    soc_t = np.zeros(n)
    thr_t = np.ones((n, J))
    st = sc.storage
    soc = st.soc if st else 0.0
    soc0 = soc
    loss_j = 0.0
    active: LoadTarget | None = None
    active_w: float | None = None
    baselines: dict[str, float] = {}
    next_decision = 0.0
    prev_site = sc.site_w(float(full.sum()))
    changes: list[tuple[float, str]] = []
    last_state = ""
    for i in range(n):
        t = float(t_axis[i])
        a = active_target(sc.targets, sc.feed, t)
        if a is not active:
            active = a
            if a is not None:
                if a.id not in baselines:
                    baselines[a.id] = prev_site
                active_w = a.target_w(baselines[a.id])
            else:
                active_w = None
            next_decision = t
            pending.clear()
        if t >= next_decision - 1e-9:
            if active_w is None:
                goal = full.copy()
                delays = np.full(J, sc.latency.cap_s)
            else:
                gpu_budget = active_w / sc.overhead - other
                if st is not None:
                    gpu_budget += (
                        st.discharge_limit_w(soc, dt, active.end_s - t if active else None)
                        / sc.overhead
                    )
                d: FlexDecision = (
                    opt.solve(gpu_budget, strict=active is not None and active.mode == "strict")
                    if strategy == "flex"
                    else uniform_cap(list(sc.jobs), gpu_budget)
                )
                goal = d.power_w
                delays = d.delay_s if strategy == "flex" else np.full(J, sc.latency.cap_s)
            # a change already on its way to the same power keeps its time: re-deciding every
            # control interval must not postpone an action slower than the interval
            was = {j: (eff, p) for eff, j, p in pending}
            pending = []
            for j in range(J):
                g = float(goal[j])
                if abs(g - cur[j]) <= 1e-9:
                    continue
                prev = was.get(j)
                same = prev is not None and abs(prev[1] - g) <= 1e-6 * max(1.0, abs(g))
                pending.append((prev[0] if same and prev else t + float(delays[j]), j, g))
            next_decision = t + sc.control_interval_s
        if pending:
            keep = []
            for eff, j, p in pending:
                if eff <= t + 1e-9:
                    cur[j] = p
                else:
                    keep.append((eff, j, p))
            pending = keep
        raw = sc.site_w(float(cur.sum()))
        s_w = 0.0
        if st is not None:
            if active_w is not None and raw > active_w:
                want = raw - active_w
            elif active_w is None and soc < soc0 - 1e-9:
                want = -0.25 * st.power_w  # recharge slowly
            else:
                want = 0.0
            new, out, loss = st.step(soc, want, dt)
            soc = float(new)
            s_w = float(out)
            loss_j += float(loss) * dt
        site[i] = raw - s_w
        sto[i] = s_w
        soc_t[i] = soc
        tgt[i] = active_w if active_w is not None else np.nan
        thr_t[i] = [c.thr_at(float(p)) for c, p in zip(opt.curves, cur, strict=True)]
        stt = status(
            time_s=t,
            target=active,
            target_w=active_w,
            power_w=site[i],
            previous_w=prev_site,
            pending=any(x.start_s > t and x.feed == sc.feed for x in sc.targets),
        )
        if stt != last_state:
            changes.append((t, stt))
            last_state = stt
        prev_site = site[i]
    outcomes = []
    for tg in sorted(
        {x.id: x for x in sc.targets if x.feed == sc.feed}.values(), key=lambda x: x.start_s
    ):
        if tg.id not in baselines:
            continue  # superseded for its whole window, or after the run
        win = (t_axis >= tg.start_s) & (t_axis < tg.end_s) & (tgt == tg.target_w(baselines[tg.id]))
        if not win.any():
            continue
        tw = tg.target_w(baselines[tg.id])
        idx = np.flatnonzero(win)
        under = site[idx] <= tw * (1 + 1e-9)
        resp = float(t_axis[idx[np.argmax(under)]] - tg.start_s) if under.any() else None
        judged = idx[t_axis[idx] >= tg.start_s + sc.allowed_response_s]
        over = np.maximum(site[judged] - tw, 0.0)
        levels = [breach(float(site[k]), tw) for k in idx]
        thr_mean = thr_t[idx].mean(axis=0)
        outcomes.append(
            TargetOutcome(
                id=tg.id,
                mode=tg.mode,
                start_s=tg.start_s,
                end_s=min(tg.end_s, sc.duration_s),
                baseline_w=baselines[tg.id],
                target_w=tw,
                met=bool(len(judged) > 0 and over.max() <= tw * 1e-9),
                response_s=resp,
                max_over_w=float(over.max()) if len(over) else 0.0,
                over_energy_j=float(over.sum() * dt),
                warning_s=float(sum(1 for x in levels if x == "warning") * dt),
                critical_s=float(sum(1 for x in levels if x == "critical") * dt),
                throughput={j.name: float(v) for j, v in zip(sc.jobs, thr_mean, strict=True)},
                weighted_throughput=float((weights * thr_mean).sum() / weights.sum()),
            )
        )
    return FlexResult(
        scenario=sc.name,
        strategy=strategy,
        step_s=dt,
        time_s=t_axis,
        site_w=site,
        target_w=tgt,
        storage_w=sto,
        soc=soc_t,
        outcomes=tuple(outcomes),
        status_changes=tuple(changes),
        storage_loss_j=loss_j,
    )


_SC_KEYS: Final = {
    "schema",
    "name",
    "source",
    "note",
    "jobs",
    "targets",
    "feed",
    "duration_s",
    "step_s",
    "control_interval_s",
    "other_w_per_gpu",
    "overhead",
    "allowed_response_s",
    "latency",
    "storage",
    "published",
    "capacity_w",
    "start_time",
}


def load_flex_scenario(path: str | Path) -> FlexScenario:
    """Read a flex scenario file; every error names the file and the field."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such scenario file") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataFormatError(f"{p}: cannot read scenario: {e}") from None
    try:
        return _scenario(doc, p)
    except ConfigError as e:
        msg = str(e)
        raise DataFormatError(msg if msg.startswith(str(p)) else f"{p}: {msg}") from None


def _num(d: Mapping[str, Any], k: str, default: float) -> float:
    v = d.get(k, default)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ConfigError(f"{k} must be a number")
    return float(v)


def _scenario(doc: Any, p: Path) -> FlexScenario:
    if not isinstance(doc, Mapping) or doc.get("schema") != SCENARIO_SCHEMA:
        raise ConfigError(f'expected a JSON object with "schema": "{SCENARIO_SCHEMA}"')
    extra = sorted(set(doc) - _SC_KEYS)
    if extra:
        raise ConfigError(f"unknown field(s) {', '.join(extra)}")
    raw = doc.get("jobs")
    if not isinstance(raw, list) or not raw:
        raise ConfigError("jobs must be a non-empty list")
    jobs = []
    known = set(FlexJob.__dataclass_fields__)
    for i, j in enumerate(raw):
        if not isinstance(j, Mapping):
            raise ConfigError(f"jobs[{i}] is not an object")
        bad = sorted(set(j) - known)
        if bad:
            raise ConfigError(f"jobs[{i}]: unknown field(s) {', '.join(bad)}")
        kw = dict(j)
        if "actions" in kw:
            kw["actions"] = tuple(kw["actions"])
        try:
            jobs.append(FlexJob(**kw))
        except TypeError as e:
            raise ConfigError(f"jobs[{i}]: {e}") from None
    lat = doc.get("latency", {})
    if not isinstance(lat, Mapping) or set(lat) - set(Latency.__dataclass_fields__):
        raise ConfigError("latency must be an object with cap_s, shrink_s, pause_s, storage_s")
    storage = storage_from_dict(doc["storage"]) if doc.get("storage") is not None else None
    other = _num(doc, "other_w_per_gpu", 0.0)
    overhead = _num(doc, "overhead", 1.0)
    gpus = sum(j.gpus for j in jobs)
    # the least the site can draw: every GPU parked, plus other power; most: capacity_w
    opt = FlexOptimiser(jobs)
    floor = (float(np.array([c.power_w[0] for c in opt.curves]).sum()) + other * gpus) * overhead
    cap = doc.get("capacity_w")
    tfile = doc.get("targets")
    if not isinstance(tfile, str):
        raise ConfigError("targets must be the path of a load-target file")
    tp = Path(tfile) if Path(tfile).is_absolute() else p.parent / tfile
    origin = None
    if "start_time" in doc:
        try:
            origin = datetime.fromisoformat(str(doc["start_time"]).replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"start_time {doc['start_time']!r} is not an RFC 3339 time") from None
        if origin.tzinfo is None:
            raise ConfigError("start_time needs a time zone (Z or +00:00)")
    targets = load_targets(
        tp, origin=origin, capacity_w=float(cap) if cap is not None else None, floor_w=floor
    )
    feed = doc.get("feed") or (targets[0].feed if targets else "")
    return FlexScenario(
        name=str(doc.get("name", p.stem)),
        jobs=tuple(jobs),
        targets=targets,
        feed=str(feed),
        duration_s=_num(doc, "duration_s", 0.0),
        step_s=_num(doc, "step_s", 1.0),
        control_interval_s=_num(doc, "control_interval_s", 60.0),
        other_w_per_gpu=other,
        overhead=overhead,
        allowed_response_s=_num(doc, "allowed_response_s", 60.0),
        latency=Latency(**{k: float(v) for k, v in lat.items()}),
        storage=storage,
        source=str(p),
        published=doc.get("published", {}),
        notes=(str(doc["note"]),) if "note" in doc else (),
        origin=origin,
    )


__all__ = [
    "RESULT_SCHEMA",
    "SCENARIO_SCHEMA",
    "STRATEGIES",
    "FlexResult",
    "FlexScenario",
    "TargetOutcome",
    "load_flex_scenario",
    "simulate_flex",
]
