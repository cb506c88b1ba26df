"""The plan replay simulator: agrees with the planner, catches mismatches, draws nothing itself."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from perwatt.errors import ConfigError
from perwatt.train import choose_plan, compute_frontier, gpipe, load_profile, one_f_one_b
from perwatt.train.simulate import all_max_plan, run_simulation, simulate_plan

DATA = Path(__file__).resolve().parents[3] / "shared/data/perseus-sosp24/stage_profile"
GPT3_A100 = DATA / "gpt3-175b+a100_sxm_bf16.csv"
BLOOM_A40 = DATA / "bloom+a40_bf16.csv"

needs_data = pytest.mark.skipif(not GPT3_A100.exists(), reason="shared Perseus data not present")


def _tiny_profile(tmp_path: Path, stages: int = 2) -> Path:
    rows = ["stage,instruction,frequency,time,energy"]
    for s in range(stages):
        for f, tf, ef, tb, eb in ((1410, 0.010, 3.0, 0.020, 6.0), (1200, 0.012, 2.6, 0.024, 5.2)):
            k = 1.0 + 0.5 * s  # the last stage is heavier
            rows.append(f"{s},forward,{f},{tf * k},{ef * k}")
            rows.append(f"{s},backward,{f},{tb * k},{eb * k}")
    p = tmp_path / "tiny.csv"
    p.write_text("\n".join(rows) + "\n")
    return p


def test_hand_computed_two_stage_pipeline(tmp_path: Path) -> None:
    profile = load_profile(_tiny_profile(tmp_path))
    sched = one_f_one_b(2, 1)
    tl = simulate_plan(sched, profile, all_max_plan(sched, profile), p_block_w=10.0)
    # F0 on stage 0 (10 ms), F0 on stage 1 (15 ms), B0 on stage 1 (30 ms), B0 on stage 0 (20 ms)
    assert tl.iteration_time_s == pytest.approx(0.075)
    bars = {(b.stage, b.instruction): b for b in tl.bars}
    assert bars[(1, "forward")].start_s == pytest.approx(0.010)
    assert bars[(0, "backward")].start_s == pytest.approx(0.055)
    assert tl.compute_energy_j == pytest.approx(3 + 6 + 4.5 + 9)
    # stage 0 busy 30 ms, stage 1 busy 45 ms of 75 ms: 10 W x (45 + 30) ms blocked.
    assert tl.blocking_energy_j == pytest.approx(10 * (0.045 + 0.030))
    assert tl.source == "simulated"


@needs_data
@pytest.mark.parametrize("choice", [{"target": "fastest"}, {"straggler_ratio": 1.2}])
# The A40 BLOOM profile is noisy; the planner says so with a warning (its business, not ours).
@pytest.mark.filterwarnings("ignore::perwatt.train.NoisyProfileWarning")
@pytest.mark.parametrize(("path", "p_block"), [(GPT3_A100, 83.64), (BLOOM_A40, 70.38)])
def test_matches_planner_figures(path: Path, p_block: float, choice: dict[str, object]) -> None:
    profile = load_profile(path)
    sched = one_f_one_b(8, 12)
    frontier = compute_frontier(profile, sched, p_block_w=p_block)
    picked = choose_plan(frontier, **choice)  # type: ignore[arg-type]
    tl = simulate_plan(sched, profile, picked.plan, p_block_w=p_block)
    assert tl.iteration_time_s == pytest.approx(picked.plan.replay_time_s, rel=1e-12)
    assert tl.energy_j == pytest.approx(picked.plan.replay_energy_j, rel=1e-12)
    base = simulate_plan(sched, profile, all_max_plan(sched, profile), p_block_w=p_block)
    assert base.iteration_time_s == pytest.approx(frontier.baseline.replay_time_s, rel=1e-12)
    assert base.energy_j == pytest.approx(frontier.baseline.replay_energy_j, rel=1e-12)
    # The plan's model figure (frontier point) is within a few percent of its replay.
    assert tl.energy_j == pytest.approx(picked.point.energy_j, rel=0.03)


@needs_data
def test_run_simulation_report() -> None:
    r = run_simulation(GPT3_A100, stages=8, microbatches=12, p_block_w=83.64, straggler_ratio=1.2)
    assert r.after.energy_j < r.before.energy_j
    assert r.saved_pct > 0
    assert r.after.iteration_time_s <= r.time_limit_s
    assert (r.after.iteration_time_s, r.after.energy_j) == pytest.approx(r.planner_replay)
    assert len(r.frontier) > 10 and r.frontier[0][0] < r.frontier[-1][0]
    # The saving printed is the planner's own (same horizon, same reference).
    picked = choose_plan(
        compute_frontier(load_profile(GPT3_A100), one_f_one_b(8, 12), p_block_w=83.64),
        straggler_ratio=1.2,
    )
    assert r.saved_j == pytest.approx(picked.vs_baseline.saved_j, rel=1e-9)
    assert r.saved_pct == pytest.approx(picked.vs_baseline.saved_pct, rel=1e-9)
    text = "\n".join(r.summary_lines())
    assert "simulated" in text and "kWh per 1,000 iterations" in text


@needs_data
@pytest.mark.filterwarnings("ignore::perwatt.train.NoisyProfileWarning")
@pytest.mark.parametrize(
    ("path", "p_block", "choice"),
    [(BLOOM_A40, 70.38, {"straggler_ratio": 1.1}), (GPT3_A100, 83.64, {"deadline_s": 3.0})],
)
def test_summary_explains_a_replay_past_the_time_limit(
    path: Path, p_block: float, choice: dict[str, float]
) -> None:
    r = run_simulation(path, stages=8, microbatches=12, p_block_w=p_block, **choice)
    notes = [line for line in r.summary_lines() if "after the time limit" in line]
    if r.after.iteration_time_s > r.time_limit_s:
        # BLOOM/A40 at 1.1 x T_min: the replay runs past T' (the planner's model figure)
        assert len(notes) == 1 and "computes on its model" in notes[0]
    else:
        assert notes == []
    # An absolute limit is met by the replay itself; a ratio one may not be.
    assert ("deadline_s" in choice) == (r.after.iteration_time_s <= r.time_limit_s)


def test_gpipe_schedule_runs(tmp_path: Path) -> None:
    profile = load_profile(_tiny_profile(tmp_path, stages=3))
    sched = gpipe(3, 4)
    tl = simulate_plan(sched, profile, all_max_plan(sched, profile), p_block_w=5.0)
    for s in range(3):
        bars = sorted((b for b in tl.bars if b.stage == s), key=lambda b: b.start_s)
        assert all(a.end_s <= b.start_s + 1e-12 for a, b in itertools.pairwise(bars))


def test_mismatches_are_clear(tmp_path: Path) -> None:
    prof_path = _tiny_profile(tmp_path)
    profile = load_profile(prof_path)
    sched = one_f_one_b(2, 2)
    plan = all_max_plan(sched, profile)
    with pytest.raises(ConfigError, match="plan has 1 stages but the schedule has 2"):
        simulate_plan(sched, profile, {0: plan[0]}, p_block_w=1.0)
    bad = {0: plan[0], 1: [(i, m, 999) for i, m, _ in plan[1]]}
    with pytest.raises(ConfigError, match="999 MHz, which the profile does not have"):
        simulate_plan(sched, profile, bad, p_block_w=1.0)
    swapped = {0: plan[0], 1: list(reversed(plan[1]))}
    with pytest.raises(ConfigError, match="plan and schedule do not match"):
        simulate_plan(sched, profile, swapped, p_block_w=1.0)
    with pytest.raises(ConfigError, match="profile has 2 stages but the schedule has 3"):
        simulate_plan(one_f_one_b(3, 2), profile, plan, p_block_w=1.0)
    with pytest.raises(ConfigError, match="has 2 stages but --stages is 4"):
        run_simulation(prof_path, stages=4, microbatches=2, p_block_w=1.0, target="fastest")
    with pytest.raises(ConfigError, match="blocking power"):
        simulate_plan(sched, profile, plan, p_block_w=[1.0])


def test_cli_simulate_writes_html(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from perwatt.cli import train_loop

    parser = argparse.ArgumentParser()
    train_loop.register(parser.add_subparsers(dest="cmd", required=True))
    prof = _tiny_profile(tmp_path, stages=3)
    html = tmp_path / "out.html"
    args = parser.parse_args(
        [
            "simulate",
            str(prof),
            "--stages",
            "3",
            "--microbatches",
            "4",
            "--p-block",
            "20",
            "--max-slowdown",
            "5",
            "--out",
            str(html),
        ]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "before (all max clock)" in out and "after  (plan)" in out
    assert html.read_text().count("<svg") == 7
    with pytest.raises(SystemExit):
        parser.parse_args(
            [
                "simulate",
                str(prof),
                "--stages",
                "3",
                "--microbatches",
                "4",
                "--p-block",
                "20",
                "--target",
                "fastest",
                "--straggler-ratio",
                "1.2",
            ]
        )
