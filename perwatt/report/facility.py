"""The offline HTML report of a site simulation: one page, every policy side by side.

Reads :class:`perwatt.facility.result.PolicyResult` objects only. Charts are inline SVG from
:mod:`perwatt.report.svg` (no scripts, no network), so the file opens anywhere.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from perwatt._files import atomic_write_text
from perwatt.errors import ConfigError
from perwatt.facility.result import PolicyResult
from perwatt.report import svg
from perwatt.report.html import CSS
from perwatt.report.svg import esc, fmt

_BANNER: Final = (
    '<p class="note"><b>Simulated.</b> Every power, energy, PUE and cost figure on this page '
    "comes from perwatt's site model (power tree, GPU phase curves, workload traces, cooling "
    "model), not from a meter. The assumptions are listed at the end.</p>"
)


def _chart(
    results: Sequence[PolicyResult],
    key: str,
    *,
    title: str,
    y_label: str,
    scale: float = 1.0,
    cap: float | None = None,
) -> str:
    xs_all: list[float] = []
    ys_all: list[float] = []
    series = []
    for r in results:
        xs = [t / 3600.0 for t in r.timeline["time_s"]]
        ys = [v * scale for v in r.timeline[key]]
        series.append((r.policy, xs, ys))
        xs_all += xs
        ys_all += ys
    if cap is not None:
        ys_all.append(cap)
    frame = svg.make_frame(
        xs_all, ys_all, title=title, x_label="time (h)", y_label=y_label, y_zero=False, right=130
    )
    parts = [svg.axes(frame)]
    entries: list[tuple[str, str, svg.LegendKind]] = []
    for i, (name, xs, ys) in enumerate(series):
        c = svg.PALETTE[i % len(svg.PALETTE)]
        dx, dy = svg.decimate(xs, ys)
        parts.append(svg.line(frame, dx, dy, color=c))
        entries.append((name, c, "line"))
    if cap is not None and xs_all:
        parts.append(
            svg.line(frame, [min(xs_all), max(xs_all)], [cap, cap], color="#000", dash="6 4")
        )
        entries.append(("capacity", "#000", "dashed"))
    parts.append(svg.legend(frame, entries, position="right"))
    return svg.document(frame, *parts)


def _summary(results: Sequence[PolicyResult]) -> str:
    head = (
        "<tr><th>policy</th><th>output tokens</th><th>tokens / MWh</th><th>unserved</th>"
        "<th>SLO violation (s)</th><th>training throughput</th><th>energy (MWh)</th>"
        "<th>peak (MW)</th><th>PUE</th><th>PUE annualized</th><th>cost ($)</th>"
        "<th>s over capacity</th></tr>"
    )
    rows = []
    for r in results:
        trn = [j.throughput for j in r.jobs if j.kind == "training"]
        slo = sum(j.slo_violation_s for j in r.jobs)
        rows.append(
            f"<tr><td>{esc(r.policy)}</td><td>{fmt(r.output_tokens)}</td>"
            f"<td>{fmt(r.tokens_per_mwh)}</td><td>{fmt(r.unserved_output_tokens)}</td>"
            f"<td>{fmt(slo)}</td><td>{fmt(min(trn)) if trn else '–'}</td>"
            f"<td>{fmt(r.facility_energy_j / 3.6e9)}</td><td>{fmt(r.peak_facility_w / 1e6)}</td>"
            f"<td>{fmt(r.pue)}</td><td>{fmt(r.pue_annualized)}</td><td>{fmt(r.cost_usd)}</td>"
            f"<td>{fmt(r.seconds_over_capacity)}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _jobs(results: Sequence[PolicyResult]) -> str:
    names = [j.name for j in results[0].jobs]
    head = (
        "<tr><th>job</th><th>kind</th><th>GPUs</th><th>priority</th><th>flex</th>"
        + "".join(f"<th>{esc(r.policy)}</th>" for r in results)
        + "</tr>"
    )
    rows = []
    for n in names:
        j0 = results[0].job(n)
        cells = "".join(f"<td>{fmt(r.job(n).throughput)}</td>" for r in results)
        rows.append(
            f"<tr><td>{esc(n)}</td><td>{esc(j0.kind)}</td><td>{j0.gpus}</td>"
            f"<td>{j0.priority}</td><td>{j0.flex:.0%}</td>{cells}</tr>"
        )
    return (
        f"<table>{head}{''.join(rows)}</table><p class=note>Throughput: served / demanded "
        "output tokens (inference), progress / uncapped progress (training, batch).</p>"
    )


def _levels(results: Sequence[PolicyResult]) -> str:
    rows = []
    for r in results:
        for lv in r.levels:
            if lv.seconds_over > 0 or lv.kind in ("feed", "ups", "pdu"):
                rows.append(
                    f"<tr><td>{esc(r.policy)}</td><td>{esc(lv.element)}</td><td>{esc(lv.kind)}</td>"
                    f"<td>{fmt(lv.capacity_w / 1e3)}</td>"
                    f"<td>{fmt((lv.capacity_w - lv.firm_capacity_w) / 1e3)}</td>"
                    f"<td>{fmt(lv.oversubscription)}</td><td>{fmt(lv.peak_w / 1e3)}</td>"
                    f"<td>{fmt(lv.peak_w / lv.capacity_w)}</td><td>{fmt(lv.seconds_over)}</td>"
                    f"<td>{fmt(lv.max_excess_w / 1e3)}</td></tr>"
                )
    head = (
        "<tr><th>policy</th><th>element</th><th>kind</th><th>capacity (kW)</th>"
        "<th>failover reserve (kW)</th><th>oversubscription</th>"
        "<th>peak (kW)</th><th>peak / capacity</th><th>s over</th><th>max excess (kW)</th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"


def render_facility_html(
    results: Sequence[PolicyResult],
    *,
    title: str = "perwatt facility simulate",
    assumptions: Sequence[str] = (),
) -> str:
    """The report as an HTML string."""
    if not results:
        raise ConfigError("a facility report needs at least one result")
    r0 = results[0]
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cap_mw = r0.feed_capacity_w / 1e6
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>",
        f"<h1>{esc(title)}</h1>",
        f'<div class="meta">site {esc(r0.site)} · workload {esc(r0.workload)} · {r0.gpus} GPUs · '
        f"{fmt(r0.duration_s / 3600)} h at {fmt(r0.step_s)} s steps · cooling {esc(r0.cooling)}"
        f" · weather {esc(r0.weather)} · generated {esc(now)}</div>",
        _BANNER,
        "<h2>Policies side by side</h2>",
        _summary(results),
        "<h2>Site power vs the feed</h2>",
        '<div class="grid">',
        _chart(
            results,
            "facility_w_max",
            title="Facility power (max per bucket)",
            y_label="MW",
            scale=1e-6,
            cap=cap_mw,
        ),
        _chart(
            results,
            "max_level_util_max",
            title="Most loaded level (load / capacity)",
            y_label="ratio",
            cap=1.0,
        ),
        _chart(results, "output_tok_s", title="Output tokens served", y_label="tokens/s"),
        _chart(results, "pue", title="PUE per interval", y_label="PUE"),
        "</div>",
        "<h2>Jobs</h2>",
        _jobs(results),
        "<h2>Levels (breaker risk)</h2>",
        _levels(results),
        "<h2>Notes and assumptions</h2><ul>",
        *(f"<li>{esc(n)}</li>" for r in results for n in r.notes),
        *(f"<li>{esc(a)}</li>" for a in assumptions),
        "</ul></main></body></html>",
    ]
    return "\n".join(parts)


def write_facility_html(
    path: str | Path, results: Sequence[PolicyResult], *, assumptions: Sequence[str] = ()
) -> Path:
    """Write the site simulation report (one offline HTML file) atomically; returns its path."""
    p = Path(path)
    atomic_write_text(p, render_facility_html(results, assumptions=assumptions))
    return p


__all__ = ["render_facility_html", "write_facility_html"]
