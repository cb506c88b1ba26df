"""Cooling power and PUE from IT power, cooling type and outdoor temperature.

PUE = total facility energy / IT equipment energy (ISO/IEC 30134-2:2016). The *annualized* PUE
that standard asks for is **energy-weighted** over a year — sum of facility energy over sum of IT
energy — never the mean of interval PUEs. perwatt computes PUE per simulation step from the
outdoor temperature, and reports the period's energy-weighted PUE and an annualized one over
every hour of the weather file at the simulation's mean IT power.

Facility power = utility-feed input (IT + conversion losses in the power tree) + cooling power.
Cooling power = IT power x overhead(T_outdoor). The two models (parameters are perwatt's
*assumptions*, chosen to land near the published figures below; pass your own):

* ``air``: CRAH fans and humidity control 0.18, misc/lighting 0.04, partial economizer below
  13 °C (0.12), chillers above it with COP 4.0 at 13 °C falling 0.1 per °C. Lands near the industry-average PUE of **1.54**
  (Uptime Institute Global Data Center Survey 2025) in a temperate climate once conversion
  losses are added.
* ``liquid``: direct-to-chip at 45 °C supply with dry coolers (no chillers while the outdoor air
  is below supply − 8 K approach = 37 °C): pumps 0.015, dry-cooler fans 0.01 rising 0.004 per °C
  above 25 °C, residual air cooling for the 15% of heat the cold plates miss (0.15 x 0.10), a
  trim chiller (COP 4) on the hottest hours. NREL's ESIF data centre, warm-water liquid cooled,
  reports an annualized PUE of **1.036** (NREL, "High-Performance Computing Data Center", ESIF
  fact sheet) — with little conversion loss; perwatt's preset UPS and PDUs add ≈ 7%.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from perwatt.errors import ConfigError, DataFormatError

F64 = npt.NDArray[np.float64]
COOLING_TYPES: Final = ("air", "liquid")
UPTIME_2025_AVERAGE_PUE: Final = 1.54
NREL_ESIF_PUE: Final = 1.036


@dataclass(frozen=True, slots=True, kw_only=True)
class CoolingModel:
    """Cooling overhead (cooling power / IT power) as a function of outdoor temperature."""

    kind: str = "liquid"

    def __post_init__(self) -> None:
        if self.kind not in COOLING_TYPES:
            raise ConfigError(f"cooling must be one of {', '.join(COOLING_TYPES)}")

    def overhead(self, temperature_c: F64 | float) -> F64:
        t = np.asarray(temperature_c, dtype=np.float64)
        if self.kind == "air":
            cop = np.maximum(4.0 - 0.1 * (t - 13.0), 2.0)
            chill = np.where(t < 13.0, 0.12, 1.0 / cop)
            out: F64 = 0.18 + 0.04 + chill
            return out
        fans = 0.01 + 0.004 * np.maximum(t - 25.0, 0.0)
        trim = np.where(t > 37.0, np.minimum((t - 37.0) / 10.0, 1.0) / 4.0, 0.0)
        out = 0.015 + fans + 0.15 * 0.10 + trim
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Weather:
    """Hourly outdoor temperature over one or more whole days."""

    temperature_c: F64
    source: str

    def __post_init__(self) -> None:
        if len(self.temperature_c) < 24:
            raise ConfigError(f"weather {self.source}: need at least 24 hours")

    def at(self, time_s: npt.ArrayLike, *, start_hour: float = 0.0) -> F64:
        """Temperature at simulation times (linear between hours, wrapping at the end)."""
        h = (np.asarray(time_s) / 3600.0 + start_hour) % len(self.temperature_c)
        t = self.temperature_c
        i = np.floor(h).astype(np.int64)
        f = h - i
        out: F64 = t[i] * (1 - f) + t[(i + 1) % len(t)] * f
        return out


def synthetic_weather(*, mean_c: float = 12.0, seed: int = 0) -> Weather:
    """A synthetic year (8,760 hours): seasonal ±10 °C, daily ±6 °C, noise. Not measured data."""
    rng = np.random.default_rng(seed)
    h = np.arange(8760, dtype=np.float64)
    seasonal = -10 * np.cos(2 * np.pi * (h / 24 - 15) / 365)
    daily = -6 * np.cos(2 * np.pi * (h % 24 - 3) / 24)
    t = mean_c + seasonal + daily + rng.normal(0, 1.5, len(h))
    return Weather(temperature_c=t, source=f"synthetic year (mean {mean_c:g} °C, seed {seed})")


def load_weather(path: str | Path) -> Weather:
    """Read ``hour,temperature_c`` rows (hour = 0, 1, 2, … with no hour missing)."""
    p = Path(path)
    temps: list[float] = []
    try:
        with p.open(newline="") as f:
            rows = (r for r in csv.reader(f) if r and not r[0].startswith("#"))
            header = next(rows, None)
            if header is None or [h.strip() for h in header] != ["hour", "temperature_c"]:
                raise DataFormatError(f"{p}: expected header hour,temperature_c, got {header}")
            for line, row in enumerate(rows, start=2):
                try:
                    hour, temp = int(row[0]), float(row[1])
                except (ValueError, IndexError):
                    raise DataFormatError(f"{p}:{line}: bad row {row}") from None
                if hour != len(temps):
                    raise DataFormatError(
                        f"{p}:{line}: hour {hour} where {len(temps)} was expected "
                        "(missing or unsorted hours)"
                    )
                if not math.isfinite(temp) or not -80 < temp < 70:
                    raise DataFormatError(f"{p}:{line}: implausible temperature {temp}")
                temps.append(temp)
    except OSError as e:
        raise ConfigError(f"{p}: cannot read weather file: {e.strerror}") from None
    if len(temps) < 24:
        raise DataFormatError(f"{p}: need at least 24 hours, got {len(temps)}")
    return Weather(temperature_c=np.asarray(temps), source=p.name)


def write_weather(path: str | Path, weather: Weather) -> Path:
    p = Path(path)
    with p.open("w", newline="") as f:
        f.write(f"# SYNTHETIC weather generated by perwatt: {weather.source}; not measured data\n")
        w = csv.writer(f)
        w.writerow(["hour", "temperature_c"])
        for i, t in enumerate(weather.temperature_c):
            w.writerow([i, f"{t:.1f}"])
    return p


def annualized_pue(
    cooling: CoolingModel, weather: Weather, *, it_power_w: float, loss_ratio: float
) -> float:
    """Energy-weighted PUE over every hour of the weather file at a constant IT power.

    ``loss_ratio`` = conversion losses / IT power (from the simulation). ISO/IEC 30134-2.
    """
    if it_power_w <= 0:
        return math.nan
    over = cooling.overhead(weather.temperature_c)
    facility = it_power_w * (1 + loss_ratio + over)
    return float(facility.sum() / (it_power_w * len(over)))


__all__ = [
    "COOLING_TYPES",
    "NREL_ESIF_PUE",
    "UPTIME_2025_AVERAGE_PUE",
    "CoolingModel",
    "Weather",
    "annualized_pue",
    "load_weather",
    "synthetic_weather",
    "write_weather",
]
