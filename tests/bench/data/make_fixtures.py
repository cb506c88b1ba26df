"""Regenerate the small result fixtures in this folder (deterministic; simulated energy).

    .venv/bin/python tests/bench/data/make_fixtures.py

A toy closed-loop server model, not a measurement: ``c`` workers send requests back to back; a
request's TTFT and per-token time grow with concurrency; GPU power rises with concurrency. The
"fp8" series uses 0.8x the per-token time and 0.9x the power of "bf16", so its J/token is lower by
a known factor (0.9 x 0.8 / 1.0 ~ 0.72 in steady state). Energy is labelled ``simulated``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from perwatt.bench.result import SCHEMA_VERSION, write_result

HERE = Path(__file__).parent
SAMPLE_HZ = 10.0


def _pct(values: list[float]) -> dict[str, float | None]:
    if not values:
        return dict.fromkeys(("mean", "median", "p50", "p90", "p95", "p99", "min", "max"))
    a = np.asarray(values)
    p50, p90, p95, p99 = (float(x) for x in np.percentile(a, [50, 90, 95, 99]))
    return {
        "mean": float(a.mean()),
        "median": p50,
        "p50": p50,
        "p90": p90,
        "p95": p95,
        "p99": p99,
        "min": float(a.min()),
        "max": float(a.max()),
    }


def make_run(
    *,
    label: str,
    precision: str,
    concurrency: int,
    num_prompts: int,
    time_scale: float,
    power_scale: float,
    seed: int,
    stop_after: int | None = None,
    power_limit_w: float = 700.0,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    c = concurrency
    tpot_s = 0.020 * (1 + 0.08 * c) * time_scale
    ttft_s = 0.060 * (1 + 0.25 * c) * time_scale
    rows: list[dict[str, Any]] = []
    worker_free = [0.0] * c
    n = num_prompts if stop_after is None else stop_after
    for i in range(n):
        w = int(np.argmin(worker_free))
        start = worker_free[w] + 0.002
        out_tokens = int(rng.integers(48, 81))
        ttft = ttft_s * float(rng.lognormal(0, 0.15))
        itls = list(tpot_s * rng.lognormal(0, 0.2, out_tokens - 1))
        e2el = ttft + sum(itls)
        worker_free[w] = start + e2el
        rows.append(
            {
                "index": i,
                "start_s": round(start, 6),
                "ttft_ms": round(ttft * 1e3, 4),
                "tpot_ms": round((e2el - ttft) / (out_tokens - 1) * 1e3, 4),
                "e2el_ms": round(e2el * 1e3, 4),
                "itl_ms": " ".join(f"{x * 1e3:.3f}" for x in itls),
                "prompt_tokens": 32,
                "output_tokens": out_tokens,
                "error_kind": "",
            }
        )
    end = max(worker_free)
    # Steady state: every worker busy (after the first c starts) until the first worker idles
    # for good (its last request ends).
    starts = sorted(r["start_s"] for r in rows)
    t0 = starts[min(c, len(starts)) - 1] + ttft_s
    last_end_per_worker = sorted(worker_free)
    t1 = last_end_per_worker[0]
    # Samples every 0.1 s plus one at the very end, so the timeline covers the whole run.
    t = np.append(np.arange(0.0, end - 1e-6, 1 / SAMPLE_HZ), end)
    busy = np.zeros_like(t)
    for r in rows:
        s, e = r["start_s"], r["start_s"] + r["e2el_ms"] / 1e3
        busy += (t >= s) & (t <= e)
    idle_w = 80.0
    power = idle_w + power_scale * 420.0 * (1 - np.exp(-busy / 3.0))
    power = power * rng.normal(1.0, 0.02, t.size)
    power = np.round(power, 2)

    def integ(a: float, b: float) -> float:
        grid = np.concatenate(([a], t[(t > a) & (t < b)], [b]))
        return float(np.trapezoid(np.interp(grid, t, power), grid))

    def tokens_in(a: float, b: float) -> float:
        tot = 0.0
        for r in rows:
            f = r["start_s"] + r["ttft_ms"] / 1e3
            e = r["start_s"] + r["e2el_ms"] / 1e3
            n_tok = r["output_tokens"]
            tot += 1.0 if a <= f < b else 0.0
            if e > f:
                tot += (n_tok - 1) * max(0.0, min(b, e) - max(a, f)) / (e - f)
        return tot

    e_whole = integ(0.0, end)
    e_ss = integ(t0, t1)
    tok_ss = tokens_in(t0, t1)
    total_out = sum(r["output_tokens"] for r in rows)

    def meas(name: str, a: float, b: float, e: float) -> dict[str, Any]:
        mask = (t >= a) & (t <= b)
        return {
            "name": name,
            "start_s": a,
            "end_s": b,
            "duration_s": b - a,
            "energy_j": {"sim0": e},
            "total_energy_j": e,
            "avg_power_w": e / (b - a),
            "peak_power_w": float(power[mask].max()),
            "source": "simulated",
            "sources": {"sim0": "simulated"},
            "measured": False,
            "idle_subtracted": False,
            "idle_power_w": None,
            "warnings": [],
        }

    jpt = e_ss / tok_ss
    price, pue = 0.0804, 1.0
    ttfts = [r["ttft_ms"] for r in rows]
    tpots = [r["tpot_ms"] for r in rows]
    e2els = [r["e2el_ms"] for r in rows]
    itls = [float(x) for r in rows for x in r["itl_ms"].split()]
    partial = stop_after is not None
    stem = f"{label}_c{concurrency}"
    doc: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "status": "partial" if partial else "complete",
        "partial_reason": "interrupted (Ctrl-C)" if partial else None,
        "label": label,
        "created_utc": "2026-11-24T10:00:00Z",
        "perwatt_version": "0.1.0",
        "config": {
            "engine": "server",
            "url": "http://127.0.0.1:8000/v1",
            "endpoint": "completions",
            "model": "toy-model",
            "precision": precision,
            "workload": {"kind": "synthetic", "input_len": 32, "output_len": 64},
            "num_prompts": num_prompts,
            "input_len": 32,
            "output_len": 64,
            "request_rate": None,
            "burstiness": 1.0,
            "max_concurrency": concurrency,
            "batch_size": None,
            "seed": 0,
            "goodput_slo_ms": None,
            "num_gpus": 1,
            "price_per_kwh": price,
            "pue": pue,
        },
        "load": {"kind": "concurrency", "value": float(concurrency)},
        "conditions": {
            "gpus": [
                {
                    "name": "Simulated GPU",
                    "uuid": "SIM-0",
                    "driver": "n/a",
                    "power_limit_w": power_limit_w,
                    "sm_clock_mhz": 1980.0,
                    "max_sm_clock_mhz": 1980.0,
                }
            ],
            "host": "fixture-host",
            "cpu": "fixture-cpu",
            "python": "3.12",
            "torch": None,
            "energy_source": "simulated",
            "date_utc": "2026-11-24T10:00:00Z",
        },
        "metrics": {
            "completed": len(rows),
            "failed": 0,
            "duration_s": end,
            "request_throughput_rps": len(rows) / end,
            "output_throughput_tok_s": total_out / end,
            "total_token_throughput_tok_s": (total_out + 32 * len(rows)) / end,
            "total_input_tokens": 32 * len(rows),
            "total_output_tokens": total_out,
            "token_count_source": "usage",
            "ttft_ms": _pct(ttfts),
            "tpot_ms": _pct(tpots),
            "itl_ms": _pct(itls),
            "e2el_ms": _pct(e2els),
            "goodput_rps": None,
            "errors": {},
        },
        "energy": {
            "source": "simulated",
            "measured": False,
            "idle_subtracted": False,
            "whole_run": meas("whole_run", 0.0, end, e_whole),
            "steady_state": meas("steady_state", t0, t1, e_ss),
            "steady_state_window_s": [t0, t1],
            "j_per_output_token": jpt,
            "output_tokens_per_j": 1 / jpt,
            "j_per_request": e_whole / len(rows),
            "avg_power_w": e_ss / (t1 - t0),
            "peak_power_w": float(power.max()),
            "idle_power_w": idle_w,
            "idle_share": idle_w * (t1 - t0) / e_ss,
            "output_tokens_per_s_per_gpu": tok_ss / (t1 - t0),
            "basis": "steady_state",
        },
        "economics": {
            "usd_per_million_output_tokens": jpt * pue / 3.6e6 * price * 1e6,
            "output_tokens_per_mwh": 3.6e9 / (jpt * pue),
            "price_per_kwh": price,
            "pue": pue,
            "note": "energy cost only; facility energy = GPU energy x PUE",
        },
        "accuracy": None,
        "timeline": {"t_s": [float(x) for x in t], "power_w": [float(p) for p in power]},
        "requests_csv": f"{stem}.requests.csv",
    }
    assert math.isfinite(jpt)
    return doc, rows


def write(doc: dict[str, Any], rows: list[dict[str, Any]], stem: str) -> None:
    write_result(HERE / f"{stem}.json", doc)
    doc["requests_csv"] = f"{stem}.requests.csv"
    with (HERE / f"{stem}.requests.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def main() -> None:
    specs = [
        ("bf16", "bf16", 1, 24, 1.0, 1.0, 11, None),
        ("bf16", "bf16", 4, 48, 1.0, 1.0, 12, None),
        ("fp8", "fp8", 1, 24, 0.8, 0.9, 21, None),
        ("fp8", "fp8", 4, 48, 0.8, 0.9, 22, None),
        ("fp8", "fp8", 8, 64, 0.8, 0.9, 23, None),
        ("fp8partial", "fp8", 4, 48, 0.8, 0.9, 32, 30),
    ]
    for label, prec, c, n, ts, ps, seed, stop in specs:
        doc, rows = make_run(
            label=label,
            precision=prec,
            concurrency=c,
            num_prompts=n,
            time_scale=ts,
            power_scale=ps,
            seed=seed,
            stop_after=stop,
        )
        write(doc, rows, f"{label}_c{c}")


if __name__ == "__main__":
    main()
