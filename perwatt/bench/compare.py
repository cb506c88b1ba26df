"""Compare bench runs side by side: ratios with bootstrap confidence intervals, matched by load.

``perwatt compare A.json B.json …`` groups result files into *series* (one per run label, e.g. a
BF16 sweep and an FP8 sweep) and matches their load levels (``load.kind`` and ``load.value``:
concurrency 4 with concurrency 4). The first series is the baseline A; every other series B gets
the ratio B/A per metric with a 95 % interval, and a verdict: *within noise* when the interval
contains 1, else *better* or *worse* for that metric's direction.

How the intervals are made (see :mod:`perwatt.bench.stats` for the bootstrap itself):

* **Latency percentiles** (TTFT, TPOT, ITL, E2E at p50 and p99): per-request rows from each run's
  ``.requests.csv`` are resampled (ITL: the individual inter-token gaps, pooled over requests).
* **J per output token** and **output tokens/s**: there is no per-request energy — a GPU's energy
  is shared by all requests in flight — so each run's energy window (steady state, or the whole
  run when that is the basis) is cut into consecutive time blocks, each at least as long as the
  median request, and each block gets its energy (trapezoid integral of the recorded power
  timeline) and its output tokens (each request's first token at its TTFT, the rest spread evenly
  to its end). Blocks are resampled in pairs (a block bootstrap of Σenergy / Σtokens).
* The *point* ratio is always the one from the two result documents, i.e. the figures
  ``perwatt bench`` printed; the bootstrap supplies the interval's relative width around it.

What the interval does **not** include: run-to-run variation (thermal state, another GPU of the
same SKU, a different prompt sample). One run per side cannot show it; repeat runs to see it.
The power timeline is sampled (10 Hz by default), so the block energies are an approximation of the
counter-based figure the document reports; the interval is scaled to that figure.

Runs whose conditions differ (GPU, power limit, clocks, prompt/output lengths, energy source,
idle subtraction, measured vs simulated) are flagged loudly: a ratio across them measures the
difference in conditions as much as the setting under test. Comparing a measured run with a
simulated or estimated one is allowed only with a warning, and its energy ratios carry it.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np

from perwatt.bench.conditions import CONDITIONS
from perwatt.bench.defaults import MAX_RESAMPLES
from perwatt.bench.guard import (
    DEFAULT_THRESHOLDS,
    NO_VERDICT,
    GuardThresholds,
    GuardVerdict,
    judge,
)
from perwatt.bench.result import BenchResult, load_result
from perwatt.bench.stats import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    RatioCI,
    bootstrap_ratio_ci,
    bootstrap_ratio_of_sums_ci,
)
from perwatt.errors import ConfigError, DataFormatError

Better = Literal["lower", "higher"]
Verdict = Literal["within noise", "better", "worse", "no interval", "n/a"]

MIN_ROWS_FOR_CI: Final = 5
MIN_BLOCKS: Final = 4
MAX_BLOCKS: Final = 40


# --------------------------------------------------------------------------- per-request rows
@dataclass(frozen=True, slots=True, kw_only=True)
class RequestRows:
    """The successful requests of one run, as arrays (times in ms, starts in s from run start)."""

    start_s: np.ndarray
    ttft_ms: np.ndarray
    tpot_ms: np.ndarray
    e2el_ms: np.ndarray
    output_tokens: np.ndarray
    itl_ms: np.ndarray | None  # pooled ITLs over all requests; None when the CSV has none
    rebased: bool = False  # start times were on another clock and were shifted to start at 0

    @property
    def n(self) -> int:
        return int(self.e2el_ms.size)


_ALIASES: Final[dict[str, tuple[tuple[str, float], ...]]] = {
    # canonical -> (column name, factor to the canonical unit)
    "start_s": (("start_s", 1.0), ("start_time_s", 1.0), ("send_s", 1.0), ("start_ms", 1e-3)),
    "ttft_ms": (("ttft_ms", 1.0), ("ttft_s", 1e3)),
    "tpot_ms": (("tpot_ms", 1.0), ("tpot_s", 1e3)),
    "e2el_ms": (("e2el_ms", 1.0), ("e2el_s", 1e3), ("latency_ms", 1.0), ("latency_s", 1e3)),
    "output_tokens": (("output_tokens", 1.0), ("output_len", 1.0), ("completion_tokens", 1.0)),
    "itl_ms": (("itl_ms", 1.0), ("itl_s", 1e3), ("itls_ms", 1.0)),
}


def _pick(header: Sequence[str], canonical: str) -> tuple[str, float] | None:
    for name, factor in _ALIASES[canonical]:
        if name in header:
            return name, factor
    return None


def _parse_float(text: str | None) -> float | None:
    if text is None:
        return None
    s = text.strip()
    if s == "" or s.lower() in ("none", "null", "nan"):
        return None
    v = float(s)
    return v if math.isfinite(v) else None


def _parse_list(text: str | None) -> list[float]:
    if text is None:
        return []
    s = text.strip()
    if not s:
        return []
    if s.startswith("["):
        return [float(x) for x in json.loads(s) if x is not None]
    return [float(x) for x in s.replace(";", " ").replace(",", " ").split()]


def _row_ok(row: dict[str, str]) -> bool:
    for key in ("error_kind", "error"):
        if key in row and (row[key] or "").strip() not in ("", "None", "null"):
            return False
    for key in ("ok", "success"):
        if key in row:
            return (row[key] or "").strip().lower() in ("1", "true", "yes")
    return True


def load_requests_csv(path: str | Path) -> RequestRows:
    """Read a run's per-request CSV; failed requests are dropped (they have no latency).

    Columns are found by name (``start_s``, ``ttft_ms``, ``tpot_ms``, ``e2el_ms``,
    ``output_tokens``, ``itl_ms`` as a space/semicolon-separated or JSON list; ``_s`` variants are
    converted). A failed request is one with a non-empty ``error_kind``/``error`` or a false
    ``ok``/``success``. Raises :class:`DataFormatError` naming the file and line.
    """
    path = Path(path)
    try:
        f = path.open(newline="", encoding="utf-8-sig")  # a CSV re-saved by Excel has a BOM
    except OSError as e:
        raise DataFormatError(f"{path}: cannot read requests CSV ({e.strerror or e})") from e
    with f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        cols = {k: _pick(header, k) for k in _ALIASES}
        for need in ("ttft_ms", "e2el_ms", "output_tokens"):
            if cols[need] is None:
                names = "/".join(n for n, _ in _ALIASES[need])
                raise DataFormatError(f"{path}: requests CSV has no {names} column")
        data: dict[str, list[float]] = {k: [] for k in _ALIASES if k != "itl_ms"}
        itls: list[float] = []
        for row in reader:
            line = reader.line_num
            if not _row_ok(row):
                continue
            try:
                vals: dict[str, float | None] = {}
                for k in data:
                    c = cols[k]
                    raw = _parse_float(row.get(c[0])) if c else None
                    vals[k] = raw * c[1] if (raw is not None and c) else None
                itl_col = cols["itl_ms"]
                row_itls = (
                    [x * itl_col[1] for x in _parse_list(row.get(itl_col[0]))] if itl_col else []
                )
            except (ValueError, json.JSONDecodeError, TypeError) as e:
                raise DataFormatError(f"{path}:{line}: bad number in requests CSV ({e})") from None
            if vals["e2el_ms"] is None or vals["ttft_ms"] is None:
                continue
            n_tok = vals["output_tokens"] or 0.0
            if vals["tpot_ms"] is None and n_tok >= 2:
                vals["tpot_ms"] = (vals["e2el_ms"] - vals["ttft_ms"]) / (n_tok - 1)
            for k in data:
                v = vals[k]
                data[k].append(math.nan if v is None else v)
            itls.extend(row_itls)
    start = np.asarray(data["start_s"], dtype=np.float64)
    return RequestRows(
        start_s=start,
        ttft_ms=np.asarray(data["ttft_ms"], dtype=np.float64),
        tpot_ms=np.asarray(data["tpot_ms"], dtype=np.float64),
        e2el_ms=np.asarray(data["e2el_ms"], dtype=np.float64),
        output_tokens=np.asarray(data["output_tokens"], dtype=np.float64),
        itl_ms=np.asarray(itls, dtype=np.float64) if cols["itl_ms"] is not None else None,
    )


# --------------------------------------------------------------------------- energy blocks
def _integrate(t: np.ndarray, p: np.ndarray, a: float, b: float) -> float:
    """Trapezoid integral of the piecewise-linear power p(t) over [a, b] (edges interpolated)."""
    inner = t[(t > a) & (t < b)]
    grid = np.concatenate(([a], inner, [b]))
    vals = np.interp(grid, t, p)
    return float(np.sum((vals[1:] + vals[:-1]) * np.diff(grid)) / 2.0)


def _aligned_rows(rows: RequestRows, t_end: float) -> RequestRows:
    """Shift request start times onto the timeline's clock when they are plainly on another one.

    The timeline is relative to the run start; a CSV written with absolute (monotonic-clock)
    start times has every start far beyond the timeline's end. Then the first request is taken
    to start at 0, which the loader marks as ``rebased``.
    """
    s = rows.start_s
    if s.size == 0 or np.isnan(s).all():
        return rows
    if np.nanmin(s) > t_end + 1.0:
        return RequestRows(
            start_s=s - np.nanmin(s),
            ttft_ms=rows.ttft_ms,
            tpot_ms=rows.tpot_ms,
            e2el_ms=rows.e2el_ms,
            output_tokens=rows.output_tokens,
            itl_ms=rows.itl_ms,
            rebased=True,
        )
    return rows


@dataclass(frozen=True, slots=True, kw_only=True)
class EnergyBlocks:
    """A run's energy window cut into time blocks: energy, output tokens and length per block."""

    energy_j: np.ndarray
    tokens: np.ndarray
    duration_s: np.ndarray
    window_s: tuple[float, float]

    @property
    def j_per_token(self) -> float:
        tok = float(self.tokens.sum())
        return float(self.energy_j.sum()) / tok if tok > 0 else math.nan


def energy_blocks(doc: BenchResult, rows: RequestRows) -> EnergyBlocks | None:
    """Cut the run's energy window into blocks for the J/token bootstrap (see module docstring).

    None when the run has no timeline, no window or too few samples or requests to cut.
    """
    energy = doc["energy"]
    tl = doc["timeline"]
    if energy is None or len(tl["t_s"]) < 2 * MIN_BLOCKS:
        return None
    t = np.asarray(tl["t_s"], dtype=np.float64)
    p = np.asarray(tl["power_w"], dtype=np.float64)
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(p))) or np.any(np.diff(t) <= 0):
        return None
    win = energy["steady_state_window_s"]
    if energy["basis"] == "steady_state" and win is not None:
        a, b = float(win[0]), float(win[1])
    else:
        a, b = float(t[0]), float(t[-1])
    a, b = max(a, float(t[0])), min(b, float(t[-1]))
    n_samples = int(np.count_nonzero((t >= a) & (t <= b)))
    rows = _aligned_rows(rows, float(t[-1]))
    ok = ~np.isnan(rows.start_s)
    if b <= a or rows.n < MIN_ROWS_FOR_CI or not ok.any():
        return None
    median_e2el_s = float(np.median(rows.e2el_ms)) / 1e3
    k = int((b - a) / max(median_e2el_s, 1e-3))
    k = max(MIN_BLOCKS, min(MAX_BLOCKS, k, n_samples // 2))
    if k < MIN_BLOCKS:
        return None
    edges = np.linspace(a, b, k + 1)
    e_blocks = np.array([_integrate(t, p, edges[i], edges[i + 1]) for i in range(k)])
    first = rows.start_s[ok] + rows.ttft_ms[ok] / 1e3
    end = rows.start_s[ok] + rows.e2el_ms[ok] / 1e3
    n_tok = rows.output_tokens[ok]
    lo, hi = edges[:-1, None], edges[1:, None]  # [k, 1] against [n] requests
    first_in = ((first >= lo) & (first < hi)) * (n_tok >= 1)
    span = np.maximum(end - first, 1e-12)
    overlap = np.clip(np.minimum(hi, end) - np.maximum(lo, first), 0.0, None) / span
    rest = overlap * np.maximum(n_tok - 1, 0)
    # A request with all its tokens in one instant: the rest arrive with the first.
    instant = (end - first) <= 1e-12
    rest = np.where(instant, first_in * np.maximum(n_tok - 1, 0), rest)
    tok_blocks = (first_in + rest).sum(axis=1)
    return EnergyBlocks(
        energy_j=e_blocks, tokens=tok_blocks, duration_s=np.diff(edges), window_s=(a, b)
    )


# --------------------------------------------------------------------------- result objects
@dataclass(frozen=True, slots=True, kw_only=True)
class RunInfo:
    """One result file as compare sees it."""

    path: str
    series: str
    label: str
    status: str
    partial_reason: str | None
    load_kind: str
    load_value: float
    energy_source: str
    measured: bool | None
    requests_csv: str | None
    notes: tuple[str, ...] = ()
    guard: GuardVerdict = NO_VERDICT  # the accuracy guard on this run

    @property
    def partial(self) -> bool:
        return self.status != "complete"

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "series": self.series,
            "label": self.label,
            "status": self.status,
            "partial_reason": self.partial_reason,
            "load": {"kind": self.load_kind, "value": self.load_value},
            "energy_source": self.energy_source,
            "measured": self.measured,
            "requests_csv": self.requests_csv,
            "notes": list(self.notes),
            "guard": self.guard.to_dict(),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class RatioEstimate:
    """B/A for one metric: the ratio, its interval (if any) and what it means."""

    ratio: float
    ci: RatioCI | None
    verdict: Verdict
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ratio": self.ratio,
            "ci_low": self.ci.low if self.ci else None,
            "ci_high": self.ci.high if self.ci else None,
            "ci_method": self.ci.method if self.ci else None,
            "verdict": self.verdict,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricComparison:
    """One metric across the series at one load level."""

    key: str
    name: str
    unit: str
    better: Better
    energy: bool  # an energy-derived figure: shown with its source label
    values: tuple[float | None, ...]  # one per series, baseline first
    ratios: tuple[RatioEstimate | None, ...]  # one per non-baseline series

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "name": self.name,
            "unit": self.unit,
            "better": self.better,
            "energy": self.energy,
            "values": list(self.values),
            "ratios_vs_baseline": [r.to_dict() if r else None for r in self.ratios],
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class LevelComparison:
    """All metrics at one matched load level."""

    load_kind: str
    load_value: float
    runs: tuple[RunInfo | None, ...]  # one per series; None where a series lacks this level
    metrics: tuple[MetricComparison, ...]
    warnings: tuple[str, ...] = ()

    @property
    def load_text(self) -> str:
        return f"{self.load_kind} {self.load_value:g}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "load": {"kind": self.load_kind, "value": self.load_value},
            "runs": [r.to_dict() if r else None for r in self.runs],
            "metrics": [m.to_dict() for m in self.metrics],
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class UnmatchedLevel:
    """A load level that some series have and others lack (not compared)."""

    load_kind: str
    load_value: float
    present_in: tuple[str, ...]
    missing_in: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "load": {"kind": self.load_kind, "value": self.load_value},
            "present_in": list(self.present_in),
            "missing_in": list(self.missing_in),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Comparison:
    """The outcome of :func:`compare_results`; ``to_dict`` is what ``--json`` prints."""

    series: tuple[str, ...]
    levels: tuple[LevelComparison, ...]
    unmatched: tuple[UnmatchedLevel, ...]
    condition_diffs: tuple[str, ...]
    warnings: tuple[str, ...]
    accuracy: tuple[tuple[str, dict[str, Any]], ...] = ()
    confidence: float = DEFAULT_CONFIDENCE
    n_resamples: int = DEFAULT_RESAMPLES
    method: str = field(default="")
    thresholds: GuardThresholds = DEFAULT_THRESHOLDS

    @property
    def baseline(self) -> str:
        return self.series[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "perwatt.bench.compare/1",
            "baseline": self.baseline,
            "series": list(self.series),
            "confidence": self.confidence,
            "n_resamples": self.n_resamples,
            "method": self.method,
            "warnings": list(self.warnings),
            "condition_diffs": list(self.condition_diffs),
            "levels": [lv.to_dict() for lv in self.levels],
            "unmatched_levels": [u.to_dict() for u in self.unmatched],
            "accuracy": [
                {"path": p, **a, "guard": judge(a, self.thresholds).to_dict()}
                for p, a in self.accuracy
            ],
            "guard_thresholds": self.thresholds.to_dict(),
        }


# --------------------------------------------------------------------------- loading, grouping
@dataclass(slots=True)
class _Run:
    path: Path
    doc: BenchResult
    series: str = ""
    rows: RequestRows | None = None
    rows_note: str | None = None
    blocks: EnergyBlocks | None = None
    blocks_note: str | None = None

    @property
    def level(self) -> tuple[str, float]:
        return (self.doc["load"]["kind"], float(self.doc["load"]["value"]))


def _assign_series(runs: list[_Run]) -> list[str]:
    """Name series by label; split a label whose files repeat a load level by folder, then file."""
    order: list[str] = []
    by_label: dict[str, list[_Run]] = {}
    for r in runs:
        by_label.setdefault(r.doc["label"], []).append(r)
    for label, group in by_label.items():
        levels = [r.level for r in group]
        if len(set(levels)) == len(levels):
            for r in group:
                r.series = label
            continue
        dirs = {r.path.resolve().parent for r in group}
        per_dir_unique = all(
            len({r.level for r in group if r.path.resolve().parent == d})
            == sum(1 for r in group if r.path.resolve().parent == d)
            for d in dirs
        )
        for r in group:
            r.series = (
                f"{label} @ {r.path.resolve().parent.name}"
                if per_dir_unique and len(dirs) > 1
                else f"{label} [{r.path.name}]"
            )
    for r in runs:
        if r.series not in order:
            order.append(r.series)
    return order


def _load_rows(run: _Run) -> None:
    name = run.doc["requests_csv"]
    if not name:
        run.rows_note = "no requests CSV: latency intervals unavailable"
        return
    p = Path(name)
    csv_path = p if p.is_absolute() else run.path.parent / p
    if not csv_path.exists():
        run.rows_note = f"requests CSV {csv_path.name} not found next to the result"
        return
    rows = load_requests_csv(csv_path)
    t_s = run.doc["timeline"]["t_s"]
    run.rows = _aligned_rows(rows, float(t_s[-1])) if t_s else rows
    run.blocks = energy_blocks(run.doc, run.rows)
    if run.blocks is None:
        n = len(run.doc["timeline"]["t_s"])
        run.blocks_note = (
            f"{run.path.name}: too few power samples ({n}) or requests in the energy window "
            "to cut into time blocks"
        )


# --------------------------------------------------------------------------- conditions
def _condition_diffs(runs: list[_Run]) -> tuple[list[str], list[str]]:
    """(loud, informational) differences between series *at the same load level*.

    Conditions may legitimately change along one series (a sweep's levels have their own
    windows and prompt counts); what matters is whether the runs a ratio is taken between differ.
    """
    levels: dict[tuple[str, float], list[_Run]] = {}
    for r in runs:
        levels.setdefault(r.level, []).append(r)
    loud: list[str] = []
    info: list[str] = []
    for cond in CONDITIONS:
        found: dict[str, list[str]] = {}  # description of the difference -> load levels
        for (kind, value), group in sorted(levels.items()):
            if len({r.series for r in group}) < 2:
                continue
            per_series = {r.series: cond.text(r.doc) for r in group}
            if len(set(per_series.values())) > 1:
                desc = "; ".join(f"{k}={v}" for k, v in per_series.items())
                found.setdefault(desc, []).append(f"{kind} {value:g}")
        for desc, where in found.items():
            text = f"{cond.name} differs: {desc} (at {', '.join(where)})"
            (loud if cond.loud else info).append(text)
    return loud, info


# --------------------------------------------------------------------------- metrics
@dataclass(frozen=True, slots=True)
class _MetricSpec:
    key: str
    name: str
    unit: str
    better: Better
    energy: bool
    ci: Literal["rows", "itl", "blocks_jpt", "blocks_rate", "inverse_jpt", "none"]
    stat: float = 50.0


_LAT = (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2E latency"))
METRICS: Final[tuple[_MetricSpec, ...]] = (
    _MetricSpec("j_per_output_token", "J / output token", "J", "lower", True, "blocks_jpt"),
    _MetricSpec("output_tokens_per_j", "output tokens / J", "tok/J", "higher", True, "inverse_jpt"),
    _MetricSpec("avg_power_w", "avg power", "W", "lower", True, "none"),
    _MetricSpec(
        "usd_per_million_output_tokens", "$ / M output tok (energy)", "$", "lower", True, "none"
    ),
    _MetricSpec(
        "output_throughput_tok_s", "output throughput", "tok/s", "higher", False, "blocks_rate"
    ),
    _MetricSpec("request_throughput_rps", "request throughput", "req/s", "higher", False, "none"),
    *(
        _MetricSpec(
            f"{k}_ms.{p}",
            f"{label} {p}",
            "ms",
            "lower",
            False,
            "itl" if k == "itl" else "rows",
            50.0 if p == "p50" else 99.0,
        )
        for k, label in _LAT
        for p in ("p50", "p99")
    ),
)


def _value(doc: BenchResult, key: str) -> float | None:
    d: dict[str, Any] = dict(doc)
    v: Any
    if key in ("j_per_output_token", "output_tokens_per_j", "avg_power_w"):
        v = d["energy"][key] if d["energy"] is not None else None
    elif key == "usd_per_million_output_tokens":
        v = d["economics"][key] if d["economics"] is not None else None
    elif "." in key:
        block, pct = key.split(".")
        v = d["metrics"][block][pct]
    else:
        v = d["metrics"][key]
    if v is None or isinstance(v, bool) or not math.isfinite(float(v)):
        return None
    return float(v)


def _verdict(ci: RatioCI | None, better: Better) -> Verdict:
    if ci is None:
        return "no interval"
    if ci.within_noise:
        return "within noise"
    improved = ci.high < 1.0 if better == "lower" else ci.low > 1.0
    return "better" if improved else "worse"


def _scaled(ci: RatioCI | None, point: float) -> RatioCI | None:
    """Re-centre a bootstrap interval on the reported ratio, keeping its relative width."""
    if ci is None or ci.ratio <= 0 or not math.isfinite(ci.ratio):
        return None
    f = point / ci.ratio
    return RatioCI(
        ratio=point,
        low=min(ci.low * f, point),
        high=max(ci.high * f, point),
        confidence=ci.confidence,
        n_resamples=ci.n_resamples,
        n_a=ci.n_a,
        n_b=ci.n_b,
        method=ci.method,
    )


def _inverse(ci: RatioCI | None, point: float) -> RatioCI | None:
    if ci is None or ci.low <= 0:
        return None
    return RatioCI(
        ratio=point,
        low=min(1.0 / ci.high, point),
        high=max(1.0 / ci.low, point),
        confidence=ci.confidence,
        n_resamples=ci.n_resamples,
        n_a=ci.n_a,
        n_b=ci.n_b,
        method=ci.method + " (inverted)",
    )


def _ratio_ci(
    spec: _MetricSpec,
    a: _Run,
    b: _Run,
    point: float,
    *,
    n_resamples: int,
    confidence: float,
    seed: int,
) -> tuple[RatioCI | None, str | None]:
    """The interval for one metric's B/A ratio, or None with the reason."""
    kw: dict[str, Any] = {"n_resamples": n_resamples, "confidence": confidence, "seed": seed}
    if spec.ci == "none":
        return None, None
    if spec.ci in ("blocks_jpt", "inverse_jpt", "blocks_rate"):
        if a.blocks is None or b.blocks is None:
            return None, (
                a.blocks_note
                or b.blocks_note
                or a.rows_note
                or b.rows_note
                or "nothing to resample"
            )
        if spec.ci == "blocks_rate":
            ci = bootstrap_ratio_of_sums_ci(
                a.blocks.tokens, a.blocks.duration_s, b.blocks.tokens, b.blocks.duration_s, **kw
            )
            return _scaled(ci, point), None
        ci = bootstrap_ratio_of_sums_ci(
            a.blocks.energy_j, a.blocks.tokens, b.blocks.energy_j, b.blocks.tokens, **kw
        )
        if spec.ci == "inverse_jpt":
            return _inverse(_scaled(ci, 1.0 / point), point), None
        return _scaled(ci, point), None
    if a.rows is None or b.rows is None:
        return None, a.rows_note or b.rows_note
    if spec.ci == "itl":
        xa, xb = a.rows.itl_ms, b.rows.itl_ms
        if xa is None or xb is None:
            return None, "requests CSV has no per-request ITLs"
    else:
        col = spec.key.split(".")[0]
        xa = getattr(a.rows, col)
        xb = getattr(b.rows, col)
        xa, xb = xa[~np.isnan(xa)], xb[~np.isnan(xb)]
    if xa.size < MIN_ROWS_FOR_CI or xb.size < MIN_ROWS_FOR_CI:
        return None, f"fewer than {MIN_ROWS_FOR_CI} requests"
    ci = bootstrap_ratio_ci(xa, xb, statistic=spec.stat, **kw)  # type: ignore[arg-type]
    return _scaled(ci, point), None


def compare_results(
    paths: Iterable[str | Path],
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    guard: GuardThresholds = DEFAULT_THRESHOLDS,
) -> Comparison:
    """Compare bench result files; the first file's series is the baseline.

    ``progress(done, total)`` is called after each ratio's interval (the bootstrap is the slow
    part: seconds per interval at large ``n_resamples``). Each run's accuracy block (if any) is
    judged against ``guard`` (:mod:`perwatt.bench.guard`).

    Raises :class:`DataFormatError` for an unreadable or malformed file (naming it) and
    :class:`ConfigError` for fewer than two runs.
    """
    # Checked up front: stats only sees these when an interval is computed, so a bad value
    # would otherwise be printed in the table header ("200% CI") without any error.
    if (
        isinstance(n_resamples, bool)
        or not isinstance(n_resamples, int)
        or not 100 <= n_resamples <= MAX_RESAMPLES
    ):
        raise ConfigError(
            f"--resamples must be an integer in 100..{MAX_RESAMPLES:,}, got {n_resamples:,}"
            if isinstance(n_resamples, int)
            else f"--resamples must be an integer in 100..{MAX_RESAMPLES:,}, got {n_resamples!r}"
        )
    if not 0 < confidence < 1:
        raise ConfigError(f"--confidence must be in (0, 1), e.g. 0.95; got {confidence}")
    path_list = [Path(p) for p in paths]
    if len(path_list) < 2:
        raise ConfigError("compare needs at least two result files (A.json B.json …)")
    seen: set[Path] = set()
    runs: list[_Run] = []
    for p in path_list:
        rp = p.resolve()
        if rp in seen:
            raise ConfigError(f"{p} is given twice")
        seen.add(rp)
        runs.append(_Run(path=p, doc=load_result(p)))
    series = _assign_series(runs)
    if len(series) < 2:
        raise ConfigError(
            "all files belong to one series (same label, different load levels): "
            "nothing to compare them with; pass the other run's files too"
        )
    for r in runs:
        _load_rows(r)

    warnings: list[str] = []
    # Measured vs simulated/estimated: allowed, but never silently.
    measured = {r.series: (r.doc["energy"]["measured"] if r.doc["energy"] else None) for r in runs}
    mixed = any(v is True for v in measured.values()) and any(v is False for v in measured.values())
    if mixed:
        sim = sorted({s for s, v in measured.items() if v is False})
        warnings.append(
            "MIXED ENERGY SOURCES: comparing measured runs with simulated/estimated/replayed ones "
            f"({', '.join(sim)}); energy ratios compare a model with hardware, not two settings"
        )
    for r in runs:
        if r.doc["status"] != "complete":
            reason = r.doc["partial_reason"] or "no reason recorded"
            warnings.append(f"{r.doc['status'].upper()} run: {r.path} ({reason})")
        if r.doc["energy"] is None:
            warnings.append(f"no energy in {r.path}: energy ratios unavailable")
        if r.rows is not None and r.rows.rebased:
            warnings.append(
                f"{r.path}: request start times were on another clock; aligned to the run start"
            )
    not_measured: dict[str, list[str]] = {}
    for r in runs:
        e = r.doc["energy"]
        if e is not None and not e["measured"]:
            not_measured.setdefault(e["source"], []).append(r.path.name)
    for src, names in not_measured.items():
        warnings.append(f"energy is {src}, not a measurement, in: {', '.join(names)}")
    loud, info = _condition_diffs(runs)
    warnings.extend(f"CONDITIONS DIFFER: {d}" for d in loud)

    baseline = series[0]
    by_series_level: dict[tuple[str, tuple[str, float]], _Run] = {
        (r.series, r.level): r for r in runs
    }
    all_levels: list[tuple[str, float]] = []
    for r in runs:
        if r.level not in all_levels:
            all_levels.append(r.level)
    all_levels.sort(key=lambda lv: (lv[0], lv[1]))

    levels: list[LevelComparison] = []
    unmatched: list[UnmatchedLevel] = []
    n_matched = sum(
        1
        for lv in all_levels
        if (baseline, lv) in by_series_level
        and sum((s, lv) in by_series_level for s in series) >= 2
    )
    total_ratios = n_matched * len(METRICS) * (len(series) - 1)
    done_ratios = 0
    for lv in all_levels:
        present = [s for s in series if (s, lv) in by_series_level]
        missing = [s for s in series if (s, lv) not in by_series_level]
        if missing:
            unmatched.append(
                UnmatchedLevel(
                    load_kind=lv[0],
                    load_value=lv[1],
                    present_in=tuple(present),
                    missing_in=tuple(missing),
                )
            )
        if baseline not in present or len(present) < 2:
            continue
        level_runs = [by_series_level.get((s, lv)) for s in series]
        a = level_runs[0]
        assert a is not None
        metrics: list[MetricComparison] = []
        for spec in METRICS:
            values = tuple(_value(r.doc, spec.key) if r else None for r in level_runs)
            ratios: list[RatioEstimate | None] = []
            for b, vb in zip(level_runs[1:], values[1:], strict=True):
                va = values[0]
                if b is None or va is None or vb is None or va == 0:
                    ratios.append(None)
                else:
                    point = vb / va
                    ci, why = _ratio_ci(
                        spec, a, b, point, n_resamples=n_resamples, confidence=confidence, seed=seed
                    )
                    note = why
                    if spec.energy and mixed:
                        note = "measured vs simulated/estimated"
                    ratios.append(
                        RatioEstimate(
                            ratio=point, ci=ci, verdict=_verdict(ci, spec.better), note=note
                        )
                    )
                done_ratios += 1
                if progress is not None:
                    progress(done_ratios, total_ratios)
            metrics.append(
                MetricComparison(
                    key=spec.key,
                    name=spec.name,
                    unit=spec.unit,
                    better=spec.better,
                    energy=spec.energy,
                    values=values,
                    ratios=tuple(ratios),
                )
            )
        lw = [f"{r.path}: {r.rows_note}" for r in level_runs if r is not None and r.rows_note]
        lw += [
            f"{r.path}: {r.doc['status']}"
            for r in level_runs
            if r is not None and r.doc["status"] != "complete"
        ]
        levels.append(
            LevelComparison(
                load_kind=lv[0],
                load_value=lv[1],
                runs=tuple(_info(r, guard) if r else None for r in level_runs),
                metrics=tuple(metrics),
                warnings=tuple(lw),
            )
        )
    if not levels:
        warnings.append(
            f"no load level of the baseline ({baseline}) is present in another series; "
            "see the unmatched levels"
        )
    accuracy = tuple(
        (str(r.path), dict(r.doc["accuracy"])) for r in runs if r.doc["accuracy"] is not None
    )
    return Comparison(
        series=tuple(series),
        levels=tuple(levels),
        unmatched=tuple(unmatched),
        condition_diffs=tuple(loud + info),
        warnings=tuple(warnings),
        accuracy=accuracy,
        confidence=confidence,
        n_resamples=n_resamples,
        thresholds=guard,
        method=(
            "ratio B/A; interval: percentile bootstrap over per-request rows (latency) and over "
            "time blocks of the energy window (J/token, throughput); within-run variation only"
        ),
    )


def _info(r: _Run, guard: GuardThresholds = DEFAULT_THRESHOLDS) -> RunInfo:
    e = r.doc["energy"]
    notes = [r.rows_note] if r.rows_note else []
    return RunInfo(
        path=str(r.path),
        series=r.series,
        label=r.doc["label"],
        status=r.doc["status"],
        partial_reason=r.doc["partial_reason"],
        load_kind=r.level[0],
        load_value=r.level[1],
        energy_source=e["source"] if e else "none",
        measured=e["measured"] if e else None,
        requests_csv=r.doc["requests_csv"],
        notes=tuple(notes),
        guard=judge(r.doc["accuracy"], guard),
    )


__all__ = [
    "METRICS",
    "Comparison",
    "EnergyBlocks",
    "LevelComparison",
    "MetricComparison",
    "RatioEstimate",
    "RequestRows",
    "RunInfo",
    "UnmatchedLevel",
    "compare_results",
    "energy_blocks",
    "load_requests_csv",
]
