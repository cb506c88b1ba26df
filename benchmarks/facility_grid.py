"""Grid figures for a 100k-GPU training job, 1 hour at 10 ms, and the flex/smoothing tables.

Part 1 (issue 13 target: <= 30 s on 2 cores): the shipped Perseus smoothing scenario
(``smooth_perseus.json``: 100,000 GB300 GPUs, GPT-3 175B 8-stage pipeline replayed by
perwatt.train, 8 stage cohorts) stretched to 3,600 s at 10 ms (360,000 steps): waveform, the
unmitigated grid figures (ramps, range, rfft band fraction), and GPU smoothing + rack storage
(sequential ramp/hysteresis and storage controllers). Wall and CPU time per stage.

Peer in the same run: the cohort model against GPU-by-GPU on a 1,024-GPU slice (60 s): every
GPU of a stage simulated on its own must give the same site trace.

Part 2: the Phoenix flex scenarios (flex optimiser vs uniform capping) and the smoothing
scenarios' tables, as BENCHMARKS.md prints them.

Part 3: the five site policies of ``perwatt facility simulate`` answering one absolute grid
target through the feed limit in their snapshot.

    taskset -c 0,1 python benchmarks/facility_grid.py [1] [2] [3]
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from perwatt.facility.curves import gpu_model  # noqa: E402
from perwatt.facility.flexsim import load_flex_scenario, simulate_flex  # noqa: E402
from perwatt.facility.smoothing import grid_figures, mitigate  # noqa: E402
from perwatt.facility.smoothrun import load_smooth_scenario, run_smooth  # noqa: E402
from perwatt.facility.waveform import waveform_from  # noqa: E402

DATA = ROOT / "perwatt/facility/data"


def _t() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _d(a: tuple[float, float]) -> str:
    w, c = _t()
    return f"wall {w - a[0]:.2f} s, cpu {c - a[1]:.2f} s"


def part1() -> None:
    sc = load_smooth_scenario(DATA / "smooth_perseus.json")
    sc = replace(sc, duration_s=3600.0)
    mdl = gpu_model(sc.sku)
    tmp = mdl.sku.tdp_w
    n = round(sc.duration_s / sc.dt_s)
    total = _t()
    a = _t()
    wave, desc = waveform_from(
        sc.waveform,
        dt=sc.dt_s,
        n=n,
        tmp_w=tmp,
        low_w=mdl.curve("comm").natural_w,
        base_dir=sc.base_dir,
    )
    print(f"waveform ({desc}, {wave.shape[0]} cohorts x {n} steps): {_d(a)}")
    counts = np.full(wave.shape[0], sc.gpus / wave.shape[0])
    other = sc.other_w_per_gpu * sc.gpus
    a = _t()
    base = counts @ wave + other
    g = grid_figures(base, sc.dt_s, sc.limits)
    print(
        f"unmitigated grid figures: {_d(a)}; peak {g['peak_mw']:.1f} MW, "
        f"{g['ramp_mw_per_s']:.1f} MW/s, band {g['band_fraction']:.3f}"
    )
    for m in sc.mitigations:
        if m.name != "gpu smoothing + rack storage":
            continue
        a = _t()
        r = mitigate(wave, counts, sc.dt_s, m, tmp_w=tmp, other_w=other, limits=sc.limits)
        f = r.figures
        print(
            f"{m.name}: {_d(a)}; {f['ramp_mw_per_s']:.2f} MW/s, range "
            f"{f['dynamic_range_mw']:.2f} MW, meets limits {f['meets_limits']}"
        )
    print(f"TOTAL 100k GPUs x 1 h at 10 ms: {_d(total)}")
    # peer: GPU by GPU on a slice, same waveform
    k = 1024
    w60 = wave[:, : round(60 / sc.dt_s)]
    m = next(x for x in sc.mitigations if x.name == "gpu smoothing + rack storage")
    cohort = mitigate(w60, np.full(w60.shape[0], k / w60.shape[0]), sc.dt_s, m, tmp_w=tmp)
    per = np.repeat(w60, k // w60.shape[0], axis=0)
    a = _t()
    single = mitigate(per, np.ones(per.shape[0]), sc.dt_s, m, tmp_w=tmp)
    dev = float(np.abs(single.grid_w - cohort.grid_w).max() / cohort.grid_w.max())
    print(
        f"peer: {k} GPUs one by one vs {w60.shape[0]} cohorts, 60 s: {_d(a)}; max rel diff {dev:.2e}"
    )


def part2() -> None:
    for f in ("flex_phoenix.json", "flex_phoenix_30s.json"):
        sc = load_flex_scenario(DATA / f)
        for s in ("flex", "uniform"):
            r = simulate_flex(sc, s)
            for o in r.outcomes:
                thr = " | ".join(f"{v:.3f}" for v in o.throughput.values())
                print(
                    f"| {sc.name} | {s} | {'met' if o.met else 'MISSED'} | {o.response_s} s | "
                    f"{o.weighted_throughput:.3f} | {thr} |"
                )
    # sensitivity: uncappable host power per GPU, and fine-tuning valued 3x (a tier priority)
    sc = load_flex_scenario(DATA / "flex_phoenix.json")
    for ow in (0.0, 50.0, 100.0):
        for vft in (1.0, 3.0):
            jobs = tuple(replace(j, value=vft if j.name == "fine-tuning" else 1.0) for j in sc.jobs)
            s2 = replace(sc, jobs=jobs, other_w_per_gpu=ow)
            for strat in ("flex", "uniform") if vft == 1.0 else ("flex",):
                o = simulate_flex(s2, strat).outcomes[0]
                gw = sum(j.gpus * o.throughput[j.name] for j in sc.jobs) / sc.gpus
                thr = " | ".join(f"{v:.3f}" for v in o.throughput.values())
                print(f"| {ow:g} W | FT value {vft:g} | {strat} | {gw:.3f} | {thr} |")
    for f in ("smooth_perseus.json", "smooth_parametric.json"):
        r = run_smooth(load_smooth_scenario(DATA / f))
        peak = float(r.baseline_w.max())
        for o in r.outcomes:
            d = o.to_dict(peak)
            g = d["grid"]
            print(
                f"| {r.scenario.name} | {o.mitigation} | {g['peak_mw']:.1f} | {d['peak_reduction']:+.1%} | "
                f"{g['ramp_mw_per_s']:.2f} | {g['dynamic_range_mw']:.2f} | {g['band_fraction']:.2f} | "
                f"{g['band_rms_mw']:.2f} | {'yes' if g['meets_limits'] else 'no'} | "
                f"{d['cost']['extra_energy_fraction']:+.1%} | {d['cost']['storage_loss_j'] / 3.6e9:.3f} |"
            )
        s = r.smallest_storage_j
        print(
            f"smallest storage for {r.smallest_storage_for}: {None if s is None else s / 3.6e6:.0f} kWh"
        )


def part3() -> None:
    """The five site policies answering one absolute target through the snapshot's feed limit."""
    from perwatt.facility.loadtarget import LoadTarget
    from perwatt.facility.policies import make_policy
    from perwatt.facility.presets import eight_rack
    from perwatt.facility.simulate import SimConfig, simulate
    from perwatt.facility.workload import preset_workload

    site, wl = eight_rack(), preset_workload("mixed")
    base = simulate(site, wl, make_policy("static"), SimConfig(duration_s=3600.0))
    tw = 0.8 * base.mean_facility_w
    tg = (LoadTarget(id="cut", feed="site", start_s=1200, end_s=2400, issued_s=0, value_w=tw),)
    print(
        f"test-8rack, mixed, 1 h at 1 s; target {tw / 1e3:.1f} kW (80% of static mean) 1200-2400 s"
    )
    for name in ("static", "uniform", "realloc", "polca", "thunderbolt"):
        r = simulate(site, wl, make_policy(name), SimConfig(duration_s=3600.0, grid_targets=tg))
        g = r.grid_targets[0]
        thr = " | ".join(f"{j.throughput:.3f}" for j in r.jobs)
        print(
            f"| {name} | {'met' if g['met'] else 'MISSED'} | {g['response_s']} | "
            f"{g['max_over_w'] / 1e3:.1f} | {g['breach_critical_s']:.0f} | {thr} |"
        )


if __name__ == "__main__":
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus visible, "
        f"affinity {len(os.sched_getaffinity(0))}, Python {platform.python_version()}, "
        f"NumPy {np.__version__}"
    )
    which = sys.argv[1:] or ["1", "2", "3"]
    for k, f in (("1", part1), ("2", part2), ("3", part3)):
        if k in which:
            f()
