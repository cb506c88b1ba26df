"""The frontier solver: exact against a MILP on small DAGs, plans consistent with points."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from perwatt.errors import ConfigError, DataFormatError
from perwatt.train.frontier import (
    Frontier,
    NoisyProfileWarning,
    Solver,
    compiled_solver_available,
    compute_frontier,
    operation_options,
    replay,
)
from perwatt.train.profile import StageProfile, load_profile
from perwatt.train.schedule import Schedule, gpipe, interleaved_one_f_one_b, one_f_one_b

DATA = Path(__file__).resolve().parent / "data"
PERSEUS = Path(__file__).resolve().parents[2] / "data/perseus-sosp24"


@pytest.fixture(scope="module")
def tiny() -> StageProfile:
    return load_profile(DATA / "tiny_profile.csv")


def _milp(schedule: Schedule, choices: list[list[tuple[int, float]]], horizon_q: int) -> float:
    """Exact discrete optimum: each node picks one (duration, cost); makespan ≤ horizon."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    n = schedule.num_nodes
    col = []  # (node, duration, cost)
    for i, opts in enumerate(choices):
        col.extend((i, q, c) for q, c in opts)
    ny = len(col)
    nvar = ny + n  # y's, then start times
    cost = np.array([c for _, _, c in col] + [0.0] * n)
    rows, lo, hi = [], [], []

    def row() -> np.ndarray:
        return np.zeros(nvar)

    for i in range(n):
        r = row()
        for k, (node, _, _) in enumerate(col):
            if node == i:
                r[k] = 1.0
        rows.append(r), lo.append(1.0), hi.append(1.0)
    dur = [[(k, q) for k, (node, q, _) in enumerate(col) if node == i] for i in range(n)]
    for u, v in schedule.edges.tolist():
        r = row()
        r[ny + v], r[ny + u] = 1.0, -1.0
        for k, q in dur[u]:
            r[k] = -q
        rows.append(r), lo.append(0.0), hi.append(np.inf)
    for i in range(n):
        r = row()
        r[ny + i] = 1.0
        for k, q in dur[i]:
            r[k] = q
        rows.append(r), lo.append(-np.inf), hi.append(float(horizon_q))
    integrality = np.array([1] * ny + [0] * n)
    bounds = Bounds(np.zeros(nvar), np.array([1.0] * ny + [np.inf] * n))
    res = milp(
        cost,
        constraints=LinearConstraint(np.array(rows), np.array(lo), np.array(hi)),
        integrality=integrality,
        bounds=bounds,
    )
    assert res.success, res.message
    return float(res.fun)


def _model_choices(fr: Frontier) -> list[list[tuple[int, float]]]:
    out = []
    for k in fr.node_spec.tolist():
        q = fr.options[k].q
        out.append([(int(q[0]) + j, float(c)) for j, c in enumerate(fr.cost_tables[k])])
    return out


SCHEDULES = [
    pytest.param(lambda: one_f_one_b(2, 3), id="1f1b-2x3"),
    pytest.param(lambda: gpipe(2, 2), id="gpipe-2x2"),
    pytest.param(lambda: interleaved_one_f_one_b(2, 2, 2), id="interleaved-2x2x2"),
    pytest.param(lambda: one_f_one_b(2, 2, recompute=True), id="1f1b-recompute"),
]


@pytest.mark.parametrize("make", SCHEDULES)
@pytest.mark.parametrize("model", ["exponential", "convex-hull"])
def test_every_point_is_the_milp_optimum_of_the_model(
    tiny: StageProfile, make: object, model: str
) -> None:
    schedule = make()  # type: ignore[operator]
    fr = compute_frontier(tiny, schedule, p_block_w=60.0, cost_model=model)  # type: ignore[arg-type]
    choices = _model_choices(fr)
    psum = sum(fr.p_block_w)
    worst = 0.0
    sample = [*fr.points[:: max(1, len(fr.points) // 10)], fr.slowest]
    for p in sample:
        q = round(p.time_s / fr.time_quantum_s)
        best = _milp(schedule, choices, q) + psum * p.time_s
        worst = max(worst, abs(p.energy_j - best))
        # cut capacities are integers of 1e-5 J, like lowtime's 1e-6 J rounding
        assert p.energy_j == pytest.approx(best, abs=1e-3), f"T={p.time_s}"
    assert worst < 1e-3


def test_frontier_against_exact_discrete_optimum() -> None:
    """Perseus profile, 3 stages x 3 microbatches: the planner's plans vs the true optimum.

    The convex-hull model is a relaxation, so its frontier lower-bounds the discrete optimum;
    every plan (the slowest clock within each planned duration) is a feasible discrete
    solution, so it upper-bounds it. The gap is printed (see BENCHMARKS.md).
    """
    path = PERSEUS / "stage_profile/gpt3-175b+a100_sxm_bf16.csv"
    full = load_profile(path)
    prof = StageProfile(entries={k: v for k, v in full.entries.items() if k[0] < 3})
    schedule = one_f_one_b(3, 3)
    pb = 83.64
    gaps = []
    for model in ("convex-hull", "exponential"):
        fr = compute_frontier(prof, schedule, p_block_w=pb, cost_model=model)  # type: ignore[arg-type]
        discrete = []
        for k in fr.node_spec.tolist():
            o = fr.options[k]
            discrete.append(
                [
                    (int(q), float(e - pb * q * fr.time_quantum_s))
                    for q, e in zip(o.q, o.energy_j, strict=True)
                ]
            )
        for p in fr.points[:: max(1, len(fr.points) // 12)]:
            q = round(p.time_s / fr.time_quantum_s)
            exact = _milp(schedule, discrete, q) + 3 * pb * p.time_s
            d = fr.durations_q(p)
            picked = []
            for i, k in enumerate(fr.node_spec.tolist()):
                o = fr.options[k]
                j = max(1, int(np.searchsorted(o.q, d[i], side="right"))) - 1
                picked.append((int(o.q[j]), float(o.energy_j[j] - pb * o.q[j] * fr.time_quantum_s)))
            plan_cost = sum(c for _, c in picked) + 3 * pb * p.time_s
            assert plan_cost >= exact - 1e-6
            if model == "convex-hull":
                assert p.energy_j <= exact + 1e-3
            gaps.append((model, p.time_s, (plan_cost - exact) / exact))
    worst = max(g for _, _, g in gaps)
    print(f"worst plan-vs-MILP gap: {worst:.3%}")
    assert worst < 0.02


def test_plan_matches_its_point(tiny: StageProfile) -> None:
    schedule = one_f_one_b(2, 4)
    fr = compute_frontier(tiny, schedule, p_block_w=50.0)
    for p in (fr.fastest, fr.points[len(fr.points) // 2], fr.slowest):
        d = fr.durations_q(p)
        t, _ = replay(schedule, d.astype(float))
        assert round(t) == round(p.time_s / fr.time_quantum_s)
        model = sum(
            fr.cost_tables[k][int(di) - int(fr.options[k].q[0])]
            for k, di in zip(fr.node_spec.tolist(), d, strict=True)
        )
        assert p.energy_j == pytest.approx(model + 2 * 50.0 * p.time_s, rel=1e-12)
        plan = fr.plan_for(p)
        assert [[x.freq_mhz for x in st] for st in plan.stages] == fr.frequencies_for(p)
        assert [(x.instruction, x.microbatch) for x in plan.stages[1]] == [
            (n.instruction, n.microbatch) for n in schedule.order[1]
        ]
        assert plan.for_stage(0)[0][0] == "forward"
        # each clock's real time is within one quantum of the duration planned for it
        slack = (2 * schedule.num_microbatches + 2) * fr.time_quantum_s
        assert abs(plan.replay_time_s - p.time_s) < slack
    times = [p.time_s for p in fr.points]
    assert times == sorted(times)
    assert fr.t_min_s < fr.t_max_s


def test_baseline_is_all_max_clock(tiny: StageProfile) -> None:
    schedule = one_f_one_b(2, 3)
    fr = compute_frontier(tiny, schedule, p_block_w=50.0)
    assert all(x.freq_mhz == 1400 for st in fr.baseline.stages for x in st)
    t_f = np.array([0.010, 0.020] * 3 + [0.012, 0.024] * 3)
    assert fr.baseline.replay_time_s > 0
    # energy = compute + P_block * idle, idle = T - busy per stage
    busy = [0.03 * 3, 0.036 * 3]
    compute = 3 * (3.0 + 6.0) + 3 * (3.6 + 7.2)
    expect = compute + sum(50.0 * (fr.baseline.replay_time_s - b) for b in busy)
    assert fr.baseline.replay_energy_j == pytest.approx(expect)
    assert len(t_f) == schedule.num_nodes


def test_heterogeneous_blocking_power(tiny: StageProfile) -> None:
    schedule = one_f_one_b(2, 3)
    a = compute_frontier(tiny, schedule, p_block_w=[80.0, 40.0])
    assert a.p_block_w == (80.0, 40.0)
    for p in a.points:
        d = a.durations_q(p)
        model = sum(
            a.cost_tables[k][int(di) - int(a.options[k].q[0])]
            for k, di in zip(a.node_spec.tolist(), d, strict=True)
        )
        assert p.energy_j == pytest.approx(model + 120.0 * p.time_s)


def test_pareto_filter_and_quantisation() -> None:
    f = np.array([1400, 1300, 1200, 1100, 1000])
    t = np.array([0.0100, 0.0101, 0.0115, 0.0100, 0.0140])
    e = np.array([5.0, 4.5, 4.0, 4.8, 3.9])
    o = operation_options(f, t, e, quantum_s=1e-3)
    # Nothing is strictly slower *and* costlier here; 1400, 1300 and 1100 MHz all land on
    # q = 10 and, as in lowtime, the costliest of a quantum is kept (1400 MHz, 5.0 J).
    assert o.q.tolist() == [10, 11, 14]
    assert o.freq_mhz.tolist() == [1400, 1200, 1000]
    assert o.knob_for(12) == 1200 and o.knob_for(9) == 1400 and o.knob_for(99) == 1000
    # a strictly dominated point is dropped before quantisation
    o2 = operation_options(
        f[[0, 2, 4]], np.array([0.010, 0.0115, 0.0140]), np.array([5.0, 5.5, 3.9]), quantum_s=1e-3
    )
    assert o2.freq_mhz.tolist() == [1400, 1000]
    assert o.dropped == 2


def test_noise_factor_drops_small_savings_but_keeps_the_fastest_clock() -> None:
    """With noise factor k, a slower clock stays only if it is cheaper than every faster kept
    one by more than k; the fastest clock always stays (T_min does not move), and k > 1 never
    empties the set (lowtime's rule, which also compares an option with itself, does)."""
    f = np.array([1400, 1300, 1200, 1100, 1000], dtype=np.int64)
    t = np.array([0.0100, 0.0104, 0.0110, 0.0120, 0.0140])
    e = np.array([5.00, 4.95, 4.60, 4.55, 4.00])  # saves 1%, 8%, 1%, 12% vs the kept faster
    plain = operation_options(f, t, e, quantum_s=1e-4)
    assert plain.freq_mhz.tolist() == [1400, 1300, 1200, 1100, 1000]
    noisy = operation_options(f, t, e, quantum_s=1e-4, noise_factor=1.02)
    assert noisy.freq_mhz.tolist() == [1400, 1200, 1000]
    assert noisy.dropped == 2
    # one clock, or all within the noise of each other: the fastest stays
    tied = operation_options(f[:2], t[:2], np.array([5.0, 4.99]), quantum_s=1e-4, noise_factor=1.5)
    assert tied.freq_mhz.tolist() == [1400]


def test_noisy_profile_warns() -> None:
    rows = []
    for s in range(2):
        for inst, base in (("forward", 0.01), ("backward", 0.02)):
            for f, k in ((1400, 1.0), (1200, 1.1), (1000, 0.9), (800, 1.6)):
                rows.append((s, inst, f, base * k, 3.0 * (2.2 - k)))
    prof = StageProfile.from_rows(rows)
    with pytest.warns(NoisyProfileWarning, match="faster than a higher"):
        fr = compute_frontier(prof, one_f_one_b(2, 2), p_block_w=50.0)
    assert len(fr.points) > 1


def test_clean_profile_does_not_warn(tiny: StageProfile) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compute_frontier(tiny, one_f_one_b(2, 2), p_block_w=50.0)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"time_quantum_s": 0.0}, ConfigError, "quantum"),
        ({"time_quantum_s": math.nan}, ConfigError, "quantum"),
        ({"p_block_w": [1.0, 2.0, 3.0]}, ConfigError, "one blocking power per stage"),
        ({"p_block_w": -1.0}, ConfigError, "≥ 0"),
        ({"cost_model": "cubic"}, ConfigError, "cost model"),
        ({"noise_factor": 0.5}, ConfigError, "noise"),
        ({"noise_factor": math.nan}, ConfigError, "noise"),
        ({"time_quantum_s": 0.05}, ConfigError, "shorter than the time quantum"),
    ],
)
def test_bad_arguments(
    tiny: StageProfile, kwargs: dict[str, object], exc: type, match: str
) -> None:
    args: dict[str, object] = {"p_block_w": 50.0}
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        compute_frontier(tiny, one_f_one_b(2, 2), **args)  # type: ignore[arg-type]


def test_stage_count_mismatch(tiny: StageProfile) -> None:
    with pytest.raises(DataFormatError, match="stages"):
        compute_frontier(tiny, one_f_one_b(3, 2), p_block_w=50.0)


def test_single_clock_cannot_be_planned() -> None:
    rows = [(s, i, 1400, 0.01 * (1 + s), 3.0) for s in range(2) for i in ("forward", "backward")]
    with pytest.raises(ConfigError, match="cannot be reduced"):
        compute_frontier(StageProfile.from_rows(rows), one_f_one_b(2, 2), p_block_w=50.0)


@pytest.mark.parametrize(
    "schedule",
    [one_f_one_b(4, 6), gpipe(3, 4), interleaved_one_f_one_b(2, 4, chunks=2)],
    ids=["1f1b", "gpipe", "interleaved"],
)
def test_large_network_path_matches_small(
    monkeypatch: pytest.MonkeyPatch, schedule: Schedule
) -> None:
    """The SciPy paths (one max-flow call per step for mid-sized critical networks, one BFS
    per augmenting path for the largest) give the same frontier, point for point and plan
    for plan, as the plain-Python augmentation (small ones)."""
    import perwatt.train.solver as solver_mod

    prof = load_profile(PERSEUS / "stage_profile/gpt3-175b+a100_sxm_bf16.csv")
    n_prof = schedule.num_stages * schedule.chunks
    prof = StageProfile(entries={k: v for k, v in prof.entries.items() if k[0] < n_prof})
    monkeypatch.setattr(solver_mod, "_PY_BFS_MAX_ARCS", 10**9)
    small = compute_frontier(prof, schedule, p_block_w=83.64, solver="python")
    for maxflow_max_arcs in (10**9, 0):  # one max-flow call per step; one BFS per path
        monkeypatch.setattr(solver_mod, "_PY_BFS_MAX_ARCS", 0)
        monkeypatch.setattr(solver_mod, "_MAXFLOW_MAX_ARCS", maxflow_max_arcs)
        large = compute_frontier(prof, schedule, p_block_w=83.64, solver="python")
        assert large.solver == "python"
        assert [p.time_s for p in small.points] == [p.time_s for p in large.points]
        assert [p.energy_j for p in small.points] == pytest.approx(
            [p.energy_j for p in large.points], rel=1e-12
        )
        for k in range(0, len(small.points), 7):
            assert np.array_equal(small.durations_q(k), large.durations_q(k))


def test_batched_exponential_fits_match_one_by_one() -> None:
    """Fitting several (stage, instruction) series at once gives each series' own fit, and
    recovers known parameters from exact data."""
    from perwatt.train.frontier import _fit_exponential, _fit_exponential_batch

    q = np.array([[10.0, 12, 15, 19, 24, 30], [20.0, 21, 23, 26, 30, 35]])
    truth = [(3.0, -0.2, 1.5), (0.5, -0.05, -2.0)]
    y = np.stack(
        [a * np.exp(b * (qq - qq.max())) + c for (a, b, c), qq in zip(truth, q, strict=True)]
    )
    a_s, b_s, c_s = _fit_exponential_batch(q, y)
    for k, (a, b, c) in enumerate(truth):
        assert (a_s[k], b_s[k], c_s[k]) == pytest.approx((a, b, c), rel=1e-4, abs=1e-6)
        one = _fit_exponential(q[k], y[k])
        assert one == pytest.approx((a_s[k], b_s[k], c_s[k]), rel=1e-9, abs=1e-12)


def _gpt3(stages: int) -> StageProfile:
    prof = load_profile(PERSEUS / "stage_profile/gpt3-175b+a100_sxm_bf16.csv")
    return StageProfile(entries={k: v for k, v in prof.entries.items() if k[0] < stages})


def _assert_same_frontier(a: Frontier, b: Frontier) -> None:
    assert a.complete == b.complete
    assert [p.time_s for p in a.points] == [p.time_s for p in b.points]
    assert [p.energy_j for p in a.points] == pytest.approx(
        [p.energy_j for p in b.points], rel=1e-12
    )
    for k in range(len(a.points)):
        assert np.array_equal(a.durations_q(k), b.durations_q(k)), k


COMPILED = pytest.mark.skipif(
    not compiled_solver_available(), reason="compiled sweep not built (no C compiler)"
)


@COMPILED
@pytest.mark.parametrize(
    ("schedule", "kwargs"),
    [
        (one_f_one_b(8, 12), {}),
        (one_f_one_b(4, 8, recompute=True), {}),
        (gpipe(4, 6), {}),
        (interleaved_one_f_one_b(4, 4, chunks=2), {}),
        (one_f_one_b(4, 6), {"p_block_w": [60.0, 90.0, 75.0, 83.64]}),
        (one_f_one_b(4, 6), {"cost_model": "convex-hull"}),
        (one_f_one_b(4, 6), {"noise_factor": 1.05}),
        (one_f_one_b(8, 12), {"stop_at_s": 3.6}),
        (one_f_one_b(3, 5), {"time_quantum_s": 2e-4}),
        (one_f_one_b(1, 4), {}),
    ],
    ids=[
        "1f1b-8x12",
        "recompute",
        "gpipe",
        "interleaved",
        "heterogeneous",
        "convex-hull",
        "noise-factor",
        "partial",
        "fine-quantum",
        "one-stage-chain",
    ],
)
def test_compiled_sweep_matches_python(schedule: Schedule, kwargs: dict[str, object]) -> None:
    """The C port of the sweep gives the Python reference's frontier: the same times, the same
    energies, the same durations (so the same plans) at every point."""
    stages = schedule.num_stages * (schedule.chunks if schedule.chunks > 1 else 1)
    prof = _gpt3(stages)
    kw: dict[str, object] = {"p_block_w": 83.64, **kwargs}
    c = compute_frontier(prof, schedule, solver="compiled", **kw)  # type: ignore[arg-type]
    py = compute_frontier(prof, schedule, solver="python", **kw)  # type: ignore[arg-type]
    assert (c.solver, py.solver) == ("compiled", "python")
    if "stop_at_s" in kwargs:
        assert not c.complete
    _assert_same_frontier(c, py)
    assert c.plan_for(0).stages == py.plan_for(0).stages


def test_auto_solver_uses_the_compiled_sweep_when_built(tiny: StageProfile) -> None:
    fr = compute_frontier(tiny, one_f_one_b(2, 3), p_block_w=50.0)
    assert fr.solver == ("compiled" if compiled_solver_available() else "python")


@pytest.mark.skipif(
    os.environ.get("PERWATT_REQUIRE_COMPILED") != "1",
    reason="set PERWATT_REQUIRE_COMPILED=1 (make test does) to require the C build",
)
def test_compiled_sweep_is_built() -> None:
    """`make test` installs with a C compiler present: the fast path must have been built,
    or the speed figures in BENCHMARKS.md would silently not apply."""
    assert compiled_solver_available(), "perwatt/train/_sweep.c was not built: pip install -e ."


def test_compiled_solver_missing_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tiny: StageProfile
) -> None:
    import perwatt.train.solver as solver_mod

    monkeypatch.setattr(solver_mod, "_compiled_sweep", None)
    with pytest.raises(ConfigError, match="compiled frontier sweep is not built"):
        compute_frontier(tiny, one_f_one_b(2, 3), p_block_w=50.0, solver="compiled")
    fr = compute_frontier(tiny, one_f_one_b(2, 3), p_block_w=50.0)  # auto falls back
    assert fr.solver == "python"
    with pytest.raises(ConfigError, match="unknown solver"):
        compute_frontier(tiny, one_f_one_b(2, 3), p_block_w=50.0, solver="fast")  # type: ignore[arg-type]


@COMPILED
def test_compiled_sweep_rejects_malformed_arrays() -> None:
    """The C entry point checks lengths and index ranges before it reads anything."""
    from perwatt.train import _sweep

    i = np.zeros(2, dtype=np.int64)
    good = dict(
        order=np.array([0, 1]),
        pred_ptr=np.array([0, 0, 1]),
        pred_idx=np.array([0]),
        succ_ptr=np.array([0, 1, 1]),
        succ_idx=np.array([1]),
        eu=np.array([0]),
        ev=np.array([1]),
        qmin=np.array([1, 1]),
        qmax=np.array([3, 3]),
        flat=np.array([3.0, 2.0, 1.0, 3.0, 2.0, 1.0]),
        base=np.array([-1, 2]),
    )
    args = [
        np.ascontiguousarray(v, dtype=np.float64 if k == "flat" else np.int64)
        for k, v in good.items()
    ]
    steps_t, *_ = _sweep.sweep(*args, -1)
    # a chain of two instructions of 3 quanta, each can go down to 1: makespan 6 → 2
    assert np.frombuffer(steps_t, dtype=np.int64).tolist() == [5, 4, 3, 2]
    bad_len = list(args)
    bad_len[7] = i[:1]  # qmin too short
    with pytest.raises(ValueError, match="qmin"):
        _sweep.sweep(*bad_len, -1)
    bad_idx = list(args)
    bad_idx[6] = np.array([7], dtype=np.int64)  # edge to a node that does not exist
    with pytest.raises(ValueError, match="out of range"):
        _sweep.sweep(*bad_idx, -1)
    bad_base = list(args)
    bad_base[10] = np.array([-1, 5], dtype=np.int64)  # cost table read past its end
    with pytest.raises(ValueError, match="out of range"):
        _sweep.sweep(*bad_base, -1)
    bad_base[10] = np.array([2**63 - 1, 2], dtype=np.int64)  # would overflow a naive check
    with pytest.raises(ValueError, match="out of range"):
        _sweep.sweep(*bad_base, -1)
    not_topo = list(args)
    not_topo[0] = np.array([1, 0], dtype=np.int64)  # edge 0 → 1 but 1 comes first
    with pytest.raises(ValueError, match="topological"):
        _sweep.sweep(*not_topo, -1)
    not_topo[0] = np.array([0, 0], dtype=np.int64)  # not a permutation
    with pytest.raises(ValueError, match="topological"):
        _sweep.sweep(*not_topo, -1)
    nan = list(args)
    nan[9] = np.array([3.0, np.nan, 1.0, 3.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="finite"):
        _sweep.sweep(*nan, -1)
    wrong_type = list(args)
    wrong_type[9] = np.arange(6, dtype=np.int64)  # int64 bits are not float64 costs
    with pytest.raises(TypeError, match="float64"):
        _sweep.sweep(*wrong_type, -1)
    wrong_type = list(args)
    wrong_type[7] = np.array([1.0, 1.0])
    with pytest.raises(TypeError, match="int64"):
        _sweep.sweep(*wrong_type, -1)


def _random_profile(rng: np.random.Generator, stages: int) -> StageProfile:
    """Per (stage, instruction) 4–9 clocks: time grows as the clock falls, energy is U-shaped
    with noise, so the option sets, fits and critical networks vary from case to case."""
    rows = []
    for s in range(stages):
        k = int(rng.integers(4, 10))
        freqs = np.linspace(1410, 810, k).round().astype(int)
        for inst, scale in (("forward", 1.0), ("backward", 2.0)):
            t0 = scale * rng.uniform(0.01, 0.03)
            for j, f in enumerate(freqs):
                t = t0 * (1410 / f) ** rng.uniform(0.3, 1.0)
                e = t0 * 300 * (1 + 0.4 * (j / k - 0.6) ** 2) * rng.uniform(0.97, 1.03)
                rows.append((s, inst, int(f), float(t), float(e)))
    return StageProfile.from_rows(rows)


@COMPILED
@pytest.mark.parametrize("seed", range(24))
def test_compiled_sweep_matches_python_on_random_profiles(seed: int) -> None:
    """Random profiles and schedules reach the rarer branches of the sweep (infeasible warm
    flows, rechecks after a backward-crossing dependency, chains that become networks)."""
    rng = np.random.default_rng(seed)
    stages, mbs = int(rng.integers(2, 5)), int(rng.integers(2, 7))
    kind = seed % 3
    schedule = (
        one_f_one_b(stages, mbs)
        if kind == 0
        else gpipe(stages, mbs)
        if kind == 1
        else interleaved_one_f_one_b(stages, stages * (1 + mbs % 2), chunks=2)
    )
    prof = _random_profile(rng, stages * schedule.chunks)
    pb = [float(x) for x in rng.uniform(20, 120, stages)]
    quantum = float(rng.choice([1e-3, 5e-4]))
    model = "exponential" if seed % 4 else "convex-hull"
    kw = {"p_block_w": pb, "time_quantum_s": quantum, "cost_model": model}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoisyProfileWarning)
        try:
            py = compute_frontier(prof, schedule, solver="python", **kw)  # type: ignore[arg-type]
        except ConfigError:
            with pytest.raises(ConfigError):
                compute_frontier(prof, schedule, solver="compiled", **kw)  # type: ignore[arg-type]
            return
        c = compute_frontier(prof, schedule, solver="compiled", **kw)  # type: ignore[arg-type]
    _assert_same_frontier(c, py)


@pytest.mark.parametrize(
    "solver", [pytest.param("compiled", marks=COMPILED), pytest.param("python")]
)
def test_progress_is_the_same_from_both_sweeps(solver: Solver) -> None:
    # The compiled and the Python sweep report at the same steps with the same share swept;
    # an error raised by the callback stops the sweep (as Ctrl-C does).
    prof = _gpt3(8)
    seen: list[float] = []
    fr = compute_frontier(
        prof, one_f_one_b(8, 12), p_block_w=83.64, solver=solver, progress=seen.append
    )
    assert len(seen) == len(fr.points) // 256 == 2
    assert seen == pytest.approx([256 / 641.0, 512 / 641.0], abs=2 / 641)

    def stop(fraction: float) -> None:
        raise RuntimeError(f"stopped at {fraction:.2f}")

    with pytest.raises(RuntimeError, match=r"stopped at 0\.40"):
        compute_frontier(prof, one_f_one_b(8, 12), p_block_w=83.64, solver=solver, progress=stop)
