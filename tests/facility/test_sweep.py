from __future__ import annotations

import pytest

from perwatt.errors import ConfigError
from perwatt.facility.sweep import grid, parse_params, run_point, run_sweep


def test_grid_expands_policy_parameters() -> None:
    pts = grid(
        ["test-8rack"],
        ["mixed"],
        ["static", "polca"],
        parse_params(["polca.t1=0.85,0.9", "polca.t2=0.95,0.97"]),
    )
    assert len(pts) == 1 + 4
    assert {tuple(sorted(p.params.items())) for p in pts if p.policy == "polca"} == {
        (("t1", a), ("t2", b)) for a in (0.85, 0.9) for b in (0.95, 0.97)
    }


@pytest.mark.parametrize("bad", ["polca.t1", "magic.t1=1", "polca=1", "polca.t1=x"])
def test_bad_params(bad: str) -> None:
    with pytest.raises(ConfigError, match="bad --param"):
        parse_params([bad])


def test_process_pool_matches_serial_runs() -> None:
    pts = grid(["test-8rack"], ["mixed"], ["uniform", "realloc"], duration_s=1800.0, step_s=30.0)
    rows = run_sweep(pts, workers=2)
    assert [r["policy"] for r in rows] == ["uniform", "realloc"]
    assert rows == [run_point(p) for p in pts]
    assert all(r["source"] == "simulated" for r in rows)


def test_bad_point_fails_before_any_worker() -> None:
    pts = grid(["nope"], ["mixed"], ["static"])
    with pytest.raises(ConfigError, match="no such site"):
        run_sweep(pts, workers=2)


def test_on_a_local_ray_instance() -> None:
    pytest.importorskip("ray")
    pts = grid(["test-8rack"], ["mixed"], ["static", "realloc"], duration_s=600.0, step_s=60.0)
    rows = run_sweep(pts, ray_address="local")
    assert rows == [run_point(p) for p in pts]
