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
SHARED = ROOT.parent / "shared/data/perseus-sosp24"
PROFILE = SHARED / "stage_profile/gpt3-175b+a100_sxm_bf16.csv"
P_BLOCK_W = 83.64  # A100 SXM blocking power measured by Perseus (README of the artifact data)
STAGES = 8


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def worker_perwatt(mb: int, profile: Path, quantum_s: float) -> dict[str, object]:
    sys.path.insert(0, str(ROOT))
    from perwatt.train import compute_frontier, load_profile, one_f_one_b

    rss0 = _rss_mib()
    prof = load_profile(profile)
    t0 = time.perf_counter()
    fr = compute_frontier(
        prof, one_f_one_b(STAGES, mb), p_block_w=P_BLOCK_W, time_quantum_s=quantum_s
    )
    wall = time.perf_counter() - t0
    return {
        "planner": "perwatt",
        "mb": mb,
        "wall_s": wall,
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
    return {
        "planner": f"lowtime {getattr(lowtime, '__version__', '0.3.0')}",
        "mb": mb,
        "wall_s": wall,
        "setup_s": t_setup,
        "rss_before_mib": rss0,
        "peak_rss_mib": _rss_mib(),
        "points": sorted(points),
    }


def _run_worker(kind: str, mb: int, args: argparse.Namespace) -> dict[str, object]:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--mb",
        str(mb),
        "--profile",
        str(args.profile),
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
    ap.add_argument("--md", type=Path, help="also write the Markdown table here")
    args = ap.parse_args()
    quantum_s = args.quantum_ms / 1e3

    if args.worker:
        fn = worker_perwatt if args.worker == "perwatt" else worker_lowtime
        res = fn(args.mb[0], args.profile, quantum_s)
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
    for mb in args.mb:
        pw = _run_worker("perwatt", mb, args)
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
        rows.append((mb, pw, lt, where, diff, n))
        print(
            f"mb={mb}: perwatt {pw['wall_s']:.3f} s"
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
        "(interpreter and imports included).",
        "",
        "| microbatches | points | perwatt (s) | lowtime 0.3.0 (s) | speed-up | perwatt peak RSS (MiB) "
        "| lowtime peak RSS (MiB) | max energy diff | lowtime run |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for mb, pw, lt, where, diff, _n in rows:
        if lt:
            ratio = f"{float(lt['wall_s']) / float(pw['wall_s']):.0f}×"
            lt_s, lt_m = f"{float(lt['wall_s']):.1f}", f"{float(lt['peak_rss_mib']):.0f}"
            d = f"{diff:.1e}"
        else:
            ratio = lt_s = lt_m = d = "—"
        lines.append(
            f"| {mb} | {len(pw['points'])} | {float(pw['wall_s']):.3f} | {lt_s} | {ratio} | "
            f"{float(pw['peak_rss_mib']):.0f} | {lt_m} | {d} | {where} |"
        )
    text = "\n".join(lines)
    print(text)
    if args.md:
        args.md.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
