"""Frontier, best under the SLO, savings, guard and calibration on recorded results."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from perwatt.bench.experiment import analyze, calibration, parse_experiment
from perwatt.bench.experiment.analysis import pareto_indices
from perwatt.bench.experiment.config import ExperimentConfig, Point
from perwatt.bench.experiment.store import POINT_SCHEMA, point_dir
from perwatt.bench.result import example_result, write_result

# (tokens per J, TPOT p90 ms, TTFT p90 ms) per server and load
FIGURES = {
    ("bf16", "c1"): (1.0, 20.0, 100.0),
    ("bf16", "c4"): (2.0, 40.0, 200.0),
    ("fp8", "c1"): (1.5, 22.0, 110.0),
    ("fp8", "c4"): (3.0, 45.0, 210.0),
    ("nvfp4", "c1"): (2.0, 21.0, 100.0),
    ("nvfp4", "c4"): (4.0, 44.0, 205.0),
}
N_REQ, TOK, DUR_S = 20, 50, 10.0


def _config(tmp_path: Path, slo: dict[str, float], *, guard: bool = True) -> ExperimentConfig:
    prompts = tmp_path / "guard.jsonl"
    prompts.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    doc: dict[str, Any] = {
        "experiment": {"out": str(tmp_path / "out"), "energy_source": "simulated"},
        "load": {"max_concurrency": [1, 4]},
        "slo": slo,
        "analysis": {"baseline": "bf16"},
        "economics": {"price_per_kwh": 0.1, "pue": 1.5, "site_gpus": 100, "utilization": 0.5},
        "server": [
            {"label": s, "url": f"http://127.0.0.1:{9000 + i}/v1"}
            for i, s in enumerate(("bf16", "fp8", "nvfp4"))
        ],
    }
    if guard:
        doc["quality"] = {"prompts": str(prompts), "min_exact_match": 0.9}
    return parse_experiment(doc, base_dir=tmp_path)


def _record(cfg: ExperimentConfig, p: Point, figures: tuple[float, float, float]) -> None:
    tpj, tpot90, ttft90 = figures
    out_tokens = N_REQ * TOK
    energy = out_tokens / tpj
    rng = np.random.default_rng(abs(hash(p.id)) % 2**32)
    t = np.linspace(0.0, DUR_S, 41)
    power = energy / DUR_S * (1 + 0.05 * rng.standard_normal(t.size))
    d = point_dir(cfg.out_dir, p)
    d.mkdir(parents=True)
    base = example_result()
    metrics = dict(base["metrics"])
    metrics["tpot_ms"] = {**metrics["tpot_ms"], "p50": tpot90 * 0.8, "p90": tpot90}
    metrics["ttft_ms"] = {**metrics["ttft_ms"], "p90": ttft90}
    metrics["total_output_tokens"] = out_tokens
    metrics["output_throughput_tok_s"] = out_tokens / DUR_S
    whole = {**base["energy"]["whole_run"], "total_energy_j": energy, "duration_s": DUR_S}
    e = {
        **base["energy"],
        "whole_run": whole,
        "j_per_output_token": energy / out_tokens,
        "output_tokens_per_j": tpj,
        "avg_power_w": energy / DUR_S,
        "output_tokens_per_s_per_gpu": out_tokens / DUR_S,
    }
    csv_name = f"{p.run_label}_{p.load.tag}.requests.csv"
    with (d / csv_name).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "start_s", "ttft_ms", "tpot_ms", "e2el_ms", "prompt_tokens",
                    "output_tokens", "itl_ms"])  # fmt: skip
        for i in range(N_REQ):
            start = i * (DUR_S - 1.0) / N_REQ
            w.writerow([i, start, ttft90, tpot90, 1000.0, 32, TOK, ""])
    doc = example_result(
        label=p.run_label,
        load={"kind": "concurrency", "value": float(p.load.value or 0)},
        metrics=metrics,
        energy=e,
        timeline={"t_s": t.tolist(), "power_w": power.tolist()},
        requests_csv=csv_name,
    )
    name = f"{p.run_label}_{p.load.tag}.json"
    write_result(d / name, doc)
    (d / "point.json").write_text(
        json.dumps(
            {
                "schema": POINT_SCHEMA,
                "id": p.id,
                "fingerprint": cfg.fingerprint(p),
                "status": "complete",
                "reason": None,
                "result": name,
                "log_tail": "",
                "idle_power_w": 55.0,
            }
        )
    )


def _answers(cfg: ExperimentConfig, label: str, texts: list[str]) -> None:
    q = cfg.out_dir / "quality"
    q.mkdir(parents=True, exist_ok=True)
    (q / f"{label}.json").write_text(
        json.dumps(
            {
                "status": "complete",
                "answers": [{"id": str(i), "text": t} for i, t in enumerate(texts)],
            }
        )
    )


def _record_all(cfg: ExperimentConfig) -> None:
    for p in cfg.points():
        _record(cfg, p, FIGURES[(p.server.label, p.load.tag)])
    _answers(cfg, "bf16", ["the cat sat", "on the mat"])
    _answers(cfg, "fp8", ["the cat sat", "on the mat"])
    _answers(cfg, "nvfp4", ["the cat sat", "under a hat"])


def test_pareto_indices() -> None:
    pts = [(20, 1.0), (40, 2.0), (22, 1.5), (45, 3.0), (21, 2.0), (44, 4.0), (21, 2.0)]
    assert pareto_indices(pts) == [0, 4, 5, 6]  # ties on both axes are all kept


def test_frontier_best_under_slo_savings_and_guard(tmp_path: Path) -> None:
    cfg = _config(tmp_path, {"tpot_p90_ms": 50.0})
    _record_all(cfg)
    a = analyze(cfg)
    assert a.frontiers["tpot_p90_ms"] == (
        "bf16/default/c1",
        "nvfp4/default/c1",
        "nvfp4/default/c4",
    )
    # nvfp4 has the most tokens/J but fails the accuracy guard: never chosen.
    guard = {q.server: q.passed for q in a.quality}
    assert guard == {"bf16": None, "fp8": True, "nvfp4": False}
    assert a.best is not None and a.best.id == "fp8/default/c4"
    assert any("failed the accuracy guard" in w for w in a.warnings)
    r = a.best_vs_baseline
    assert r is not None and r.a == "bf16/default/c4" and r.b == "fp8/default/c4"
    assert r.ratio == pytest.approx(2.0 / 3.0)
    assert r.ci_low is not None and r.ci_high is not None and r.ci_low < r.ratio < r.ci_high
    assert r.verdict == "better" and r.method.startswith("perwatt compare")
    s = a.savings
    assert s is not None
    assert s.saved_j_per_token == pytest.approx(0.5 - 1 / 3)
    assert s.saved_pct == pytest.approx(100 / 3)
    tokens_year = 100.0 * 100 * 0.5 * 365.25 * 86400  # 100 tok/s/GPU x 100 GPUs x 50 %
    assert s.output_tokens_per_year == pytest.approx(tokens_year)
    assert s.saved_usd_per_year == pytest.approx((0.5 - 1 / 3) * tokens_year * 1.5 / 3.6e6 * 0.1)
    assert not a.all_measured and any("NOT a measurement" in w for w in a.warnings)


def test_tighter_slo_changes_the_answer(tmp_path: Path) -> None:
    cfg = _config(tmp_path, {"tpot_p90_ms": 30.0})
    _record_all(cfg)
    a = analyze(cfg)
    assert a.best is not None and a.best.id == "fp8/default/c1"
    misses = {p.id: p.slo_violations for p in a.points if p.slo_violations}
    assert misses["bf16/default/c4"] == ("tpot_p90_ms 40 > 30",)
    assert a.runner_up is not None and a.runner_up.b == "bf16/default/c1"


def test_no_point_meets_the_slo(tmp_path: Path) -> None:
    cfg = _config(tmp_path, {"tpot_p90_ms": 10.0, "ttft_p99_ms": 1.0})
    _record_all(cfg)
    a = analyze(cfg)
    assert a.best is None and a.savings is None
    assert any("no point meets the SLO" in w for w in a.warnings)


def test_without_a_guard_the_most_efficient_wins(tmp_path: Path) -> None:
    cfg = _config(tmp_path, {"tpot_p90_ms": 50.0}, guard=False)
    _record_all(cfg)
    a = analyze(cfg)
    assert a.best is not None and a.best.id == "nvfp4/default/c4"


def test_missing_points_and_calibration(tmp_path: Path) -> None:
    cfg = _config(tmp_path, {"tpot_p90_ms": 50.0}, guard=False)
    for p in cfg.points()[:3]:
        _record(cfg, p, FIGURES[(p.server.label, p.load.tag)])
    a = analyze(cfg)
    assert a.missing == tuple(p.id for p in cfg.points()[3:])
    cal = calibration(cfg, a)
    assert cal["schema"] == "perwatt.experiment.calibration/1" and cal["measured"] is False
    assert [c["server"] for c in cal["curves"]] == ["bf16", "bf16", "fp8"]
    assert cal["curves"][0]["points"][0]["idle_power_w"] == 55.0


def test_baseline_of_a_power_limit_sweep_is_its_highest_limit(tmp_path: Path) -> None:
    doc: dict[str, Any] = {
        "experiment": {"out": str(tmp_path / "out"), "energy_source": "simulated"},
        "load": {"max_concurrency": [4]},
        "gpu": {"power_limits_w": [300, 700]},
        "slo": {"tpot_p90_ms": 50.0},
        "server": [
            {"label": "bf16", "url": "http://127.0.0.1:9000/v1"},
            {"label": "fp8", "url": "http://127.0.0.1:9001/v1"},
        ],
    }
    cfg = parse_experiment(doc, base_dir=tmp_path)
    figures = {
        "bf16/pl300W/c4": (2.5, 45.0, 200.0),
        "bf16/pl700W/c4": (2.0, 40.0, 200.0),
        "fp8/pl300W/c4": (3.5, 48.0, 200.0),
        "fp8/pl700W/c4": (3.0, 44.0, 200.0),
    }
    for p in cfg.points():
        _record(cfg, p, figures[p.id])
    a = analyze(cfg)
    assert a.best is not None and a.best.id == "fp8/pl300W/c4"
    assert a.savings is not None and a.savings.baseline_point == "bf16/pl700W/c4"
    assert any("against its highest limit (bf16/pl700W/c4)" in w for w in a.warnings)
