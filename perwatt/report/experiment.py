"""The experiment report: one offline HTML page that answers ``perwatt experiment``'s question.

Reads an :class:`~perwatt.bench.experiment.analysis.ExperimentAnalysis` (never measures):

1. banners — energy that is not a measurement, points that failed or are missing, the guard;
2. the answer — the best configuration under the SLO, its J/token against the baseline with
   the interval and verdict, a runner-up within noise, and the saving in J/token, % and $/year
   with every assumption written out;
3. the Pareto frontiers — output tokens per joule against TPOT p50, TPOT p90 and TTFT p90
   (filled markers on the frontier, the SLO bound as a dashed line, the best point ringed);
4. every point in a table (status, figures with their source label, SLO, guard, frontier), the
   failed points with the last lines of their server's log;
5. the accuracy guard and the calibration curves (tokens/s and power per phase vs power limit).

The per-run details (timelines, conditions) are in the bench report written next to it
(:func:`perwatt.report.html.write_html_report`), linked from the page.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from perwatt._files import atomic_write_text
from perwatt.bench.experiment.analysis import (
    FRONTIER_KEYS,
    ExperimentAnalysis,
    PointResult,
    analyze,
    calibration,
)
from perwatt.bench.experiment.config import ExperimentConfig
from perwatt.errors import ConfigError
from perwatt.meter.source import is_measured
from perwatt.report import svg
from perwatt.report.html import CSS, write_html_report
from perwatt.report.svg import esc, fmt

_EXTRA_CSS: Final = """
.answer{background:#fff;border:2px solid #0b6b3a;border-radius:8px;padding:12px 16px;margin:12px 0}
.answer.none{border-color:#d55e00}
.answer h3{margin:0 0 6px;font-size:16px}
pre.tail{background:#f6f6f6;border:1px solid #e1e1e1;padding:6px;font-size:11px;
white-space:pre-wrap;max-height:220px;overflow:auto;text-align:left;margin:0}
tr.best td{background:#e3f4ea}
"""
_LAT_NAMES: Final = {
    "tpot_p50_ms": "TPOT p50",
    "tpot_p90_ms": "TPOT p90",
    "ttft_p90_ms": "TTFT p90",
}


def _src(label: str | None) -> str:
    if not label:
        return ""
    cls = "measured" if is_measured(label) else "model"
    return f'<span class="src {cls}">{esc(label)}</span>'


def _banners(a: ExperimentAnalysis) -> str:
    out = []
    if a.energy_sources and not a.all_measured:
        out.append(
            '<div class="banner sim" role="alert"><strong>Energy figures from '
            f"{esc(', '.join(a.energy_sources))} are NOT measurements.</strong> They come from a "
            "power model or an estimate; they rank these points against each other only.</div>"
        )
    bad = [p for p in a.points if p.status not in ("complete",)]
    if bad:
        items = "".join(
            f"<li>{esc(p.id)}: <b>{esc(p.status.upper())}</b>"
            f"{' — ' + esc(p.reason) if p.reason else ''}</li>"
            for p in bad
        )
        out.append(
            '<div class="banner partial" role="alert"><strong>'
            f"{len(bad)} of {len(a.points)} points have no usable figure.</strong>"
            f"<ul>{items}</ul></div>"
        )
    for w in a.warnings:
        if "NOT a measurement" in w:
            continue
        out.append(f'<div class="banner cond">{esc(w)}</div>')
    return "".join(out)


def _answer(a: ExperimentAnalysis) -> str:
    b = a.best
    slo = ", ".join(f"{k} ≤ {v:g}" for k, v in a.slo.items()) or "none given"
    if b is None:
        return (
            '<div class="answer none"><h3>No configuration meets the SLO</h3>'
            f"<p>SLO: {esc(slo)}. See the points below for what each missed.</p></div>"
        )
    lines = [
        f"<h3>Best under the SLO: {esc(b.label)} at {esc(b.load_text)}</h3>",
        f"<p>SLO: {esc(slo)}. {fmt(b.output_tokens_per_j)} output tokens/J "
        f"({fmt(b.j_per_output_token)} J/token){_src(b.energy_source)}; "
        + ", ".join(f"{_LAT_NAMES[k]} {fmt(b.latency_ms.get(k))} ms" for k in FRONTIER_KEYS)
        + f"; {fmt(b.output_tokens_per_s)} output tok/s.</p>",
    ]
    r = a.best_vs_baseline
    if r is not None:
        ci = (
            f" (95% CI {fmt(r.ci_low)}–{fmt(r.ci_high)})"
            if r.ci_low is not None and r.ci_high is not None
            else " (no interval: " + esc(r.note or "n/a") + ")"
        )
        lines.append(
            f"<p>J/token vs the baseline {esc(r.a)}: ×{fmt(r.ratio)}{ci} — "
            f"<b>{esc(r.verdict)}</b>. <span class=note>{esc(r.method)}; within-run variation "
            "only.</span></p>"
        )
    ru = a.runner_up
    if ru is not None:
        tie = ru.verdict == "within noise"
        lines.append(
            f"<p>Runner-up {esc(ru.b)}: J/token ×{fmt(ru.ratio)} of the best"
            + (
                f" (95% CI {fmt(ru.ci_low)}–{fmt(ru.ci_high)})"
                if ru.ci_low is not None and ru.ci_high is not None
                else ""
            )
            + (" — <b>within noise: a statistical tie</b>" if tie else f" — {esc(ru.verdict)}")
            + ".</p>"
        )
    s = a.savings
    if s is not None:
        lines.append(
            f"<p>Saving against {esc(s.baseline_point)}: {fmt(s.saved_j_per_token)} J/token "
            f"({fmt(s.saved_pct)} %); at {s.site_gpus} GPUs × {s.utilization:g} utilization "
            f"({fmt(s.output_tokens_per_year)} output tokens/year), PUE {s.pue:g}, "
            f"${s.price_per_kwh:g}/kWh: <b>{fmt(s.saved_kwh_per_year)} kWh/year, "
            f"${fmt(s.saved_usd_per_year)}/year</b>{_src(s.energy_source)}. "
            f"<span class=note>{esc(s.note)}</span></p>"
        )
    return '<div class="answer">' + "".join(lines) + "</div>"


def _colors(points: Sequence[PointResult]) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in points:
        if p.label not in out:
            out[p.label] = svg.PALETTE[len(out) % len(svg.PALETTE)]
    return out


def _frontier_chart(a: ExperimentAnalysis, key: str, colors: Mapping[str, str]) -> str:
    data = [
        (p, p.latency_ms.get(key), p.output_tokens_per_j)
        for p in a.points
        if p.usable and p.latency_ms.get(key) is not None
    ]
    xs = [float(d[1]) for d in data]  # type: ignore[arg-type]
    bound = a.slo.get(key)
    # A bound far beyond every point would squeeze them into a corner: it is named instead.
    far = bound is not None and bool(xs) and bound > 2.0 * max(xs)
    frame = svg.make_frame(
        xs + ([bound] if bound is not None and not far else []),
        [d[2] for d in data],
        title=f"Tokens per joule vs {_LAT_NAMES[key]} (upper-left is better)",
        x_label=f"{_LAT_NAMES[key]} (ms)",
        y_label="output tokens / J"
        + (f" ({', '.join(a.energy_sources)})" if a.energy_sources else ""),
        x_zero=True,
        width=640.0,
        right=165.0,
    )
    if not data:
        return svg.empty_chart(frame, "no point with both this latency and energy")
    front = set(a.frontiers.get(key, ()))
    parts = [svg.axes(frame)]
    fp = sorted((float(d[1]), float(d[2])) for d in data if d[0].id in front)  # type: ignore[arg-type]
    parts.append(svg.line(frame, [x for x, _ in fp], [y for _, y in fp], color="#555", dash="5 4"))
    if bound is not None and not far:
        ys = list(frame.y_ticks)
        parts.append(
            svg.line(frame, [bound, bound], [ys[0], ys[-1]], color="#d55e00", dash="2 3", width=1.2)
        )
    legend: list[tuple[str, str, svg.LegendKind]] = []
    for i, (label, color) in enumerate(colors.items()):
        m = svg.MARKERS[i % len(svg.MARKERS)]
        for on in (True, False):
            sel = [d for d in data if d[0].label == label and ((d[0].id in front) == on)]
            if not sel:
                continue
            parts.append(
                svg.scatter(
                    frame,
                    [float(d[1]) for d in sel],  # type: ignore[arg-type]
                    [d[2] for d in sel],
                    color=color,
                    marker=m,
                    radius=5.0,
                    hollow=not on,
                    tooltips=[
                        f"{d[0].id}: {_LAT_NAMES[key]} {fmt(d[1])} ms, {fmt(d[2])} tok/J"
                        + (" — Pareto-optimal" if on else "")
                        for d in sel
                    ],
                )
            )
        if any(d[0].label == label for d in data):
            legend.append((label, color, m))
    for p, x, y in data:
        tag = p.load_text.split()[-1]
        if a.best is not None and p.id == a.best.id:
            tag += " ★best"
        parts.append(svg.annotate(frame, float(x), float(y or 0.0), tag, color="#333"))  # type: ignore[arg-type]
    legend.append(("Pareto frontier", "#555", "dashed"))
    if bound is not None:
        legend.append((f"SLO {bound:g} ms" + (" (off axis)" if far else ""), "#d55e00", "dashed"))
    parts.append(svg.legend(frame, legend, position="right"))
    return svg.document(frame, *parts)


def _points_table(a: ExperimentAnalysis) -> str:
    head = (
        "<tr><th class=l>point</th><th>status</th><th>output tok/J</th><th>J/token</th>"
        "<th>output tok/s</th><th>avg W</th><th>idle W</th><th>power limit W</th>"
        "<th>TPOT p50</th><th>TPOT p90</th><th>TTFT p90</th><th class=l>SLO</th>"
        "<th>guard</th><th class=l>frontier</th><th>attributed Σ / measured J</th></tr>"
    )
    rows = []
    for p in a.points:
        cls = ' class="best"' if a.best is not None and p.id == a.best.id else ""
        slo = (
            "—"
            if not p.usable
            else ("meets" if not p.slo_violations else "misses: " + "; ".join(p.slo_violations))
        )
        guard = {True: "passes", False: "<b>FAILS</b>", None: "—"}[p.quality_passed]
        att = (
            f"{fmt(p.attribution_sum_j)} / {fmt(p.attribution_total_j)}"
            if p.attribution_total_j is not None
            else "—"
        )
        rows.append(
            f"<tr{cls}><td class=l>{esc(p.id)}</td><td>{esc(p.status)}</td>"
            f"<td>{fmt(p.output_tokens_per_j)}{_src(p.energy_source)}</td>"
            f"<td>{fmt(p.j_per_output_token)}</td><td>{fmt(p.output_tokens_per_s)}</td>"
            f"<td>{fmt(p.avg_power_w)}</td><td>{fmt(p.idle_power_w)}</td>"
            f"<td>{fmt(p.gpu_power_limit_w)}</td>"
            + "".join(f"<td>{fmt(p.latency_ms.get(k))}</td>" for k in FRONTIER_KEYS)
            + f"<td class=l>{esc(slo)}</td><td>{guard}</td>"
            f"<td class=l>{esc(', '.join(_LAT_NAMES[k] for k in p.frontier)) or '—'}</td>"
            f"<td>{att}</td></tr>"
        )
    return f'<div class="wrap"><table>{head}{"".join(rows)}</table></div>'


def _failures(a: ExperimentAnalysis) -> str:
    bad = [p for p in a.points if p.status == "failed"]
    if not bad:
        return ""
    rows = "".join(
        f"<tr><td class=l>{esc(p.id)}</td><td class=l>{esc(p.reason or '')}</td>"
        f"<td class=l><pre class=tail>{esc(p.log_tail) or '(no log)'}</pre></td></tr>"
        for p in bad
    )
    return (
        "<h2>Failed points</h2><table><tr><th class=l>point</th><th class=l>why</th>"
        f"<th class=l>last lines of the server log</th></tr>{rows}</table>"
    )


def _quality(a: ExperimentAnalysis) -> str:
    if not a.quality:
        return ""
    rows = "".join(
        f"<tr><td class=l>{esc(q.server)}</td><td class=l>{esc(q.reference)}</td>"
        f"<td>{q.n_prompts}</td><td>{fmt(q.exact_match)}</td><td>{fmt(q.top1_agreement)}</td>"
        f"<td>{ {True: 'passes', False: '<b>FAILS</b>', None: '—'}[q.passed] }</td>"
        f"<td class=l>{esc(q.note)}</td></tr>"
        for q in a.quality
    )
    return (
        "<h2>Accuracy guard</h2><p class=note>Greedy answers (temperature 0) of each "
        "configuration against the baseline's, recorded while each server was up.</p><table>"
        "<tr><th class=l>configuration</th><th class=l>reference</th><th>prompts</th>"
        "<th>exact match</th><th>top-1 agreement</th><th>guard</th><th class=l>note</th></tr>"
        f"{rows}</table>"
    )


def _calibration(cal: Mapping[str, Any] | None) -> str:
    if not cal or not cal.get("curves"):
        return ""
    rows = []
    for c in cal["curves"]:
        for p in c["points"]:
            ph = p.get("phases") or {}

            def cell(phase: str, key: str, ph: Mapping[str, Any] = ph) -> str:
                return fmt((ph.get(phase) or {}).get(key))

            rows.append(
                f"<tr><td class=l>{esc(c['server'])}</td><td class=l>{esc(c['load'])}</td>"
                f"<td>{fmt(p['power_limit_w'])}</td><td>{fmt(p['sm_clock_mhz'])}</td>"
                f"<td>{cell('prefill', 'tokens_per_s')}</td><td>{cell('prefill', 'power_w')}</td>"
                f"<td>{cell('decode', 'tokens_per_s')}</td><td>{cell('decode', 'power_w')}</td>"
                f"<td>{cell('idle', 'power_w')}</td></tr>"
            )
    return (
        "<h2>Calibration (for the facility simulator)</h2>"
        f"<p class=note>{esc(cal.get('note', ''))} File: calibration.json.</p><table>"
        "<tr><th class=l>configuration</th><th class=l>load</th><th>power limit W</th>"
        "<th>SM clock MHz</th><th>prefill prompt tok/s</th><th>prefill W</th>"
        "<th>decode output tok/s</th><th>decode W</th><th>idle-slice W</th></tr>"
        f"{''.join(rows)}</table>"
    )


def render_experiment_report(
    analysis: ExperimentAnalysis,
    *,
    calibration: Mapping[str, Any] | None = None,
    runs_report: str | None = None,
) -> str:
    """The page as an HTML string (see the module docstring)."""
    a = analysis
    colors = _colors([p for p in a.points if p.usable])
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = f"perwatt experiment: {a.name}"
    n_ok = sum(p.usable for p in a.points)
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{CSS}{_EXTRA_CSS}</style></head><body><main>",
        f"<h1>{esc(title)}</h1>",
        f'<div class="meta">{n_ok} of {len(a.points)} points measured · baseline '
        f"{esc(a.baseline)} · energy: {esc(', '.join(a.energy_sources) or 'none')} · "
        f"generated {esc(now)}"
        + (f' · <a href="{esc(runs_report)}">per-run details</a>' if runs_report else "")
        + "</div>",
        _banners(a),
        _answer(a),
        "<h2>Pareto frontiers</h2>",
        '<div class="grid">',
        *(
            f"<figure>{_frontier_chart(a, k, colors)}<figcaption>Filled: on the frontier (no "
            "other point has more tokens/J at a lower latency). Labels: load level.</figcaption>"
            "</figure>"
            for k in FRONTIER_KEYS
        ),
        "</div>",
        "<h2>Every point</h2>",
        _points_table(a),
        '<p class="note">Tokens/J = output tokens ÷ energy over the run\'s energy window '
        "(bench runner; steady state when one is found). The label beside a figure says where "
        "the energy came from. attributed Σ: the per-request energy column of the point's "
        "requests CSV summed, against the run's measured total.</p>",
        _failures(a),
        _quality(a),
        _calibration(calibration),
        "</main></body></html>",
    ]
    return "\n".join(parts)


def write_experiment_report(
    analysis: ExperimentAnalysis,
    out_path: str | Path,
    *,
    calibration: Mapping[str, Any] | None = None,
    runs_report: str | None = None,
) -> Path:
    """Write the page atomically; a folder or unwritable path is a one-line error."""
    out = Path(out_path)
    if out.is_dir():
        raise ConfigError(f"{out} is a directory; give a file name")
    text = render_experiment_report(analysis, calibration=calibration, runs_report=runs_report)
    try:
        return atomic_write_text(out, text)
    except OSError as e:
        with contextlib.suppress(OSError):
            out.with_name(out.name + ".tmp").unlink(missing_ok=True)
        raise ConfigError(f"cannot write the report to {out} ({e.strerror or e})") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class ExperimentFiles:
    """What :func:`write_experiment_outputs` wrote."""

    analysis: ExperimentAnalysis
    summary: Path
    calibration: Path
    report: Path
    runs_report: Path | None


def write_experiment_outputs(
    config: ExperimentConfig, out_dir: Path | None = None
) -> ExperimentFiles:
    """Analyse the experiment's folder and write ``summary.json``, ``calibration.json``,
    ``runs.html`` (every point's bench report) and ``report.html`` into it."""
    out = Path(out_dir) if out_dir is not None else config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    analysis = analyze(config, out)
    cal = calibration(config, analysis)
    summary = atomic_write_text(
        out / "summary.json", json.dumps(analysis.to_dict(), indent=2, default=str) + "\n"
    )
    cal_path = atomic_write_text(out / "calibration.json", json.dumps(cal, indent=2) + "\n")
    results = [p.result_path for p in analysis.points if p.result_path is not None]
    runs: Path | None = None
    if results:
        runs = write_html_report(results, out / "runs.html", title=f"{config.name}: every run")
    report = write_experiment_report(
        analysis,
        out / "report.html",
        calibration=cal,
        runs_report=runs.name if runs is not None else None,
    )
    return ExperimentFiles(
        analysis=analysis, summary=summary, calibration=cal_path, report=report, runs_report=runs
    )


__all__ = [
    "ExperimentFiles",
    "render_experiment_report",
    "write_experiment_outputs",
    "write_experiment_report",
]
