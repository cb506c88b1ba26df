"""Simulate a site under a policy: power per level, throughput, SLOs, PUE and cost over time.

The model, step by step (``step_s``, default 1 s):

1. **Placement** (:mod:`.placement`) cuts the tree into cohorts: all GPUs of one job under the
   same node element. A cohort with n GPUs is simulated once and counted n times; that is exact
   because every policy here gives a cohort's members the same cap (they see the same request
   and the same parents) — ``tests/facility/test_simulate.py`` runs a small site GPU by GPU and
   finds no reported figure changing by more than 0.1%.
2. **Demand** per job, vectorized over the whole run: inference token rates from the trace,
   scaled to the service's ``peak_load``; training phase shares (compute / communication /
   checkpoint) per step; batch utilization.
3. **Control**: every ``control_interval_s`` the policy sees a snapshot built from the *previous*
   step (telemetry lags one step, as on a real site) and returns caps, held until the next call.
4. **Physics** per step and cohort from the phase curves (:mod:`.curves`): an inference GPU
   spends ``input/(R_p f_p(cap))`` of each second in prefill and ``output/(R_d f_d(cap))`` in
   decode; beyond a full second the excess output is *unserved* and counted, and the step is an
   SLO violation, as is a decode slowed past the service's TPOT SLO. Training progress in
   compute phases is ``f_train(cap)`` and the job moves at its slowest cohort (synchronous);
   communication and checkpoints are not slowed by a cap. Node power besides the GPUs is
   ``other_power_w x (0.5 + 0.5 x activity)`` (*assumption*: half of CPU/NIC/fan power is
   load-independent). Policies cannot cap that power, so their budgets reserve it at its
   maximum.
5. **Up the tree**: each element's load is its children's input (load / efficiency); the feed
   adds cooling (:mod:`.cooling`) to give facility power, which its capacity (the grid
   connection) must cover. Every step above any element's capacity is recorded with its excess.

Every energy figure is simulated (labelled so in the result).
"""

from __future__ import annotations

import math
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import numpy as np
import numpy.typing as npt

from perwatt.economics import DEFAULT_PRICE_PER_KWH_USD, check_price
from perwatt.errors import ConfigError
from perwatt.facility.allocate import AllocTree
from perwatt.facility.cooling import CoolingModel, Weather, annualized_pue, synthetic_weather
from perwatt.facility.curves import GPUModel, gpu_model
from perwatt.facility.loadtarget import LoadTarget, breach
from perwatt.facility.placement import Placement, place
from perwatt.facility.policy import Policy, Snapshot
from perwatt.facility.result import JobResult, LevelStress, PolicyResult
from perwatt.facility.topology import Topology
from perwatt.facility.workload import Workload, training_phase

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class SimConfig:
    """How to run: duration, step, control interval, cooling, weather, tariff, faults."""

    duration_s: float = 86_400.0
    step_s: float = 1.0
    control_interval_s: float | None = None
    cooling: str = "liquid"
    weather: Weather | None = None
    start_hour: float = 4_800.0  # hour of the weather year the run starts (mid-July: hot)
    price_per_kwh: float = DEFAULT_PRICE_PER_KWH_USD
    telemetry_loss_s: tuple[float, float] | None = None
    timeline_points: int = 1_440
    models: dict[str, GPUModel] = field(default_factory=dict)
    per_gpu: bool = False  # one cohort per GPU instead of per node element (for checks)
    # grid load targets (DSX Flex semantics, perwatt.facility.loadtarget): the feed's limit
    # becomes min(capacity, target) while one is in force; absolute targets only here, and the
    # site has one feed, so every target applies to it whatever its feed id
    grid_targets: tuple[LoadTarget, ...] = ()
    grid_response_s: float = 60.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.duration_s) and self.duration_s > 0):
            raise ConfigError("duration must be > 0")
        if not (math.isfinite(self.step_s) and self.step_s > 0):
            raise ConfigError("step must be > 0")
        if self.duration_s < self.step_s:
            raise ConfigError("duration must be at least one step")
        ci = self.control_interval_s
        if ci is not None and (ci < self.step_s or not math.isfinite(ci)):
            raise ConfigError("control interval must be >= the step")
        CoolingModel(kind=self.cooling)
        check_price(self.price_per_kwh)
        if self.timeline_points < 2:
            raise ConfigError("timeline_points must be >= 2")
        for t in self.grid_targets:
            if t.value_w is None:
                raise ConfigError(
                    f"grid target {t.id!r}: the site simulator takes absolute targets; a % "
                    "reduction needs `perwatt facility flex`"
                )
        if not self.grid_response_s >= 0:
            raise ConfigError("grid_response_s must be >= 0")

    @property
    def steps(self) -> int:
        return math.ceil(self.duration_s / self.step_s)

    @property
    def control_every(self) -> int:
        ci = self.control_interval_s or self.step_s
        return max(1, round(ci / self.step_s))


@dataclass(slots=True)
class _Cohorts:
    """Per-cohort constant arrays (one row per node element of the placed tree)."""

    element: I64
    gpus: I64
    gain: F64
    job: I64
    kind: I64  # 0 idle, 1 inference, 2 training, 3 batch
    other_w: F64
    min_w: F64
    max_w: F64
    idle_w: F64
    nat: dict[str, F64]
    p0: dict[str, F64]
    gamma: dict[str, F64]
    priority: I64
    floor_w: F64
    rp: F64
    rd: F64
    tpot_ms: F64
    slo_ms: F64
    util: F64
    leaf: I64  # position of the cohort's node in FlatTree.leaves


_KIND = {"inference": 1, "training": 2, "batch": 3}


def _cohorts(
    pl: Placement, workload: Workload, models: dict[str, GPUModel], *, per_gpu: bool = False
) -> _Cohorts:
    fl = pl.topology.flat()
    n = len(fl.leaves)
    job = pl.cohort_jobs()
    mdl = [models.get(s) or gpu_model(s) for s in fl.leaf_gpu_sku]
    phases = ("prefill", "decode", "train", "comm")
    nat = {p: np.array([m.curve(p).natural_w for m in mdl]) for p in phases}
    p0 = {p: np.array([m.curve(p).p0_w for m in mdl]) for p in phases}
    gamma = {p: np.array([m.curve(p).gamma for m in mdl]) for p in phases}
    jobs = workload.jobs
    kind = np.array([0 if j < 0 else _KIND[jobs[j].kind] for j in job], dtype=np.int64)

    def jv(attr: str, default: float) -> F64:
        return np.array([default if j < 0 else float(getattr(jobs[j], attr)) for j in job])

    pri = np.array([-1 if j < 0 else jobs[j].priority for j in job], dtype=np.int64)
    flex = jv("flex", 0.5)
    maxw = np.array([m.sku.max_limit_w for m in mdl])
    minw = np.array([m.sku.min_limit_w for m in mdl])
    # the flexibility floor: the cap at which compute throughput falls to 1/(1+flex)
    g = gamma["train"]
    frac = (1.0 / (1.0 + flex)) ** (1.0 / g)
    floor = p0["train"] + frac * (nat["train"] - p0["train"])
    floor = np.where(kind == 0, minw, np.clip(floor, minw, maxw))
    out = _Cohorts(
        element=fl.leaves.copy(),
        gpus=fl.leaf_gpus.copy(),
        gain=fl.self_gain[fl.leaves],
        job=job,
        kind=kind,
        other_w=fl.leaf_other_power_w.copy(),
        min_w=minw,
        max_w=maxw,
        idle_w=np.array([m.idle_w for m in mdl]),
        nat=nat,
        p0=p0,
        gamma=gamma,
        priority=pri,
        floor_w=floor,
        rp=jv("prefill_tok_s_per_gpu", 1.0),
        rd=jv("decode_tok_s_per_gpu", 1.0),
        tpot_ms=jv("tpot_ms", 1.0),
        slo_ms=jv("slo_tpot_ms", 1.0),
        util=jv("utilization", 0.0),
        leaf=np.arange(n, dtype=np.int64),
    )
    if not per_gpu:
        return out
    # one row per GPU: the same node, 1 GPU, its share of the node's other power
    rep = np.repeat(np.arange(n), out.gpus)
    fields: dict[str, Any] = {}
    for f in _Cohorts.__dataclass_fields__:
        v = getattr(out, f)
        fields[f] = {k: a[rep] for k, a in v.items()} if isinstance(v, dict) else v[rep]
    fields["other_w"] = (out.other_w / out.gpus)[rep]
    fields["gpus"] = np.ones(len(rep), dtype=np.int64)
    return _Cohorts(**fields)


@dataclass(slots=True)
class _Demand:
    """Per job, per step: inference tokens per GPU-second and training phase shares."""

    dp: F64  # [J, T] input tokens per GPU per second
    dd: F64  # [J, T] output tokens per GPU per second
    compute: F64  # [J, T] share of the step in compute (training)
    comm: F64
    notes: list[str]


def _demand(workload: Workload, pl: Placement, cfg: SimConfig) -> _Demand:
    T = cfg.steps
    J = len(workload.jobs)
    dp = np.zeros((J, T))
    dd = np.zeros((J, T))
    comp = np.zeros((J, T))
    comm = np.zeros((J, T))
    notes: list[str] = []
    t0 = np.arange(T) * cfg.step_s
    for i, j in enumerate(workload.jobs):
        if j.kind == "inference":
            tr = workload.trace(j)
            inp, out, loops = tr.resample(T, cfg.step_s)
            if loops > 1:
                notes.append(f"job {j.name}: trace {tr.source} ({tr.duration_s} s) looped {loops}x")
            busy = inp / j.prefill_tok_s_per_gpu + out / j.decode_tok_s_per_gpu
            win = max(1, round(60.0 / cfg.step_s))
            if len(busy) >= win:
                peak = float(np.convolve(busy, np.ones(win) / win, mode="valid").max())
            else:
                peak = float(busy.mean())
            scale = j.peak_load / peak if peak > 0 else 0.0
            dp[i] = inp * scale
            dd[i] = out * scale
        elif j.kind == "training":
            # enough samples per step to resolve the square wave (at most 64)
            sub = max(1, min(64, math.ceil(max(cfg.step_s, 4 * cfg.step_s / j.period_s))))
            acc_c = np.zeros(T)
            acc_m = np.zeros(T)
            for k in range(sub):
                ph = training_phase(j, t0 + (k + 0.5) * cfg.step_s / sub)
                acc_c += ph == 1
                acc_m += ph == 0
            comp[i] = acc_c / sub
            comm[i] = acc_m / sub
    return _Demand(dp=dp, dd=dd, compute=comp, comm=comm, notes=notes)


def _thr(c: _Cohorts, phase: str, caps: F64) -> F64:
    nat, p0, g = c.nat[phase], c.p0[phase], c.gamma[phase]
    x = np.clip((caps - p0) / (nat - p0), 1e-9, 1.0)
    out: F64 = x**g
    return out


@dataclass(slots=True)
class _Step:
    power_w: F64  # per GPU
    request_w: F64  # per GPU, uncapped
    other_w: F64  # per cohort, total
    out_tok: F64  # per cohort, served output tokens per second
    in_tok: F64
    unserved: F64
    violated: npt.NDArray[np.bool_]
    progress: F64  # training/batch progress rate (relative), inference served fraction
    caps: F64 = field(default_factory=lambda: np.zeros(0))  # closed loop: caps at the end


def _physics(c: _Cohorts, caps: F64, dp: F64, dd: F64, comp: F64, comm: F64) -> _Step:
    """One step for all cohorts (arrays per cohort; demand already gathered per cohort)."""
    idle = c.idle_w
    inf = c.kind == 1
    trn = c.kind == 2
    bat = c.kind == 3
    fp = _thr(c, "prefill", caps)
    fd = _thr(c, "decode", caps)
    ft = _thr(c, "train", caps)
    pp = np.minimum(caps, c.nat["prefill"])
    pd = np.minimum(caps, c.nat["decode"])
    pt = np.minimum(caps, c.nat["train"])
    pc = np.minimum(caps, c.nat["comm"])
    # inference: time shares in prefill and decode at this cap
    sp = dp / (c.rp * fp)
    sd = dd / (c.rd * fd)
    busy = sp + sd
    served = np.where(busy > 1.0, 1.0 / np.maximum(busy, 1e-12), 1.0)
    act_i = busy * served
    p_inf = idle * (1 - act_i) + served * (sp * pp + sd * pd)
    sp0 = dp / c.rp
    sd0 = dd / c.rd
    busy0 = sp0 + sd0
    served0 = np.where(busy0 > 1.0, 1.0 / np.maximum(busy0, 1e-12), 1.0)
    r_inf = idle * (1 - busy0 * served0) + served0 * (
        sp0 * c.nat["prefill"] + sd0 * c.nat["decode"]
    )
    # training: compute / communication / checkpoint shares
    ck = np.maximum(1.0 - comp - comm, 0.0)
    p_trn = comp * pt + comm * pc + ck * idle
    r_trn = comp * c.nat["train"] + comm * c.nat["comm"] + ck * idle
    prog_t = comp * ft + comm + ck
    # batch
    p_bat = idle + c.util * (pt - idle)
    r_bat = idle + c.util * (c.nat["train"] - idle)
    power = np.where(inf, p_inf, np.where(trn, p_trn, np.where(bat, p_bat, idle)))
    request = np.where(inf, r_inf, np.where(trn, r_trn, np.where(bat, r_bat, idle)))
    activity = np.where(inf, act_i, np.where(trn, comp, np.where(bat, c.util, 0.0)))
    g = c.gpus
    slow = c.tpot_ms / fd > c.slo_ms
    return _Step(
        power_w=power,
        request_w=request,
        other_w=c.other_w * (0.5 + 0.5 * activity),
        out_tok=np.where(inf, served * dd * g, 0.0),
        in_tok=np.where(inf, served * dp * g, 0.0),
        unserved=np.where(inf, (1 - served) * dd * g, 0.0),
        violated=inf & ((busy > 1.0) | slow) & (dd > 0),
        progress=np.where(trn, prog_t, np.where(bat, ft, np.where(inf, served, 1.0))),
    )


class _Interrupted(Exception):
    pass


def simulate(
    topology: Topology,
    workload: Workload,
    policy: Policy,
    config: SimConfig | None = None,
    *,
    progress: Progress | None = None,
    placement: Placement | None = None,
) -> PolicyResult:
    """Run ``workload`` on ``topology`` under ``policy`` (see the module docstring).

    Policies whose decision depends only on requests and capacities (``open_loop = True``:
    static, uniform, realloc) are called once per chunk of steps with a time axis on every
    snapshot array; the others (POLCA, Thunderbolt) see one snapshot per control step. Ctrl-C
    or SIGTERM stops the run at the current chunk and returns what was simulated, marked partial
    with the reason.
    """
    cfg = config or SimConfig()
    pl = placement or place(topology, workload)
    fl = pl.topology.flat()
    co = _cohorts(pl, workload, cfg.models, per_gpu=cfg.per_gpu)
    dem = _demand(workload, pl, cfg)
    cool = CoolingModel(kind=cfg.cooling)
    weather = cfg.weather or synthetic_weather()
    T, dt, E, C = cfg.steps, cfg.step_s, fl.size, len(co.element)
    overhead = cool.overhead(weather.at(np.arange(T) * dt, start_hour=cfg.start_hour))
    S = fl.self_gain  # product of 1/efficiency from the element up to the root, inclusive
    cap_ref = fl.capacity_w * S  # each element's output capacity referred to the root
    anc = fl.ancestors_matrix().astype(np.float64)[:, co.leaf]  # [E, C]
    node_in = S[co.element] / S[fl.parent[co.element]]  # 1 / the node's own efficiency
    feed_cap = float(fl.capacity_w[0])
    feed_lim = _feed_limit(cfg, T, feed_cap)
    jobs = workload.jobs
    J = len(jobs)
    cj = np.maximum(co.job, 0)
    member = np.zeros((C, J))
    member[np.flatnonzero(co.job >= 0), co.job[co.job >= 0]] = 1.0
    every = cfg.control_every
    open_loop = bool(getattr(policy, "open_loop", False))
    chunk = max(every, (4096 // every) * every) if open_loop else max(every, 600)

    acc = _Acc(T=T, E=E, J=J)
    # telemetry state carried across steps
    last_req: F64 = np.where(co.kind == 0, co.idle_w, co.max_w)
    last_pow = last_req.copy()
    last_other = co.other_w.copy()
    util = np.zeros(E)
    rho = 0.95  # IT power / feed input; refined every chunk
    caps: F64 = co.max_w.copy()
    held = (last_req, last_other)  # last telemetry that arrived (open-loop policies)
    partial: str | None = None
    stop: list[str] = []

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.append("SIGTERM")

    try:
        old: Any = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not in the main thread: no handler (Ctrl-C still works)
        old = None
    done = 0
    try:
        for s in range(0, T, chunk):
            if stop:
                raise _Interrupted(stop[0])
            e = min(T, s + chunk)
            K = e - s
            dp, dd = dem.dp[cj, s:e].T, dem.dd[cj, s:e].T
            comp, comm = dem.compute[cj, s:e].T, dem.comm[cj, s:e].T
            ok = np.ones(K, dtype=bool)
            if cfg.telemetry_loss_s is not None:
                t = np.arange(s, e) * dt
                ok = ~((cfg.telemetry_loss_s[0] <= t) & (t < cfg.telemetry_loss_s[1]))
            if open_loop:
                # what the policy sees at step k is telemetry from step k-1: each cohort's
                # request (its uncapped draw) and node power at that activity; while telemetry
                # is lost it keeps seeing the last values that arrived
                unc = _physics(co, np.broadcast_to(co.max_w, (K, C)), dp, dd, comp, comm)
                req = np.vstack([last_req[None, :], unc.request_w[:-1]])
                # non-GPU node power cannot be capped: the budget reserves its maximum
                oth = np.broadcast_to(co.other_w, (K, C))
                dec = np.arange(0, K, every)
                okd = ok[dec]
                if not okd.all():
                    src = np.maximum.accumulate(np.where(okd, np.arange(len(dec)), -1))
                    rq = req[dec]
                    req = req.copy()
                    req[dec] = np.where(src[:, None] >= 0, rq[np.maximum(src, 0)], held[0])
                held = (req[dec][-1], co.other_w)
                cap = cap_ref[None, :] - (oth[dec] * co.gain) @ anc.T
                cap[:, 0] = feed_lim[s + dec] / (1.0 + overhead[s + dec] * rho) - (
                    oth[dec] * co.gain
                ).sum(1)
                snap = Snapshot(
                    time_s=s * dt,
                    tree=AllocTree(parent=fl.parent, depth=fl.depth, capacity=cap),
                    element=co.element,
                    gpus=co.gpus,
                    gain=co.gain,
                    min_w=co.min_w,
                    max_w=co.max_w,
                    request_w=req[dec],
                    power_w=req[dec],  # open-loop policies read requests, not measured power
                    floor_w=co.floor_w,
                    priority=co.priority,
                    active=np.broadcast_to(co.kind != 0, (len(dec), C)),
                    element_util=np.broadcast_to(util, (len(dec), E)),
                    telemetry_ok=bool(ok.all()),
                )
                c2 = np.clip(
                    np.broadcast_to(policy.allocate(snap), (len(dec), C)), co.min_w, co.max_w
                )
                caps_k = np.repeat(c2, every, axis=0)[:K]
                st = _physics(co, caps_k, dp, dd, comp, comm)
                last_req, last_other = unc.request_w[-1], unc.other_w[-1]
            else:
                st = _closed_loop(
                    policy,
                    co,
                    fl,
                    s,
                    K,
                    every,
                    dt,
                    dp,
                    dd,
                    comp,
                    comm,
                    ok,
                    caps,
                    cap_ref,
                    anc,
                    S,
                    node_in,
                    overhead[s:e],
                    feed_lim[s:e],
                    rho,
                    util,
                    (last_req, last_pow, last_other),
                )
                caps = st.caps
                last_req, last_pow, last_other = st.request_w[-1], st.power_w[-1], st.other_w[-1]
            rho = acc.add(
                s,
                st,
                co=co,
                anc=anc,
                S=S,
                fl_cap=fl.capacity_w,
                node_in=node_in,
                overhead=overhead[s:e],
                feed_cap=feed_cap,
                member=member,
                dt=dt,
                rho=rho,
            )
            util = acc.last_util
            if open_loop:
                last_pow = st.power_w[-1]
            done = e
            if progress is not None:
                progress(done, T)
    except (KeyboardInterrupt, _Interrupted) as ex:
        partial = (
            "interrupted (Ctrl-C)" if isinstance(ex, KeyboardInterrupt) else f"stopped by {ex}"
        )
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    if done == 0:
        raise ConfigError("the simulation was stopped before its first step")
    return _result(
        acc,
        done,
        cfg=cfg,
        policy=policy,
        topology=topology,
        workload=workload,
        pl=pl,
        cool=cool,
        weather=weather,
        notes=dem.notes,
        feed_cap=feed_cap,
        fl_names=fl.names,
        fl_kinds=fl.kinds,
        fl_cap=fl.capacity_w,
        partial=partial,
    )


_FIELDS = (
    "power_w",
    "request_w",
    "other_w",
    "out_tok",
    "in_tok",
    "unserved",
    "violated",
    "progress",
)


def _util_rows(
    st: _Step,
    co: _Cohorts,
    anc: F64,
    S: F64,
    cap_w: F64,
    node_in: F64,
    overhead: F64,
    feed_cap: float | F64,
) -> F64:
    """Each element's load / capacity per step (the feed includes cooling)."""
    load = st.power_w * co.gpus + st.other_w
    ref = (load * co.gain) @ anc.T
    u = ref / S / cap_w
    u[:, 0] = (ref[:, 0] + overhead * (load @ node_in)) / feed_cap
    out: F64 = u
    return out


def _closed_loop(
    policy: Policy,
    co: _Cohorts,
    fl: Any,
    s: int,
    K: int,
    every: int,
    dt: float,
    dp: F64,
    dd: F64,
    comp: F64,
    comm: F64,
    ok: npt.NDArray[np.bool_],
    caps: F64,
    cap_ref: F64,
    anc: F64,
    S: F64,
    node_in: F64,
    overhead: F64,
    feed_lim: F64,  # the feed's limit per step of the chunk (capacity or grid target)
    rho: float,
    util: F64,
    last: tuple[F64, F64, F64],
) -> _Step:
    """Step through a chunk calling the policy every control step.

    Caps are piecewise constant, so the chunk's physics is evaluated vectorized from the
    current step to the end of the chunk and re-evaluated only when the policy changes a cap:
    the same result as stepping one by one, at a fraction of the cost.
    """
    # rows [0, h) are evaluated at the caps in force; evaluation runs ahead in short blocks
    C = len(caps)
    cur = _physics(co, np.broadcast_to(caps, (K, C)), dp, dd, comp, comm)
    u_rows = np.zeros((K, len(S)))
    cap_now = caps.copy()
    h = 0
    ahead = [8]  # rows evaluated ahead: doubles while caps hold, drops when they change

    def evaluate(k0: int) -> int:
        k1 = min(K, k0 + ahead[0])
        ahead[0] = min(ahead[0] * 2, 512)
        rest = _physics(
            co,
            np.broadcast_to(cap_now, (k1 - k0, C)),
            dp[k0:k1],
            dd[k0:k1],
            comp[k0:k1],
            comm[k0:k1],
        )
        for f in _FIELDS:
            getattr(cur, f)[k0:k1] = getattr(rest, f)
        u_rows[k0:k1] = _util_rows(
            rest, co, anc, S, fl.capacity_w, node_in, overhead[k0:k1], feed_lim[k0:k1]
        )
        return k1

    last_req, last_pow = last[0], last[1]
    for k in range(K):
        if (s + k) % every == 0:
            if k > 0:
                last_req, last_pow = cur.request_w[k - 1], cur.power_w[k - 1]
                util = u_rows[k - 1]
            oth = co.other_w * co.gain  # non-GPU power is reserved at its maximum
            cap1 = cap_ref - anc @ oth
            cap1[0] = feed_lim[k] / (1.0 + overhead[k] * rho) - float(oth.sum())
            snap = Snapshot(
                time_s=(s + k) * dt,
                tree=AllocTree(parent=fl.parent, depth=fl.depth, capacity=cap1),
                element=co.element,
                gpus=co.gpus,
                gain=co.gain,
                min_w=co.min_w,
                max_w=co.max_w,
                request_w=last_req,
                power_w=last_pow,
                floor_w=co.floor_w,
                priority=co.priority,
                active=co.kind != 0,
                element_util=util,
                telemetry_ok=bool(ok[k]),
            )
            new = np.clip(policy.allocate(snap), co.min_w, co.max_w)
            if not np.array_equal(new, cap_now):
                cap_now = new
                h = k  # rows from here on were evaluated at the old caps
                ahead[0] = max(1, every)
        if k >= h:
            h = evaluate(k)
    cur.caps = cap_now
    return cur


def _feed_limit(cfg: SimConfig, T: int, feed_cap: float) -> F64:
    """The feed's limit per step: its capacity, or a grid target in force (most recent wins)."""
    lim = np.full(T, feed_cap)
    t = np.arange(T) * cfg.step_s
    for g in sorted(cfg.grid_targets, key=lambda x: x.issued_s):
        assert g.value_w is not None  # checked by SimConfig
        win = (t >= g.start_s) & (t < g.end_s)
        lim[win] = np.minimum(feed_cap, g.value_w)
    return lim


def grid_outcomes(
    targets: tuple[LoadTarget, ...], facility_w: F64, step_s: float, response_s: float
) -> tuple[dict[str, Any], ...]:
    """Per target: met only if facility power is at or under it at every step from its start
    plus ``response_s`` to its end (the steps where it is the most recent target)."""
    n = len(facility_w)
    t = np.arange(n) * step_s
    owner = np.full(n, -1)
    order = sorted(range(len(targets)), key=lambda i: targets[i].issued_s)
    for i in order:
        g = targets[i]
        owner[(t >= g.start_s) & (t < g.end_s)] = i
    out = []
    for i, g in enumerate(targets):
        idx = np.flatnonzero(owner == i)
        if len(idx) == 0:
            continue
        assert g.value_w is not None
        tw = g.value_w
        p = facility_w[idx]
        under = p <= tw * (1 + 1e-9)
        judged = t[idx] >= g.start_s + response_s
        over = np.maximum(p[judged] - tw, 0.0)
        lv = [breach(float(x), tw) for x in p]
        out.append(
            {
                "id": g.id,
                "feed": g.feed,
                "mode": g.mode,
                "start_s": g.start_s,
                "end_s": g.end_s,
                "target_w": tw,
                "met": bool(judged.any() and over.max() <= tw * 1e-9),
                "response_s": float(t[idx[np.argmax(under)]] - g.start_s) if under.any() else None,
                "max_over_w": float(over.max()) if len(over) else 0.0,
                "over_energy_j": float(over.sum() * step_s),
                "breach_warning_s": float(sum(x == "warning" for x in lv) * step_s),
                "breach_critical_s": float(sum(x == "critical" for x in lv) * step_s),
                "source": "simulated",
            }
        )
    return tuple(out)


@dataclass(slots=True)
class _Acc:
    """Running totals over chunks of steps (all arrays [K, ...] per chunk)."""

    T: int
    E: int
    J: int
    fac_w: F64 = field(init=False)
    it_w: F64 = field(init=False)
    loss_w: F64 = field(init=False)
    cool_w: F64 = field(init=False)
    out_rate: F64 = field(init=False)
    max_util: F64 = field(init=False)
    over_s: F64 = field(init=False)
    peak_w: F64 = field(init=False)
    excess_max: F64 = field(init=False)
    excess_j: F64 = field(init=False)
    any_over_s: float = 0.0
    job_out: F64 = field(init=False)
    job_in: F64 = field(init=False)
    job_unserved: F64 = field(init=False)
    job_viol: F64 = field(init=False)
    job_energy: F64 = field(init=False)
    job_prog: F64 = field(init=False)
    job_time: float = 0.0
    last_util: F64 = field(init=False)

    def __post_init__(self) -> None:
        for name in ("fac_w", "it_w", "loss_w", "cool_w", "out_rate", "max_util"):
            setattr(self, name, np.zeros(self.T))
        for name in ("over_s", "peak_w", "excess_max", "excess_j", "last_util"):
            setattr(self, name, np.zeros(self.E))
        for name in ("job_out", "job_in", "job_unserved", "job_viol", "job_energy", "job_prog"):
            setattr(self, name, np.zeros(self.J))

    def add(
        self,
        s: int,
        st: _Step,
        *,
        co: _Cohorts,
        anc: F64,
        S: F64,
        fl_cap: F64,
        node_in: F64,
        overhead: F64,
        feed_cap: float,
        member: F64,
        dt: float,
        rho: float,
    ) -> float:
        K = st.power_w.shape[0]
        e = s + K
        load = st.power_w * co.gpus + st.other_w  # [K, C] node output load
        ref = (load * co.gain) @ anc.T  # [K, E] root-referred
        feed_in = ref[:, 0]
        it = load @ node_in
        cw = overhead * it
        fac = feed_in + cw
        self.fac_w[s:e] = fac
        self.it_w[s:e] = it
        self.loss_w[s:e] = feed_in - it
        self.cool_w[s:e] = cw
        watts = ref / S
        watts[:, 0] = fac  # the feed carries cooling too
        u = watts / fl_cap
        self.last_util = u[-1].copy()
        self.max_util[s:e] = u.max(axis=1)
        over = u > 1.0 + 1e-9
        ex = np.where(over, watts - fl_cap, 0.0)
        self.over_s += over.sum(axis=0) * dt
        self.any_over_s += float(over.any(axis=1).sum()) * dt
        self.excess_max = np.maximum(self.excess_max, ex.max(axis=0))
        self.excess_j += ex.sum(axis=0) * dt
        self.peak_w = np.maximum(self.peak_w, watts.max(axis=0))
        self.out_rate[s:e] = st.out_tok.sum(axis=1)
        self.job_out += (st.out_tok @ member).sum(0) * dt
        self.job_in += (st.in_tok @ member).sum(0) * dt
        self.job_unserved += (st.unserved @ member).sum(0) * dt
        self.job_viol += ((st.violated.astype(np.float64) @ member) > 0).sum(0) * dt
        self.job_energy += (load @ member).sum(0) * dt
        for j in range(self.J):
            cols = member[:, j] > 0
            if cols.any():
                # a synchronous job moves at its slowest cohort
                self.job_prog[j] += float(st.progress[:, cols].min(axis=1).sum()) * dt
        self.job_time += K * dt
        tot_it = float(it.sum())
        return tot_it / float(feed_in.sum()) if feed_in.sum() > 0 else rho


def _result(
    acc: _Acc,
    n: int,
    *,
    cfg: SimConfig,
    policy: Policy,
    topology: Topology,
    workload: Workload,
    pl: Placement,
    cool: CoolingModel,
    weather: Weather,
    notes: list[str],
    feed_cap: float,
    fl_names: tuple[str, ...],
    fl_kinds: tuple[str, ...],
    fl_cap: F64,
    partial: str | None,
) -> PolicyResult:
    dt = cfg.step_s
    fac_e = float(acc.fac_w[:n].sum() * dt)
    it_e = float(acc.it_w[:n].sum() * dt)
    pue = fac_e / it_e if it_e > 0 else math.nan
    loss_ratio = float(acc.loss_w[:n].sum() / acc.it_w[:n].sum()) if it_e > 0 else 0.0
    pue_ann = annualized_pue(cool, weather, it_power_w=it_e / (n * dt), loss_ratio=loss_ratio)
    job_results = []
    for i, j in enumerate(workload.jobs):
        if j.kind == "inference":
            want = acc.job_out[i] + acc.job_unserved[i]
            thr = acc.job_out[i] / want if want > 0 else 1.0
        else:
            thr = acc.job_prog[i] / acc.job_time if acc.job_time > 0 else 1.0
        job_results.append(
            JobResult(
                name=j.name,
                kind=j.kind,
                gpus=pl.job_gpus[i],
                priority=j.priority,
                flex=j.flex,
                throughput=float(thr),
                output_tokens=float(acc.job_out[i]),
                input_tokens=float(acc.job_in[i]),
                unserved_output_tokens=float(acc.job_unserved[i]),
                slo_violation_s=float(acc.job_viol[i]),
                energy_j=float(acc.job_energy[i]),
            )
        )
    fl = pl.topology.flat()
    ratios = pl.topology.oversubscription()
    levels = tuple(
        LevelStress(
            element=fl_names[e],
            kind=fl_kinds[e],
            capacity_w=float(fl_cap[e]),
            firm_capacity_w=float(fl.firm_capacity_w[e]),
            oversubscription=ratios.get(fl_names[e]),
            peak_w=float(acc.peak_w[e]),
            seconds_over=float(acc.over_s[e]),
            max_excess_w=float(acc.excess_max[e]),
            excess_energy_j=float(acc.excess_j[e]),
        )
        for e in range(len(fl_names))
    )
    timeline = _downsample(
        cfg.timeline_points,
        dt,
        n,
        facility_w=acc.fac_w[:n],
        it_w=acc.it_w[:n],
        output_tok_s=acc.out_rate[:n],
        max_level_util=acc.max_util[:n],
        pue=acc.fac_w[:n] / np.maximum(acc.it_w[:n], 1e-9),
    )
    all_notes = list(notes)
    infeasible = getattr(policy, "infeasible_steps", 0)
    if infeasible:
        all_notes.append(f"{infeasible} control steps overloaded an element even at minimum caps")
    fb = getattr(policy, "fallback_steps", 0)
    if fb:
        all_notes.append(f"{fb} control steps used the telemetry-loss fallback")
    return PolicyResult(
        policy=policy.name,
        site=topology.name,
        workload=workload.name,
        gpus=pl.topology.gpu_count,
        duration_s=n * dt,
        step_s=dt,
        control_interval_s=cfg.control_every * dt,
        it_energy_j=it_e,
        conversion_loss_j=float(acc.loss_w[:n].sum() * dt),
        cooling_energy_j=float(acc.cool_w[:n].sum() * dt),
        facility_energy_j=fac_e,
        peak_facility_w=float(acc.fac_w[:n].max()),
        mean_facility_w=fac_e / (n * dt),
        feed_capacity_w=feed_cap,
        pue=pue,
        pue_annualized=pue_ann,
        cooling=cfg.cooling,
        weather=weather.source,
        price_per_kwh=cfg.price_per_kwh,
        cost_usd=fac_e / 3.6e6 * cfg.price_per_kwh,
        output_tokens=float(acc.job_out.sum()),
        input_tokens=float(acc.job_in.sum()),
        unserved_output_tokens=float(acc.job_unserved.sum()),
        jobs=tuple(job_results),
        levels=levels,
        timeline=timeline,
        seconds_over_capacity=acc.any_over_s,
        notes=tuple(all_notes),
        partial=partial,
        grid_targets=grid_outcomes(cfg.grid_targets, acc.fac_w[:n], dt, cfg.grid_response_s),
    )


def _downsample(points: int, dt: float, n: int, **series: F64) -> dict[str, Any]:
    """Mean per bucket (and the bucket's max for power), at most ``points`` buckets."""
    k = max(1, math.ceil(n / points))
    m = n // k
    out: dict[str, Any] = {"time_s": [float(i * k * dt) for i in range(m)]}
    for name, v in series.items():
        b = v[: m * k].reshape(m, k)
        out[name] = [float(x) for x in b.mean(axis=1)]
        if name.endswith("_w") or name == "max_level_util":
            out[name + "_max"] = [float(x) for x in b.max(axis=1)]
    return out


__all__ = ["Progress", "SimConfig", "simulate"]
