from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from perwatt.errors import ConfigError
from perwatt.facility.curves import calibrate_from_bench, gpu_model


def test_compute_falls_with_the_cap_and_decode_stays_flat() -> None:
    m = gpu_model("H100-SXM")
    caps = np.array([300.0, 400.0, 500.0, 700.0])
    pre = m.curve("prefill").throughput(caps)
    dec = m.curve("decode").throughput(caps)
    assert np.all(np.diff(pre) > 0) and pre[-1] == 1.0
    assert dec[1] > pre[1]  # memory-bound decode loses less at 400 W
    # Perseus: at about half the max-clock power a compute stage keeps ~0.65 of its throughput
    half = m.curve("train").throughput(75 + 0.5 * (700 - 75))
    assert 0.7 < float(half) < 0.8


def test_power_is_capped() -> None:
    m = gpu_model("H100-SXM")
    assert float(m.curve("prefill").power(500.0)) == 500.0
    assert float(m.curve("decode").power(700.0)) == 600.0


def _bench(tmp_path: Path, limit: float, tps: float, power: float) -> Path:
    doc = {
        "conditions": {"gpus": [{"power_limit_w": limit}]},
        "metrics": {"output_throughput_tok_s": tps},
        "energy": {"avg_power_w": power},
    }
    p = tmp_path / f"r{int(limit)}.json"
    p.write_text(json.dumps(doc))
    return p


def test_calibration_from_bench_documents(tmp_path: Path) -> None:
    m = gpu_model("H100-SXM")
    # synthesise results from a known curve: gamma 0.3 from idle 75 W to 500 W natural
    paths = []
    for lim in (250.0, 350.0, 450.0, 700.0):
        rel = min(1.0, (lim - 75) / (500 - 75)) ** 0.3
        paths.append(_bench(tmp_path, lim, 1000 * rel, min(lim, 500.0)))
    cal = calibrate_from_bench(m, paths)
    c = cal.curve("decode")
    assert c.natural_w == 500.0
    assert c.gamma == pytest.approx(0.3, rel=1e-6)
    assert "perwatt bench result documents" in c.source


def test_calibration_needs_two_limits(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="two or more"):
        calibrate_from_bench(gpu_model("H100-SXM"), [_bench(tmp_path, 300, 1, 300)])
