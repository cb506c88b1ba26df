"""Energy storage at the rack or the site: a battery (or supercapacitor bank) and its limits.

A store has an energy ``capacity_j``, a power limit given as a **C-rate** (1C empties it in one
hour: ``power_w = c_rate x capacity_j / 3600``), a **round-trip efficiency** split evenly
between charge and discharge (``sqrt(rte)`` each way, the usual assumption when only the round
trip is known), a state of charge ``soc`` in [0, 1] and the band ``[soc_min, soc_max]`` its own
controller keeps it in. :meth:`Storage.step` is the one place the physics lives; the flex
optimiser and the smoothing controller both call it, as a live controller would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from perwatt.errors import ConfigError

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True, kw_only=True)
class Storage:
    """One store's parameters (see the module docstring)."""

    capacity_j: float
    c_rate: float = 1.0
    round_trip_efficiency: float = 0.9
    soc: float = 0.5
    soc_min: float = 0.1
    soc_max: float = 0.9

    def __post_init__(self) -> None:
        if not (math.isfinite(self.capacity_j) and self.capacity_j >= 0):
            raise ConfigError(f"storage capacity_j must be >= 0, got {self.capacity_j!r}")
        if not (math.isfinite(self.c_rate) and self.c_rate > 0):
            raise ConfigError(f"storage c_rate must be > 0, got {self.c_rate!r}")
        if not 0 < self.round_trip_efficiency <= 1:
            raise ConfigError(
                f"storage round_trip_efficiency must be in (0, 1], got {self.round_trip_efficiency!r}"
            )
        if not 0 <= self.soc_min < self.soc_max <= 1:
            raise ConfigError("storage needs 0 <= soc_min < soc_max <= 1")
        if not self.soc_min <= self.soc <= self.soc_max:
            raise ConfigError(f"storage soc must be in [soc_min, soc_max], got {self.soc!r}")

    @property
    def power_w(self) -> float:
        """Largest charge or discharge power at the terminals."""
        return self.c_rate * self.capacity_j / 3600.0

    @property
    def one_way(self) -> float:
        return math.sqrt(self.round_trip_efficiency)

    def discharge_limit_w(self, soc: float, dt_s: float, horizon_s: float | None = None) -> float:
        """Most power it can give for ``dt_s`` (or spread evenly over ``horizon_s``)."""
        avail = max(0.0, soc - self.soc_min) * self.capacity_j * self.one_way
        t = max(dt_s, horizon_s or dt_s)
        return min(self.power_w, avail / t)

    def step(self, soc: F64 | float, grid_w: F64 | float, dt_s: float) -> tuple[F64, F64, F64]:
        """Apply a request: ``grid_w`` > 0 discharges into the site, < 0 charges.

        Returns ``(new_soc, delivered_w, loss_w)`` after clipping to the power limit and the SoC
        band (vectorized over stores).
        """
        s = np.asarray(soc, dtype=np.float64)
        req = np.clip(np.asarray(grid_w, dtype=np.float64), -self.power_w, self.power_w)
        if self.capacity_j <= 0:
            z = np.zeros_like(req)
            return s + z, z, z
        e = self.one_way
        room_out = np.maximum(s - self.soc_min, 0.0) * self.capacity_j * e / dt_s
        room_in = np.maximum(self.soc_max - s, 0.0) * self.capacity_j / e / dt_s
        out = np.where(req > 0, np.minimum(req, room_out), np.maximum(req, -room_in))
        internal = np.where(out > 0, out / e, out * e)  # energy leaving the cells, per second
        new = s - internal * dt_s / self.capacity_j
        loss = np.abs(internal - out)
        return new, out, loss

    def to_dict(self) -> dict[str, Any]:
        return {
            "capacity_j": self.capacity_j,
            "capacity_kwh": self.capacity_j / 3.6e6,
            "c_rate": self.c_rate,
            "power_w": self.power_w,
            "round_trip_efficiency": self.round_trip_efficiency,
            "soc": self.soc,
            "soc_min": self.soc_min,
            "soc_max": self.soc_max,
        }


def storage_from_dict(d: Any, where: str = "storage") -> Storage:
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be an object")
    known = set(Storage.__dataclass_fields__) | {"capacity_kwh"}
    extra = sorted(set(d) - known)
    if extra:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(extra)}")
    kw = dict(d)
    if "capacity_kwh" in kw:
        if "capacity_j" in kw:
            raise ConfigError(f"{where}: give capacity_kwh or capacity_j, not both")
        v = kw.pop("capacity_kwh")
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ConfigError(f"{where}: capacity_kwh must be a number")
        kw["capacity_j"] = float(v) * 3.6e6
    try:
        return Storage(**kw)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


__all__ = ["Storage", "storage_from_dict"]
