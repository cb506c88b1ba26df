from __future__ import annotations

from pathlib import Path

import pytest

from perwatt.errors import ConfigError
from perwatt.facility.pipeline import training_job_from_timeline
from perwatt.facility.policies import make_policy
from perwatt.facility.presets import eight_rack
from perwatt.facility.simulate import SimConfig, simulate
from perwatt.facility.workload import Workload
from perwatt.train.profile import load_profile
from perwatt.train.schedule import one_f_one_b
from perwatt.train.simulate import all_max_plan, simulate_plan

PROFILE = Path(__file__).parents[1] / "train/data/tiny_profile.csv"


def test_job_follows_the_replayed_iteration() -> None:
    profile = load_profile(PROFILE)
    sched = one_f_one_b(profile.num_stages, 8)
    tl = simulate_plan(sched, profile, all_max_plan(sched, profile), p_block_w=80.0)
    job = training_job_from_timeline(tl, name="pp", share=1.0, priority=1)
    assert job.period_s == pytest.approx(tl.iteration_time_s)
    busy = sum(tl.busy_s(s) for s in range(tl.num_stages)) / (tl.num_stages * tl.iteration_time_s)
    assert job.compute_fraction == pytest.approx(busy)
    assert 0 < job.compute_fraction < 1  # the pipeline has bubbles
    # a sub-second iteration still gives the right duty cycle at 1 s steps
    r = simulate(
        eight_rack(),
        Workload(name="w", jobs=(job,)),
        make_policy("static"),
        SimConfig(duration_s=600.0),
    )
    assert r.job("pp").throughput == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="comes from the timeline"):
        training_job_from_timeline(tl, name="pp", share=1.0, period_s=3.0)
