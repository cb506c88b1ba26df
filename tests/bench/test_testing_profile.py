"""The test server's simulated deployments (``--precision``): timing that depends on the prompt and
the batch, power that follows the load and is served to the meter, outputs that drift from BF16."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from perwatt.bench.compare import compare_results
from perwatt.bench.result import load_result
from perwatt.bench.runner import ServerBenchConfig, run_server_bench
from perwatt.bench.testing import (
    PROFILES,
    FakeOpenAIServer,
    ServerConfig,
    ServingProfile,
    _drift,
    main,
)
from perwatt.errors import ConfigError
from perwatt.meter import SimulatedSource, is_measured
from perwatt.meter.served import POWER_PATH


def _server(precision: str, **kw: Any) -> FakeOpenAIServer:
    prof = dataclasses.replace(PROFILES[precision], **kw)
    power = SimulatedSource(idle_w=prof.idle_w, busy_w=prof.busy_w)
    return FakeOpenAIServer(ServerConfig(profile=prof, power=power))


def test_profile_step_grows_with_batch_and_ttft_with_prompt() -> None:
    p = PROFILES["bf16"]
    assert p.step_time_s(16) > p.step_time_s(4) > p.step_time_s(1) == p.step_s
    assert p.ttft_time_s(2000, 1) > p.ttft_time_s(10, 1)
    assert p.ttft_time_s(10, 16) > p.ttft_time_s(10, 1)
    assert p.load(0) == 0.0 and p.load(1) == p.active_floor and p.load(10_000) == 1.0
    assert p.load(8) < p.load(16)


def test_fp8_is_faster_than_bf16_and_int4_only_at_small_batch() -> None:
    bf16, fp8, int4 = PROFILES["bf16"], PROFILES["fp8"], PROFILES["int4"]
    for n in (1, 4, 16, 64):
        assert fp8.step_time_s(n) < bf16.step_time_s(n)
    # Weight-only INT4 reads the fewest bytes but dequantizes per sequence: it wins small
    # batches and loses large ones, as on real GPUs.
    assert int4.step_time_s(1) < fp8.step_time_s(1)
    assert int4.step_time_s(64) > fp8.step_time_s(64)
    assert bf16.flip_rate == 0.0 < fp8.flip_rate < int4.flip_rate


def test_profile_rejects_nonsense() -> None:
    with pytest.raises(ConfigError):
        dataclasses.replace(PROFILES["bf16"], idle_w=900.0)
    with pytest.raises(ConfigError):
        dataclasses.replace(PROFILES["bf16"], step_s=-1.0)
    with pytest.raises(ConfigError):
        ServingProfile(
            precision="x",
            ttft_base_s=0,
            prefill_s_per_token=0,
            step_s=0,
            step_per_seq_s=0,
            idle_w=1,
            busy_w=2,
            active_floor=0.5,
            saturation=0,
            flip_rate=0,
        )


def test_drift_flips_about_the_rate_and_is_deterministic() -> None:
    words = ["w"] * 20_000
    out = _drift(words, 1234, 0.02)
    assert out == _drift(words, 1234, 0.02)
    share = sum(a != b for a, b in zip(words, out, strict=True)) / len(words)
    assert 0.015 < share < 0.025
    assert _drift(words, 1234, 0.0) == words


def _complete(url: str, prompt: str, max_tokens: int = 8) -> tuple[str, float]:
    t0 = time.perf_counter()
    r = httpx.post(
        url + "/completions",
        json={"model": "perwatt-test-model", "prompt": prompt, "max_tokens": max_tokens},
        timeout=10,
    )
    r.raise_for_status()
    return r.json()["choices"][0]["text"], time.perf_counter() - t0


def test_long_prompts_take_longer_and_fp8_answers_drift() -> None:
    # Prefill of 2 ms/token: a 200-word prompt costs 0.4 s more than a 1-word one.
    with (
        _server("fp8", prefill_s_per_token=0.002, step_s=0.0, flip_rate=0.3) as fp8,
        _server("bf16", step_s=0.0, ttft_base_s=0.0, prefill_s_per_token=0.0) as bf16,
    ):
        _complete(fp8.url, "warm up")  # the first request pays for imports and the connection
        _, short = _complete(fp8.url, "hello")
        _, long = _complete(fp8.url, " ".join(["word"] * 200))
        assert long - short > 0.25
        prompts = [f"prompt number {i}" for i in range(10)]
        a = [_complete(bf16.url, p, 16)[0] for p in prompts]
        b = [_complete(fp8.url, p, 16)[0] for p in prompts]
    assert a != b  # 30 % of the words flipped
    with FakeOpenAIServer(ServerConfig()) as plain:
        assert [_complete(plain.url, p, 16)[0] for p in prompts] == a  # bf16 = no drift


def test_power_endpoint_serves_the_model_labelled_simulated() -> None:
    with _server("bf16") as s:
        root = s.url.removesuffix("/v1")
        r = httpx.get(root + POWER_PATH, timeout=5).json()
        assert r["source"] == "simulated" and r["precision"] == "bf16"
        assert r["devices"]["sim0"]["power_w"] == pytest.approx(PROFILES["bf16"].idle_w)
    with FakeOpenAIServer(ServerConfig()) as s:  # no power model: no endpoint
        assert httpx.get(s.url.removesuffix("/v1") + POWER_PATH, timeout=5).status_code == 404


def _bench(url: str, tmp: Path, label: str, **kw: Any) -> list[Path]:
    base: dict[str, Any] = {
        "url": url,
        "num_prompts": 48,
        "max_concurrencies": (4,),
        "input_len": 32,
        "output_len": 16,
        "result_dir": tmp / label,
        "label": label,
        "energy_source": "simulated",
        "sample_interval_s": 0.05,
        "log": lambda msg: None,
    }
    base.update(kw)
    return run_server_bench(ServerBenchConfig(**base))


def test_bench_simulated_meters_the_servers_model_and_fp8_costs_less(tmp_path: Path) -> None:
    """The quick start's claim, small: fp8 vs bf16 shows in J/token with an interval."""
    with _server("bf16") as a, _server("fp8") as b:
        (pa,) = _bench(a.url, tmp_path, "bf16")
        (pb,) = _bench(b.url, tmp_path, "fp8")
    da, db = load_result(pa), load_result(pb)
    for d in (da, db):
        e = d["energy"]
        assert e is not None and e["source"] == "simulated" and not is_measured(e["source"])
        assert "power model of the perwatt test server" in str(
            d["conditions"].get("energy_source_detail")
        )
        assert len(d["timeline"]["t_s"]) >= 8
    ea, eb = da["energy"], db["energy"]
    assert ea is not None and eb is not None
    assert eb["j_per_output_token"] < 0.85 * ea["j_per_output_token"]
    cmp = compare_results([pa, pb], n_resamples=200)
    (level,) = cmp.levels
    jpt = next(m for m in level.metrics if m.key == "j_per_output_token")
    (ratio,) = jpt.ratios
    assert ratio is not None and ratio.ci is not None, ratio  # an interval, not "no interval"
    assert ratio.verdict == "better" and ratio.ci.high < 1.0


def test_cli_refuses_bad_input_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--itl-ms", "-1"])
    assert "--itl-ms must be in [0, 10000) ms" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--tokens-per-chunk", "0"])
    assert "tokens_per_chunk must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--precision", "fp4"])
