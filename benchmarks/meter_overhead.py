"""Meter overhead per window edge (begin or end), median over many windows.

    .venv/bin/python benchmarks/meter_overhead.py [--repeats 2000] [--json]

Configurations:

* ``simulated``: Meter over SimulatedSource (1 device) — perwatt's own bookkeeping only.
* ``fake-nvml HxN``: Meter over NVMLSource on perwatt.meter.testing.FakeNVML with N H100 presets,
  counter path (``nvml-counter``): perwatt's edge cost *plus the fake's Python call cost*.
* on a machine with a GPU, ``--real`` adds the real NVML (``nvml``), which includes the driver's
  call latency (GUIDE.md's H100 probe: a counter read took ~4 ms).

Each configuration runs with the background sampler on (10 Hz, as in normal use), so the edge
contends with the sampler thread for the source lock as it would in production.

What this does **not** measure without a GPU: the latency of the real
nvmlDeviceGetTotalEnergyConsumption call, which is the dominant term on real hardware. The
fake-NVML figure is a lower bound on the real edge cost.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable

from perwatt.meter import Meter, SimulatedSource
from perwatt.meter.meter import median_edge_overhead_s
from perwatt.meter.nvml import NVMLSource
from perwatt.meter.source import PowerSource
from perwatt.meter.testing import FakeNVML


def run(
    make: Callable[[], PowerSource | list[PowerSource]], repeats: int, rounds: int
) -> dict[str, float]:
    """Median edge time over ``rounds`` rounds of ``repeats`` windows; also the spread of rounds."""
    medians = []
    for _ in range(rounds):
        meter = Meter(make(), sample_interval_s=0.1, sync_cuda=False)
        meter.start()
        try:
            meter.begin("warm-up")
            meter.end("warm-up")
            medians.append(median_edge_overhead_s(meter, repeats=repeats))
        finally:
            meter.close()
    return {
        "median_edge_ms": statistics.median(medians) * 1e3,
        "min_round_ms": min(medians) * 1e3,
        "max_round_ms": max(medians) * 1e3,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2000, help="windows per round (2 edges each)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--real", action="store_true", help="also the real NVML (needs a GPU)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    configs: dict[str, Callable[[], PowerSource | list[PowerSource]]] = {
        "simulated (1 device)": lambda: SimulatedSource(),
        "fake-nvml H100x1 counter": lambda: NVMLSource(nvml=FakeNVML.with_gpus(["H100"])),
        "fake-nvml H100x8 counter": lambda: NVMLSource(nvml=FakeNVML.with_gpus(["H100"] * 8)),
    }
    if args.real:
        configs["real nvml (all GPUs)"] = lambda: NVMLSource()
    results = {}
    for name, make in configs.items():
        t0 = time.perf_counter()
        results[name] = run(make, args.repeats, args.rounds)
        results[name]["wall_s"] = time.perf_counter() - t0
    meta = {
        "python": platform.python_version(),
        "machine": platform.platform(),
        "processor": platform.processor(),
        "repeats": args.repeats,
        "rounds": args.rounds,
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }
    if args.json:
        json.dump({"meta": meta, "results": results}, sys.stdout, indent=2)
        print()
    else:
        print(f"# meter overhead per window edge ({meta['date_utc']} UTC, {meta['machine']})")
        print("| configuration | median per edge | round medians (min-max) |")
        print("|---|---|---|")
        for name, r in results.items():
            print(
                f"| {name} | {r['median_edge_ms'] * 1e3:.1f} µs | "
                f"{r['min_round_ms'] * 1e3:.1f}-{r['max_round_ms'] * 1e3:.1f} µs |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
