"""The plan replay simulator: agrees with the planner, catches mismatches, draws nothing itself."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from perwatt.errors import ConfigError
from perwatt.report.gantt import render_html
from perwatt.train import (
    Schedule,
    StageProfile,
    choose_plan,
    compute_frontier,
    gpipe,
    interleaved_one_f_one_b,
    load_profile,
    one_f_one_b,
)
from perwatt.train.plan import plan_pipeline
from perwatt.train.simulate import (
    Timeline,
    TimelineBar,
    all_max_plan,
    run_simulation,
    simulate_plan,
)

PERSEUS = Path(__file__).resolve().parents[2] / "data/perseus-sosp24/stage_profile"
GPT3_A100 = PERSEUS / "gpt3-175b+a100_sxm_bf16.csv"
BLOOM_A40 = PERSEUS / "bloom+a40_bf16.csv"


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


@pytest.mark.filterwarnings("ignore::perwatt.train.NoisyProfileWarning")
@pytest.mark.parametrize(
    ("path", "p_block", "choice"),
    [(BLOOM_A40, 70.38, {"straggler_ratio": 1.1}), (GPT3_A100, 83.64, {"deadline_s": 3.0})],
)
def test_summary_explains_a_replay_past_the_time_limit(
    path: Path, p_block: float, choice: dict[str, Any]
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
    with pytest.raises(ConfigError, match="has 2 stages but stages is 4"):
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


# ---------------------------------------------------------------------- every planner schedule
TINY = Path(__file__).resolve().parent / "data" / "tiny_profile.csv"  # 2 stages, 4 clocks


_SCHEDULES: dict[str, Callable[[int, int], Schedule]] = {
    "gpipe": gpipe,
    "interleaved": lambda s, m: interleaved_one_f_one_b(s, m, 2),
    "1f1b-recompute": lambda s, m: one_f_one_b(s, m, recompute=True),
    "gpipe-recompute": lambda s, m: gpipe(s, m, recompute=True),
    "interleaved-recompute": lambda s, m: interleaved_one_f_one_b(s, m, 2, recompute=True),
}


def _check_against_planner(
    profile: StageProfile, sched: Schedule, p_block: float, choice: dict[str, object]
) -> tuple[Timeline, Timeline]:
    frontier = compute_frontier(profile, sched, p_block_w=p_block)
    picked = choose_plan(frontier, **choice)  # type: ignore[arg-type]
    tl = simulate_plan(sched, profile, picked.plan, p_block_w=p_block)
    assert tl.iteration_time_s == pytest.approx(picked.plan.replay_time_s, rel=1e-12)
    assert tl.energy_j == pytest.approx(picked.plan.replay_energy_j, rel=1e-12)
    base = simulate_plan(sched, profile, all_max_plan(sched, profile), p_block_w=p_block)
    assert base.iteration_time_s == pytest.approx(frontier.baseline.replay_time_s, rel=1e-12)
    assert base.energy_j == pytest.approx(frontier.baseline.replay_energy_j, rel=1e-12)
    # One bar per instruction, at the clock the plan gives it.
    assert len(tl.bars) == sched.num_nodes
    keys = {(b.stage, b.instruction, b.microbatch, b.chunk) for b in tl.bars}
    assert keys == {(n.stage, n.instruction, n.microbatch, n.chunk) for n in sched.nodes}
    planned = {
        (s, p.instruction, p.microbatch, p.chunk): p.freq_mhz
        for s, stage in enumerate(picked.plan.stages)
        for p in stage
    }
    assert {(b.stage, b.instruction, b.microbatch, b.chunk): b.freq_mhz for b in tl.bars} == (
        planned
    )
    return base, tl


def _priced(profile: StageProfile, sched: Schedule, bar: TimelineBar) -> tuple[float, float]:
    """The bar's time and energy straight from the profile, priced as the planner says:
    virtual stage chunk·S + stage (or 1/chunks of the stage), backward + forward if recomputed."""
    S = sched.num_stages
    virtual = profile.num_stages == S * sched.chunks
    ps = bar.chunk * S + bar.stage if virtual else bar.stage
    scale = 1.0 if virtual else 1.0 / sched.chunks
    insts = ["backward", "forward"] if bar.recomputed else [bar.instruction]
    t = e = 0.0
    for inst in insts:
        ip = profile[(ps, inst)]  # type: ignore[index]
        k = [int(f) for f in ip.freq_mhz].index(bar.freq_mhz)
        t, e = t + float(ip.time_s[k]), e + float(ip.energy_j[k])
    return t * scale, e * scale


@pytest.mark.parametrize("choice", [{"target": "fastest"}, {"straggler_ratio": 1.2}])
@pytest.mark.parametrize("name", list(_SCHEDULES))
def test_every_schedule_matches_planner_tiny(name: str, choice: dict[str, object]) -> None:
    profile = load_profile(TINY)
    sched = _SCHEDULES[name](2, 4)
    base, tl = _check_against_planner(profile, sched, 50.0, choice)
    for bar in (*base.bars, *tl.bars):
        assert bar.recomputed == (sched.recompute and bar.instruction == "backward")
        t, e = _priced(profile, sched, bar)
        assert bar.duration_s == pytest.approx(t, rel=1e-12)
        assert bar.energy_j == pytest.approx(e, rel=1e-12)
    assert tl.chunks == sched.chunks and tl.recompute == sched.recompute


def test_recomputed_backward_is_one_bar_priced_forward_plus_backward() -> None:
    # Tiny profile, stage 0 at 1400 MHz: forward 10 ms / 3.00 J, backward 20 ms / 6.00 J.
    profile = load_profile(TINY)
    plain, recomputed = (
        simulate_plan(s, profile, all_max_plan(s, profile), p_block_w=0.0)
        for s in (one_f_one_b(2, 2), one_f_one_b(2, 2, recompute=True))
    )
    assert len(plain.bars) == len(recomputed.bars) == 8
    b0 = next(b for b in recomputed.bars if (b.stage, b.instruction) == (0, "backward"))
    assert b0.recomputed
    assert b0.duration_s == pytest.approx(0.030) and b0.energy_j == pytest.approx(9.0)
    assert not any(b.recomputed for b in plain.bars)
    # The forward bars are the same; every backward grows by its stage's forward.
    assert recomputed.compute_energy_j - plain.compute_energy_j == pytest.approx(2 * (3.00 + 3.60))


def test_interleaved_chunks_are_told_apart() -> None:
    # A 2-stage profile read as 1 GPU x 2 chunks (virtual stages 0 and 1 of the profile) and
    # as 2 GPUs x 2 chunks (each chunk half a profiled stage): every bar says which chunk it is.
    profile = load_profile(TINY)
    for sched in (interleaved_one_f_one_b(1, 3, 2), interleaved_one_f_one_b(2, 4, 2)):
        tl = simulate_plan(sched, profile, all_max_plan(sched, profile), p_block_w=10.0)
        assert {b.chunk for b in tl.bars} == {0, 1}
        tags = [(b.stage, b.tag(tl.chunks)) for b in tl.bars]
        assert len(set(tags)) == len(tags) == sched.num_nodes
        assert {b.tag(tl.chunks) for b in tl.bars if b.microbatch == 0} >= {"F0c0", "F0c1"}
    # Virtual profile: chunk 1 of GPU 0 is profile stage 1 (12 ms forward at 1400 MHz).
    sched = interleaved_one_f_one_b(1, 3, 2)
    tl = simulate_plan(sched, profile, all_max_plan(sched, profile), p_block_w=0.0)
    f0c1 = next(b for b in tl.bars if b.tag(2) == "F0c1")
    assert f0c1.duration_s == pytest.approx(0.012)
    assert next(b for b in tl.bars if b.tag(2) == "F0c0").duration_s == pytest.approx(0.010)


def test_a_plan_for_another_chunk_order_is_refused() -> None:
    profile = load_profile(TINY)
    sched = interleaved_one_f_one_b(2, 2, 2)
    frontier = compute_frontier(profile, sched, p_block_w=10.0)
    plan = {
        s: [(p.instruction, p.microbatch, p.freq_mhz, p.chunk) for p in stage]
        for s, stage in enumerate(frontier.plan_for(0).stages)
    }
    assert simulate_plan(sched, profile, plan, p_block_w=10.0).iteration_time_s == (
        pytest.approx(frontier.plan_for(0).replay_time_s, rel=1e-12)
    )
    # Same instructions and microbatches, chunks swapped: the clocks would land on the wrong
    # chunk, so it is a mismatch, not a silent replay.
    swapped = {s: [(i, m, f, 1 - c) for i, m, f, c in entries] for s, entries in plan.items()}
    with pytest.raises(ConfigError, match="chunk 1, the schedule forward 0 chunk 0"):
        simulate_plan(sched, profile, swapped, p_block_w=10.0)
    with pytest.raises(ConfigError, match=r"\(instruction, microbatch, freq_mhz\[, chunk\]\)"):
        simulate_plan(sched, profile, {0: [("forward", 0)], 1: []}, p_block_w=10.0)


# (profile stages, schedule options): GPipe, recompute, interleaved on a whole-stage profile
# (each chunk half a stage) and on a virtual-stage one (profile stages = stages x chunks).
_RUNS = [
    (2, {"stages": 2, "microbatches": 4, "schedule": "gpipe"}),
    (2, {"stages": 2, "microbatches": 4, "schedule": "interleaved", "chunks": 2}),
    (2, {"stages": 1, "microbatches": 3, "schedule": "interleaved", "chunks": 2}),
    (2, {"stages": 2, "microbatches": 3, "recompute": True}),
    (2, {"stages": 2, "microbatches": 4, "schedule": "gpipe", "recompute": True}),
]


def _html_bars(text: str) -> list[tuple[tuple[int, str, int, int], int, float]]:
    """``((stage, instruction, microbatch, chunk), freq_mhz, duration_ms)`` per drawn bar."""
    pat = re.compile(
        r'class="[fb][^"]*"><title>stage (\d+) (forward|backward) mb (\d+)(?: chunk (\d+))?'
        r"[^:<]*: (\d+) MHz, ([0-9.]+) ms"
    )
    return [
        ((int(m[1]), m[2], int(m[3]), int(m[4] or 0)), int(m[5]), float(m[6]))
        for m in pat.finditer(text)
    ]


@pytest.mark.parametrize(("profile_stages", "opts"), _RUNS)
@pytest.mark.parametrize("choice", [{"target": "fastest"}, {"max_slowdown_pct": 10.0}])
def test_run_simulation_is_the_planners_plan(
    profile_stages: int, opts: dict[str, Any], choice: dict[str, Any]
) -> None:
    assert load_profile(TINY).num_stages == profile_stages
    r = run_simulation(TINY, p_block_w=30.0, **opts, **choice)
    ref = plan_pipeline([TINY], p_block_w=30.0, **opts, **choice).choice
    assert r.after.iteration_time_s == pytest.approx(ref.plan.replay_time_s, rel=1e-12)
    assert r.after.energy_j == pytest.approx(ref.plan.replay_energy_j, rel=1e-12)
    assert r.before.iteration_time_s == pytest.approx(ref.baseline.replay_time_s, rel=1e-12)
    assert r.before.energy_j == pytest.approx(ref.baseline.replay_energy_j, rel=1e-12)
    assert r.saved_j == pytest.approx(ref.vs_baseline.saved_j, rel=1e-9, abs=1e-9)
    assert r.chosen == (ref.point.time_s, ref.point.energy_j)
    assert r.chunks == opts.get("chunks", 1) and r.recompute == opts.get("recompute", False)
    # The HTML draws each timeline twice (by clock, by power): one bar per instruction each
    # time, at the clock and duration of the simulated bar.
    drawn = _html_bars(render_html(r))
    n = len(r.after.bars)
    assert len(drawn) == 4 * n
    for k, tl in enumerate((r.before, r.after, r.before, r.after)):
        chart = drawn[k * n : (k + 1) * n]
        want = [
            ((b.stage, b.instruction, b.microbatch, b.chunk), b.freq_mhz, b.duration_s * 1e3)
            for b in tl.bars
        ]
        assert [(key, f) for key, f, _ in chart] == [(key, f) for key, f, _ in want]
        assert len({key for key, _, _ in chart}) == n  # chunks told apart, none drawn twice
        for (_, _, ms), (_, _, want_ms) in zip(chart, want, strict=True):
            assert ms == pytest.approx(want_ms, abs=0.005)
    summary = "\n".join(r.summary_lines())
    assert ("2 model chunks per GPU" in summary) == (opts.get("chunks", 1) == 2)
    assert ("recompute" in summary) == opts.get("recompute", False)


@pytest.mark.parametrize(
    ("stages", "microbatches", "name"),
    [
        (8, 12, "gpipe"),
        (8, 12, "1f1b-recompute"),
        (8, 16, "interleaved"),  # interleaving needs microbatches a multiple of stages
        (4, 12, "interleaved"),  # 8 profiled stages = 4 GPUs x 2 chunks (virtual stages)
    ],
)
def test_every_schedule_matches_planner_gpt3(stages: int, microbatches: int, name: str) -> None:
    profile = load_profile(GPT3_A100)
    sched = _SCHEDULES[name](stages, microbatches)
    base, tl = _check_against_planner(profile, sched, 83.64, {"straggler_ratio": 1.2})
    # The plan saves energy, both runs counted to the later end (GPUs block at P_block).
    slower_s = tl.iteration_time_s - base.iteration_time_s
    assert tl.energy_j < base.energy_j + sum(base.p_block_w) * slower_s
    for bar in tl.bars[:: max(1, len(tl.bars) // 50)]:
        t, e = _priced(profile, sched, bar)
        assert bar.duration_s == pytest.approx(t, rel=1e-12)
        assert bar.energy_j == pytest.approx(e, rel=1e-12)


def test_gpt3_interleaved_needs_a_multiple_of_stages() -> None:
    with pytest.raises(ConfigError, match=r"multiple of stages \(12 % 8 != 0\)"):
        run_simulation(
            GPT3_A100, stages=8, microbatches=12, p_block_w=83.64, schedule="interleaved", chunks=2
        )


def test_far_deadline_does_not_trip_the_cross_check() -> None:
    # Issue 9: `train simulate … --deadline 1e8` raised "simulator and planner disagree on the
    # energy saved: 3924.0856 J vs 3924.0856 J" from an exact-to-1e-6 J comparison of two
    # differences of ~6.7e10 J figures.
    r = run_simulation(GPT3_A100, stages=8, microbatches=24, p_block_w=83.64, deadline_s=1e8)
    near = run_simulation(GPT3_A100, stages=8, microbatches=24, p_block_w=83.64, deadline_s=100)
    assert r.saved_j == pytest.approx(near.saved_j, rel=1e-12)
    assert r.saved_j == pytest.approx(3924.0856, abs=1e-3)
    text = "\n".join(r.summary_lines())
    # The two energies the saving is computed from are printed, and say what the % is of.
    assert "both counted to 1e+08 s, the time limit" in text
    assert "of the before energy up to 1e+08 s" in text
    before = r.energy_at_horizon_j(r.before)
    assert f"= {before:,.1f} J" in text
    assert r.saved_pct == pytest.approx(100 * r.saved_j / before)
