from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from perwatt.errors import ConfigError, DataFormatError
from perwatt.facility.smoothing import (
    GPUSmoothing,
    GridLimits,
    Mitigation,
    SmoothingProfile,
    StorageControl,
    gpu_smooth,
    grid_figures,
    mitigate,
    smallest_storage,
)
from perwatt.facility.smoothrun import load_smooth_scenario, run_smooth
from perwatt.facility.storage import Storage
from perwatt.facility.waveform import parametric_period, tile

DATA = Path(__file__).parents[2] / "perwatt/facility/data"


def _square(n: int = 6000, dt: float = 0.01) -> np.ndarray:
    return tile(
        parametric_period(dt=dt, period_s=2.0, compute_fraction=0.7, high_w=1000.0, low_w=200.0), n
    )[0]


def test_figures_of_a_known_sine() -> None:
    t = np.arange(0, 100, 0.01)
    p = 100e6 + 5e6 * np.sin(2 * np.pi * 1.0 * t)
    g = grid_figures(p, 0.01, GridLimits(dynamic_range_mw=9.0))
    assert g["band_rms_mw"] == pytest.approx(5 / math.sqrt(2), rel=1e-6)
    assert g["band_fraction"] == pytest.approx(1.0)
    assert g["dominant_hz"] == pytest.approx(1.0)
    assert g["dynamic_range_mw"] == pytest.approx(10.0, rel=1e-3)
    assert g["meets_limits"] is False  # 10 MW > 9 MW
    # a 0.01 Hz swing is outside the default 0.1-20 Hz band
    slow = 100e6 + 5e6 * np.sin(2 * np.pi * 0.01 * t)
    assert grid_figures(slow, 0.01)["band_fraction"] < 0.01


def test_nvml_profile_floor_ramps_and_hysteresis() -> None:
    d = _square()
    prof = SmoothingProfile(
        percent_tmp_floor=50,
        ramp_up_rate_w_s=2000,
        ramp_down_rate_w_s=500,
        ramp_down_hysteresis_ms=200,
    )
    out = gpu_smooth(d, 0.01, prof, tmp_w=1000.0)
    assert out.min() >= 500.0 - 1e-9  # floor = 50% of TMP
    assert np.abs(np.diff(out)).max() <= 2000 * 0.01 + 1e-9
    down = -np.diff(out)
    assert down.max() <= 500 * 0.01 + 1e-9
    # nothing falls within the hysteresis after the compute phase ends (1.4 s into the period)
    i = round(1.4 / 0.01)
    assert np.all(out[i : i + 19] == out[i - 1])
    assert SmoothingProfile(secondary_floor_w=600, percent_tmp_floor=10).floor_w(1000.0) == 600


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"percent_tmp_floor": 120}, "percent_tmp_floor"),
        ({"ramp_up_rate_w_s": -1}, "ramp_up_rate_w_s"),
        ({"ramp_down_rate_w_s": 0}, "ramp_down_rate_w_s"),
        ({"ramp_down_hysteresis_ms": -5}, "hysteresis"),
        ({"profile_id": 5}, "profile_id"),
    ],
)
def test_profile_rejects_what_hardware_cannot(kw: dict[str, float], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        SmoothingProfile(**kw)  # type: ignore[arg-type]


def test_at_most_five_profiles() -> None:
    with pytest.raises(ConfigError, match="at most 5"):
        GPUSmoothing(profiles=tuple(SmoothingProfile(profile_id=i % 5) for i in range(6)))


def test_storage_limits_and_energy_balance() -> None:
    with pytest.raises(ConfigError, match="round_trip_efficiency"):
        Storage(capacity_j=1.0, round_trip_efficiency=1.1)
    with pytest.raises(ConfigError, match="capacity_j"):
        Storage(capacity_j=-1.0)
    st = Storage(capacity_j=3.6e6, c_rate=2.0, round_trip_efficiency=0.81, soc=0.5)
    soc, out, loss = st.step(0.5, 1e9, 1.0)  # asks far above the 2 kW limit
    assert float(out) == pytest.approx(2000.0)
    assert float(soc) == pytest.approx(0.5 - 2000 / 0.9 / 3.6e6)
    assert float(loss) == pytest.approx(2000 / 0.9 - 2000)


def test_storage_flattens_and_costs_losses() -> None:
    d = _square()
    st = Storage(capacity_j=3.6e6, c_rate=1000.0, round_trip_efficiency=0.9)
    r = mitigate(
        d,
        1000.0,
        0.01,
        Mitigation(name="s", storage=st, control=StorageControl(smoothing_s=10)),
        tmp_w=1000.0,
    )
    n = mitigate(d, 1000.0, 0.01, Mitigation(), tmp_w=1000.0)
    assert r.figures["band_rms_mw"] < 0.2 * n.figures["band_rms_mw"]
    assert r.storage_loss_j > 0 and r.storage_cycled_j > 0
    assert r.figures["peak_mw"] < n.figures["peak_mw"]


def test_smallest_storage_meets_and_a_smaller_one_does_not() -> None:
    d = _square(3000)
    lim = GridLimits(band_rms_mw=0.05)
    tmpl = Mitigation(
        name="s",
        storage=Storage(capacity_j=1.0, c_rate=1000.0),
        control=StorageControl(smoothing_s=5),
    )
    cap = smallest_storage(d, 1000.0, 0.01, tmpl, lim, tmp_w=1000.0)
    assert cap is not None and cap > 0

    def meets(c: float) -> bool:
        m = Mitigation(
            name="s",
            storage=Storage(capacity_j=c, c_rate=1000.0),
            control=StorageControl(smoothing_s=5),
        )
        return bool(mitigate(d, 1000.0, 0.01, m, tmp_w=1000.0, limits=lim).figures["meets_limits"])

    assert meets(cap) and not meets(0.9 * cap)


def test_shipped_perseus_scenario_recommended_combination_meets() -> None:
    sc = load_smooth_scenario(DATA / "smooth_perseus.json")
    r = run_smooth(sc, size_storage=False)
    by = {o.mitigation: o for o in r.outcomes}
    assert by["none"].figures["meets_limits"] is False
    assert by["gpu smoothing + rack storage"].figures["meets_limits"] is True
    assert by["gpu smoothing"].wasted_floor_j > 0 and by["filler"].wasted_filler_j > 0
    assert "perseus" in r.waveform
    doc = r.to_dict()
    assert doc["source"] == "simulated" and doc["mitigations"][0]["cost"]["source"] == "simulated"


def test_bad_scenario(tmp_path: Path) -> None:
    import json

    doc = json.loads((DATA / "smooth_parametric.json").read_text())
    doc["mitigations"][1]["gpu_smoothing"]["profiles"][0]["percent_tmp_floor"] = 150
    p = tmp_path / "s.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(
        DataFormatError, match=r"mitigations\[1\]\.gpu_smoothing\.profiles\[0\].*percent_tmp_floor"
    ):
        load_smooth_scenario(p)
