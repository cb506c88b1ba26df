"""One self-contained HTML report over bench results: opens offline, no scripts, no CDN.

``perwatt report RUN.json … --out report.html`` reads result documents (never measures anything)
and writes a single file with inline CSS and inline SVG charts (:mod:`perwatt.report.svg`):

1. banners — loud, at the top, whenever any energy figure is simulated, estimated or replayed,
   a run is partial/running/failed, a configuration fails the accuracy guard, or the runs'
   conditions differ;
2. the summary table — every energy figure with its source label next to it, and the accuracy
   guard's pass/FAIL (:mod:`perwatt.bench.guard`) beside it;
3. the power timeline of each run with its steady-state window shaded;
4. output tokens per joule against throughput and against load (one line per series);
5. the latency–energy frontier across runs: TPOT p90 against J per output token, with the
   Pareto-optimal runs (no other run is both faster and cheaper in energy) filled and joined;
6. economics (energy cost only: $/M tokens, tokens/MWh, tokens/s per MW, PUE overhead, power-cap
   headroom), the conditions of each run, and the accuracy block where one was attached.

Failed runs are marked in the tables and left out of the efficiency charts (a run with no
successful request has no tokens per joule, not zero). A file given twice is reported once
(:func:`dedupe_results`). The file is written atomically (``.tmp`` then rename).

The file is written atomically (``.tmp`` then rename), and carries a ``<meta name="generator">``
tag: :func:`write_html_report` replaces an existing file only if that tag says perwatt wrote it,
and never writes over one of its own inputs, unless ``force`` (``perwatt report --force``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from perwatt import __version__
from perwatt import economics as eco
from perwatt._files import atomic_write_text, same_file
from perwatt.bench.conditions import CONDITIONS, gpu_values
from perwatt.bench.guard import (
    DEFAULT_THRESHOLDS,
    NO_VERDICT,
    GuardThresholds,
    GuardVerdict,
    judge,
)
from perwatt.bench.result import BenchResult, load_result, validate_result
from perwatt.errors import ConfigError, UserError
from perwatt.meter.source import is_measured
from perwatt.report import svg
from perwatt.report.svg import esc, fmt

#: Marks a file as a report perwatt wrote, so a later report may replace it (and nothing else).
GENERATOR_META: Final = '<meta name="generator" content="perwatt'
#: How reports began before they carried GENERATOR_META: those, too, may be replaced.
_OLD_REPORT_HEAD: Final = "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>\n"

MAX_TIMELINES: Final = 24
LEGEND_WIDTH: Final = 640.0  # chart width with a legend column on the right
LEGEND_MARGIN: Final = 165.0

CSS: Final = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1b1b1b;
background:#fafafa;line-height:1.45}
main{max-width:1320px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:32px 0 10px;border-bottom:1px solid #ddd;
padding-bottom:4px}
.meta{color:#555;font-size:13px}
.banner{border-radius:6px;padding:10px 14px;margin:12px 0;font-size:14px}
.banner.sim{background:#fff4e5;border:2px solid #e69f00}
.banner.partial{background:#fdecea;border:2px solid #d55e00}
.banner.cond{background:#eef5fb;border:1px solid #56b4e9}
.banner strong{display:block;margin-bottom:2px}
.banner ul{margin:4px 0 0 18px;padding:0}
table{border-collapse:collapse;font-size:12px;background:#fff;margin:6px 0 4px;width:100%}
th,td{border:1px solid #e1e1e1;padding:4px 7px;text-align:right;vertical-align:top}
th{background:#f1f3f5;font-weight:600;text-align:center}
td.l,th.l{text-align:left}
.src{display:inline-block;font-size:10.5px;padding:0 5px;border-radius:8px;margin-left:4px;
white-space:nowrap}
.src.measured{background:#e3f4ea;color:#0b6b3a}
.src.model{background:#ffe7c2;color:#8a4b00;font-weight:600}
.tag{display:inline-block;font-size:10.5px;padding:0 5px;border-radius:8px;background:#fdecea;
color:#a4260b;font-weight:600}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(600px,1fr));gap:14px}
figure{margin:0;background:#fff;border:1px solid #e5e5e5;border-radius:6px;padding:8px}
figcaption{font-size:12px;color:#555;padding:2px 4px 0}
.note{font-size:12.5px;color:#444}
.wrap{overflow-x:auto}
tr.fail td{background:#fdf3f1}
svg{max-width:100%;height:auto}
"""


@dataclass(frozen=True, slots=True)
class _Run:
    name: str  # file name or label
    doc: BenchResult
    guard: GuardVerdict = NO_VERDICT

    @property
    def failed(self) -> bool:
        """No efficiency to plot: the run failed, or stopped before any request succeeded (its
        "0 tokens per joule" would read as a terrible configuration, not a broken run)."""
        return self.doc["status"] == "failed" or not self.doc["metrics"]["completed"]

    @property
    def series(self) -> str:
        return self.doc["label"]

    @property
    def source(self) -> str:
        e = self.doc["energy"]
        return e["source"] if e is not None else "none"

    @property
    def measured(self) -> bool:
        e = self.doc["energy"]
        return bool(e is not None and e["measured"] and is_measured(e["source"]))


def _src(label: str) -> str:
    cls = "measured" if is_measured(label) else "model"
    return f'<span class="src {cls}">{esc(label)}</span>'


def _num(v: Any) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def dedupe_results(
    results: Sequence[str | Path | Mapping[str, Any]],
) -> tuple[list[str | Path | Mapping[str, Any]], list[str]]:
    """The results with repeated files removed (same resolved path: ``a.json`` and ``./a.json``,
    or a shell glob that overlaps another), and the names of those dropped, for a warning."""
    seen: set[Path] = set()
    unique: list[str | Path | Mapping[str, Any]] = []
    dropped: list[str] = []
    for r in results:
        if isinstance(r, str | Path):
            rp = Path(r).resolve()
            if rp in seen:
                dropped.append(str(r))
                continue
            seen.add(rp)
        unique.append(r)
    return unique, dropped


def _load_runs(
    results: Sequence[str | Path | Mapping[str, Any]], thresholds: GuardThresholds
) -> list[_Run]:
    runs: list[_Run] = []
    for i, r in enumerate(results):
        if isinstance(r, str | Path):
            doc = load_result(r)
            name = Path(r).name
        else:
            doc = validate_result(dict(r), f"result {i + 1}")
            name = f"result {i + 1}"
        runs.append(_Run(name, doc, judge(doc["accuracy"], thresholds)))
    return runs


def _series_colors(runs: Sequence[_Run]) -> dict[str, str]:
    colors: dict[str, str] = {}
    for r in runs:
        if r.series not in colors:
            colors[r.series] = svg.PALETTE[len(colors) % len(svg.PALETTE)]
    return colors


def _load_text(doc: BenchResult) -> str:
    return f"{doc['load']['kind']} {doc['load']['value']:g}"


# --------------------------------------------------------------------------- banners
def _banners(runs: Sequence[_Run], thresholds: GuardThresholds = DEFAULT_THRESHOLDS) -> str:
    out: list[str] = []
    not_measured = [r for r in runs if r.doc["energy"] is not None and not r.measured]
    if not_measured:
        srcs = sorted({r.source for r in not_measured})
        items = "".join(
            f"<li>{esc(r.name)}: {_src(r.source)}</li>" for r in not_measured[:MAX_TIMELINES]
        )
        out.append(
            '<div class="banner sim" role="alert"><strong>Energy figures from '
            f"{esc(', '.join(srcs))} sources are NOT measurements.</strong>"
            "They come from a power model, a replayed trace or an estimate; compare them with "
            f"each other only. <ul>{items}</ul></div>"
        )
    no_energy = [r for r in runs if r.doc["energy"] is None]
    if no_energy:
        out.append(
            '<div class="banner sim"><strong>No energy recorded</strong>'
            + esc(", ".join(r.name for r in no_energy))
            + "</div>"
        )
    unfinished = [r for r in runs if r.doc["status"] != "complete"]
    if unfinished:
        items = "".join(
            f"<li>{esc(r.name)}: <b>{esc(r.doc['status'].upper())}</b>"
            f"{' — ' + esc(r.doc['partial_reason']) if r.doc['partial_reason'] else ''}</li>"
            for r in unfinished
        )
        out.append(
            # complete-with-failures ran to the end; its figures leave out the failed requests.
            '<div class="banner partial" role="alert"><strong>Incomplete runs: their figures '
            "cover only what was measured before they stopped, or only the requests answered in "
            f"full.</strong><ul>{items}</ul></div>"
        )
    failing = [r for r in runs if r.guard.failed]
    if failing:
        items = "".join(
            f"<li>{esc(r.name)}: {esc(r.guard.text)}</li>" for r in failing[:MAX_TIMELINES]
        )
        out.append(
            '<div class="banner partial" role="alert"><strong>Configurations that FAIL the '
            "accuracy guard: their energy savings change the answers.</strong>"
            f"Thresholds: {esc(thresholds.describe())}.<ul>{items}</ul></div>"
        )
    diffs = _condition_diffs(runs)
    if diffs:
        items = "".join(f"<li>{esc(d)}</li>" for d in diffs)
        out.append(
            '<div class="banner cond"><strong>Conditions differ between runs</strong>'
            f"Differences below change what a comparison measures.<ul>{items}</ul></div>"
        )
    return "".join(out)


def _gpu_summary(doc: BenchResult, key: str) -> str:
    return gpu_values(doc, key).text(times="×", unknown="–")


def _condition_diffs(runs: Sequence[_Run]) -> list[str]:
    """Conditions that differ between series at the same load level.

    Along one series conditions may change by design (a power-limit sweep, or the energy basis
    of a short level); what a reader must be warned about is runs side by side at one load that
    were measured differently.
    """
    levels: dict[str, list[_Run]] = {}
    for r in runs:
        levels.setdefault(_load_text(r.doc), []).append(r)
    out = []
    for cond in CONDITIONS:
        if not cond.loud:  # the report warns of what changes a comparison (compare notes the rest)
            continue
        for load, group in levels.items():
            if len({r.series for r in group}) < 2:
                continue
            vals: dict[str, list[str]] = {}
            for r in group:
                vals.setdefault(cond.text(r.doc, times="×", unknown="–"), []).append(r.name)
            if len(vals) > 1:
                out.append(
                    f"{cond.name} at {load}: "
                    + "; ".join(f"{v} ({', '.join(ns)})" for v, ns in vals.items())
                )
    return out


# --------------------------------------------------------------------------- tables
def _cell(v: float | None, unit: str = "", src: str | None = None) -> str:
    if v is None:
        return "<td>–</td>"
    return f"<td>{esc(fmt(v))}{esc(unit)}{_src(src) if src else ''}</td>"


def _pair(metrics: Mapping[str, Any], block: str) -> str:
    p: Mapping[str, Any] = metrics[block]
    return f"<td>{esc(fmt(_num(p['p50'])))} / {esc(fmt(_num(p['p99'])))}</td>"


def _summary_table(runs: Sequence[_Run]) -> str:
    head = (
        "<tr><th class=l>run</th><th>load</th><th>status (ok / failed)</th>"
        "<th>J / output token</th><th>output tokens / J</th><th>accuracy guard</th>"
        "<th>avg / peak power (W)</th><th>output tok/s</th><th>req/s</th>"
        "<th>TTFT p50 / p99 (ms)</th><th>TPOT p50 / p99 (ms)</th><th>ITL p50 (ms)</th>"
        "<th>E2E p50 / p99 (ms)</th><th>tok/s per GPU</th><th>basis</th></tr>"
    )
    rows = []
    for r in runs:
        d, e = r.doc, r.doc["energy"]
        m: Mapping[str, Any] = r.doc["metrics"]
        status = d["status"]
        st = esc(status) if status == "complete" else f'<span class="tag">{esc(status)}</span>'

        src = r.source if e is not None else None
        if r.failed:
            # No successful request: its "0 tokens per joule" is not an efficiency.
            e_cells = (
                f'<td colspan=2 class=l><span class="tag">{esc(r.doc["status"])}: no successful '
                "request, not plotted</span></td>"
            )
        else:
            e_cells = _cell(_num(e["j_per_output_token"]) if e else None, "", src) + _cell(
                _num(e["output_tokens_per_j"]) if e else None, "", src
            )
        g = r.guard
        guard_cell = (
            f'<td class=l><span class="tag">FAIL</span> {esc("; ".join(g.failures))}</td>'
            if g.failed
            else f"<td>{'pass' if g.passed else '–'}</td>"
        )
        avg = _num(e["avg_power_w"]) if e else None
        peak = _num(e["peak_power_w"]) if e else None
        power = (
            f"<td>{esc(fmt(avg))} / {esc(fmt(peak))}{_src(src)}</td>"
            if e is not None and src is not None
            else "<td>–</td>"
        )
        rows.append(
            ("<tr class=fail>" if g.failed or r.failed else "<tr>")
            + f"<td class=l>{esc(r.name)}</td>"
            f"<td>{esc(_load_text(d))}</td><td>{st} ({m['completed']} / {m['failed']})</td>"
            + e_cells
            + guard_cell
            + power
            + _cell(_num(m["output_throughput_tok_s"]))
            + _cell(_num(m["request_throughput_rps"]))
            + _pair(m, "ttft_ms")
            + _pair(m, "tpot_ms")
            + _cell(_num(m["itl_ms"]["p50"]))
            + _pair(m, "e2el_ms")
            + _cell(_num(e["output_tokens_per_s_per_gpu"]) if e else None)
            + f"<td>{esc(e['basis'].replace('_', ' ') if e else '–')}"
            f"{' (idle subtracted)' if e and e['idle_subtracted'] else ''}</td>"
            "</tr>"
        )
    return f'<div class="wrap"><table>{head}{"".join(rows)}</table></div>'


def _economics_table(runs: Sequence[_Run]) -> str:
    head = (
        "<tr><th class=l>run</th><th>$ / M output tokens</th><th>output tokens / MWh</th>"
        "<th>tokens/s per MW (facility)</th><th>price ($/kWh)</th><th>PUE</th>"
        "<th>overhead energy (J, whole run)</th><th>power limit (W, all GPUs)</th>"
        "<th>peak headroom (W)</th><th>provisioning gain</th></tr>"
    )
    rows = []
    for r in runs:
        d, e, ec = r.doc, r.doc["energy"], r.doc["economics"]
        src = r.source if e is not None else None
        pue = float(ec["pue"]) if ec else float(d["config"]["pue"])
        price = float(ec["price_per_kwh"]) if ec else float(d["config"]["price_per_kwh"])
        per_mw: float | None = None
        overhead: float | None = None
        limit: float | None = None
        headroom: eco.PowerCapHeadroom | None = None
        if e is not None:
            rate = _num(e["output_tokens_per_s_per_gpu"])
            avg = _num(e["avg_power_w"])
            if rate is not None and avg and pue >= 1:
                per_mw = eco.tokens_per_s_per_mw(rate * d["config"]["num_gpus"], avg, pue=pue)
            whole = _num(e["whole_run"].get("total_energy_j"))
            if whole is not None and pue >= 1:
                overhead = eco.cooling_split(whole, pue=pue).overhead_energy_j
            limits = [
                _num(g.get("power_limit_w"))
                for g in list(d["conditions"].get("gpus") or [])  # type: ignore[call-overload]
            ]
            if limits and all(x is not None and x > 0 for x in limits):
                limit = sum(x for x in limits if x is not None)
                peak = _num(e["peak_power_w"])
                if avg is not None and (peak is None or peak >= avg):
                    try:
                        headroom = eco.power_cap_headroom(
                            power_limit_w=limit, avg_power_w=avg, peak_power_w=peak
                        )
                    except UserError:
                        headroom = None
        rows.append(
            f"<tr><td class=l>{esc(r.name)}</td>"
            + _cell(_num(ec["usd_per_million_output_tokens"]) if ec else None, "", src)
            + _cell(_num(ec["output_tokens_per_mwh"]) if ec else None, "", src)
            + _cell(per_mw, "", src)
            + _cell(price)
            + _cell(pue)
            + _cell(overhead, "", src)
            + _cell(limit)
            + _cell(headroom.peak_headroom_w if headroom else None, "", src)
            + (f"<td>{esc(fmt(headroom.provisioning_gain))}×</td>" if headroom else "<td>–</td>")
            + "</tr>"
        )
    return (
        f'<div class="wrap"><table>{head}{"".join(rows)}</table></div>'
        f'<p class="note"><b>Energy cost only</b>: {esc(eco.ENERGY_COST_NOTE)}; no hardware, '
        "staff or demand charges. Tokens/s per MW = sustained output tokens/s ÷ (average GPU "
        "power × PUE). Overhead = GPU energy × (PUE − 1), mostly cooling. Provisioning gain = "
        "power limit ÷ observed peak: how many more GPUs of this workload a power budget could "
        "host if provisioned at the observed peak (this workload only). "
        f"Default price {eco.DEFAULT_PRICE_PER_KWH_USD} $/kWh = U.S. industrial average 2023 "
        "(EIA Electric Power Monthly, Table 5.3); default PUE 1.0 = GPU only (industry average "
        f"{eco.TYPICAL_PUE}, Uptime Institute survey 2024, for reference).</p>"
    )


def _dash(v: Any) -> str:
    """A condition as text, with "–" for an unknown value, also inside ``a / b`` pairs: a
    report never prints Python's ``None``."""
    if v is None:
        return "–"
    parts = str(v).split(" / ")
    return " / ".join("–" if p.strip() in ("None", "") else p for p in parts)


def _conditions_table(runs: Sequence[_Run]) -> str:
    keys: list[tuple[str, Any]] = [
        ("GPUs", lambda d: _gpu_summary(d, "name")),
        ("driver", lambda d: _gpu_summary(d, "driver")),
        ("power limit (W)", lambda d: _gpu_summary(d, "power_limit_w")),
        (
            "SM clock / max (MHz)",
            lambda d: f"{_gpu_summary(d, 'sm_clock_mhz')} / {_gpu_summary(d, 'max_sm_clock_mhz')}",
        ),
        ("host / CPU", lambda d: f"{d['conditions']['host']} / {d['conditions']['cpu']}"),
        ("python / torch", lambda d: f"{d['conditions']['python']} / {d['conditions']['torch']}"),
        ("engine / endpoint", lambda d: f"{d['config']['engine']} / {d['config']['endpoint']}"),
        ("url", lambda d: d["config"]["url"]),
        ("model / precision", lambda d: f"{d['config']['model']} / {d['config']['precision']}"),
        ("workload", lambda d: json.dumps(d["config"]["workload"], sort_keys=True)),
        (
            "prompts / in / out len",
            lambda d: (
                f"{d['config']['num_prompts']} / {d['config']['input_len']} / {d['config']['output_len']}"
            ),
        ),
        ("load", _load_text),
        (
            "rate / burstiness / max conc.",
            lambda d: (
                f"{d['config']['request_rate'] if d['config']['request_rate'] is not None else 'inf'} / {d['config']['burstiness']} / {d['config']['max_concurrency']}"
            ),
        ),
        ("GPUs counted", lambda d: d["config"]["num_gpus"]),
        ("tokens counted from", lambda d: d["metrics"]["token_count_source"]),
        ("energy source", lambda d: d["energy"]["source"] if d["energy"] else "none"),
        (
            "steady-state window (s)",
            lambda d: (
                ", ".join(fmt(x) for x in d["energy"]["steady_state_window_s"])
                if d["energy"] and d["energy"]["steady_state_window_s"]
                else "–"
            ),
        ),
        ("seed", lambda d: d["config"]["seed"]),
        (
            "date (UTC) / perwatt",
            lambda d: f"{d['conditions']['date_utc']} / {d['perwatt_version']}",
        ),
    ]
    head = (
        "<tr><th class=l>condition</th>"
        + "".join(f"<th>{esc(r.name)}</th>" for r in runs)
        + "</tr>"
    )
    body = []
    for name, get in keys:
        vals = [_dash(get(r.doc)) for r in runs]
        differ = len(set(vals)) > 1
        cells = "".join(
            f"<td class=l{' style=background:#fff4e5' if differ else ''}>{esc(v)}</td>"
            for v in vals
        )
        body.append(f"<tr><th class=l>{esc(name)}</th>{cells}</tr>")
    return f'<div class="wrap"><table>{head}{"".join(body)}</table></div>'


def _accuracy_section(
    runs: Sequence[_Run], thresholds: GuardThresholds = DEFAULT_THRESHOLDS
) -> str:
    rows = []
    for r in runs:
        a = r.doc["accuracy"]
        if a is None:
            continue
        g = r.guard
        verdict = (
            f'<td class=l><span class="tag">FAIL</span> {esc("; ".join(g.failures))}</td>'
            if g.failed
            else f"<td>{'pass' if g.passed else '– (nothing judged)'}</td>"
        )
        rows.append(
            ("<tr class=fail>" if g.failed else "<tr>")
            + f"<td class=l>{esc(r.name)}</td><td class=l>{esc(a.get('reference'))}</td>"
            + verdict
            + _cell(_num(a.get("exact_match")))
            + _cell(_num(a.get("top1_agreement")))
            + _cell(_num(a.get("logprob_agreement")))
            + _cell(_num(a.get("kl_mean")))
            + f"<td class=l>{esc(a.get('note', ''))}</td></tr>"
        )
    if not rows:
        return ""
    head = (
        "<tr><th class=l>run</th><th class=l>reference</th><th>verdict</th><th>exact match</th>"
        "<th>top-1 agreement</th><th>logprob agreement</th><th>KL (nats)</th>"
        "<th class=l>method</th></tr>"
    )
    return (
        f'<h2>Accuracy guard</h2><div class="wrap"><table>{head}{"".join(rows)}</table></div>'
        f'<p class="note">Thresholds: {esc(thresholds.describe())} (perwatt report --min-top1, '
        "--max-kl, --min-logprob-agreement, --min-exact-match, --max-rel-err; why these "
        "defaults: perwatt.bench.guard). They catch a broken or badly lossy format; they do not "
        "certify one.</p>"
    )


# --------------------------------------------------------------------------- charts
def _device_kind(devices: Sequence[str]) -> str:
    """What the metered devices are, from their labels (``gpu0``, ``cpu0-package``, ``sim0``)."""
    kinds = set()
    for d in devices:
        leaf = d.rsplit("/", 1)[-1].lower()  # "node3/gpu1" -> "gpu1"
        if leaf.startswith("gpu"):
            kinds.add("GPU")
        elif leaf.startswith(("cpu", "package", "dram", "psys")):
            kinds.add("CPU")
        else:
            kinds.add("device")
    if kinds == {"GPU"}:
        return "GPU"
    if kinds == {"CPU"}:
        return "CPU"
    return "GPU + CPU" if kinds == {"GPU", "CPU"} else "device"


def power_axis_label(doc: BenchResult) -> str:
    """The timeline's y label from what was metered and how: ``total GPU power (W)`` for a GPU
    counter, ``machine CPU power, estimated (W)`` for the whole machine's CPU estimate, ``simulated
    power (W)`` for a model — never "GPU" for something that is not one."""
    e = doc["energy"]
    if e is None:
        return "power (W)"
    source = e["source"]
    devices = list((e.get("whole_run") or {}).get("energy_j") or {})
    kind = _device_kind(devices) if devices else "device"
    if source == "simulated":
        return "simulated power (W)"
    if source == "estimated":
        # EstimatedCPUSource: the whole machine's CPU load x rated power.
        return "machine CPU power, estimated (W)"
    total = "total " if len(devices) > 1 or kind == "GPU" else ""
    if is_measured(source):
        return f"{total}{kind} power (W)"
    return f"{total}{kind} power, {source} (W)"


def _timeline_chart(r: _Run, color: str) -> str:
    tl = r.doc["timeline"]
    e = r.doc["energy"]
    title = f"{r.name} — power ({r.source})"
    ts = [float(x) for x in tl["t_s"]]
    ps = [float(x) for x in tl["power_w"]]
    frame = svg.make_frame(
        ts,
        ps,
        title=title,
        x_label="time since run start (s)",
        y_label=power_axis_label(r.doc),
        width=LEGEND_WIDTH,
        right=LEGEND_MARGIN,
    )
    if len(ts) < 2:
        return svg.empty_chart(frame, "no power timeline recorded")
    xs, ys = svg.decimate(ts, ps)
    parts = [svg.axes(frame)]
    legend: list[tuple[str, str, svg.LegendKind]] = [(f"power ({r.source})", color, "line")]
    win = e["steady_state_window_s"] if e else None
    if win is not None:
        parts.append(svg.band(frame, float(win[0]), float(win[1]), label="steady state"))
        legend.append(("steady-state window", "#2a9d8f", "band"))
    parts.append(svg.line(frame, xs, ys, color=color, label=f"power ({r.source})"))
    if e is not None and e["idle_power_w"] is not None:
        idle = float(e["idle_power_w"])
        parts.append(
            svg.line(
                frame, [frame.x_lo, frame.x_hi], [idle, idle], color="#777", dash="4 3", width=1
            )
        )
        legend.append(("idle power", "#777", "dashed"))
    parts.append(svg.legend(frame, legend, position="right"))
    return svg.document(frame, *parts)


def _source_suffix(runs: Sequence[_Run]) -> str:
    srcs = sorted({r.source for r in runs if r.doc["energy"] is not None})
    if not srcs:
        return ""
    return f" ({srcs[0]})" if len(srcs) == 1 else " (mixed sources)"


def _series_chart(
    runs: Sequence[_Run],
    colors: Mapping[str, str],
    *,
    x_of: Any,
    x_label: str,
    title: str,
) -> str:
    pts: list[tuple[_Run, float, float]] = []
    for r in runs:
        if r.failed:
            continue  # no successful request: not an efficiency of 0 (marked in the tables)
        x = x_of(r)
        y = _num(r.doc["energy"]["output_tokens_per_j"]) if r.doc["energy"] else None
        if x is not None and y is not None:
            pts.append((r, float(x), y))
    y_label = "output tokens / J" + _source_suffix(runs)
    frame = svg.make_frame(
        [p[1] for p in pts],
        [p[2] for p in pts],
        title=title,
        x_label=x_label,
        y_label=y_label,
        x_zero=True,
        width=LEGEND_WIDTH,
        right=LEGEND_MARGIN,
    )
    if not pts:
        return svg.empty_chart(frame, "no runs with energy")
    parts = [svg.axes(frame)]
    legend: list[tuple[str, str, svg.LegendKind]] = []
    for i, series in enumerate(colors):
        sp = sorted(((x, y, r) for r, x, y in pts if r.series == series), key=lambda t: t[0])
        if not sp:
            continue
        c = colors[series]
        m = svg.MARKERS[i % len(svg.MARKERS)]
        parts.append(svg.line(frame, [p[0] for p in sp], [p[1] for p in sp], color=c))
        parts.append(
            svg.scatter(
                frame,
                [p[0] for p in sp],
                [p[1] for p in sp],
                color=c,
                marker=m,
                hollow=False,
                tooltips=[
                    f"{p[2].name}: {fmt(p[1])} tok/J at {fmt(p[0])} ({p[2].source})" for p in sp
                ],
            )
        )
        for x, y, r in sp:
            if r.doc["status"] != "complete":
                parts.append(svg.annotate(frame, x, y, r.doc["status"], color="#a4260b"))
        legend.append((series, c, m))
    parts.append(svg.legend(frame, legend, position="right"))
    return svg.document(frame, *parts)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both axes (lower is better on both)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (x2 <= x and y2 <= y) and (x2 < x or y2 < y)
            for j, (x2, y2) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return front


def _frontier_chart(runs: Sequence[_Run], colors: Mapping[str, str]) -> str:
    data = []
    for r in runs:
        if r.failed:
            continue
        e = r.doc["energy"]
        x = _num(r.doc["metrics"]["tpot_ms"]["p90"])
        y = _num(e["j_per_output_token"]) if e else None
        if x is not None and y is not None:
            data.append((r, x, y))
    frame = svg.make_frame(
        [d[1] for d in data],
        [d[2] for d in data],
        title="Latency–energy frontier (lower-left is better)",
        x_label="TPOT p90 (ms)",
        y_label="J / output token" + _source_suffix(runs),
        x_zero=True,
        width=LEGEND_WIDTH,
        right=LEGEND_MARGIN,
    )
    if not data:
        return svg.empty_chart(frame, "no runs with both TPOT and energy")
    front = pareto_front([(d[1], d[2]) for d in data])
    parts = [svg.axes(frame)]
    fp = sorted((data[i][1], data[i][2]) for i in front)
    parts.append(
        svg.line(
            frame,
            [p[0] for p in fp],
            [p[1] for p in fp],
            color="#555",
            dash="5 4",
            width=1.2,
            label="Pareto frontier",
        )
    )
    legend: list[tuple[str, str, svg.LegendKind]] = []
    for i, series in enumerate(colors):
        m = svg.MARKERS[i % len(svg.MARKERS)]
        for on_front in (True, False):
            sel = [
                (k, d)
                for k, d in enumerate(data)
                if d[0].series == series and ((k in front) == on_front)
            ]
            if not sel:
                continue
            parts.append(
                svg.scatter(
                    frame,
                    [d[1] for _, d in sel],
                    [d[2] for _, d in sel],
                    color=colors[series],
                    marker=m,
                    radius=5.0,
                    hollow=not on_front,
                    tooltips=[
                        f"{d[0].name} ({_load_text(d[0].doc)}): TPOT p90 {fmt(d[1])} ms, "
                        f"{fmt(d[2])} J/token ({d[0].source})"
                        + (" — Pareto-optimal" if on_front else "")
                        for _, d in sel
                    ],
                )
            )
        if any(d[0].series == series for d in data):
            legend.append((series, colors[series], m))
    for r, x, y in data:
        parts.append(svg.annotate(frame, x, y, _load_text(r.doc).split()[-1], color="#555"))
    legend.append(("Pareto frontier", "#555", "dashed"))
    parts.append(svg.legend(frame, legend, position="right"))
    return svg.document(frame, *parts)


def _figure(svg_text: str, caption: str) -> str:
    return f"<figure>{svg_text}<figcaption>{esc(caption)}</figcaption></figure>"


# --------------------------------------------------------------------------- document
def render_html_report(
    results: Sequence[str | Path | Mapping[str, Any]],
    *,
    title: str = "perwatt bench report",
    thresholds: GuardThresholds = DEFAULT_THRESHOLDS,
) -> str:
    """The report as an HTML string (see :func:`write_html_report`). A file given twice is
    reported once; ``thresholds`` are the accuracy guard's (:mod:`perwatt.bench.guard`)."""
    if not results:
        raise ConfigError("report needs at least one result file")
    unique, _dropped = dedupe_results(results)
    runs = _load_runs(unique, thresholds)
    colors = _series_colors(runs)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    versions = sorted({r.doc["perwatt_version"] for r in runs})
    parts: list[str] = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f'{GENERATOR_META} {esc(__version__)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>",
        f"<h1>{esc(title)}</h1>",
        f'<div class="meta">{len(runs)} run(s) · series: {esc(", ".join(colors))} · '
        f"generated {esc(now)} · results from perwatt {esc(', '.join(versions))}</div>",
        _banners(runs, thresholds),
        "<h2>Summary</h2>",
        _summary_table(runs),
        '<p class="note">J / output token = GPU energy ÷ output tokens over the energy window '
        "(basis: the steady-state window — from saturation to the start of the drain — or the "
        "whole run). The label next to each energy figure says where it came from; only "
        '<span class="src measured">nvml-counter</span>, nvml-power-integral, rapl and dcgm are '
        "measurements.</p>",
        "<h2>Efficiency across load</h2>",
        '<div class="grid">',
        _figure(
            _frontier_chart(runs, colors),
            "Each point is one run, labelled by its load value. Filled markers are "
            "Pareto-optimal: no other run has both lower TPOT p90 and lower J/token.",
        ),
        _figure(
            _series_chart(
                runs,
                colors,
                x_of=lambda r: _num(r.doc["metrics"]["output_throughput_tok_s"]),
                x_label="output throughput (tok/s)",
                title="Tokens per joule vs throughput",
            ),
            "One line per series, points ordered by throughput.",
        ),
    ]
    kinds = sorted({r.doc["load"]["kind"] for r in runs})
    for kind in kinds:
        sub = [r for r in runs if r.doc["load"]["kind"] == kind]
        unit = {
            "rate": "request rate (req/s)",
            "concurrency": "max concurrency",
            "batch": "batch size",
        }[kind]
        parts.append(
            _figure(
                _series_chart(
                    sub,
                    colors,  # all series, so a series keeps its marker in every chart
                    x_of=lambda r: float(r.doc["load"]["value"]),
                    x_label=unit,
                    title=f"Tokens per joule vs load ({kind})",
                ),
                f"Runs with load kind '{kind}'.",
            )
        )
    failed = [r.name for r in runs if r.failed]
    if failed:
        parts.append(
            f'</div><p class="note">Not plotted above: {esc(", ".join(failed))} (no '
            "successful request, so no tokens per joule).</p><div>"
        )
    parts.append("</div><h2>Power timelines</h2>")
    shown = runs[:MAX_TIMELINES]
    parts.append('<div class="grid">')
    for r in shown:
        parts.append(
            _figure(
                _timeline_chart(r, colors[r.series]),
                f"{r.name} ({_load_text(r.doc)}, {r.doc['status']}). Shaded: the steady-state "
                "window the J/token figure uses when its basis is steady state.",
            )
        )
    parts.append("</div>")
    if len(runs) > len(shown):
        parts.append(f'<p class="note">{len(runs) - len(shown)} more timelines not drawn.</p>')
    parts += [
        "<h2>Economics (energy cost only)</h2>",
        _economics_table(runs),
        _accuracy_section(runs, thresholds),
        "<h2>Conditions</h2>",
        _conditions_table(runs),
        '<p class="note">Highlighted rows differ between runs. Every published number should '
        "carry these conditions; for an energy figure the power limit is the experiment.</p>",
        "</main></body></html>",
    ]
    return "\n".join(parts)


def written_by_perwatt(path: str | Path) -> bool:
    """Whether ``path`` is an HTML report perwatt wrote (its generator tag, near the top)."""
    try:
        with Path(path).open("rb") as f:
            head = f.read(8192).decode("utf-8", errors="replace")
    except OSError:
        return False
    if GENERATOR_META in head.split("</head>", 1)[0]:
        return True
    return head.startswith(_OLD_REPORT_HEAD) and "results from perwatt" in head


def check_report_out(
    results: Sequence[str | Path | Mapping[str, Any]], out_path: str | Path, *, force: bool = False
) -> Path:
    """Refuse, before any work, an ``out_path`` whose writing would destroy data: one of the
    input files (also through a symlink, a relative path or a shell glob), or an existing file
    that is not a report perwatt wrote. ``force`` allows both. Returns the path to write."""
    out = Path(out_path)
    if out.is_dir():
        raise ConfigError(
            f"{out} is a directory; give a file name, e.g. --out {out / 'perwatt-report.html'}"
        )
    if force:
        return out
    for r in results:
        if isinstance(r, (str, Path)) and same_file(r, out):
            raise ConfigError(
                f"--out {out} is one of the input files ({r}); the report would overwrite it: "
                "choose another --out, e.g. perwatt-report.html"
            )
    if (out.exists() or out.is_symlink()) and not written_by_perwatt(out):
        raise ConfigError(
            f"--out {out} exists and is not a report perwatt wrote; choose another --out, or "
            "pass --force to replace it"
        )
    return out


def write_html_report(
    results: Sequence[str | Path | Mapping[str, Any]],
    out_path: str | Path,
    *,
    title: str = "perwatt bench report",
    thresholds: GuardThresholds = DEFAULT_THRESHOLDS,
    force: bool = False,
) -> Path:
    """Write one self-contained offline HTML report over ``results`` (files or documents).

    The output may replace only a report perwatt wrote, never an input (see
    :func:`check_report_out`), unless ``force``. It is written atomically: a failure leaves the
    previous file whole.
    """
    out = check_report_out(results, out_path, force=force)
    text = render_html_report(results, title=title, thresholds=thresholds)
    # Through a symlink: write where it points, so the link (a "latest report" name) stays.
    target = out.resolve() if out.is_symlink() else out
    try:
        atomic_write_text(target, text)
        return out
    except OSError as e:
        # Not a traceback, and no stray .tmp left beside the target.
        with contextlib.suppress(OSError):
            target.with_name(target.name + ".tmp").unlink(missing_ok=True)
        raise ConfigError(
            f"cannot write the report to {out} ({e.strerror or e}); choose another --out"
        ) from None


__all__ = [
    "GENERATOR_META",
    "check_report_out",
    "dedupe_results",
    "pareto_front",
    "power_axis_label",
    "render_html_report",
    "write_html_report",
    "written_by_perwatt",
]
