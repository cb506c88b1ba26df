"""A 1 GW site for 24 h at 1 s steps, per policy: wall and CPU time of `simulate`.

The site is the ``site-1gw`` preset (GB300 NVL72 racks, 418,608 GPUs at nameplate) running the
``mixed`` workload (inference 60%, training 30%, batch 10% of racks); cohorts as placement makes
them. Control every step (1 s) unless ``--control`` says otherwise.

    python benchmarks/facility_scale.py --policies static uniform realloc polca thunderbolt
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

from perwatt.facility.placement import place  # noqa: E402
from perwatt.facility.policies import make_policy  # noqa: E402
from perwatt.facility.presets import preset_site  # noqa: E402
from perwatt.facility.simulate import SimConfig, simulate  # noqa: E402
from perwatt.facility.workload import preset_workload  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--site", default="site-1gw")
    ap.add_argument("--workload", default="mixed")
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--step", type=float, default=1.0)
    ap.add_argument("--control", type=float, default=None)
    ap.add_argument("--policies", nargs="+", default=["static", "uniform", "realloc"])
    ap.add_argument("--racks", type=int, default=None, help="racks (default: nameplate fit)")
    args = ap.parse_args()
    site = preset_site(args.site, racks=args.racks)
    wl = preset_workload(args.workload)
    pl = place(site, wl)
    cfg = SimConfig(duration_s=args.hours * 3600, step_s=args.step, control_interval_s=args.control)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, numpy {np.__version__}; load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    over = site.nameplate_w / site.root.capacity_w
    print(
        f"site {site.name}: {site.gpu_count} GPUs (IT nameplate {over:.2f} x the feed), {pl.topology.flat().size} tree elements, "
        f"{len(pl.topology.flat().leaves)} cohorts; {cfg.steps} steps of {args.step:g} s, "
        f"control every {cfg.control_every * args.step:g} s"
    )
    print("| policy | wall (s) | CPU (s) | facility energy (GWh, simulated) | s over capacity |")
    print("|---|---:|---:|---:|---:|")
    for name in args.policies:
        c0, t0 = time.process_time(), time.perf_counter()
        r = simulate(site, wl, make_policy(name), cfg, placement=pl)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(
            f"| {name} | {wall:.1f} | {cpu:.1f} | {r.facility_energy_j / 3.6e12:.3f} | "
            f"{r.seconds_over_capacity:g} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
