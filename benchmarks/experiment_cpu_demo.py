"""`perwatt experiment run examples/cpu-demo.toml` on this machine, and its figures as Markdown.

    python benchmarks/experiment_cpu_demo.py [--out DIR]

Runs the demo (two `perwatt serve` precisions x two concurrency levels), then runs it again to
show the re-run measures nothing, and prints the points, the best configuration under the SLO
with its interval against the baseline, the saving, and the conditions, for BENCHMARKS.md. The
energy source is whatever `auto` finds here (on a CPU-only VM: `estimated`); it is printed with
every figure.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

from perwatt.bench.experiment import load_experiment, run_experiment
from perwatt.meter.detect import cpu_model
from perwatt.report.experiment import write_experiment_outputs

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/perwatt-cpu-demo")
    args = ap.parse_args()
    cfg = load_experiment(ROOT / "examples" / "cpu-demo.toml")
    out = Path(args.out)
    t0 = time.perf_counter()
    first = run_experiment(cfg, out_dir=out)
    t1 = time.perf_counter()
    again = run_experiment(cfg, out_dir=out)
    t2 = time.perf_counter()
    files = write_experiment_outputs(cfg, out)
    a = files.analysis
    import torch

    print(
        f"machine: {cpu_model()}, {platform.python_version()}, torch {torch.__version__}, "
        f"date {time.strftime('%Y-%m-%d', time.gmtime())}"
    )
    print(
        f"first run: {len(first.measured)} measured in {t1 - t0:.0f} s; re-run: "
        f"{len(again.measured)} measured, {len(again.skipped)} skipped in {t2 - t1:.1f} s"
    )
    print()
    print("| point | tokens/J | J/token | output tok/s | avg W | idle W | TPOT p50 / p90 ms "
          "| TTFT p90 ms | source | frontier |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for p in a.points:
        lat = p.latency_ms
        print(
            f"| {p.id} | {p.output_tokens_per_j:.3f} | {p.j_per_output_token:.4f} | "
            f"{p.output_tokens_per_s:.1f} | {p.avg_power_w:.2f} | {p.idle_power_w:.2f} | "
            f"{lat['tpot_p50_ms']:.1f} / {lat['tpot_p90_ms']:.1f} | {lat['ttft_p90_ms']:.0f} | "
            f"{p.energy_source} | {', '.join(p.frontier) or '-'} |"
        )
    print()
    if a.best is not None:
        print(f"best under SLO {dict(a.slo)}: {a.best.id}")
    r = a.best_vs_baseline
    if r is not None:
        print(
            f"J/token vs {r.a}: x{r.ratio:.3f} [{r.ci_low}, {r.ci_high}] {r.verdict} ({r.method})"
        )
    if a.runner_up is not None:
        ru = a.runner_up
        print(f"runner-up {ru.b}: x{ru.ratio:.3f} [{ru.ci_low}, {ru.ci_high}] {ru.verdict}")
    if a.savings is not None:
        s = a.savings
        print(
            f"saving: {s.saved_j_per_token:.4f} J/token ({s.saved_pct:.1f} %), "
            f"${s.saved_usd_per_year:.2f}/year at {s.site_gpus} x {s.utilization} ({s.energy_source})"
        )
    for p in a.points:
        print(
            f"{p.id}: attributed sum {p.attribution_sum_j!r} J, measured {p.attribution_total_j!r} J"
        )


if __name__ == "__main__":
    main()
