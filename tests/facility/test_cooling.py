from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from perwatt.errors import DataFormatError
from perwatt.facility.cooling import (
    NREL_ESIF_PUE,
    UPTIME_2025_AVERAGE_PUE,
    CoolingModel,
    annualized_pue,
    load_weather,
)

WEATHER = Path(__file__).parents[2] / "perwatt/facility/data/weather_synthetic.csv"


def test_liquid_beats_air_and_both_rise_with_heat() -> None:
    air, liq = CoolingModel(kind="air"), CoolingModel(kind="liquid")
    t = np.array([0.0, 20.0, 40.0])
    assert np.all(liq.overhead(t) < air.overhead(t))
    assert np.all(np.diff(air.overhead(t)) >= 0) and np.all(np.diff(liq.overhead(t)) >= 0)


def test_annualized_pue_lands_near_published_figures() -> None:
    w = load_weather(WEATHER)
    assert len(w.temperature_c) == 8760
    air = annualized_pue(CoolingModel(kind="air"), w, it_power_w=1e6, loss_ratio=0.07)
    liq = annualized_pue(CoolingModel(kind="liquid"), w, it_power_w=1e6, loss_ratio=0.0)
    assert abs(air - UPTIME_2025_AVERAGE_PUE) < 0.1
    assert abs(liq - NREL_ESIF_PUE) < 0.03


def test_annualized_is_energy_weighted_not_a_mean_of_ratios() -> None:
    w = load_weather(WEATHER)
    c = CoolingModel(kind="air")
    pue = annualized_pue(c, w, it_power_w=2e6, loss_ratio=0.05)
    assert pue == pytest.approx(1 + 0.05 + float(c.overhead(w.temperature_c).mean()))


def test_missing_hour_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "w.csv"
    p.write_text("hour,temperature_c\n0,10\n1,11\n3,12\n")
    with pytest.raises(DataFormatError, match=r"w\.csv:4: hour 3 where 2 was expected"):
        load_weather(p)
