"""perwatt's frontier planner vs lowtime 0.3.0 (the Perseus reference planner), same inputs.

Each measurement runs in its own subprocess (``--worker``) so peak memory (``ru_maxrss``) is the
planner's own. Both sides start from the same stage profile CSV already on disk and end with the
whole frontier in memory; both times include Pareto filtering, exponential fits and the DAG.
lowtime is driven exactly as Perseus' ``examples/perseus.py`` drives it (ExponentialModel,
Synchronous1F1B, PhillipsDessouky). The two frontiers are compared point by point.

    python benchmarks/train_planner.py --mb 12 24 48 96 --lowtime-max-mb 24
    # the big lowtime cases once, in the background, each under `timeout`:
    timeout 3600 python benchmarks/train_planner.py --worker lowtime --mb 96 --save lt96.json &
    python benchmarks/train_planner.py --mb 12 24 48 96 --lowtime-max-mb 24 \\
        --lowtime-results lt48.json lt96.json

Output: a Markdown table on stdout (and ``--md FILE``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PERSEUS = ROOT / "data/perseus-sosp24"  # the Perseus artifact data, shipped in the repository
PROFILE = PERSEUS / "stage_profile/gpt3-175b+a100_sxm_bf16.csv"
P_BLOCK_W = 83.64  # A100 SXM blocking power measured by Perseus (README of the artifact data)
STAGES = 8


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def worker_perwatt(
    mb: int, profile: Path, quantum_s: float, solver: str = "auto"
) -> dict[str, object]:
    sys.path.insert(0, str(ROOT))
    import scipy.sparse.csgraph  # noqa: F401  (imported before timing, like lowtime's modules)

    from perwatt.train import compute_frontier, load_profile, one_f_one_b

    rss0 = _rss_mib()
    prof = load_profile(profile)
    c0 = time.process_time()
    t0 = time.perf_counter()
    fr = compute_frontier(
        prof,
        one_f_one_b(STAGES, mb),
        p_block_w=P_BLOCK_W,
        time_quantum_s=quantum_s,
        solver=solver,  # type: ignore[arg-type]
    )
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    return {
        "planner": "perwatt",
        "solver": fr.solver,
        "mb": mb,
        "wall_s": wall,
        "cpu_s": cpu,
        "rss_before_mib": rss0,
        "peak_rss_mib": _rss_mib(),
        "points": [(p.time_s, p.energy_j) for p in fr.points],
    }


def worker_lowtime(mb: int, profile: Path, quantum_s: float) -> dict[str, object]:
    import itertools

    import lowtime
    import networkx as nx
    from lowtime.cost_model import ExponentialModel
    from lowtime.graph_utils import DependencyResolver, add_sink_node, add_source_node
    from lowtime.operation import CandidateExecutionOptions, ExecutionOption, OperationSpec
    from lowtime.perseus.instruction import (
        Backward,
        Forward,
        Instruction,
        backward_dep,
        forward_dep,
    )
    from lowtime.perseus.schedule import Synchronous1F1B
    from lowtime.solver import PhillipsDessouky

    rss0 = _rss_mib()
    with profile.open() as fh:
        rows = list(csv.DictReader(fh))
    c0 = time.process_time()
    t0 = time.perf_counter()
    specs = {}
    for inst in (Forward, Backward):
        for s in range(STAGES):
            opts = [
                ExecutionOption[int](
                    real_time=float(r["time"]),
                    unit_time=quantum_s,
                    cost=float(r["energy"]),
                    knob=int(r["frequency"]),
                )
                for r in rows
                if int(r["stage"]) == s and r["instruction"] == inst.__name__.lower()
            ]
            cand = CandidateExecutionOptions[int](options=opts)
            for o in cand.options:  # effective energy, as examples/perseus.py
                o.cost -= P_BLOCK_W * o.quant_time * o.unit_time
            specs[(s, inst)] = OperationSpec[int](options=cand, cost_model=ExponentialModel(cand))
    dag = nx.DiGraph()
    nid = 2
    for s in range(STAGES):
        ids = []
        for op in Synchronous1F1B(
            num_stages=STAGES,
            num_micro_batches=mb,
            stage_id=s,
            operation_spec_map={Forward: specs[(s, Forward)], Backward: specs[(s, Backward)]},
        ):
            dag.add_node(nid, op=op)
            ids.append(nid)
            nid += 1
        dag.add_edges_from(itertools.pairwise(ids))
    resolver = DependencyResolver(
        dependency_rules=[forward_dep, backward_dep], node_type=Instruction
    )
    nodes = dag.nodes(data=True)
    for (i1, d1), (i2, d2) in itertools.product(nodes, nodes):
        if resolver.is_dependent(d1["op"], d2["op"]):
            dag.add_edge(i1, i2)
    add_source_node(dag, 0)
    add_sink_node(dag, 1)
    dag.graph["source_node"], dag.graph["sink_node"] = 0, 1
    t_setup = time.perf_counter() - t0
    points = []
    for r in PhillipsDessouky(dag).run():
        points.append((r.real_time, r.cost + STAGES * r.real_time * P_BLOCK_W))
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    return {
        "planner": f"lowtime {getattr(lowtime, '__version__', '0.3.0')}",
        "mb": mb,
        "wall_s": wall,
        "cpu_s": cpu,
        "setup_s": t_setup,
        "rss_before_mib": rss0,
        "peak_rss_mib": _rss_mib(),
        "points": sorted(points),
    }


def _milp_cost(schedule: object, choices: list[list[tuple[int, float]]], horizon_q: int) -> float:
    """Exact discrete optimum (HiGHS MILP): each node picks one (duration, cost), makespan ≤ H."""
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import lil_matrix

    n = len(choices)
    col = [(i, q, c) for i, opts in enumerate(choices) for q, c in opts]
    ny = len(col)
    edges = schedule.edges.tolist()  # type: ignore[attr-defined]
    a = lil_matrix((2 * n + len(edges), ny + n))
    lo, hi = [], []
    for k, (i, q, _) in enumerate(col):
        a[i, k] = 1.0  # one option per node
        a[n + i, k] = q  # start + duration ≤ H
    for i in range(n):
        a[n + i, ny + i] = 1.0
        lo.append(1.0), hi.append(1.0)
    lo += [-np.inf] * n
    hi += [float(horizon_q)] * n
    by_node: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for k, (i, q, _) in enumerate(col):
        by_node[i].append((k, q))
    for r, (u, v) in enumerate(edges):
        row = 2 * n + r
        a[row, ny + v], a[row, ny + u] = 1.0, -1.0
        for k, q in by_node[u]:
            a[row, k] = -q
        lo.append(0.0), hi.append(np.inf)
    res = milp(
        np.array([c for _, _, c in col] + [0.0] * n),
        constraints=LinearConstraint(a.tocsr(), np.array(lo), np.array(hi)),
        integrality=np.array([1] * ny + [0] * n),
        bounds=Bounds(np.zeros(ny + n), np.array([1.0] * ny + [np.inf] * n)),
    )
    assert res.success, res.message
    return float(res.fun)


def milp_report(stages: int, mbs: int, samples: int) -> str:
    """Frontier vs the exact discrete optimum on a small DAG of the GPT-3 A100 profile."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from perwatt.train import StageProfile, compute_frontier, load_profile, one_f_one_b

    full = load_profile(PROFILE)
    prof = StageProfile(entries={k: v for k, v in full.entries.items() if k[0] < stages})
    sched = one_f_one_b(stages, mbs)
    pb = P_BLOCK_W
    exp = compute_frontier(prof, sched, p_block_w=pb, cost_model="exponential")
    hull = compute_frontier(prof, sched, p_block_w=pb, cost_model="convex-hull")
    hull_e = {round(p.time_s * 1e3): p.energy_j for p in hull.points}
    discrete = []
    for k in exp.node_spec.tolist():
        o = exp.options[k]
        discrete.append(
            [(int(q), float(e - pb * q * 1e-3)) for q, e in zip(o.q, o.energy_j, strict=True)]
        )
    rows = [
        f"Small DAG: first {stages} stages of {PROFILE.name}, synchronous 1F1B, {mbs} microbatches, "
        f"P_block {pb} W, 1 ms quantum; exact optimum by MILP (SciPy/HiGHS) over the profiled "
        "clocks. Energies in J per iteration (model: effective energy of the profiled clocks "
        "+ P_block × stages × T). *plan* = the clocks perwatt's exponential-model plan picks, "
        "priced with the profiled energies.",
        "",
        "| T (s) | MILP optimum | perwatt plan | plan gap | exponential model | convex-hull model (lower bound) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    pts = exp.points
    step = max(1, len(pts) // samples)
    worst = 0.0
    for p in list(pts[::step]) + ([pts[-1]] if (len(pts) - 1) % step else []):
        q = round(p.time_s * 1e3)
        exact = _milp_cost(sched, discrete, q) + stages * pb * p.time_s
        d = exp.durations_q(p)
        plan = 0.0
        for i, k in enumerate(exp.node_spec.tolist()):
            o = exp.options[k]
            j = max(1, int(np.searchsorted(o.q, d[i], side="right"))) - 1
            plan += float(o.energy_j[j] - pb * o.q[j] * 1e-3)
        plan += stages * pb * p.time_s
        gap = (plan - exact) / exact
        worst = max(worst, gap)
        h = hull_e.get(q)
        rows.append(
            f"| {p.time_s:.3f} | {exact:.2f} | {plan:.2f} | {gap:+.3%} | {p.energy_j:.2f} | "
            + (f"{h:.2f} |" if h is not None else "— |")
        )
    rows.append("")
    rows.append(f"Worst gap of perwatt's plan to the exact discrete optimum: {worst:.3%}.")
    return "\n".join(rows)


def _run_worker(
    kind: str, mb: int, args: argparse.Namespace, solver: str = "auto"
) -> dict[str, object]:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--mb",
        str(mb),
        "--profile",
        str(args.profile),
        "--solver",
        solver,
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def _max_rel_diff(
    a: list[list[float]], b: list[list[float]], quantum_s: float
) -> tuple[float, int]:
    da = {round(t / quantum_s): e for t, e in a}
    db = {round(t / quantum_s): e for t, e in b}
    common = set(da) & set(db)
    if not common or set(da) != set(db):
        return float("nan"), len(common)
    return max(abs(da[k] - db[k]) / abs(db[k]) for k in common), len(common)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--mb", type=int, nargs="+", default=[12, 24, 48, 96])
    ap.add_argument("--profile", type=Path, default=PROFILE)
    ap.add_argument("--quantum-ms", type=float, default=1.0)
    ap.add_argument("--lowtime-max-mb", type=int, default=96, help="run lowtime only up to this")
    ap.add_argument("--lowtime-results", nargs="*", default=[], help="JSON from background runs")
    ap.add_argument("--worker", choices=("perwatt", "lowtime"), help=argparse.SUPPRESS)
    ap.add_argument("--save", type=Path, help="with --worker: also write the JSON here")
    ap.add_argument(
        "--solver",
        choices=("auto", "compiled", "python"),
        default="auto",
        help="with --worker perwatt: which sweep (the table runs compiled and python)",
    )
    ap.add_argument("--md", type=Path, help="also write the Markdown table here")
    ap.add_argument(
        "--milp", metavar="SxM", help="only: frontier vs MILP on S stages x M microbatches"
    )
    args = ap.parse_args()
    quantum_s = args.quantum_ms / 1e3

    if args.milp:
        s_, m_ = (int(x) for x in args.milp.lower().split("x"))
        print(milp_report(s_, m_, samples=16))
        return 0

    if args.worker:
        if args.worker == "perwatt":
            res = worker_perwatt(args.mb[0], args.profile, quantum_s, args.solver)
        else:
            res = worker_lowtime(args.mb[0], args.profile, quantum_s)
        text = json.dumps(res)
        if args.save:
            args.save.write_text(text)
        print(text)
        return 0

    background = {}
    for path in args.lowtime_results:
        p = Path(path)
        if p.exists() and p.stat().st_size:
            r = json.loads(p.read_text())
            background[int(r["mb"])] = r
    rows = []
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    for mb in args.mb:
        pw = _run_worker("perwatt", mb, args, "compiled")
        py = _run_worker("perwatt", mb, args, "python")
        if (
            py["points"] != pw["points"]
            and _max_rel_diff(py["points"], pw["points"], quantum_s)[0] > 1e-9
        ):
            raise SystemExit(f"mb={mb}: the compiled and Python sweeps disagree")
        if mb <= args.lowtime_max_mb:
            lt = _run_worker("lowtime", mb, args)
            where = "same run"
        else:
            lt = background.get(mb)
            where = "background run (timeout)" if lt else "not run"
        diff, n = (
            (float("nan"), 0)
            if lt is None
            else _max_rel_diff(lt["points"], pw["points"], quantum_s)
        )
        rows.append((mb, pw, py, lt, where, diff, n))
        print(
            f"mb={mb}: perwatt {pw['wall_s']:.3f} s (Python sweep {py['wall_s']:.3f} s)"
            + (f", lowtime {lt['wall_s']:.1f} s" if lt else ""),
            file=sys.stderr,
        )

    import numpy
    import scipy

    lines = [
        f"Conditions: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
        f"(shared), Python {platform.python_version()}, numpy {numpy.__version__}, "
        f"scipy {scipy.__version__}; date {time.strftime('%Y-%m-%d', time.gmtime())}; input "
        f"{args.profile.name}, {STAGES} stages, synchronous 1F1B, P_block {P_BLOCK_W} W, quantum "
        f"{args.quantum_ms:g} ms. Wall time from the loaded profile to the whole frontier "
        "(filtering, fits, DAG, sweep), one run each, measured; peak RSS of the worker process "
        "(interpreter and imports included). perwatt = the compiled sweep (`solver` "
        f"{rows[0][1]['solver'] if rows else '?'}); *Python sweep* = perwatt's NumPy/SciPy "
        "fallback on the same input. "
        f"Run started {started} UTC; load average (1/5/15 min) before "
        f"{'/'.join(f'{x:.1f}' for x in load_before)}, after "
        f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())}.",
        "",
        "| microbatches | points | perwatt wall (s) | lowtime 0.3.0 wall (s) | speed-up (wall) "
        "| perwatt CPU (s) | lowtime CPU (s) | speed-up (CPU) | perwatt Python sweep wall (s) "
        "| perwatt peak RSS (MiB) | lowtime peak RSS (MiB) | max energy diff | lowtime run |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for mb, pw, py, lt, where, diff, _n in rows:
        pw_cpu = f"{float(pw['cpu_s']):.3f}"
        lt_cpu = cpu_ratio = "—"
        if lt:
            ratio = f"{float(lt['wall_s']) / float(pw['wall_s']):.0f}×"
            lt_s, lt_m = f"{float(lt['wall_s']):.1f}", f"{float(lt['peak_rss_mib']):.0f}"
            d = f"{diff:.1e}"
            if "cpu_s" in lt:
                lt_cpu = f"{float(lt['cpu_s']):.1f}"
                cpu_ratio = f"{float(lt['cpu_s']) / float(pw['cpu_s']):.0f}×"
        else:
            ratio = lt_s = lt_m = d = "—"
        lines.append(
            f"| {mb} | {len(pw['points'])} | {float(pw['wall_s']):.3f} | {lt_s} | {ratio} | "
            f"{pw_cpu} | {lt_cpu} | {cpu_ratio} | {float(py['wall_s']):.3f} | "
            f"{float(pw['peak_rss_mib']):.0f} | {lt_m} | {d} | {where} |"
        )
    text = "\n".join(lines)
    print(text)
    if args.md:
        args.md.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
