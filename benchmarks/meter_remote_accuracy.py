"""Accuracy of the remote sources against a known truth (issue 15).

Run from the repository root: `.venv/bin/python benchmarks/meter_remote_accuracy.py`.
Needs the `prometheus` binary for the Prometheus rows (Debian: apt-get install prometheus).

Four loopback exporters (`perwatt.meter.fake_dcgm.FakeDCGMExporter`, dcgm-exporter's text
format, 1 s collect interval) serve GPUs whose power steps through a fixed profile, so the true
energy of any window is known exactly. Rows:

* ``dcgm:`` read directly, 30 s window: perwatt's figure vs the truth.
* ``prometheus:`` (1 s scrapes), 30 s window: vs the truth, and vs a *perfect reading of
  Prometheus' stored samples* (the stored counter interpolated linearly at the window edges,
  from the raw samples of a range selector): the issue's target is within 1% of that.
* the issue's +71% case: a 35 s window on an exporter refreshed every 30 s, direct, on a
  simulated clock (the raw counter difference is printed beside perwatt's figure).
"""

from __future__ import annotations

import platform
import subprocess
import time

import httpx

from perwatt.meter import Meter
from perwatt.meter.dcgm import DCGMSource, PrometheusSource
from perwatt.meter.fake_dcgm import FakeDCGMExporter, PrometheusProcess, prometheus_binary
from perwatt.meter.integrate import interpolate
from perwatt.meter.testing import FakeClock

PROFILE_W = (250.0, 600.0, 400.0, 700.0, 320.0)  # per GPU, cycled every 2.5 s, offset per GPU
STEP_S = 2.5


def drive(exporters: list[FakeDCGMExporter], seconds: float) -> None:
    t0 = time.monotonic()
    k = 0
    while time.monotonic() - t0 < seconds:
        for e in exporters:
            for g in range(len(e.gpus)):
                e.set_power(g, PROFILE_W[(k + g) % len(PROFILE_W)])
        k += 1
        time.sleep(max(0.0, t0 + k * STEP_S - time.monotonic()))


def measure(src: DCGMSource | PrometheusSource, exporters: list[FakeDCGMExporter], seconds: float):
    meter = Meter(src, sample_interval_s=0.1, sync_cuda=False)
    with meter:
        time.sleep(2.0)  # the sampler learns the update period
        meter.begin("w")
        drive(exporters, seconds)
        m = meter.end("w")
    return m


def truth(exporters: list[FakeDCGMExporter], m) -> dict[str, float]:
    out = {}
    for e in exporters:
        for g in range(len(e.gpus)):
            out[f"{e.host}/gpu{g}"] = e.true_energy_j(g, m.start_s, m.end_s)
    return out


def stored_reading(url: str, sel: str, m, offset_s: float) -> dict[str, float]:
    """The stored counter interpolated at the window edges (Unix time = monotonic + offset)."""
    time.sleep(2.5)  # let the scrapes after the window's end land
    q = f"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{sel}}}[{int(m.duration_s) + 20}s]"
    body = httpx.get(url + "/api/v1/query", params={"query": q}, timeout=10).json()
    out = {}
    for item in body["data"]["result"]:
        lab = item["metric"]
        ts = [float(t) for t, _ in item["values"]]
        es = [float(v) / 1e3 for _, v in item["values"]]
        dev = f"{lab['Hostname']}/gpu{lab['gpu']}"
        a, b = m.start_s + offset_s, m.end_s + offset_s
        out[dev] = interpolate(ts, es, b) - interpolate(ts, es, a)
    return out


def row(name: str, m, ref: dict[str, float], what: str) -> None:
    tot = sum(ref[d] for d in m.energy_j)
    err = 100 * (m.total_energy_j - tot) / tot
    worst = max(abs(100 * (m.energy_j[d] - ref[d]) / ref[d]) for d in m.energy_j)
    bound = 100 * sum(m.uncertainty_j.values()) / tot
    methods = ",".join(sorted(set(m.methods.values())))
    print(
        f"| {name} | {m.duration_s:.1f} s | vs {what} | {err:+.2f}% | {worst:.2f}% | "
        f"±{bound:.1f}% | {methods} | {'yes' if m.partial else 'no'} |"
    )


def issue_71_percent() -> None:
    clock = FakeClock(1000.0)
    exp = FakeDCGMExporter("node1", (1030.0,) * 4, collect_interval_s=30.0, clock=clock)
    src = DCGMSource(exp.url, reuse_s=0.0)
    meter = Meter(src, sampler=False, sync_cuda=False, clock=clock)
    raw0 = raw1 = 0.0
    with meter:
        while clock() < 1029.9 - 1e-9:
            clock.advance(0.1)
            meter.sample_now()
        raw0 = sum((src.read_energy_j() or {}).values())
        meter.begin("w")
        while clock() < 1064.9 - 1e-9:
            clock.advance(0.1)
            meter.sample_now()
        raw1 = sum((src.read_energy_j() or {}).values())
        m = meter.end("w")
    exp.close()
    true_j = 4 * 1030.0 * 35.0
    print(
        f"| 35 s window, 30 s refresh (simulated clock) | raw counter difference "
        f"{100 * (raw1 - raw0 - true_j) / true_j:+.1f}%, average {(raw1 - raw0) / 35:.0f} W | "
        f"perwatt {100 * (m.total_energy_j - true_j) / true_j:+.2f}% "
        f"({','.join(sorted(set(m.methods.values())))}), average {m.avg_power_w:.0f} W, "
        f"peak {m.peak_power_w:.0f} W |"
    )


def main() -> None:
    print(f"python {platform.python_version()}, {platform.platform()}")
    exps = [FakeDCGMExporter(f"node{i}", (300.0, 300.0)) for i in (1, 2)]
    try:
        print(
            "| source | window | reference | total error | worst GPU | stated bound | method | partial |"
        )
        print("|---|---|---|---|---|---|---|---|")
        src = DCGMSource(",".join(e.url for e in exps), collect_interval_s=1.0)
        m = measure(src, exps, 30.0)
        row("dcgm: (2 nodes x 2 GPUs, 1 s collect)", m, truth(exps, m), "truth")
        if prometheus_binary() is None:
            print("prometheus binary not found: Prometheus rows skipped")
        else:
            version = subprocess.run(
                ["prometheus", "--version"], capture_output=True, text=True
            ).stdout.splitlines()[0]
            print(version)
            with PrometheusProcess([e.target for e in exps], scrape_interval_s=1.0) as prom:
                prom.start()
                prom.wait_scraped(4)
                time.sleep(2.0)
                offset = time.time() - time.monotonic()
                src = PrometheusSource(prom.url, select='Hostname="node1"')
                m = measure(src, exps[:1], 30.0)
                row("prometheus: (1 s scrape, node1 selected)", m, truth(exps[:1], m), "truth")
                ref = stored_reading(prom.url, 'Hostname="node1"', m, offset)
                row("prometheus: (1 s scrape, node1 selected)", m, ref, "stored samples")
            slow = FakeDCGMExporter("node9", (400.0, 650.0), collect_interval_s=3.0)
            exps.append(slow)
            with PrometheusProcess([slow.target], scrape_interval_s=1.5) as prom:
                prom.start()
                prom.wait_scraped(2)
                src = PrometheusSource(prom.url, select='Hostname="node9"')
                meter = Meter(src, sample_interval_s=0.1, sync_cuda=False)
                with meter:
                    time.sleep(7.0)
                    raw0 = src.read_energy_j() or {}
                    meter.begin("w")
                    time.sleep(3.5)
                    raw1 = src.read_energy_j() or {}
                    m = meter.end("w")
                ref = truth([slow], m)
                raw = sum(raw1.values()) - sum(raw0.values())
                print(
                    f"(30 s collect / 15 s scrape / 35 s window, scaled by 1/10: raw counter "
                    f"difference {100 * (raw - sum(ref.values())) / sum(ref.values()):+.1f}%)"
                )
                row("prometheus: (1.5 s scrape, 3 s collect, constant power)", m, ref, "truth")
        issue_71_percent()
    finally:
        for e in exps:
            e.close()


if __name__ == "__main__":
    main()
