"""The reallocation is exact: every phase's total equals HiGHS's optimum on random trees."""

from __future__ import annotations

import numpy as np
import pytest

from perwatt.facility.allocate import AllocTree, reallocate, subtree_sums

linprog = pytest.importorskip("scipy.optimize").linprog


def random_problem(seed: int, n_el: int = 12, n_co: int = 25) -> dict:
    rng = np.random.default_rng(seed)
    parent = np.array([-1] + [int(rng.integers(0, i)) for i in range(1, n_el)])
    depth = np.zeros(n_el, dtype=np.int64)
    for i in range(1, n_el):
        depth[i] = depth[parent[i]] + 1
    element = rng.integers(0, n_el, n_co)
    gpus = rng.integers(1, 50, n_co)
    gain = rng.uniform(1.0, 1.15, n_co)
    lo = rng.uniform(100, 300, n_co)
    hi = lo + rng.uniform(50, 700, n_co)
    req = rng.uniform(lo - 50, hi + 50)
    flo = rng.uniform(lo, hi)
    prio = rng.integers(0, 3, n_co)
    active = rng.random(n_co) < 0.7
    a = gpus * gain
    tree0 = AllocTree(parent=parent, depth=depth, capacity=np.zeros(n_el))
    at_min = subtree_sums(tree0, element, a * lo)
    at_max = subtree_sums(tree0, element, a * hi)
    # capacities between the minimum and the maximum load: some bind, some do not
    cap = at_min + rng.uniform(0.1, 1.3, n_el) * (at_max - at_min)
    tree = AllocTree(parent=parent, depth=depth, capacity=cap)
    return dict(
        tree=tree,
        element=element,
        gpus=gpus,
        gain=gain,
        min_w=lo,
        max_w=hi,
        request_w=req,
        floor_w=flo,
        priority=prio,
        active=active,
    )


def lp_stages(p: dict) -> list[float]:
    """The same phases as sequential LPs: variables u (to floor), v (to request), z (excess)."""
    tree, el = p["tree"], p["element"]
    lo, hi = p["min_w"], np.maximum(p["max_w"], p["min_w"])
    req = np.clip(p["request_w"], lo, hi)
    flo = np.clip(p["floor_w"], lo, req)
    a = p["gpus"] * p["gain"]
    n = len(a)
    # constraint rows: each element, sum over cohorts in its subtree of a*(u+v+z) <= K - a*lo
    anc = np.zeros((tree.size, n))
    for j in range(n):
        v = int(el[j])
        while v >= 0:
            anc[v, j] = a[j]
            v = int(tree.parent[v])
    base = anc @ lo
    A = np.hstack([anc, anc, anc])
    b = tree.capacity - base
    bounds = [(0, f - lw) for f, lw in zip(flo, lo, strict=True)]
    bounds += [(0, r - f) for r, f in zip(req, flo, strict=True)]
    bounds += [(0, h - r) for h, r in zip(hi, req, strict=True)]
    stages = []
    for part in (0, 1):
        for pr in sorted(set(p["priority"].tolist()), reverse=True):
            c = np.zeros(3 * n)
            c[part * n : (part + 1) * n] = np.where(p["priority"] == pr, a, 0.0)
            stages.append(c)
    stages.append(np.r_[np.zeros(2 * n), np.where(p["active"], a, 0.0)])
    stages.append(np.r_[np.zeros(2 * n), np.where(p["active"], 0.0, a)])
    A_ub, b_ub, opts = A, b, []
    for c in stages:
        res = linprog(-c, A_ub=A_ub, b_ub=b_ub, bounds=bounds, method="highs")
        assert res.status == 0, res.message
        opt = -res.fun
        opts.append(opt)
        A_ub = np.vstack([A_ub, -c])
        b_ub = np.r_[b_ub, -(opt - 1e-7 * max(1.0, abs(opt)))]
    return opts


def ours_stages(p: dict, x: np.ndarray) -> list[float]:
    lo, hi = p["min_w"], np.maximum(p["max_w"], p["min_w"])
    req = np.clip(p["request_w"], lo, hi)
    flo = np.clip(p["floor_w"], lo, req)
    a = p["gpus"] * p["gain"]
    u = np.minimum(x, flo) - lo
    v = np.clip(x - flo, 0, req - flo)
    z = np.maximum(x - req, 0)
    out = []
    for part in (u, v):
        for pr in sorted(set(p["priority"].tolist()), reverse=True):
            out.append(float(np.sum(np.where(p["priority"] == pr, a * part, 0.0))))
    out.append(float(np.sum(np.where(p["active"], a * z, 0.0))))
    out.append(float(np.sum(np.where(p["active"], 0.0, a * z))))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_every_phase_total_equals_the_lp_optimum(seed: int) -> None:
    p = random_problem(seed)
    alloc = reallocate(**p)
    assert alloc.feasible
    x = alloc.caps_w
    tree = p["tree"]
    a = p["gpus"] * p["gain"]
    load = subtree_sums(tree, p["element"], a * x)
    scale = float(np.max(tree.capacity))
    assert np.all(load <= tree.capacity + 1e-9 * scale)
    assert np.all(x >= p["min_w"] - 1e-9)
    assert np.all(x <= np.maximum(p["max_w"], p["min_w"]) + 1e-9)
    ours = ours_stages(p, x)
    ref = lp_stages(p)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6 * scale)


@pytest.mark.parametrize("seed", range(10))
def test_top_tier_is_max_min_fair_like_the_lp(seed: int) -> None:
    """The smallest fraction of the way to the floor, in the top tier, is the LP's max-min."""
    p = random_problem(seed + 100)
    x = reallocate(**p).caps_w
    tree, el = p["tree"], p["element"]
    lo = p["min_w"]
    hi = np.maximum(p["max_w"], lo)
    flo = np.clip(p["floor_w"], lo, np.clip(p["request_w"], lo, hi))
    a = p["gpus"] * p["gain"]
    top = (p["priority"] == p["priority"].max()) & (flo > lo + 1e-9)
    if not top.any():
        pytest.skip("no top-tier cohort with room to its floor")
    frac = np.minimum((x[top] - lo[top]) / (flo[top] - lo[top]), 1.0)
    n = len(a)
    # variables: x (n) and t; maximize t s.t. x_i >= lo + t (flo - lo) for top, x <= flo for top,
    # x = lo for the rest (the floor stage of the top tier runs first)
    anc = np.zeros((tree.size, n))
    for j in range(n):
        v = int(el[j])
        while v >= 0:
            anc[v, j] = a[j]
            v = int(tree.parent[v])
    A = [np.r_[row, 0.0] for row in anc]
    b = list(tree.capacity)
    for i in np.flatnonzero(top):
        row = np.zeros(n + 1)
        row[i] = -1.0
        row[n] = flo[i] - lo[i]
        A.append(row)
        b.append(-lo[i])
    bounds = [(lo[i], flo[i] if top[i] else lo[i]) for i in range(n)] + [(0, 1)]
    c = np.zeros(n + 1)
    c[n] = -1
    res = linprog(c, A_ub=np.array(A), b_ub=np.array(b), bounds=bounds, method="highs")
    assert res.status == 0
    assert frac.min() == pytest.approx(res.x[n], abs=1e-7)


def test_infeasible_minimum_is_reported() -> None:
    p = random_problem(3)
    tree = p["tree"]
    p["tree"] = AllocTree(parent=tree.parent, depth=tree.depth, capacity=tree.capacity * 0)
    alloc = reallocate(**p)
    assert not alloc.feasible
    np.testing.assert_array_equal(alloc.caps_w, p["min_w"])


def test_priority_wins_under_a_shared_limit() -> None:
    tree = AllocTree(
        parent=np.array([-1]), depth=np.array([0]), capacity=np.array([1000.0 + 2 * 100])
    )
    x = reallocate(
        tree,
        element=np.array([0, 0]),
        gpus=np.array([1, 1]),
        gain=np.ones(2),
        min_w=np.array([100.0, 100.0]),
        max_w=np.array([700.0, 700.0]),
        request_w=np.array([700.0, 700.0]),
        floor_w=np.array([100.0, 100.0]),
        priority=np.array([1, 0]),
        active=np.array([True, True]),
    ).caps_w
    np.testing.assert_allclose(x, [700.0, 500.0])
