"""A grid of sites × workloads × policies × policy parameters, run in parallel.

Each point is a plain, picklable description (preset names or file paths, numbers), so the
same :func:`run_point` runs in a local process pool (default) or as Ray tasks on an existing
cluster (``ray_address``; optional extra ``ray``) — the grid grows onto a distributed engine
that exists, not onto one built here. Results are summary rows (every energy figure simulated).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perwatt.errors import ConfigError
from perwatt.facility.loaders import load_site
from perwatt.facility.policies import POLICIES, make_policy
from perwatt.facility.presets import SITES, preset_site
from perwatt.facility.simulate import SimConfig, simulate
from perwatt.facility.topology import Topology
from perwatt.facility.workload import WORKLOADS, Workload, load_workload, preset_workload


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepPoint:
    """One simulation of the grid."""

    site: str
    workload: str
    policy: str
    params: Mapping[str, float] = field(default_factory=dict)
    duration_s: float = 86_400.0
    step_s: float = 30.0
    cooling: str = "liquid"

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(f"unknown policy {self.policy!r}")


def _site(spec: str) -> Topology:
    if spec in SITES:
        return preset_site(spec)
    if not Path(spec).exists():
        raise ConfigError(f"{spec}: no such site file or preset")
    return load_site(spec)


def _workload(spec: str) -> Workload:
    if spec in WORKLOADS:
        return preset_workload(spec)
    if not Path(spec).exists():
        raise ConfigError(f"{spec}: no such workload file or preset")
    return load_workload(spec)


def run_point(point: SweepPoint) -> dict[str, Any]:
    """Simulate one point; a summary row (the function a worker or a Ray task runs)."""
    r = simulate(
        _site(point.site),
        _workload(point.workload),
        make_policy(point.policy, **dict(point.params)),
        SimConfig(duration_s=point.duration_s, step_s=point.step_s, cooling=point.cooling),
    )
    trn = [j.throughput for j in r.jobs if j.kind == "training"]
    return {
        "site": point.site,
        "workload": point.workload,
        "policy": point.policy,
        "params": ";".join(f"{k}={v:g}" for k, v in sorted(point.params.items())),
        "gpus": r.gpus,
        "output_tokens": r.output_tokens,
        "unserved_output_tokens": r.unserved_output_tokens,
        "output_tokens_per_mwh": r.tokens_per_mwh,
        "slo_violation_s": sum(j.slo_violation_s for j in r.jobs),
        "min_training_throughput": min(trn) if trn else None,
        "worst_job_throughput": min(j.throughput for j in r.jobs),
        "facility_energy_j": r.facility_energy_j,
        "peak_facility_w": r.peak_facility_w,
        "pue": r.pue,
        "cost_usd": r.cost_usd,
        "seconds_over_capacity": r.seconds_over_capacity,
        "source": "simulated",
    }


def parse_params(specs: Sequence[str]) -> dict[str, dict[str, list[float]]]:
    """``polca.t1=0.85,0.9`` → ``{"polca": {"t1": [0.85, 0.9]}}``."""
    out: dict[str, dict[str, list[float]]] = {}
    for spec in specs:
        key, sep, vals = spec.partition("=")
        pol, dot, name = key.partition(".")
        if not sep or not dot or pol not in POLICIES or not name:
            raise ConfigError(
                f"bad --param {spec!r}: use POLICY.NAME=V1,V2 (e.g. polca.t1=0.85,0.9)"
            )
        try:
            values = [float(v) for v in vals.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"bad --param {spec!r}: values must be numbers") from None
        if not values:
            raise ConfigError(f"bad --param {spec!r}: no values")
        out.setdefault(pol, {})[name] = values
    return out


def grid(
    sites: Sequence[str],
    workloads: Sequence[str],
    policies: Sequence[str],
    params: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
    *,
    duration_s: float = 86_400.0,
    step_s: float = 30.0,
    cooling: str = "liquid",
) -> list[SweepPoint]:
    """Every combination; a policy with parameters is repeated for each parameter combination."""
    params = params or {}
    points = []
    for s, w, p in itertools.product(sites, workloads, policies):
        ps = params.get(p, {})
        names = sorted(ps)
        for combo in itertools.product(*(ps[n] for n in names)) if names else [()]:
            points.append(
                SweepPoint(
                    site=s,
                    workload=w,
                    policy=p,
                    params=dict(zip(names, combo, strict=True)),
                    duration_s=duration_s,
                    step_s=step_s,
                    cooling=cooling,
                )
            )
    return points


def run_sweep(
    points: Sequence[SweepPoint],
    *,
    workers: int | None = None,
    ray_address: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every point; rows in the order of ``points``.

    ``ray_address`` (``"auto"``, ``"local"`` for a fresh local instance, or ``ray://host:port``)
    sends each point to Ray as a task; otherwise a local process pool of ``workers`` processes.
    """
    if not points:
        raise ConfigError("the sweep has no points")
    for p in points:  # fail fast on bad inputs, before any worker starts
        _site(p.site)
        _workload(p.workload)
        make_policy(p.policy, **dict(p.params))
    if ray_address is not None:
        return _run_ray(points, ray_address, progress)
    n = workers or min(len(points), os.cpu_count() or 1)
    rows: list[dict[str, Any] | None] = [None] * len(points)
    if n <= 1:
        for i, p in enumerate(points):
            rows[i] = run_point(p)
            if progress:
                progress(i + 1, len(points))
    else:
        with ProcessPoolExecutor(max_workers=n) as pool:
            futs = {pool.submit(run_point, p): i for i, p in enumerate(points)}
            for done, f in enumerate(as_completed(futs), start=1):
                rows[futs[f]] = f.result()
                if progress:
                    progress(done, len(points))
    return [r for r in rows if r is not None]


def _run_ray(
    points: Sequence[SweepPoint], address: str, progress: Callable[[int, int], None] | None
) -> list[dict[str, Any]]:
    try:
        import ray  # optional extra, heavy: imported only for --ray
    except ImportError:
        raise ConfigError(
            "--ray needs Ray: pip install 'perwatt[ray]' (or run without --ray: local processes)"
        ) from None
    started = not ray.is_initialized()
    if started:
        ray.init(
            address=None if address == "local" else address,
            include_dashboard=False,
            log_to_driver=False,
        )
    try:
        task = ray.remote(run_point)
        refs = [task.remote(p) for p in points]
        rows = []
        for i, ref in enumerate(refs, start=1):
            rows.append(ray.get(ref))
            if progress:
                progress(i, len(points))
        return rows
    finally:
        if started:
            ray.shutdown()


__all__ = ["SweepPoint", "grid", "parse_params", "run_point", "run_sweep"]
