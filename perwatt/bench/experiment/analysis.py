"""The answer to an experiment: frontier, best configuration under the SLO, savings, calibration.

Read-only over an experiment's output folder (:mod:`perwatt.bench.experiment.run`):

* **Pareto frontier** of output tokens per joule (higher is better) against each latency in
  :data:`FRONTIER_KEYS` (lower is better): a point is on the frontier when no other point has
  both more tokens/J and a lower latency. Only complete points with energy take part.
* **Best under the SLO**: among complete points that meet every ``[slo]`` bound (a missing
  latency never meets one) and do not fail the accuracy guard, the most output tokens/J. Its
  J/token against the baseline comes with the interval of :func:`perwatt.bench.compare
  .compare_results` (same load level) or, across load levels, the same block bootstrap built from
  :func:`perwatt.bench.compare.energy_blocks`; the runner-up is checked the same way, and a tie
  within noise is said so.
* **Savings** against the baseline configuration (its default GPU setting at the best point's
  load, else its own best under the SLO): J/token, %, and $/year for ``site_gpus`` GPUs serving
  at the best point's output tokens/s per GPU for ``utilization`` of the year, at
  ``price_per_kwh`` and ``pue`` (:func:`perwatt.economics.cost_usd`). Energy cost only.
* **Accuracy guard** per configuration: its recorded greedy answers against the baseline's
  (:func:`perwatt.bench.quality.agreement`), pass/fail against the ``[quality]`` thresholds.
* **Calibration** for the facility simulator: per configuration and load, tokens/s and power
  against power limit, per phase (prefill, decode, idle), from the per-slice split of each run
  (:mod:`perwatt.bench.experiment.attribution`); labelled with the energy source.

Every energy figure keeps its source label; a simulated or estimated source is never called
measured, and the summary says so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from perwatt import economics as eco
from perwatt.bench.compare import compare_results, energy_blocks, load_requests_csv
from perwatt.bench.experiment.config import SLO_KEYS, ExperimentConfig, Point
from perwatt.bench.experiment.store import is_finished, point_dir, read_point
from perwatt.bench.quality import Generation, agreement, summarize_agreement
from perwatt.bench.result import BenchResult, load_result
from perwatt.bench.stats import bootstrap_ratio_of_sums_ci
from perwatt.errors import PerwattError
from perwatt.meter.source import is_measured

FRONTIER_KEYS: Final = ("tpot_p50_ms", "tpot_p90_ms", "ttft_p90_ms")
SECONDS_PER_YEAR: Final = 365.25 * 86400.0
CALIBRATION_SCHEMA: Final = "perwatt.experiment.calibration/1"
SUMMARY_SCHEMA: Final = "perwatt.experiment.summary/1"


def _fin(v: Any) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def latency_value(doc: Mapping[str, Any], key: str) -> float | None:
    """``tpot_p90_ms`` → ``doc["metrics"]["tpot_ms"]["p90"]``."""
    metric, stat, _ = key.split("_")
    block = (doc.get("metrics") or {}).get(f"{metric}_ms") or {}
    return _fin(block.get(stat))


@dataclass(frozen=True, slots=True, kw_only=True)
class QualityVerdict:
    """The accuracy check of one server against the experiment's reference server."""

    server: str
    reference: str
    exact_match: float | None
    top1_agreement: float | None
    n_prompts: int
    passed: bool | None  # None: no threshold given, or nothing to compare
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "reference": self.reference,
            "exact_match": self.exact_match,
            "top1_agreement": self.top1_agreement,
            "n_prompts": self.n_prompts,
            "passed": self.passed,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class PointResult:
    """One point as the analysis sees it."""

    id: str
    server: str
    label: str
    setting: str
    power_limit_w: float | None
    sm_clock_mhz: int | None
    load_kind: str
    load_value: float | None
    status: str  # complete | failed | interrupted | missing
    reason: str | None
    log_tail: str
    result_path: Path | None
    energy_source: str | None
    measured: bool | None
    output_tokens_per_j: float | None
    j_per_output_token: float | None
    output_tokens_per_s: float | None
    output_tokens_per_s_per_gpu: float | None
    avg_power_w: float | None
    idle_power_w: float | None
    gpu_power_limit_w: float | None  # the limit in effect, as the run's conditions recorded it
    latency_ms: Mapping[str, float | None]
    slo_violations: tuple[str, ...] = ()
    quality_passed: bool | None = None
    frontier: tuple[str, ...] = ()
    attribution_sum_j: float | None = None
    attribution_total_j: float | None = None

    @property
    def usable(self) -> bool:
        return self.status == "complete" and self.output_tokens_per_j is not None

    @property
    def meets_slo(self) -> bool:
        return self.usable and not self.slo_violations

    @property
    def load_text(self) -> str:
        if self.load_kind == "concurrency":
            return f"concurrency {self.load_value:g}"
        return "rate inf" if self.load_value is None else f"rate {self.load_value:g}/s"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "server": self.server,
            "label": self.label,
            "setting": self.setting,
            "power_limit_w": self.power_limit_w,
            "sm_clock_mhz": self.sm_clock_mhz,
            "load": {"kind": self.load_kind, "value": self.load_value},
            "status": self.status,
            "reason": self.reason,
            "log_tail": self.log_tail,
            "result": str(self.result_path) if self.result_path else None,
            "energy_source": self.energy_source,
            "measured": self.measured,
            "output_tokens_per_j": self.output_tokens_per_j,
            "j_per_output_token": self.j_per_output_token,
            "output_tokens_per_s": self.output_tokens_per_s,
            "output_tokens_per_s_per_gpu": self.output_tokens_per_s_per_gpu,
            "avg_power_w": self.avg_power_w,
            "idle_power_w": self.idle_power_w,
            "gpu_power_limit_w": self.gpu_power_limit_w,
            "latency_ms": dict(self.latency_ms),
            "slo_violations": list(self.slo_violations),
            "meets_slo": self.meets_slo,
            "quality_passed": self.quality_passed,
            "frontier": list(self.frontier),
            "attribution_sum_j": self.attribution_sum_j,
            "attribution_total_j": self.attribution_total_j,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class RatioWithCI:
    """B/A of J per output token with its interval (None: not computable, ``note`` says why)."""

    a: str
    b: str
    ratio: float
    ci_low: float | None
    ci_high: float | None
    verdict: str  # better | worse | within noise | no interval
    method: str
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "j_per_token_ratio": self.ratio,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "verdict": self.verdict,
            "method": self.method,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Savings:
    """Energy per token saved by the best point against the baseline point."""

    baseline_point: str
    best_point: str
    baseline_j_per_token: float
    best_j_per_token: float
    saved_j_per_token: float
    saved_pct: float
    site_gpus: int
    utilization: float
    output_tokens_per_year: float
    saved_kwh_per_year: float
    saved_usd_per_year: float
    price_per_kwh: float
    pue: float
    energy_source: str
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


@dataclass(frozen=True, slots=True, kw_only=True)
class ExperimentAnalysis:
    """Everything the report and ``summary.json`` show."""

    name: str
    out_dir: Path
    points: tuple[PointResult, ...]
    slo: Mapping[str, float]
    baseline: str
    frontiers: Mapping[str, tuple[str, ...]]
    best: PointResult | None
    best_vs_baseline: RatioWithCI | None
    runner_up: RatioWithCI | None
    savings: Savings | None
    quality: tuple[QualityVerdict, ...]
    energy_sources: tuple[str, ...]
    all_measured: bool
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(p.id for p in self.points if p.status in ("missing", "interrupted"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SUMMARY_SCHEMA,
            "name": self.name,
            "slo_ms": dict(self.slo),
            "baseline": self.baseline,
            "energy_sources": list(self.energy_sources),
            "all_measured": self.all_measured,
            "best": self.best.id if self.best else None,
            "best_vs_baseline": self.best_vs_baseline.to_dict() if self.best_vs_baseline else None,
            "runner_up": self.runner_up.to_dict() if self.runner_up else None,
            "savings": self.savings.to_dict() if self.savings else None,
            "frontiers": {k: list(v) for k, v in self.frontiers.items()},
            "quality": [q.to_dict() for q in self.quality],
            "missing": list(self.missing),
            "warnings": list(self.warnings),
            "notes": list(self.notes),
            "points": [p.to_dict() for p in self.points],
        }


# --------------------------------------------------------------------------- building blocks
def pareto_indices(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of (latency, tokens_per_j) points no other point beats on both: lower latency
    and higher tokens/J (ties on both: all kept)."""
    out = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            x2 <= x and y2 >= y and (x2 < x or y2 > y)
            for j, (x2, y2) in enumerate(points)
            if j != i
        )
        if not dominated:
            out.append(i)
    return out


def _quality(config: ExperimentConfig, out_dir: Path) -> dict[str, QualityVerdict]:
    q = config.quality
    if q is None:
        return {}

    def read(label: str) -> dict[str, Any] | None:
        try:
            doc = json.loads((out_dir / "quality" / f"{label}.json").read_text())
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def gens(doc: Mapping[str, Any]) -> dict[str, Generation]:
        return {
            a["id"]: Generation(
                text=a["text"],
                tokens=tuple(a["tokens"]) if a.get("tokens") is not None else None,
                logprobs=tuple(a["logprobs"]) if a.get("logprobs") is not None else None,
                top_logprobs=(
                    tuple(a["top_logprobs"]) if a.get("top_logprobs") is not None else None
                ),
                finish_reason=a.get("finish_reason"),
            )
            for a in doc.get("answers", [])
        }

    ref_doc = read(config.baseline)
    out: dict[str, QualityVerdict] = {}
    for spec in config.servers:
        doc = read(spec.label)
        if spec.label == config.baseline:
            out[spec.label] = QualityVerdict(
                server=spec.label,
                reference=config.baseline,
                exact_match=None,
                top1_agreement=None,
                n_prompts=len(doc.get("answers", [])) if doc else 0,
                passed=None,
                note="the reference",
            )
            continue
        if doc is None or doc.get("status") != "complete":
            why = "not recorded" if doc is None else f"failed: {doc.get('reason')}"
            out[spec.label] = QualityVerdict(
                server=spec.label,
                reference=config.baseline,
                exact_match=None,
                top1_agreement=None,
                n_prompts=0,
                passed=False if doc is not None else None,
                note=f"answers {why}",
            )
            continue
        if ref_doc is None or ref_doc.get("status") != "complete":
            out[spec.label] = QualityVerdict(
                server=spec.label,
                reference=config.baseline,
                exact_match=None,
                top1_agreement=None,
                n_prompts=0,
                passed=None,
                note="the baseline's answers are missing: nothing to compare with",
            )
            continue
        a, b = gens(ref_doc), gens(doc)
        items = [agreement(pid, a[pid], b[pid]) for pid in a if pid in b]
        s = summarize_agreement(items) if items else None
        passed: bool | None = None
        fails = []
        if (
            s is not None
            and q.min_top1_agreement is not None
            and (s.top1_agreement is None or s.top1_agreement < q.min_top1_agreement)
        ):
            fails.append(f"top-1 agreement {s.top1_agreement} < {q.min_top1_agreement:g}")
        if s is not None and q.min_exact_match is not None and s.exact_match < q.min_exact_match:
            fails.append(f"exact match {s.exact_match:.3g} < {q.min_exact_match:g}")
        if s is not None and (q.min_top1_agreement is not None or q.min_exact_match is not None):
            passed = not fails
        out[spec.label] = QualityVerdict(
            server=spec.label,
            reference=config.baseline,
            exact_match=s.exact_match if s else None,
            top1_agreement=s.top1_agreement if s else None,
            n_prompts=s.n_prompts if s else 0,
            passed=passed,
            note="; ".join(fails) if fails else ("passes" if passed else "no threshold set"),
        )
    return out


def _point_result(
    config: ExperimentConfig, out_dir: Path, p: Point, quality: Mapping[str, QualityVerdict]
) -> tuple[PointResult, BenchResult | None]:
    doc = read_point(out_dir, p)
    stale = doc is not None and doc.get("fingerprint") != config.fingerprint(p)
    status = "missing" if doc is None or stale else str(doc.get("status"))
    if doc is not None and not stale and not is_finished(config, doc, p):
        status = "interrupted"
    res: BenchResult | None = None
    result_path = None
    if doc is not None and not stale and doc.get("result"):
        result_path = point_dir(out_dir, p) / str(doc["result"])
        try:
            res = load_result(result_path)
        except PerwattError:
            res = None
    energy = res["energy"] if res is not None else None
    metrics = res["metrics"] if res is not None else None
    latency = {k: (latency_value(res, k) if res is not None else None) for k in SLO_KEYS}
    violations = tuple(
        f"{k} {latency[k]:.4g} > {bound:g}" if latency[k] is not None else f"{k} not measured"
        for k, bound in config.slo.items()
        if latency[k] is None or latency[k] > bound  # type: ignore[operator]
    )
    gpus = (res["conditions"].get("gpus") or []) if res is not None else []
    limit = _fin(gpus[0].get("power_limit_w")) if gpus else None
    att = (doc or {}).get("attribution") or {}
    qv = quality.get(p.server.label)
    return (
        PointResult(
            id=p.id,
            server=p.server.label,
            label=p.run_label,
            setting=p.setting.tag,
            power_limit_w=p.setting.power_limit_w,
            sm_clock_mhz=p.setting.sm_clock_mhz,
            load_kind=p.load.kind,
            load_value=p.load.value,
            status=status,
            reason=(doc or {}).get("reason") if not stale else "the experiment file changed",
            log_tail=str((doc or {}).get("log_tail") or ""),
            result_path=result_path,
            energy_source=energy["source"] if energy else None,
            measured=bool(energy["measured"] and is_measured(energy["source"])) if energy else None,
            output_tokens_per_j=_fin(energy["output_tokens_per_j"]) if energy else None,
            j_per_output_token=_fin(energy["j_per_output_token"]) if energy else None,
            output_tokens_per_s=_fin(metrics["output_throughput_tok_s"]) if metrics else None,
            output_tokens_per_s_per_gpu=(
                _fin(energy["output_tokens_per_s_per_gpu"]) if energy else None
            ),
            avg_power_w=_fin(energy["avg_power_w"]) if energy else None,
            idle_power_w=_fin((doc or {}).get("idle_power_w")),
            gpu_power_limit_w=p.setting.power_limit_w if p.setting.power_limit_w else limit,
            latency_ms=latency,
            slo_violations=violations,
            quality_passed=qv.passed if qv else None,
            attribution_sum_j=_fin(att.get("sum_attributed_j")),
            attribution_total_j=_fin(att.get("total_energy_j")),
        ),
        res,
    )


def _with(p: PointResult, **kw: Any) -> PointResult:
    d = {k: getattr(p, k) for k in p.__slots__}
    d.update(kw)
    return PointResult(**d)


def _blocks(p: PointResult) -> Any:
    if p.result_path is None:
        return None
    try:
        doc = load_result(p.result_path)
        name = doc["requests_csv"]
        if not name:
            return None
        rows = load_requests_csv(p.result_path.parent / name)
    except PerwattError:
        return None
    return energy_blocks(doc, rows)


def jpt_ratio(a: PointResult, b: PointResult, *, seed: int = 0) -> RatioWithCI | None:
    """J/token of ``b`` over ``a`` with a 95 % interval (see the module docstring)."""
    if a.j_per_output_token is None or b.j_per_output_token is None or a.result_path is None:
        return None
    point = b.j_per_output_token / a.j_per_output_token
    same_level = (a.load_kind, a.load_value) == (b.load_kind, b.load_value)
    if same_level and a.label != b.label and b.result_path is not None:
        try:
            cmp = compare_results([a.result_path, b.result_path], seed=seed)
        except PerwattError as e:
            return RatioWithCI(
                a=a.id, b=b.id, ratio=point, ci_low=None, ci_high=None,
                verdict="no interval", method="compare", note=str(e),
            )  # fmt: skip
        for lv in cmp.levels:
            for m in lv.metrics:
                if m.key == "j_per_output_token" and m.ratios and m.ratios[0] is not None:
                    r = m.ratios[0]
                    return RatioWithCI(
                        a=a.id,
                        b=b.id,
                        ratio=r.ratio,
                        ci_low=r.ci.low if r.ci else None,
                        ci_high=r.ci.high if r.ci else None,
                        verdict=r.verdict,
                        method="perwatt compare: " + (r.ci.method if r.ci else "no interval"),
                        note=r.note,
                    )
    ba, bb = _blocks(a), _blocks(b)
    if ba is None or bb is None:
        return RatioWithCI(
            a=a.id, b=b.id, ratio=point, ci_low=None, ci_high=None, verdict="no interval",
            method="none", note="too few power samples or requests to cut into time blocks",
        )  # fmt: skip
    ci = bootstrap_ratio_of_sums_ci(ba.energy_j, ba.tokens, bb.energy_j, bb.tokens, seed=seed)
    if ci is None or not ci.ratio > 0:
        return RatioWithCI(
            a=a.id, b=b.id, ratio=point, ci_low=None, ci_high=None, verdict="no interval",
            method="none", note="no tokens in the energy blocks",
        )  # fmt: skip
    f = point / ci.ratio  # re-centred on the documents' figures, as compare does
    lo, hi = min(ci.low * f, point), max(ci.high * f, point)
    verdict = "within noise" if lo <= 1.0 <= hi else ("better" if hi < 1.0 else "worse")
    return RatioWithCI(
        a=a.id,
        b=b.id,
        ratio=point,
        ci_low=lo,
        ci_high=hi,
        verdict=verdict,
        method="block bootstrap of J/token (perwatt.bench.compare.energy_blocks), "
        "different load levels",
    )


# --------------------------------------------------------------------------- the analysis
def analyze(config: ExperimentConfig, out_dir: Path | None = None) -> ExperimentAnalysis:
    """Read every point of ``config`` from ``out_dir`` and answer the experiment's questions."""
    out = Path(out_dir) if out_dir is not None else config.out_dir
    quality = _quality(config, out)
    pts = [_point_result(config, out, p, quality)[0] for p in config.points()]
    warnings: list[str] = []
    usable = [p for p in pts if p.usable]
    frontiers: dict[str, tuple[str, ...]] = {}
    on_front: dict[str, list[str]] = {p.id: [] for p in pts}
    for key in FRONTIER_KEYS:
        cand = [p for p in usable if p.latency_ms.get(key) is not None]
        idx = pareto_indices(
            [(float(p.latency_ms[key]), float(p.output_tokens_per_j)) for p in cand]  # type: ignore[arg-type]
        )
        frontiers[key] = tuple(cand[i].id for i in idx)
        for i in idx:
            on_front[cand[i].id].append(key)
    pts = [_with(p, frontier=tuple(on_front[p.id])) for p in pts]
    usable = [p for p in pts if p.usable]
    sources = tuple(sorted({p.energy_source for p in usable if p.energy_source}))
    all_measured = bool(usable) and all(p.measured for p in usable)
    if usable and not all_measured:
        warnings.append(
            "energy is "
            + ", ".join(sources)
            + ": NOT a measurement; tokens/J, J/token and $ figures come from a model or an "
            "estimate and only compare these points with each other"
        )
    if len(sources) > 1:
        warnings.append(f"points use different energy sources ({', '.join(sources)})")
    failed_q = sorted({p.server for p in pts if p.quality_passed is False})
    if failed_q:
        warnings.append(f"failed the accuracy guard (never chosen as best): {', '.join(failed_q)}")
    eligible = sorted(
        (p for p in usable if p.meets_slo and p.quality_passed is not False),
        key=lambda p: -float(p.output_tokens_per_j or 0.0),
    )
    best = eligible[0] if eligible else None
    if usable and best is None:
        warnings.append("no point meets the SLO" + (" and the accuracy guard" if failed_q else ""))
    best_vs = runner = None
    savings = None
    if best is not None:
        if len(eligible) > 1:
            runner = jpt_ratio(best, eligible[1])
        # The baseline as it runs today: its GPU untouched at the best point's load, else (a
        # power-limit sweep has no untouched point) its highest limit with free clocks.
        same_load = [
            p
            for p in usable
            if p.server == config.baseline
            and p.sm_clock_mhz is None
            and (p.load_kind, p.load_value) == (best.load_kind, best.load_value)
        ]
        same_load.sort(key=lambda p: (p.power_limit_w is not None, -(p.power_limit_w or 0.0)))
        base = same_load[0] if same_load else None
        if base is not None and base.setting != "default":
            warnings.append(
                f"the baseline {config.baseline} ran only under set power limits: savings are "
                f"against its highest limit ({base.id})"
            )
        if base is None:
            base_pool = [p for p in eligible if p.server == config.baseline]
            base = base_pool[0] if base_pool else None
            if base is not None:
                warnings.append(
                    f"the baseline {config.baseline} has no default-setting point at "
                    f"{best.load_text}; savings are against its best point under the SLO "
                    f"({base.id})"
                )
            else:
                warnings.append(
                    f"the baseline {config.baseline} has no usable point: no savings figure"
                )
        if base is not None:
            if base.id != best.id:
                best_vs = jpt_ratio(base, best)
            savings = _savings(config, base, best)
    return ExperimentAnalysis(
        name=config.name,
        out_dir=out,
        points=tuple(pts),
        slo=dict(config.slo),
        baseline=config.baseline,
        frontiers=frontiers,
        best=best,
        best_vs_baseline=best_vs,
        runner_up=runner,
        savings=savings,
        quality=tuple(quality.values()),
        energy_sources=sources,
        all_measured=all_measured,
        warnings=tuple(warnings),
    )


def _savings(config: ExperimentConfig, base: PointResult, best: PointResult) -> Savings | None:
    e = config.economics
    jb, jx = base.j_per_output_token, best.j_per_output_token
    rate = best.output_tokens_per_s_per_gpu
    if jb is None or jx is None or rate is None:
        return None
    saved = jb - jx
    tokens_year = rate * e.site_gpus * e.utilization * SECONDS_PER_YEAR
    saved_j = saved * tokens_year
    return Savings(
        baseline_point=base.id,
        best_point=best.id,
        baseline_j_per_token=jb,
        best_j_per_token=jx,
        saved_j_per_token=saved,
        saved_pct=100.0 * saved / jb if jb > 0 else 0.0,
        site_gpus=e.site_gpus,
        utilization=e.utilization,
        output_tokens_per_year=tokens_year,
        saved_kwh_per_year=eco.facility_energy_j(saved_j, pue=e.pue) / eco.J_PER_KWH,
        saved_usd_per_year=eco.cost_usd(saved_j, price_per_kwh=e.price_per_kwh, pue=e.pue),
        price_per_kwh=e.price_per_kwh,
        pue=e.pue,
        energy_source=best.energy_source or "none",
        note=(
            "energy cost only: (baseline J/token - best J/token) x output tokens per year x PUE "
            "x price; output tokens per year = the best point's output tokens/s per GPU x "
            "site_gpus x utilization x 365.25 days"
        ),
    )


# --------------------------------------------------------------------------- calibration
def _phases(slices_path: Path) -> dict[str, dict[str, Any]] | None:
    try:
        s = json.loads(slices_path.read_text())
    except (OSError, ValueError):
        return None
    edges = np.asarray(s["edges_s"], dtype=np.float64)
    e = np.asarray(s["energy_j"], dtype=np.float64)
    pre = np.asarray(s["prefill_tokens"], dtype=np.float64)
    dec = np.asarray(s["decode_tokens"], dtype=np.float64)
    dur = np.diff(edges)
    out: dict[str, dict[str, Any]] = {}
    masks = {
        "prefill": pre > dec,
        "decode": (dec >= pre) & (dec > 0),
        "idle": (pre <= 0) & (dec <= 0),
    }
    for phase, m in masks.items():
        d = float(dur[m].sum())
        if d <= 0:
            continue
        toks = float(pre[m].sum()) if phase == "prefill" else float(dec[m].sum())
        out[phase] = {
            "duration_s": d,
            "power_w": float(e[m].sum()) / d,
            "tokens_per_s": toks / d,
            "token_kind": {"prefill": "prompt", "decode": "output", "idle": "none"}[phase],
        }
    return out


def calibration(config: ExperimentConfig, analysis: ExperimentAnalysis) -> dict[str, Any]:
    """Tokens/s and power against power limit, per configuration, load and phase."""
    curves: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for p in analysis.points:
        if not p.usable:
            continue
        pt = next(q for q in config.points() if q.id == p.id)
        phases = _phases(point_dir(analysis.out_dir, pt) / "slices.json") or {}
        curves.setdefault((p.server, p.load_text), []).append(
            {
                "power_limit_w": p.gpu_power_limit_w,
                "power_limit_set_by_experiment": p.power_limit_w is not None,
                "sm_clock_mhz": p.sm_clock_mhz,
                "output_tokens_per_s": p.output_tokens_per_s,
                "avg_power_w": p.avg_power_w,
                "idle_power_w": p.idle_power_w,
                "phases": phases,
                "point": p.id,
            }
        )
    return {
        "schema": CALIBRATION_SCHEMA,
        "experiment": config.name,
        "energy_sources": list(analysis.energy_sources),
        "measured": analysis.all_measured,
        "note": (
            "per phase: slices of each run's power timeline classed prefill (more prompt than "
            "output tokens in flight), decode or idle (nothing in flight); power_w = the slices' "
            "energy / duration (scaled to the run's measured total), tokens_per_s = prompt "
            "tokens/s (prefill) or output tokens/s (decode). power_limit_w is the limit in "
            "effect (null when the source could not read it)."
            + ("" if analysis.all_measured else " NOT measured: a model or an estimate.")
        ),
        "curves": [
            {
                "server": server,
                "load": load,
                "points": sorted(
                    pts, key=lambda d: (d["power_limit_w"] or 0.0, d["sm_clock_mhz"] or 0)
                ),
            }
            for (server, load), pts in curves.items()
        ],
    }
