"""A training job's per-GPU power waveform at fine resolution, for grid-side analysis.

Two sources, both per pipeline stage (every data-parallel replica of a stage is in lockstep, so
a stage is one cohort of ``gpus / stages`` GPUs):

* **perseus**: one iteration replayed by :func:`perwatt.train.simulate.simulate_plan` on a
  measured stage profile (all instructions at the highest profiled clock): a stage draws the
  profiled power of each instruction while it runs and ``P_block`` while it waits. Added after
  each iteration: ``sync_s`` of data-parallel gradient synchronisation and optimizer step, every
  stage at its blocking power (*assumption*: the profile does not cover it). Powers are scaled
  so the highest compute power equals the site GPU's TMP (the profile's GPU may differ); times
  are kept.
* **parametric**: a square wave of ``period_s`` with ``compute_fraction`` at ``high_w`` and the
  rest at ``low_w``, edges ramped over ``edge_s`` (default one step).

The waveform is tiled over the run; :mod:`.smoothing` turns it into what the grid sees.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from perwatt.errors import ConfigError

F64 = npt.NDArray[np.float64]


def perseus_period(
    profile_path: str | Path,
    *,
    dt: float,
    tmp_w: float,
    microbatches: int = 8,
    sync_s: float = 0.3,
    p_block_w: float | None = None,
) -> tuple[F64, float]:
    """One iteration per stage ([S, K] watts per GPU at ``dt``) and the iteration time."""
    # perwatt.train is imported here, not at the top: it pulls the planner (and its compiled
    # sweep) that the rest of the facility package does not need
    from perwatt.hardware import GPUS
    from perwatt.train.profile import load_profile
    from perwatt.train.schedule import one_f_one_b
    from perwatt.train.simulate import all_max_plan, simulate_plan

    if not sync_s >= 0:
        raise ConfigError("waveform sync_s must be >= 0")
    prof = load_profile(profile_path)
    sched = one_f_one_b(prof.num_stages, microbatches)
    pb = p_block_w if p_block_w is not None else (GPUS["A100-SXM4-80GB"].blocking_power_w or 80.0)
    tl = simulate_plan(sched, prof, all_max_plan(sched, prof), p_block_w=pb)
    T = tl.iteration_time_s + sync_s
    K = max(1, round(T / dt))
    S = tl.num_stages
    top = max(b.power_w for b in tl.bars)
    scale = tmp_w / top
    out = np.full((S, K), pb * scale)
    edges = np.arange(K + 1) * dt
    for b in tl.bars:
        # fraction of each step the bar covers
        lo = np.clip(edges[:-1], b.start_s, b.end_s)
        hi = np.clip(edges[1:], b.start_s, b.end_s)
        cov = (hi - lo) / dt
        out[b.stage] += cov * (b.power_w - pb) * scale
    return out, T


def parametric_period(
    *,
    dt: float,
    period_s: float,
    compute_fraction: float,
    high_w: float,
    low_w: float,
    edge_s: float | None = None,
) -> F64:
    if not (math.isfinite(period_s) and period_s >= 2 * dt):
        raise ConfigError("waveform period_s must be at least two steps")
    if not 0 < compute_fraction < 1:
        raise ConfigError("waveform compute_fraction must be in (0, 1)")
    if not 0 <= low_w < high_w:
        raise ConfigError("waveform needs 0 <= low_w < high_w")
    K = max(2, round(period_s / dt))
    t = (np.arange(K) + 0.5) * dt
    e = max(edge_s or dt, dt)
    on = compute_fraction * period_s
    # trapezoid: rise over e, hold, fall over e
    x = np.clip(np.minimum(t / e, (on - t) / e + 1.0), 0.0, 1.0)
    out: F64 = low_w + x * (high_w - low_w)
    return out[None, :]


def tile(period: F64, n: int, offset: int = 0) -> F64:
    """Repeat a [S, K] period to [S, n] steps."""
    K = period.shape[1]
    idx = (np.arange(n) + offset) % K
    out: F64 = period[:, idx]
    return out


def waveform_from(
    spec: Mapping[str, Any], *, dt: float, n: int, tmp_w: float, low_w: float, base_dir: Path
) -> tuple[F64, str]:
    """[S, n] per-GPU waveform from a scenario's ``waveform`` block, and a description."""
    kind = spec.get("kind")
    if kind == "perseus":
        prof = spec.get("profile")
        if not isinstance(prof, str):
            raise ConfigError("waveform.profile must be a path")
        p = Path(prof) if Path(prof).is_absolute() else base_dir / prof
        if not p.exists():
            raise ConfigError(f"waveform.profile {p}: no such file")
        per, T = perseus_period(
            p,
            dt=dt,
            tmp_w=tmp_w,
            microbatches=int(spec.get("microbatches", 8)),
            sync_s=float(spec.get("sync_s", 0.3)),
        )
        return tile(per, n), f"perseus {p.name}: iteration {T:.3f} s incl. sync"
    if kind == "parametric":
        per = parametric_period(
            dt=dt,
            period_s=float(spec.get("period_s", 2.0)),
            compute_fraction=float(spec.get("compute_fraction", 0.7)),
            high_w=float(spec.get("high_w", tmp_w)),
            low_w=float(spec.get("low_w", low_w)),
            edge_s=spec.get("edge_s"),
        )
        return tile(per, n), f"parametric {spec.get('period_s', 2.0)} s square wave"
    raise ConfigError("waveform.kind must be perseus or parametric")


__all__ = ["parametric_period", "perseus_period", "tile", "waveform_from"]
