"""``perwatt compare``'s terminal output: a :class:`~perwatt.bench.compare.Comparison` as rich
tables, one per load level, with its warnings first (the numbers are computed in
:mod:`perwatt.bench.compare`; this module only prints them)."""

from __future__ import annotations

import math
from typing import Any, Final

from perwatt.bench.compare import Comparison, RatioEstimate
from perwatt.bench.guard import NO_VERDICT, judge

__all__ = ["NARROW_COLUMNS", "render_comparison"]


def _fmt(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "–"
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1e5 or a < 1e-3:
        return f"{v:.3e}"
    if a >= 100:
        return f"{v:,.1f}"
    if a >= 1:
        return f"{v:.3f}"
    return f"{v:.4f}"


def _ratio_text(r: RatioEstimate | None, pct: float, *, narrow: bool = False) -> str:
    if r is None:
        return "–"
    if r.ci is None:
        return f"{r.ratio:.3f}"
    sep = "\n" if narrow else " "
    return f"{r.ratio:.3f}{sep}[{r.ci.low:.3f}, {r.ci.high:.3f}]"


_VERDICT_STYLE: Final = {
    "better": "bold green",
    "worse": "bold red",
    "within noise": "yellow",
    "no interval": "dim",
}
# Narrow terminals: one-word verdicts, explained once under the tables.
_VERDICT_SHORT: Final = {"within noise": "noise", "no interval": "no CI"}
#: Below this many columns the tables put sources in the headers and wrap ratios.
NARROW_COLUMNS: Final = 120


def render_comparison(cmp: Comparison, console: Any | None = None) -> None:
    """Print the comparison as rich tables (one per load level) with warnings first.

    Fits the console's width: below :data:`NARROW_COLUMNS` columns (an 80-column terminal) the
    energy source is named once, under each run's name in its column header (it is always there),
    rather than in every energy cell too; ratio
    intervals go under the ratio, and verdicts are one word. Every column says its unit or
    source; an "accuracy guard" row gives each run's pass/FAIL beside its energy figures.
    """
    # lazy: rich costs ~30 ms of start-up and only this output uses it
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    con = console
    if con is None:
        con = Console()
        if not con.is_terminal:
            # Piped into a file or a CI log: 80 columns would wrap every metric name.
            con = Console(width=180)
    narrow = con.width < NARROW_COLUMNS
    for w in cmp.warnings:
        # Upper-case first word (MIXED, CONDITIONS, PARTIAL, RUNNING, FAILED): changes what the
        # ratios mean, so red; the rest are notes, yellow.
        first = w.split()[0] if w.split() else ""
        style = "bold red" if len(first) > 1 and first.isupper() else "yellow"
        con.print(f"[{style}]⚠ {escape(w)}[/]", highlight=False)
    info = [d for d in cmp.condition_diffs if f"CONDITIONS DIFFER: {d}" not in cmp.warnings]
    for d in info:
        con.print(f"[dim]· {escape(d)}[/]", highlight=False)
    pct = round(cmp.confidence * 100)
    any_guard = False
    for lv in cmp.levels:
        t = Table(
            title=escape(
                f"{lv.load_text}  —  B/A with {pct}% bootstrap CI, baseline A = {cmp.baseline}"
            ),
            title_justify="left",
            show_lines=False,
        )
        t.add_column("metric\n(unit)", no_wrap=not narrow, min_width=12)
        sources: list[str] = []
        for s, run in zip(cmp.series, lv.runs, strict=True):
            src = run.energy_source if run else "–"
            sources.append(src)
            # The status itself: a failed or still-running run is not "PARTIAL".
            flag = f" {run.status.upper()}" if run is not None and run.partial else ""
            t.add_column(escape(f"{s}{flag}\n({src})"), justify="right")
        for s in cmp.series[1:]:
            t.add_column(escape(f"{s} / {cmp.baseline}\n{pct}% CI"), justify="right")
            t.add_column("verdict")
        energy_rows = [k for k, m in enumerate(lv.metrics) if m.energy]
        last_energy = energy_rows[-1] if energy_rows else -1
        show_guard = any(run is not None and run.guard.status != "none" for run in lv.runs)
        any_guard = any_guard or show_guard
        for k, m in enumerate(lv.metrics):
            cells = []
            for v, src in zip(m.values, sources, strict=True):
                txt = _fmt(v)
                wide_src = m.energy and v is not None and not narrow
                cells.append(escape(f"{txt} ({src})") if wide_src else txt)
            row = [escape(f"{m.name} ({m.unit})"), *cells]
            for r in m.ratios:
                row.append(escape(_ratio_text(r, pct, narrow=narrow)))
                if r is None:
                    row.append("")
                else:
                    style = _VERDICT_STYLE.get(r.verdict, "")
                    word = _VERDICT_SHORT.get(r.verdict, r.verdict) if narrow else r.verdict
                    extra = escape(f" ⚠ {r.note}") if r.note else ""
                    row.append(f"[{style}]{word}[/]{extra}" if style else word + extra)
            t.add_row(*row)
            if k == last_energy and show_guard:
                guard_cells = []
                for run in lv.runs:
                    g = run.guard if run is not None else NO_VERDICT
                    guard_cells.append(
                        "[bold red]FAIL[/]" if g.failed else ("pass" if g.passed else "–")
                    )
                t.add_row("accuracy guard", *guard_cells, *([""] * (2 * (len(cmp.series) - 1))))
        con.print(t)
        for w in lv.warnings:
            con.print(f"[yellow]  {escape(w)}[/]", highlight=False)
    if narrow and cmp.levels:
        con.print(
            "[dim]noise: the interval contains 1 (within noise); no CI: too few samples or "
            "requests for an interval[/]",
            highlight=False,
        )
    if cmp.unmatched:
        con.print("[bold]Unmatched load levels[/] (not in every series):")
        for u in cmp.unmatched:
            con.print(
                escape(
                    f"  {u.load_kind} {u.load_value:g}: in {', '.join(u.present_in)}; "
                    f"missing in {', '.join(u.missing_in)}"
                ),
                highlight=False,
            )
    for path, acc in cmp.accuracy:
        parts = [
            f"{k}={_fmt(acc.get(k))}"
            for k in ("exact_match", "top1_agreement", "logprob_agreement", "kl_mean")
            if acc.get(k) is not None
        ]
        verdict = judge(acc, cmp.thresholds)
        style = "bold red" if verdict.failed else ""
        text = escape(
            f"accuracy of {path} vs {acc.get('reference')}: {', '.join(parts) or 'no figures'}"
            f" — guard {verdict.text}"
        )
        con.print(f"[{style}]{text}[/]" if style else text, highlight=False)
    if cmp.accuracy or any_guard:
        con.print(
            escape(
                f"accuracy guard: {cmp.thresholds.describe()} (--min-top1, --max-kl, "
                "--min-logprob-agreement, --min-exact-match, --max-rel-err)"
            ),
            highlight=False,
        )
    con.print(f"[dim]{escape(cmp.method)}[/]", highlight=False)
