"""``perwatt facility …``: argument parsing only; the work is in :mod:`perwatt.facility`.

``simulate`` runs a site and a workload under one or more policies and writes the result JSON,
the timeline CSV and an offline HTML report; ``capacity`` answers how many GPUs fit under the
site's power per policy; ``presets`` lists the shipped sites, systems, workloads and policies.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from perwatt.economics import DEFAULT_PRICE_PER_KWH_USD
from perwatt.errors import ConfigError
from perwatt.facility.capacity import capacity
from perwatt.facility.cooling import load_weather
from perwatt.facility.curves import calibrate_from_bench, gpu_model
from perwatt.facility.flexsim import STRATEGIES, load_flex_scenario, simulate_flex
from perwatt.facility.loaders import load_site
from perwatt.facility.loadtarget import load_targets, status_event
from perwatt.facility.policies import POLICIES, make_policy
from perwatt.facility.presets import SITES, SYSTEMS, preset_site
from perwatt.facility.result import write_results
from perwatt.facility.simulate import SimConfig, simulate
from perwatt.facility.smoothrun import load_smooth_scenario, run_smooth
from perwatt.facility.sweep import grid, parse_params, run_sweep
from perwatt.facility.workload import WORKLOADS, load_workload, preset_workload
from perwatt.report.facility import write_facility_html
from perwatt.report.grid import write_flex_html, write_smooth_html
from perwatt.report.svg import fmt

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}

_EPILOG = """\
examples:
  perwatt facility simulate site-96mw mixed --policy all --duration 24h --step 1s
  perwatt facility simulate site-96mw mixed --racks 781 --policy uniform,realloc
  perwatt facility simulate my-site.json my-workload.json --policy realloc,polca --out runs/a
  perwatt facility capacity site-96mw mixed --max-loss 5%
  perwatt facility sweep --sites site-96mw --workloads mixed,inference \\
      --param polca.t1=0.85,0.9 --duration 6h --workers 2 [--ray auto]
  perwatt facility flex phoenix            (or a flex scenario file; --targets FILE)
  perwatt facility smooth smooth-perseus   (or a smoothing scenario file)
  perwatt facility presets

SITE is a preset name or a site file (perwatt JSON or NVIDIA DPS dcpower_0.1 JSON);
WORKLOAD is a preset name or a workload JSON. Every power, energy, PUE and cost figure is
simulated, and labelled so in the result.
"""


def parse_duration_s(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``24h``, ``2d`` → seconds (one-line error otherwise)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-z]*)\s*", text.lower())
    if not m or m.group(2) not in _UNITS:
        raise ConfigError(f"bad duration {text!r}: use e.g. 90s, 30m, 24h, 2d")
    v = float(m.group(1)) * _UNITS[m.group(2)]
    if v <= 0:
        raise ConfigError(f"duration {text!r} must be > 0")
    return v


def parse_fraction(text: str) -> float:
    """A fraction from ``0.05`` or ``5%``; argparse type for loss and share flags."""
    t = text.strip()
    try:
        v = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise ConfigError(f"bad fraction {text!r}: use e.g. 5% or 0.05") from None
    return v


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``perwatt facility …`` to the command line."""
    fac = subparsers.add_parser(
        "facility",
        help="site power: simulate policies, capacity per policy (simulated)",
        description="Model a site's power tree, GPUs and workloads, and compare power "
        "allocation policies (static, uniform, POLCA-style, Thunderbolt-style, exact "
        "stranded-power reallocation): throughput, SLOs, breaker risk, PUE and cost.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = fac.add_subparsers(dest="facility_command", metavar="SUBCOMMAND", required=True)

    sim = sub.add_parser("simulate", help="simulate a site under one or more policies")
    _site_workload(sim)
    sim.add_argument(
        "--racks",
        type=int,
        help="racks under a preset site's feed (default: what fits at nameplate); more racks "
        "oversubscribe the feed, as a capping policy allows",
    )
    sim.add_argument(
        "--policy", default="all", help="policy name(s), comma separated, or 'all' (default)"
    )
    _run_options(sim, duration="24h", step="1s")
    sim.add_argument(
        "--telemetry-loss",
        metavar="FROM-TO",
        help="telemetry outage window, e.g. 3h-3h10m (policies see stale data)",
    )
    sim.add_argument(
        "--targets",
        metavar="FILE",
        help="grid load targets (DSX Flex CloudEvents JSONL or CSV, absolute values): every "
        "policy sees the feed limited to the target while one is in force",
    )
    sim.add_argument(
        "--out",
        default="facility-run",
        metavar="DIR",
        help="output directory for result.json, timeline.csv, report.html",
    )
    sim.add_argument("--json", action="store_true", help="print the result JSON")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    sim.set_defaults(func=run_simulate)

    cap = sub.add_parser("capacity", help="how many GPUs fit under the site's power, per policy")
    _site_workload(cap)
    cap.add_argument("--policy", default="all", help="policies to search (default all)")
    cap.add_argument("--max-loss", default="5%", help="largest tolerated throughput loss per job")
    _run_options(cap, duration="24h", step="30s")
    cap.add_argument("--json", action="store_true", help="print JSON")
    cap.set_defaults(func=run_capacity)

    sw = sub.add_parser(
        "sweep",
        help="a grid of sites x workloads x policies x parameters, in parallel (or on Ray)",
    )
    sw.add_argument("--sites", required=True, help="comma-separated presets or site files")
    sw.add_argument("--workloads", required=True, help="comma-separated presets or files")
    sw.add_argument("--policy", default="all", help="policies (default all)")
    sw.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="POLICY.NAME=V1,V2",
        help="policy parameter values to sweep, e.g. polca.t1=0.85,0.9 (repeatable)",
    )
    sw.add_argument("--duration", default="24h", help="simulated time per point (default 24h)")
    sw.add_argument("--step", default="30s", help="time step (default 30s)")
    sw.add_argument("--cooling", choices=("liquid", "air"), default="liquid")
    sw.add_argument("--workers", type=int, help="local processes (default: one per core)")
    sw.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run on a Ray cluster (auto, ray://host:10001, or 'local' for a fresh local one); "
        "needs the optional extra: pip install 'perwatt[ray]'",
    )
    sw.add_argument("--out", default="sweep.csv", metavar="CSV", help="rows (default sweep.csv)")
    sw.add_argument("--quiet", action="store_true", help="no progress bar")
    sw.set_defaults(func=run_sweep_cmd)

    fx = sub.add_parser(
        "flex",
        help="answer grid load targets (DSX Flex semantics): flex optimiser vs uniform capping",
    )
    fx.add_argument(
        "scenario",
        metavar="SCENARIO",
        help=f"flex scenario file or preset ({', '.join(FLEX_PRESETS)})",
    )
    fx.add_argument("--targets", metavar="FILE", help="load targets (CloudEvents JSONL or CSV)")
    fx.add_argument(
        "--strategy", default="flex,uniform", help="flex, uniform or both (default both)"
    )
    fx.add_argument("--out", default="flex-run", metavar="DIR", help="result.json, report.html")
    fx.add_argument("--json", action="store_true", help="print the result JSON")
    fx.set_defaults(func=run_flex)

    sm = sub.add_parser(
        "smooth",
        help="training power swings seen by the grid, and GPU smoothing / filler / storage",
    )
    sm.add_argument(
        "scenario",
        metavar="SCENARIO",
        help=f"smoothing scenario file or preset ({', '.join(SMOOTH_PRESETS)})",
    )
    sm.add_argument("--duration", help="simulated time (default: the scenario's)")
    sm.add_argument("--no-size", action="store_true", help="skip the smallest-storage search")
    sm.add_argument("--out", default="smooth-run", metavar="DIR", help="result.json, report.html")
    sm.add_argument("--json", action="store_true", help="print the result JSON")
    sm.set_defaults(func=run_smooth_cmd)

    pre = sub.add_parser("presets", help="list shipped sites, systems, workloads and policies")
    pre.set_defaults(func=run_presets)


def _site_workload(p: argparse.ArgumentParser) -> None:
    p.add_argument("site", metavar="SITE", help="preset name or site file")
    p.add_argument("workload", metavar="WORKLOAD", help="preset name or workload file")


def _run_options(p: argparse.ArgumentParser, *, duration: str, step: str) -> None:
    p.add_argument("--duration", default=duration, help=f"simulated time (default {duration})")
    p.add_argument("--step", default=step, help=f"time step (default {step})")
    p.add_argument("--control-interval", help="how often the policy decides (default: every step)")
    p.add_argument("--cooling", choices=("liquid", "air"), default="liquid")
    p.add_argument(
        "--weather",
        metavar="CSV",
        help="hourly weather file (hour,temperature_c); default: the shipped synthetic year",
    )
    p.add_argument(
        "--start-hour",
        type=float,
        default=4800.0,
        help="hour of the weather year the run starts (default 4800: mid-July)",
    )
    p.add_argument("--price", type=float, default=None, help="electricity price in $/kWh")
    p.add_argument(
        "--calibrate",
        nargs="+",
        metavar="RESULT.json",
        help="perwatt bench results at several power limits: refit the decode curve",
    )


def _load(args: argparse.Namespace) -> tuple[Any, Any]:

    racks = getattr(args, "racks", None)
    if racks is not None and (args.site not in SITES or args.site == "test-8rack"):
        raise ConfigError("--racks applies to the presets site-96mw, site-250mw and site-1gw")
    if racks is not None and racks < 1:
        raise ConfigError("--racks must be >= 1")
    site = (
        (preset_site(args.site, racks=racks) if racks else preset_site(args.site))
        if args.site in SITES
        else None
    )
    if site is None:
        if not Path(args.site).exists():
            raise ConfigError(f"{args.site}: no such site file or preset ({', '.join(SITES)})")
        site = load_site(args.site)
    if args.workload in WORKLOADS:
        wl = preset_workload(args.workload)
    else:
        if not Path(args.workload).exists():
            raise ConfigError(
                f"{args.workload}: no such workload file or preset ({', '.join(WORKLOADS)})"
            )
        wl = load_workload(args.workload)
    return site, wl


def _config(args: argparse.Namespace, site: Any) -> Any:

    models = {}
    if args.calibrate:
        for sku in set(site.flat().leaf_gpu_sku):
            models[sku] = calibrate_from_bench(gpu_model(sku), args.calibrate)
    loss = None
    tl = getattr(args, "telemetry_loss", None)
    if tl:
        a, sep, b = tl.partition("-")
        if not sep:
            raise ConfigError(f"--telemetry-loss {tl!r}: use FROM-TO, e.g. 3h-3h10m")
        loss = (_dur_or_zero(a), parse_duration_s(b))
    targets: tuple[Any, ...] = ()
    if getattr(args, "targets", None):
        targets = load_targets(args.targets, capacity_w=float(site.root.capacity_w))
    return SimConfig(
        grid_targets=targets,
        duration_s=parse_duration_s(args.duration),
        step_s=parse_duration_s(args.step),
        control_interval_s=parse_duration_s(args.control_interval)
        if args.control_interval
        else None,
        cooling=args.cooling,
        weather=load_weather(args.weather) if args.weather else None,
        start_hour=args.start_hour,
        price_per_kwh=args.price if args.price is not None else DEFAULT_PRICE_PER_KWH_USD,
        telemetry_loss_s=loss,
        models=models,
    )


def _dur_or_zero(text: str) -> float:
    return 0.0 if text.strip() in ("0", "") else parse_duration_s(text)


def _policies(text: str) -> list[str]:

    names = list(POLICIES) if text == "all" else [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in names if p not in POLICIES]
    if bad or not names:
        raise ConfigError(
            f"unknown policy {', '.join(bad) or text!r}; choose from {', '.join(POLICIES)} or all"
        )
    return names


@contextmanager
def _progress(enabled: bool, label: str) -> Iterator[Callable[[int, int], None]]:
    if not enabled:
        yield lambda done, total: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeRemainingColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=1)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def run_simulate(args: argparse.Namespace) -> int:
    """``perwatt facility simulate``: run each policy, write result JSON, timeline and report."""
    site, wl = _load(args)
    cfg = _config(args, site)
    names = _policies(args.policy)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    show = not args.quiet and sys.stderr.isatty()
    for name in names:
        with _progress(show, f"{name:12s}") as prog:
            r = simulate(site, wl, make_policy(name), cfg, progress=prog)
        results.append(r)
        if r.partial:
            break
    res_path = write_results(out / "result.json", results)
    _write_timeline(out / "timeline.csv", results)
    html = write_facility_html(out / "report.html", results, assumptions=_assumptions())
    if args.json:
        print(res_path.read_text())
    else:
        _print_summary(results)
        for r in results:
            for g in r.grid_targets:
                state = "MET" if g["met"] else f"MISSED by up to {g['max_over_w'] / 1e6:.3f} MW"
                print(f"{r.policy:12s} grid target {g['id']}: {g['target_w'] / 1e6:g} MW {state}")
        print(f"\nwrote {res_path}, {out / 'timeline.csv'}, {html} (all figures simulated)")
    partial = next((r.partial for r in results if r.partial), None)
    if partial:
        print(f"perwatt: partial run: {partial}; results so far were written", file=sys.stderr)
        return 130
    return 0


def _assumptions() -> list[str]:
    return [
        "GPU phase curves: perwatt.facility.curves (Perseus-fitted compute exponent 0.40; "
        "decode exponent 0.15 is an assumption unless --calibrate is given).",
        "Node power besides GPUs: other_power_w x (0.5 + 0.5 x activity) (assumption).",
        "Telemetry lags one step; policies decide every control interval.",
        "Cooling: perwatt.facility.cooling parameters (assumptions near Uptime 2025 average "
        "1.54 for air and NREL ESIF 1.036 for warm-water liquid).",
    ]


def _write_timeline(path: Path, results: list[Any]) -> None:
    keys = [k for k in results[0].timeline if k != "time_s" and len(results[0].timeline[k]) > 1]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["policy", "time_s", *keys, "source"])
        for r in results:
            for i, t in enumerate(r.timeline["time_s"]):
                w.writerow([r.policy, t, *(r.timeline[k][i] for k in keys), "simulated"])


def _print_summary(results: list[Any]) -> None:

    hdr = (
        f"{'policy':12s} {'out tokens':>11s} {'tok/MWh':>10s} {'unserved':>10s} "
        f"{'SLO s':>7s} {'train':>6s} {'MWh':>9s} {'peak MW':>8s} {'PUE':>6s} {'$':>10s} "
        f"{'s over':>7s}"
    )
    print(
        f"site {results[0].site}, workload {results[0].workload}, {results[0].gpus} GPUs, "
        f"feed {results[0].feed_capacity_w / 1e6:g} MW (simulated)"
    )
    over = [
        f"{lv.element} {lv.oversubscription:.2f}x"
        for lv in results[0].levels
        if lv.oversubscription is not None and lv.oversubscription > 1.0 + 1e-6
    ]
    if over:
        print("oversubscribed (children's capacity / capacity): " + ", ".join(over[:8]))
    print(hdr)
    for r in results:
        trn = [j.throughput for j in r.jobs if j.kind == "training"]
        print(
            f"{r.policy:12s} {fmt(r.output_tokens):>11s} {fmt(r.tokens_per_mwh):>10s} "
            f"{fmt(r.unserved_output_tokens):>10s} "
            f"{fmt(sum(j.slo_violation_s for j in r.jobs)):>7s} "
            f"{fmt(min(trn)) if trn else '-':>6s} {fmt(r.facility_energy_j / 3.6e9):>9s} "
            f"{fmt(r.peak_facility_w / 1e6):>8s} {fmt(r.pue):>6s} {fmt(r.cost_usd):>10s} "
            f"{fmt(r.seconds_over_capacity):>7s}"
        )


def run_capacity(args: argparse.Namespace) -> int:
    """``perwatt facility capacity``: how many GPUs fit under the site cap, per policy."""
    site, wl = _load(args)
    cfg = _config(args, site)
    names = _policies(args.policy)
    target: Any = args.site if args.site in ("site-96mw", "site-250mw", "site-1gw") else site
    rows = capacity(target, wl, policies=names, max_loss=parse_fraction(args.max_loss), config=cfg)
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=1))
        return 0
    print(
        f"site {site.name}: GPUs that fit, per policy (simulated {args.duration} at "
        f"{args.step} steps; max loss {args.max_loss})"
    )
    print(
        f"{'policy':12s} {'racks':>6s} {'GPUs':>8s} {'x nameplate':>11s} {'worst loss':>10s}  method"
    )
    for r in rows:
        print(
            f"{r.policy:12s} {r.racks:6d} {r.gpus:8d} {r.gain_vs_nameplate:11.3f} "
            f"{r.worst_job_loss:10.1%}  {r.method}"
        )
    return 0


def run_sweep_cmd(args: argparse.Namespace) -> int:
    """``perwatt facility sweep``: policies × parameters × scenarios, locally or on Ray."""
    points = grid(
        [x.strip() for x in args.sites.split(",") if x.strip()],
        [x.strip() for x in args.workloads.split(",") if x.strip()],
        _policies(args.policy),
        parse_params(args.param),
        duration_s=parse_duration_s(args.duration),
        step_s=parse_duration_s(args.step),
        cooling=args.cooling,
    )
    show = not args.quiet and sys.stderr.isatty()
    with _progress(show, f"{len(points)} points") as prog:
        rows = run_sweep(points, workers=args.workers, ray_address=args.ray, progress=prog)
    out = Path(args.out)
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    where = f"Ray at {args.ray}" if args.ray else "local processes"
    print(f"{len(rows)} points ({where}) → {out} (all figures simulated)")
    for r in rows:
        print(
            f"{r['site']:12s} {r['workload']:10s} {r['policy']:12s} {r['params']:16s} "
            f"worst job {r['worst_job_throughput']:.3f}  s over {r['seconds_over_capacity']:g}"
        )
    return 0


_DATA = Path(__file__).resolve().parents[1] / "facility" / "data"
FLEX_PRESETS = {"phoenix": "flex_phoenix.json", "phoenix-30s": "flex_phoenix_30s.json"}
SMOOTH_PRESETS = {
    "smooth-perseus": "smooth_perseus.json",
    "smooth-parametric": "smooth_parametric.json",
}


def _scenario_path(name: str, presets: dict[str, str]) -> Path:
    if name in presets:
        return _DATA / presets[name]
    p = Path(name)
    if not p.exists():
        raise ConfigError(f"{name}: no such scenario file or preset ({', '.join(presets)})")
    return p


def run_flex(args: argparse.Namespace) -> int:
    """``perwatt facility flex``: meet grid load targets with the least value lost."""
    path = _scenario_path(args.scenario, FLEX_PRESETS)
    sc = load_flex_scenario(path)
    if args.targets:
        sc = replace(sc, targets=load_targets(args.targets, floor_w=sc.floor_w))
    names = [x.strip() for x in args.strategy.split(",") if x.strip()]
    bad = [x for x in names if x not in STRATEGIES]
    if bad or not names:
        raise ConfigError(f"--strategy: choose from {', '.join(STRATEGIES)}")
    results = [simulate_flex(sc, n) for n in names]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "name": sc.name,
        "source": sc.source,
        "gpus": sc.gpus,
        "published": dict(sc.published),
        "notes": list(sc.notes),
    }
    docs = [r.to_dict() for r in results]
    doc = {"schema": "perwatt.flex-run/1", "source": "simulated", "scenario": meta, "results": docs}
    res = out / "result.json"
    res.write_text(json.dumps(doc, indent=1, allow_nan=False))
    html = write_flex_html(out / "report.html", docs, scenario=meta)
    status_path = out / "status.jsonl"
    with status_path.open("w") as fh:
        for r in results:
            if r.strategy != "flex":
                continue
            for i, (t, state) in enumerate(r.status_changes):
                k = min(len(r.site_w) - 1, round(t / r.step_s))
                tw = float(r.target_w[k])
                ev = status_event(
                    feed=sc.feed,
                    state=state,
                    power_w=float(r.site_w[k]),
                    target_w=tw if tw == tw else None,  # NaN: no target in force
                    at=sc.origin + timedelta(seconds=t) if sc.origin else None,
                    seq=i,
                    time_s=t,
                )
                fh.write(json.dumps(ev) + "\n")
    if args.json:
        print(res.read_text())
        return 0
    print(f"scenario {sc.name}: {sc.gpus} GPUs, {len(sc.targets)} target(s) (simulated)")
    for r in results:
        for o in r.outcomes:
            resp = "never" if o.response_s is None else f"{o.response_s:g} s"
            state = "MET" if o.met else f"MISSED by up to {o.max_over_w / 1e3:.1f} kW"
            thr = ", ".join(f"{k} {v:.3f}" for k, v in o.throughput.items())
            print(
                f"{r.strategy:8s} {o.id}: target {o.target_w / 1e3:.1f} kW "
                f"({1 - o.target_w / o.baseline_w:.0%} cut) {state}, response {resp}; "
                f"weighted throughput {o.weighted_throughput:.3f} ({thr})"
            )
    print(f"wrote {res}, {html}, {status_path} (all figures simulated)")
    return 0 if all(r.all_met for r in results if r.strategy == "flex") else 1


def run_smooth_cmd(args: argparse.Namespace) -> int:
    """``perwatt facility smooth``: training power swings before/after each mitigation."""
    path = _scenario_path(args.scenario, SMOOTH_PRESETS)
    sc = load_smooth_scenario(path)
    if args.duration:
        sc = replace(sc, duration_s=parse_duration_s(args.duration))
    r = run_smooth(sc, size_storage=not args.no_size)
    doc = r.to_dict()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = out / "result.json"
    res.write_text(json.dumps(doc, indent=1, allow_nan=False))
    html = write_smooth_html(out / "report.html", doc)
    if args.json:
        print(res.read_text())
        return 0
    print(f"scenario {sc.name}: {sc.gpus} x {sc.sku}, {r.waveform} (simulated)")
    print(
        f"{'mitigation':30s} {'peak MW':>8s} {'MW/s':>7s} {'MW/min':>7s} {'range':>7s} "
        f"{'band':>5s} {'RMS MW':>7s} {'limits':>6s} {'extra E':>7s}"
    )
    for m in doc["mitigations"]:
        g = m["grid"]
        ok = "-" if g["meets_limits"] is None else ("yes" if g["meets_limits"] else "NO")
        print(
            f"{m['mitigation']:30s} {g['peak_mw']:8.1f} {g['ramp_mw_per_s']:7.2f} "
            f"{g['ramp_mw_per_min']:7.2f} {g['dynamic_range_mw']:7.2f} {g['band_fraction']:5.2f} "
            f"{g['band_rms_mw']:7.2f} {ok:>6s} {m['cost']['extra_energy_fraction']:7.1%}"
        )
    s = doc["smallest_storage"]
    if s["for"]:
        cap = "none found" if s["capacity_kwh"] is None else f"{s['capacity_kwh']:.0f} kWh"
        print(f"smallest storage meeting the limits for {s['for']!r}: {cap}")
    print(f"wrote {res}, {html} (all figures simulated)")
    return 0


def run_presets(args: argparse.Namespace) -> int:
    """``perwatt facility presets``: the shipped sites, systems, workloads and policies."""
    for name, f in SITES.items():
        t = f()
        print(f"site      {name:12s} {t.gpu_count:8d} GPUs, feed {t.root.capacity_w / 1e6:g} MW")
    for name, g in SYSTEMS.items():
        e = g()
        print(f"system    {name:12s} {e.gpu_count:8d} GPUs, {e.nameplate_w / 1e3:g} kW nameplate")
    print(f"workloads {', '.join(WORKLOADS)}")
    print(f"policies  {', '.join(POLICIES)}")
    print(f"flex      {', '.join(FLEX_PRESETS)}")
    print(f"smooth    {', '.join(SMOOTH_PRESETS)}")
    return 0
