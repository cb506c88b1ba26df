"""bench-analysis figures: bootstrap speed, compare/report wall time, CI coverage."""

import csv
import json
import platform
import shutil
import time
from pathlib import Path

import numpy as np

from perwatt.bench.compare import compare_results
from perwatt.bench.result import write_result
from perwatt.bench.stats import bootstrap_ratio_ci, bootstrap_ratio_of_sums_ci
from perwatt.report import write_html_report


def t(f, n=3):
    best = 1e9
    for _ in range(n):
        t0 = time.perf_counter()
        r = f()
        best = min(best, time.perf_counter() - t0)
    return best, r


rng = np.random.default_rng(0)
print("python", platform.python_version(), "numpy", np.__version__)
for n in (1000, 10000):
    a, b = rng.lognormal(3, 0.4, n), rng.lognormal(3, 0.4, n)
    for stat in ("mean", 99.0):
        s, _ = t(lambda a=a, b=b, stat=stat: bootstrap_ratio_ci(a, b, statistic=stat))
        print(f"bootstrap_ratio_ci n={n} stat={stat} R=2000: {s * 1e3:.0f} ms")
ea, ta = rng.uniform(900, 1100, 40), rng.uniform(400, 500, 40)
s, _ = t(lambda: bootstrap_ratio_of_sums_ci(ea, ta, ea * 1.01, ta))
print(f"bootstrap_ratio_of_sums_ci 40 blocks R=2000: {s * 1e3:.1f} ms")

# Large synthetic runs: 10k requests, 600 s at 10 Hz, from the fixture generator's shape.
D = Path(__file__).resolve().parents[1] / "tests/bench/data"
work = Path("/tmp/bx/big")
shutil.rmtree(work, ignore_errors=True)
work.mkdir()
for label, scale in (("a", 1.0), ("b", 0.9)):
    doc = json.loads((D / "bf16_c4.json").read_text())
    dur = 600.0
    tt = np.arange(0, dur, 0.1)
    p = 400 * scale + rng.normal(0, 8, tt.size)
    doc["label"] = label
    doc["timeline"] = {"t_s": tt.tolist(), "power_w": p.tolist()}
    doc["energy"]["steady_state_window_s"] = [5.0, 595.0]
    n = 10000
    starts = np.sort(rng.uniform(0, 590, n))
    ttft = rng.lognormal(np.log(100), 0.3, n)
    tpot = rng.lognormal(np.log(25 * scale), 0.1, n)
    out = rng.integers(48, 80, n)
    e2el = ttft + tpot * (out - 1)
    with (work / f"{label}.requests.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["index", "start_s", "ttft_ms", "tpot_ms", "e2el_ms", "output_tokens", "error_kind"]
        )
        for i in range(n):
            w.writerow(
                [
                    i,
                    f"{starts[i]:.6f}",
                    f"{ttft[i]:.3f}",
                    f"{tpot[i]:.3f}",
                    f"{e2el[i]:.3f}",
                    out[i],
                    "",
                ]
            )
    doc["requests_csv"] = f"{label}.requests.csv"
    write_result(work / f"{label}.json", doc)
s, c = t(lambda: compare_results([work / "a.json", work / "b.json"]), n=1)
print(f"compare_results 2 runs x 10k requests, 6000 timeline samples, R=2000: {s:.2f} s")
s, _ = t(lambda: write_html_report([work / "a.json", work / "b.json"], work / "r.html"), n=1)
print(
    f"write_html_report 2 runs x 6000 samples: {s * 1e3:.0f} ms, {(work / 'r.html').stat().st_size / 1e3:.0f} kB"
)
fx = sorted(D.glob("*.json"))
s, _ = t(lambda: write_html_report(fx, work / "f.html"))
print(
    f"write_html_report 6 fixture runs: {s * 1e3:.0f} ms, {(work / 'f.html').stat().st_size / 1e3:.0f} kB"
)

# Coverage: known true ratio, 300 experiments each.
for stat, n, true in (("mean", 200, 1.1), (50.0, 200, 1.1), (99.0, 200, 1.1), (99.0, 2000, 1.1)):
    hits = 0
    widths = []
    for i in range(300):
        a = rng.lognormal(3, 0.4, n)
        b = rng.lognormal(3 + np.log(true), 0.4, n)
        ci = bootstrap_ratio_ci(a, b, statistic=stat, n_resamples=1000, seed=i)
        hits += ci.low <= true <= ci.high
        widths.append(ci.high - ci.low)
    print(
        f"coverage stat={stat} n={n}: {hits / 300:.3f} (nominal 0.95), median width {np.median(widths):.3f}"
    )
# Null: same distribution -> 'within noise' rate
wn = 0
for i in range(300):
    a = rng.lognormal(3, 0.4, 500)
    b = rng.lognormal(3, 0.4, 500)
    wn += bootstrap_ratio_ci(a, b, statistic=50.0, n_resamples=1000, seed=i).within_noise
print(f"within-noise rate, same distribution, p50, n=500: {wn / 300:.3f}")
