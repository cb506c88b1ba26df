from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from perwatt.errors import ConfigError
from perwatt.facility.loadtarget import LoadTarget
from perwatt.facility.policies import make_policy
from perwatt.facility.presets import eight_rack
from perwatt.facility.simulate import SimConfig, simulate
from perwatt.facility.workload import preset_workload


@pytest.fixture(scope="module")
def base_mean_w() -> float:
    r = simulate(
        eight_rack(), preset_workload("mixed"), make_policy("static"), SimConfig(duration_s=1800)
    )
    return r.mean_facility_w


def test_policies_answer_grid_targets_through_the_snapshot(base_mean_w: float) -> None:
    tw = 0.8 * base_mean_w
    tg = (LoadTarget(id="a", feed="site", start_s=600, end_s=1200, issued_s=0, value_w=tw),)
    cfg = SimConfig(duration_s=1800, grid_targets=tg, timeline_points=1800)
    r = simulate(eight_rack(), preset_workload("mixed"), make_policy("realloc"), cfg)
    (g,) = r.grid_targets
    assert g["met"] and g["source"] == "simulated"
    t = np.array(r.timeline["time_s"])
    p = np.array(r.timeline["facility_w"])
    win = (t >= 600 + 60) & (t < 1200)
    assert p[win].max() <= tw * (1 + 1e-6)
    # the static policy ignores the feed: it must be reported missed, never met
    s = simulate(eight_rack(), preset_workload("mixed"), make_policy("static"), cfg)
    assert not s.grid_targets[0]["met"] and s.grid_targets[0]["max_over_w"] > 0


def test_percent_targets_are_for_the_flex_simulator() -> None:
    t = (LoadTarget(id="a", feed="site", start_s=0, end_s=10, issued_s=0, reduction=0.2),)
    with pytest.raises(ConfigError, match="facility flex"):
        SimConfig(grid_targets=t)


def test_cli_simulate_with_targets(tmp_path: Path, base_mean_w: float) -> None:
    (tmp_path / "t.csv").write_text(
        f"feed,start,end,value,unit,mode\nsite,300,900,{0.8 * base_mean_w / 1e3:.3f},kilowatt,strict\n"
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "perwatt",
            "facility",
            "simulate",
            "test-8rack",
            "mixed",
            "--policy",
            "uniform,static",
            "--duration",
            "20m",
            "--targets",
            "t.csv",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert r.returncode == 0, r.stderr
    assert "uniform      grid target row2" in r.stdout and "MET" in r.stdout
    assert "static       grid target row2" in r.stdout and "MISSED" in r.stdout
