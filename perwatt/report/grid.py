"""Offline HTML reports for grid flex and training power smoothing (all figures simulated).

Reads the result documents of :mod:`perwatt.facility.flexsim` and
:mod:`perwatt.facility.smoothrun` (their ``to_dict`` form) and draws them with
:mod:`perwatt.report.svg`; no scripts, no network.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from perwatt._files import atomic_write_text
from perwatt.report import svg
from perwatt.report.html import CSS
from perwatt.report.svg import esc, fmt

_BANNER: Final = (
    '<p class="note"><b>Simulated.</b> Every power, energy and throughput figure on this page '
    "comes from perwatt's models (GPU phase curves, pipeline replay, storage model), not from a "
    "meter.</p>"
)


def _chart(
    title: str,
    xs: Sequence[float],
    series: Mapping[str, Sequence[float | None]],
    *,
    x_label: str,
    y_label: str,
    dashed: Sequence[str] = (),
) -> str:
    ys_all = [v for s in series.values() for v in s]
    frame = svg.make_frame(
        list(xs), ys_all, title=title, x_label=x_label, y_label=y_label, y_zero=False, right=190
    )
    parts = [svg.axes(frame)]
    entries: list[tuple[str, str, svg.LegendKind]] = []
    for i, (name, ys) in enumerate(series.items()):
        c = svg.PALETTE[i % len(svg.PALETTE)]
        if all(v is None for v in ys):
            continue
        if any(v is None for v in ys):
            dx, dy = list(xs), list(ys)
        else:
            fx, fy = svg.decimate(list(xs), [float(v) for v in ys if v is not None])
            dx, dy = fx, list[float | None](fy)
        parts.append(svg.line(frame, dx, dy, color=c, dash="6 4" if name in dashed else None))
        entries.append((name, c, "dashed" if name in dashed else "line"))
    parts.append(svg.legend(frame, entries, position="right"))
    return svg.document(frame, *parts)


def _page(title: str, meta: str, body: Sequence[str]) -> str:
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>",
            f"<h1>{esc(title)}</h1>",
            f'<div class="meta">{esc(meta)} · generated {esc(now)}</div>',
            _BANNER,
            *body,
            "</main></body></html>",
        ]
    )


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    h = "".join(f"<th>{esc(x)}</th>" for x in head)
    b = "".join(
        "<tr>"
        + "".join(f"<td>{esc(x if isinstance(x, str) else fmt(x))}</td>" for x in r)
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{h}</tr></thead><tbody>{b}</tbody></table>"


def render_flex_html(results: Sequence[Mapping[str, Any]], *, scenario: Mapping[str, Any]) -> str:
    """One page: targets met, response, throughput per job, site power vs target."""
    rows = []
    jobs: list[str] = []
    for r in results:
        for t in r["targets"]:
            jobs = list(t["throughput"])
            rows.append(
                [
                    r["strategy"],
                    t["id"],
                    t["mode"],
                    "MET" if t["met"] else "MISSED",
                    "never" if t["response_s"] is None else f"{t['response_s']:g} s",
                    t["target_w"] / 1e3,
                    t["max_over_w"] / 1e3,
                    t["weighted_throughput"],
                    *(t["throughput"][j] for j in jobs),
                ]
            )
    head = [
        "strategy",
        "target",
        "mode",
        "result",
        "response",
        "target kW",
        "max over kW",
        "weighted thr",
        *jobs,
    ]
    body = ["<h2>Targets</h2>", _table(head, rows)]
    pub = scenario.get("published") or {}
    if pub:
        body += [
            "<h2>Beside the published result</h2>",
            f"<p>{esc(pub.get('citation', ''))}</p>",
            _table(
                ["figure", "published"], [[k, str(v)] for k, v in pub.items() if k != "citation"]
            ),
        ]
    body.append('<h2>Site power vs target</h2><div class="grid">')
    for r in results:
        tl = r["timeline"]
        xs = [t / 3600 for t in tl["time_s"]]
        body.append(
            _chart(
                f"{r['strategy']}: site power",
                xs,
                {
                    "site (MW)": [v / 1e6 if v is not None else None for v in tl["site_w"]],
                    "target (MW)": [v / 1e6 if v is not None else None for v in tl["target_w"]],
                },
                x_label="time (h)",
                y_label="MW",
                dashed=("target (MW)",),
            )
        )
        if any(v for v in tl["storage_w"] if v):
            body.append(
                _chart(
                    f"{r['strategy']}: storage state of charge",
                    xs,
                    {"SoC": tl["soc"]},
                    x_label="time (h)",
                    y_label="SoC",
                )
            )
    body.append("</div><h2>Status changes (grid.powerstate.status.v1)</h2><ul>")
    for r in results:
        body += [
            f"<li>{esc(r['strategy'])} t={fmt(c['time_s'])} s: {esc(c['state'])}</li>"
            for c in r["status_changes"][:20]
        ]
    body.append("</ul>")
    for n in scenario.get("notes", []):
        body.append(f'<p class="note">{esc(n)}</p>')
    meta = f"scenario {scenario.get('name', '')} · {scenario.get('gpus', '')} GPUs"
    return _page("perwatt facility flex", meta, body)


def render_smooth_html(doc: Mapping[str, Any]) -> str:
    """One page: grid trace before/after, spectrum, storage SoC, limits, energy cost."""
    rows = []
    for m in doc["mitigations"]:
        g, c = m["grid"], m["cost"]
        rows.append(
            [
                m["mitigation"],
                g["peak_mw"],
                g["ramp_mw_per_s"],
                g["ramp_mw_per_min"],
                g["dynamic_range_mw"],
                g["band_fraction"],
                g["band_rms_mw"],
                "n/a" if g["meets_limits"] is None else ("yes" if g["meets_limits"] else "NO"),
                m["peak_reduction"],
                c["extra_energy_fraction"],
                (c["wasted_floor_j"] + c["wasted_filler_j"]) / 3.6e9,
                c["storage_loss_j"] / 3.6e9,
            ]
        )
    head = [
        "mitigation",
        "peak MW",
        "ramp MW/s",
        "ramp MW/min",
        "range MW",
        "band frac",
        "band RMS MW",
        "meets limits",
        "peak cut",
        "extra energy",
        "wasted MWh",
        "storage loss MWh",
    ]
    lim = doc["mitigations"][0]["grid"]["limits"] if doc["mitigations"] else {}
    small = doc["smallest_storage"]
    body = [
        "<h2>Mitigations</h2>",
        _table(head, rows),
        f"<p>Limits (user-supplied, not a grid code): {esc(str(lim))}</p>",
        f"<p>Smallest storage meeting them for <b>{esc(str(small['for']))}</b>: "
        + (
            "none up to one hour of mean site power"
            if small["capacity_kwh"] is None and small["for"]
            else f"{fmt(small['capacity_kwh'])} kWh"
            if small["for"]
            else "not asked"
        )
        + "</p>",
        '<h2>What the grid sees</h2><div class="grid">',
    ]
    z = doc["zoom"]
    body.append(
        _chart(
            "first 60 s (full resolution)",
            z["time_s"],
            {k[:-2]: [v / 1e6 for v in z[k]] for k in z if k.endswith("_w")},
            x_label="time (s)",
            y_label="MW",
        )
    )
    tl = doc["timeline"]
    body.append(
        _chart(
            "whole run (bucket means)",
            tl["time_s"],
            {k[:-2]: [v / 1e6 for v in tl[k]] for k in tl if k.endswith("_w")},
            x_label="time (s)",
            y_label="MW",
        )
    )
    sp = doc["spectrum"]
    fx = [math.log10(f) for f in sp["frequency_hz"]]
    body.append(
        _chart(
            "power spectrum (log10)",
            fx,
            {
                k: [math.log10(v) if v > 0 else None for v in sp[k]]
                for k in sp
                if k not in ("frequency_hz", "source")
            },
            x_label="log10 frequency (Hz)",
            y_label="log10 power",
        )
    )
    socs = {k[:-4]: tl[k] for k in tl if k.endswith("_soc")}
    if socs:
        body.append(
            _chart("storage state of charge", tl["time_s"], socs, x_label="time (s)", y_label="SoC")
        )
    body.append("</div>")
    pub = doc.get("published") or {}
    if pub:
        body.append("<h2>Published claims</h2><ul>")
        for k, v in pub.items():
            body.append(f"<li><b>{esc(k)}</b>: {esc(str(v))}</li>")
        body.append("</ul>")
    meta = f"scenario {doc['scenario']} · {doc['gpus']} x {doc['sku']} · {doc['waveform']}"
    return _page("perwatt facility smooth", meta, body)


def write_flex_html(
    path: str | Path, results: Sequence[Mapping[str, Any]], *, scenario: Mapping[str, Any]
) -> Path:
    """Write the grid-flex report (one offline HTML file) atomically; returns its path."""
    p = Path(path)
    atomic_write_text(p, render_flex_html(results, scenario=scenario))
    return p


def write_smooth_html(path: str | Path, doc: Mapping[str, Any]) -> Path:
    """Write the power-smoothing report (one offline HTML file) atomically; returns its path."""
    p = Path(path)
    atomic_write_text(p, render_smooth_html(doc))
    return p


__all__ = ["render_flex_html", "render_smooth_html", "write_flex_html", "write_smooth_html"]
