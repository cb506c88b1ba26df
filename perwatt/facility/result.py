"""Results of a site simulation: one :class:`PolicyResult` per policy, all figures simulated.

Every energy and power figure in these objects comes from the model (power tree, phase curves,
workload traces, cooling model), never from a meter: each block of the JSON form carries
``"source": "simulated"``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from perwatt.errors import ConfigError

SOURCE: Final = "simulated"
RESULT_SCHEMA: Final = "perwatt.facility-result/1"


@dataclass(frozen=True, slots=True, kw_only=True)
class LevelStress:
    """How long and how far one element ran above its capacity (breaker risk)."""

    element: str
    kind: str
    capacity_w: float
    firm_capacity_w: float  # what is left after one failure (2N, N+1): the reserve is the rest
    oversubscription: float | None  # children's capacity / own capacity (None for nodes)
    peak_w: float
    seconds_over: float
    max_excess_w: float
    excess_energy_j: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "element": self.element,
            "kind": self.kind,
            "capacity_w": self.capacity_w,
            "firm_capacity_w": self.firm_capacity_w,
            "reserve_w": self.capacity_w - self.firm_capacity_w,
            "oversubscription": self.oversubscription,
            "peak_w": self.peak_w,
            "seconds_over": self.seconds_over,
            "max_excess_w": self.max_excess_w,
            "excess_energy_j": self.excess_energy_j,
            "source": SOURCE,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class JobResult:
    """One job's outcome under a policy."""

    name: str
    kind: str
    gpus: int
    priority: int
    flex: float
    throughput: float  # served / demanded work (inference), progress / uncapped (training, batch)
    output_tokens: float = 0.0
    input_tokens: float = 0.0
    unserved_output_tokens: float = 0.0
    slo_violation_s: float = 0.0
    energy_j: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "gpus": self.gpus,
            "priority": self.priority,
            "flex": self.flex,
            "throughput": self.throughput,
            "output_tokens": self.output_tokens,
            "input_tokens": self.input_tokens,
            "unserved_output_tokens": self.unserved_output_tokens,
            "slo_violation_s": self.slo_violation_s,
            "energy_j": self.energy_j,
            "source": SOURCE,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyResult:
    """A whole simulation under one policy (see the module docstring)."""

    policy: str
    site: str
    workload: str
    gpus: int
    duration_s: float
    step_s: float
    control_interval_s: float
    it_energy_j: float
    conversion_loss_j: float
    cooling_energy_j: float
    facility_energy_j: float
    peak_facility_w: float
    mean_facility_w: float
    feed_capacity_w: float
    pue: float
    pue_annualized: float
    cooling: str
    weather: str
    price_per_kwh: float
    cost_usd: float
    output_tokens: float
    input_tokens: float
    unserved_output_tokens: float
    jobs: tuple[JobResult, ...]
    levels: tuple[LevelStress, ...]
    seconds_over_capacity: float = 0.0
    timeline: Mapping[str, Sequence[float]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    partial: str | None = None
    grid_targets: tuple[Mapping[str, Any], ...] = ()  # per grid load target: met or missed

    def __post_init__(self) -> None:
        for name in ("it_energy_j", "facility_energy_j", "duration_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"result {name} must be finite and >= 0, got {v}")

    @property
    def tokens_per_mwh(self) -> float | None:
        """Output tokens per MWh of facility energy (None without energy)."""
        if self.facility_energy_j <= 0:
            return None
        return self.output_tokens / (self.facility_energy_j / 3.6e9)

    def job(self, name: str) -> JobResult:
        for j in self.jobs:
            if j.name == name:
                return j
        raise ConfigError(f"no job {name!r} in this result")

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": RESULT_SCHEMA,
            "policy": self.policy,
            "site": self.site,
            "workload": self.workload,
            "gpus": self.gpus,
            "duration_s": self.duration_s,
            "step_s": self.step_s,
            "control_interval_s": self.control_interval_s,
            "partial": self.partial,
            "energy": {
                "source": SOURCE,
                "it_energy_j": self.it_energy_j,
                "conversion_loss_j": self.conversion_loss_j,
                "cooling_energy_j": self.cooling_energy_j,
                "facility_energy_j": self.facility_energy_j,
            },
            "power": {
                "source": SOURCE,
                "peak_facility_w": self.peak_facility_w,
                "mean_facility_w": self.mean_facility_w,
                "feed_capacity_w": self.feed_capacity_w,
            },
            "pue": {
                "source": SOURCE,
                "period_energy_weighted": self.pue,
                "annualized": self.pue_annualized,
                "cooling": self.cooling,
                "weather": self.weather,
                "definition": "ISO/IEC 30134-2: facility energy / IT energy, energy-weighted",
            },
            "cost": {
                "source": SOURCE,
                "price_per_kwh": self.price_per_kwh,
                "cost_usd": self.cost_usd,
                "note": "energy cost only, facility energy at one tariff",
            },
            "tokens": {
                "output_tokens": self.output_tokens,
                "input_tokens": self.input_tokens,
                "unserved_output_tokens": self.unserved_output_tokens,
                "output_tokens_per_mwh": self.tokens_per_mwh,
            },
            "jobs": [j.to_dict() for j in self.jobs],
            "seconds_any_level_over_capacity": self.seconds_over_capacity,
            "levels": [lv.to_dict() for lv in self.levels],
            "timeline": {"source": SOURCE, **{k: list(v) for k, v in self.timeline.items()}},
            "notes": list(self.notes),
            "grid_targets": [dict(g) for g in self.grid_targets],
        }


def write_results(path: str | Path, results: Sequence[PolicyResult]) -> Path:
    """Write one JSON document holding every policy's result."""
    p = Path(path)
    doc = {"schema": RESULT_SCHEMA, "source": SOURCE, "results": [r.to_dict() for r in results]}
    p.write_text(json.dumps(doc, indent=1, allow_nan=False, default=_nan_safe))
    return p


def _nan_safe(o: Any) -> Any:
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


__all__ = ["RESULT_SCHEMA", "SOURCE", "JobResult", "LevelStress", "PolicyResult", "write_results"]
