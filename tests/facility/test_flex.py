from __future__ import annotations

import numpy as np
import pytest

from perwatt.errors import ConfigError
from perwatt.facility.flex import FlexJob, FlexOptimiser, job_curve, solve_lp, uniform_cap
from perwatt.facility.workload import Job


def _jobs(rng: np.random.Generator) -> list[FlexJob]:
    out = []
    for i in range(int(rng.integers(2, 7))):
        kind = str(rng.choice(["inference", "training", "batch"]))
        flex = float(rng.choice([0.0, 0.1, 0.25, 0.5]))
        acts: tuple[str, ...] = ("cap",)
        if kind == "inference" and rng.random() < 0.6:
            acts = ("cap", "shrink")
        if kind != "inference" and flex == 0.5 and rng.random() < 0.5:
            acts = ("cap", "pause")
        out.append(
            FlexJob(
                name=f"j{i}",
                kind=kind,
                gpus=int(rng.integers(1, 200)),
                flex=flex,
                value=float(rng.uniform(0.5, 3.0)),
                actions=acts,
                load=float(rng.uniform(0.2, 1.0)),
                movable=float(rng.uniform(0, 0.3)) if "shrink" in acts else 0.0,
                compute_fraction=float(rng.uniform(0.6, 1.0)),
                sku=str(rng.choice(["A100-SXM4-80GB", "H100-SXM"])),
            )
        )
    return out


@pytest.mark.parametrize("seed", range(25))
def test_greedy_matches_highs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    opt = FlexOptimiser(_jobs(rng))
    full = float(opt.full_w.sum())
    floor = float(opt.floor_w.sum())
    for frac in (0.3, 0.6, 0.8, 0.95):
        budget = floor + frac * (full - floor)
        d = opt.solve(budget)
        assert d.power_w.sum() <= budget * (1 + 1e-9)
        assert d.feasible
        assert d.value == pytest.approx(solve_lp(opt, budget), rel=1e-7)
        # every job keeps at least its tier's floor
        for j, t in zip(opt.jobs, d.thr, strict=True):
            assert t >= j.floor - 1e-9


def test_hull_is_concave_and_ends_at_full() -> None:
    j = FlexJob(name="t", kind="training", gpus=8, flex=0.5, actions=("cap", "pause"))
    c = job_curve(j)
    s = np.diff(c.thr) / np.diff(c.power_w)
    assert np.all(np.diff(s) <= 1e-12)
    assert c.thr[-1] == pytest.approx(1.0) and c.thr[0] == 0.0


def test_shortfall_is_never_called_met() -> None:
    opt = FlexOptimiser([FlexJob(name="chat", kind="inference", gpus=10, flex=0.0, load=0.9)])
    d = opt.solve(float(opt.floor_w.sum()) * 0.5)
    assert not d.feasible and d.shortfall_w > 0


def test_optimiser_beats_or_ties_uniform_capping() -> None:
    jobs = [
        FlexJob(name="chat", kind="inference", gpus=64, flex=0.0, load=0.5),
        FlexJob(name="pre", kind="training", gpus=128, flex=0.5),
    ]
    opt = FlexOptimiser(jobs)
    b = 0.75 * float(opt.full_w.sum())
    u = uniform_cap(jobs, b)
    assert u.power_w.sum() <= b * (1 + 1e-6)
    assert opt.solve(b).value >= u.value - 1e-6


def test_bad_jobs() -> None:
    with pytest.raises(ConfigError, match="lowest tier"):
        FlexJob(name="x", kind="training", gpus=1, flex=0.1, actions=("pause",))
    with pytest.raises(ConfigError, match="only inference"):
        FlexJob(name="x", kind="training", gpus=1, actions=("shrink",))
    with pytest.raises(ConfigError, match="flex"):
        FlexJob(name="x", kind="training", gpus=1, flex=0.3)


def test_from_site_job() -> None:
    j = Job(name="pre", kind="training", share=0.5, flex=0.25, compute_fraction=0.7)
    f = FlexJob.from_job(j, 16, sku="H100-SXM")
    assert (f.gpus, f.flex, f.compute_fraction, f.sku) == (16, 0.25, 0.7, "H100-SXM")


@pytest.mark.parametrize("seed", range(10))
def test_strict_below_floors_matches_highs(seed: int) -> None:
    opt = FlexOptimiser(_jobs(np.random.default_rng(100 + seed)))
    lo, fl = float(opt.min_w.sum()), float(opt.floor_w.sum())
    budget = lo + 0.5 * (fl - lo)
    soft = opt.solve(budget)
    assert not soft.feasible and soft.shortfall_w == pytest.approx(fl - budget)
    d = opt.solve(budget, strict=True)
    assert d.feasible and d.power_w.sum() <= budget * (1 + 1e-9)
    assert d.value == pytest.approx(solve_lp(opt, budget, relax=True), rel=1e-7)
