"""One stranded-power reallocation over ~100,000 GPUs in the full hierarchy, vs HiGHS.

The site: GB200 NVL72 racks under PDUs, 2N UPSes and one feed (``build_site``), every count
expanded so each element is its own row (feed → UPS → PDU → rack → tray), and one cohort *per
GPU* (no aggregation at all). Random requests, floors, priorities (3 tiers) and idle GPUs; the
feed is made tight so every phase binds somewhere. perwatt's allocator is timed over repeats;
the same lexicographic problem is then solved as HiGHS LPs (scipy.optimize.linprog, sparse
matrices, one LP per phase as in tests/facility/test_allocate.py), timed in the same run, and
the phase totals compared.

    python benchmarks/facility_realloc.py --racks 1389 --repeats 20
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from perwatt.facility.allocate import AllocTree, reallocate, subtree_sums  # noqa: E402
from perwatt.facility.presets import build_site, gb200_nvl72  # noqa: E402
from perwatt.facility.topology import expand  # noqa: E402


def problem(racks: int, seed: int) -> dict:
    site = expand(build_site(name="bench", feed_w=1e9, rack=gb200_nvl72("r"), racks=racks))
    fl = site.flat()
    rng = np.random.default_rng(seed)
    rep = np.repeat(np.arange(len(fl.leaves)), fl.leaf_gpus)
    n = len(rep)
    element = fl.leaves[rep]
    gain = fl.self_gain[element]
    lo = np.full(n, 350.0)
    hi = np.full(n, 1200.0)
    active = rng.random(n) < 0.9
    req = np.where(active, rng.uniform(500, 1200, n), 150.0)
    flo = rng.uniform(350, 900, n)
    prio = rng.integers(0, 3, n)
    other = (fl.leaf_other_power_w / fl.leaf_gpus)[rep]
    cap = fl.capacity_w * fl.self_gain
    tree0 = AllocTree(parent=fl.parent, depth=fl.depth, capacity=cap)
    cap = cap - subtree_sums(tree0, element, other * gain)
    # a tight feed: 80% of what every GPU at its request would need
    need = subtree_sums(tree0, element, gain * req)
    cap[0] = min(cap[0], 0.8 * need[0] + subtree_sums(tree0, element, gain * lo)[0] * 0.2)
    tree = AllocTree(parent=fl.parent, depth=fl.depth, capacity=cap)
    return dict(
        tree=tree,
        element=element,
        gpus=np.ones(n, dtype=np.int64),
        gain=gain,
        min_w=lo,
        max_w=hi,
        request_w=req,
        floor_w=flo,
        priority=prio,
        active=active,
    )


def lp_phases(p: dict) -> tuple[list[float], float]:
    from scipy.optimize import linprog
    from scipy.sparse import csr_matrix, hstack, vstack

    tree, el = p["tree"], p["element"]
    lo, hi = p["min_w"], p["max_w"]
    req = np.clip(p["request_w"], lo, hi)
    flo = np.clip(p["floor_w"], lo, req)
    a = p["gpus"] * p["gain"]
    n = len(a)
    rows, cols, vals = [], [], []
    for j in range(n):
        v = int(el[j])
        while v >= 0:
            rows.append(v)
            cols.append(j)
            vals.append(a[j])
            v = int(tree.parent[v])
    anc = csr_matrix((vals, (rows, cols)), shape=(tree.size, n))
    base = anc @ lo
    A = hstack([anc, anc, anc]).tocsr()
    b = tree.capacity - base
    bounds = np.vstack([np.r_[np.zeros(3 * n)], np.r_[flo - lo, req - flo, hi - req]]).T
    stages = []
    for part in (0, 1):
        for pr in (2, 1, 0):
            c = np.zeros(3 * n)
            c[part * n : (part + 1) * n] = np.where(p["priority"] == pr, a, 0.0)
            stages.append(c)
    stages.append(np.r_[np.zeros(2 * n), np.where(p["active"], a, 0.0)])
    stages.append(np.r_[np.zeros(2 * n), np.where(p["active"], 0.0, a)])
    A_ub, b_ub, opts = A, b, []
    t0 = time.perf_counter()
    for c in stages:
        res = linprog(-c, A_ub=A_ub, b_ub=b_ub, bounds=bounds, method="highs")
        if res.status != 0:
            raise RuntimeError(res.message)
        opt = -res.fun
        opts.append(opt)
        A_ub = vstack([A_ub, csr_matrix(-c)]).tocsr()
        b_ub = np.r_[b_ub, -(opt - 1e-7 * max(1.0, abs(opt)))]
    return opts, time.perf_counter() - t0


def ours_phases(p: dict, x: np.ndarray) -> list[float]:
    lo, hi = p["min_w"], p["max_w"]
    req = np.clip(p["request_w"], lo, hi)
    flo = np.clip(p["floor_w"], lo, req)
    a = p["gpus"] * p["gain"]
    u = np.minimum(x, flo) - lo
    v = np.clip(x - flo, 0, req - flo)
    z = np.maximum(x - req, 0)
    out = []
    for part in (u, v):
        for pr in (2, 1, 0):
            out.append(float(np.sum(np.where(p["priority"] == pr, a * part, 0.0))))
    out.append(float(np.sum(np.where(p["active"], a * z, 0.0))))
    out.append(float(np.sum(np.where(p["active"], 0.0, a * z))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--racks", type=int, default=1389)  # 1389 x 72 = 100,008 GPUs
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--no-lp", action="store_true")
    args = ap.parse_args()
    p = problem(args.racks, 0)
    n = len(p["element"])
    reallocate(**p)  # warm-up
    times, cpu = [], []
    for _ in range(args.repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        x = reallocate(**p).caps_w
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    med = float(np.median(times))
    print(
        f"machine: {platform.processor() or platform.machine()}, {platform.python_version()}, "
        f"numpy {np.__version__}"
    )
    print(f"GPUs (one cohort each): {n}, tree elements: {p['tree'].size}")
    print(
        f"perwatt reallocate: median {med * 1e3:.1f} ms, min {min(times) * 1e3:.1f} ms "
        f"over {args.repeats} repeats; CPU time median {np.median(cpu) * 1e3:.1f} ms, "
        f"min {min(cpu) * 1e3:.1f} ms (load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores)"
    )
    if args.no_lp:
        return
    import scipy

    ref, lp_s = lp_phases(p)
    ours = ours_phases(p, x)
    # each LP keeps the earlier optima with a 1e-7 relative slack, so compare against the
    # scale of the problem (the feed's capacity in root-referred watts)
    scale = float(p["tree"].capacity[0])
    rel = max(abs(o - r) for o, r in zip(ours, ref, strict=True)) / scale
    print(
        "phase totals (perwatt / HiGHS, root-referred W):",
        ", ".join(f"{o:.6g}/{r:.6g}" for o, r in zip(ours, ref, strict=True)),
    )
    print(f"HiGHS (scipy {scipy.__version__} linprog, 8 sequential LPs): {lp_s:.2f} s")
    print(
        f"largest phase-total difference / feed capacity: {rel:.1e}; HiGHS/perwatt wall "
        f"{lp_s / med:.0f}x"
    )


if __name__ == "__main__":
    main()
