from __future__ import annotations

import numpy as np
import pytest

from perwatt.bench.client import RequestRecord
from perwatt.bench.metrics import (
    economics_block,
    energy_block,
    parse_goodput,
    run_metrics,
    steady_state_window,
    summarize_ms,
    timeline_block,
    tokens_between,
)
from perwatt.errors import ConfigError
from perwatt.meter.meter import Measurement


def rec(
    i: int,
    start: float,
    ttft: float,
    itls: list[float],
    tokens: int,
    *,
    error: str | None = None,
    usage: bool = True,
) -> RequestRecord:
    e2el = ttft + sum(itls)
    r = RequestRecord(index=i, start_s=start, prompt_tokens=10)
    if error is not None:
        r.error_kind = error
        r.end_at_s = start + 0.01
        return r
    r.ttft_s = ttft
    r.itl_s = list(itls)
    r.e2el_s = e2el
    r.first_token_at_s = start + ttft
    r.end_at_s = start + e2el
    r.output_tokens = tokens
    r.output_tokens_chunks = len(itls) + 1
    r.output_tokens_usage = tokens if usage else None
    r.token_count_source = "usage" if usage else "chunks"
    return r


def test_summarize_matches_numpy() -> None:
    xs = [0.001 * i for i in range(1, 101)]
    s = summarize_ms(xs)
    a = np.asarray(xs) * 1e3
    assert s["p99"] == pytest.approx(float(np.percentile(a, 99)))
    assert s["p50"] == s["median"] == pytest.approx(50.5)
    assert s["min"] == pytest.approx(1.0) and s["max"] == pytest.approx(100.0)
    assert summarize_ms([])["p50"] is None


def test_run_metrics_definitions() -> None:
    recs = [
        rec(0, 0.0, 0.1, [0.02] * 9, 10),  # tpot = 0.18/9 = 0.02
        rec(1, 0.0, 0.3, [0.05] * 4, 5),  # tpot = 0.2/4 = 0.05
        rec(2, 0.0, 0.2, [], 1),  # 1 token: no TPOT
        rec(3, 0.0, 0, [], 0, error="http_500"),
        rec(4, 0.0, 0, [], 0, error="http_500"),
        rec(5, 0.0, 0, [], 0, error="timeout"),
    ]
    m = run_metrics(recs, duration_s=2.0, slo={"ttft": 250.0, "tpot": 30.0}, client_cpu_s=0.5)
    assert m["completed"] == 3 and m["failed"] == 3
    assert m["errors"] == {"http_500": 2, "timeout": 1}
    assert m["total_output_tokens"] == 16
    assert m["total_input_tokens"] == 30
    assert m["request_throughput_rps"] == pytest.approx(1.5)
    assert m["output_throughput_tok_s"] == pytest.approx(8.0)
    assert m["total_token_throughput_tok_s"] == pytest.approx(23.0)
    assert m["tpot_ms"]["min"] == pytest.approx(20.0) and m["tpot_ms"]["max"] == pytest.approx(50.0)
    assert m["itl_ms"]["mean"] == pytest.approx((9 * 20 + 4 * 50) / 13)
    assert m["ttft_ms"]["max"] == pytest.approx(300.0)
    # Goodput: request 0 (ttft 100, tpot 20) and request 2 (ttft 200, 1 token) meet the SLO.
    assert m["goodput_rps"] == pytest.approx(1.0)
    assert m["token_count_source"] == "usage"
    assert m["client_cpu_util"] == pytest.approx(0.25)  # type: ignore[typeddict-item]


def test_token_count_source_is_the_weaker() -> None:
    recs = [rec(0, 0, 0.1, [0.1], 2), rec(1, 0, 0.1, [0.1], 2, usage=False)]
    m = run_metrics(recs, duration_s=1.0)
    assert m["token_count_source"] == "chunks"
    assert m["token_count_sources"] == {"usage": 1, "chunks": 1}  # type: ignore[typeddict-item]


def test_parse_goodput() -> None:
    assert parse_goodput(["ttft:200", "tpot:50"]) == {"ttft": 200.0, "tpot": 50.0}
    assert parse_goodput(["e2el:1000,ttft:5"]) == {"e2el": 1000.0, "ttft": 5.0}
    assert parse_goodput(None) is None
    assert parse_goodput(["ttft:200", "ttft:200"]) == {"ttft": 200.0}
    with pytest.raises(ConfigError, match="sets ttft twice"):
        parse_goodput(["ttft:100", "ttft:200"])
    for bad in (["ttft"], ["latency:5"], ["ttft:abc"], ["tpot:-1"], ["tpot:nan"]):
        with pytest.raises(ConfigError, match="goodput"):
            parse_goodput(bad)


def test_steady_state_window_closed_loop() -> None:
    # Concurrency 2: r0, r1 start at 0 (first tokens at 0.5 and 0.7), r2 starts when r0 ends
    # at 1.0, r3 when r1 ends at 1.5; the drain begins at the last send (1.5).
    recs = [
        rec(0, 0.0, 0.5, [0.25, 0.25], 3),
        rec(1, 0.0, 0.7, [0.4, 0.4], 3),
        rec(2, 1.0, 0.2, [0.4, 0.4], 3),
        rec(3, 1.5, 0.2, [0.4, 0.4], 3),
    ]
    assert steady_state_window(recs, target=2) == (0.7, 1.5)
    assert steady_state_window(recs, target=3) is None  # never saturated
    # Rate mode: from the first completion (1.0) to the last send (1.5).
    assert steady_state_window(recs, target=None) == (1.0, 1.5)


def test_tokens_between() -> None:
    r = rec(0, 0.0, 1.0, [1.0, 1.0, 1.0], 8)  # 4 chunks at t=1,2,3,4; 8 tokens (2 per chunk)
    assert tokens_between([r], 0.0, 10.0) == pytest.approx(8.0)
    assert tokens_between([r], 1.5, 3.5) == pytest.approx(4.0)
    assert tokens_between([r], 5.0, 6.0) == 0.0
    bad = rec(1, 0.0, 0, [], 0, error="timeout")
    assert tokens_between([bad], 0.0, 10.0) == 0.0


def meas(name: str, energy: float, duration: float, **kw: object) -> Measurement:
    return Measurement(
        name=name,
        start_s=0.0,
        end_s=duration,
        duration_s=duration,
        energy_j={"gpu0": energy},
        total_energy_j=energy,
        avg_power_w=energy / duration,
        peak_power_w=energy / duration * 1.2,
        sources={"gpu0": "nvml-counter"},
        idle_subtracted=False,
        **kw,  # type: ignore[arg-type]
    )


def test_energy_block_steady_basis_and_economics() -> None:
    whole = meas("whole", 1000.0, 10.0, idle_power_w={"gpu0": 20.0})
    steady = meas("steady", 600.0, 6.0, idle_power_w={"gpu0": 20.0})
    e = energy_block(
        whole=whole,
        steady=steady,
        window_rel_s=(2.0, 8.0),
        output_tokens=1000,
        steady_tokens=700.0,
        completed=10,
        num_gpus=2,
    )
    assert e["basis"] == "steady_state"
    assert e["j_per_output_token"] == pytest.approx(600 / 700)
    assert e["output_tokens_per_j"] == pytest.approx(700 / 600)
    assert e["j_per_request"] == pytest.approx(600 / 700 * 100)
    assert e["output_tokens_per_s_per_gpu"] == pytest.approx(700 / 6 / 2)
    assert e["idle_power_w"] == 20.0
    assert e["idle_share"] == pytest.approx(20 * 6 / 600)
    assert e["measured"] is True and e["source"] == "nvml-counter"
    econ = economics_block(e, price_per_kwh=0.10, pue=1.5)
    assert econ["usd_per_million_output_tokens"] == pytest.approx(
        600 * 1.5 / 3.6e6 * 0.10 / 700 * 1e6
    )
    assert econ["output_tokens_per_mwh"] == pytest.approx(700 / (600 * 1.5 / 3.6e9))


def test_energy_block_falls_back_to_whole_run() -> None:
    whole = meas("whole", 1000.0, 10.0)
    short = meas("steady", 50.0, 0.5)
    e = energy_block(
        whole=whole,
        steady=short,
        window_rel_s=(1.0, 1.5),
        output_tokens=500,
        steady_tokens=20.0,
        completed=5,
        num_gpus=1,
    )
    assert e["basis"] == "whole_run"
    assert e["j_per_output_token"] == pytest.approx(2.0)
    assert any("shorter than" in n for n in e["notes"])  # type: ignore[typeddict-item]
    none = energy_block(
        whole=whole,
        steady=None,
        window_rel_s=None,
        output_tokens=0,
        steady_tokens=None,
        completed=0,
        num_gpus=1,
    )
    assert none["j_per_output_token"] is None and none["j_per_request"] is None
    econ = economics_block(none, price_per_kwh=0.1, pue=1.0)
    assert econ["usd_per_million_output_tokens"] is None


def test_timeline_block() -> None:
    samples = [(float(t), {"a": 1.0, "b": float(t)}) for t in range(100)]
    tl = timeline_block(samples, 10.0, 19.0)
    assert tl["t_s"][0] == 0.0 and len(tl["t_s"]) == 10
    assert tl["power_w"][0] == 11.0
    assert len(timeline_block(samples, 0, 100, max_points=10)["t_s"]) == 10
