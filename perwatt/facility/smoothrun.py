"""A smoothing scenario: one training waveform, several mitigations, what the grid sees of each.

Scenario JSON (``"schema": "perwatt.smooth-scenario/1"``)::

    {"name": …, "gpus": 100000, "sku": "GB300", "other_w_per_gpu": 300,
     "dt_s": 0.01, "duration_s": 600,
     "waveform": {"kind": "perseus" | "parametric", …},        (see perwatt.facility.waveform)
     "limits": {"ramp_mw_per_s": …, "ramp_mw_per_min": …, "dynamic_range_mw": …,
                "band_fraction": …, "band_hz": [0.1, 20]},     (user inputs: no defaults)
     "mitigations": [{"name": "none"},
                     {"name": "gpu", "gpu_smoothing": {"enabled": true, "active": 0,
                       "profiles": [{"profile_id": 0, "percent_tmp_floor": 60, …}]}},
                     {"name": "filler", "filler_w": 700},
                     {"name": "rack storage", "storage": {"capacity_kwh": …, "c_rate": …},
                      "storage_control": {"smoothing_s": 30}}],
     "size_storage_for": "gpu + rack storage",
     "published": {…}}

Every figure in the result is simulated.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from perwatt.errors import ConfigError, DataFormatError
from perwatt.facility.curves import gpu_model
from perwatt.facility.smoothing import (
    GridLimits,
    Mitigation,
    SmoothOutcome,
    StorageControl,
    mitigate,
    profiles_from,
    smallest_storage,
    spectrum,
)
from perwatt.facility.storage import storage_from_dict
from perwatt.facility.waveform import waveform_from

F64 = npt.NDArray[np.float64]
SCHEMA: Final = "perwatt.smooth-scenario/1"
RESULT_SCHEMA: Final = "perwatt.smooth-result/1"
_KEYS: Final = {
    "schema",
    "name",
    "note",
    "source",
    "gpus",
    "sku",
    "other_w_per_gpu",
    "dt_s",
    "duration_s",
    "waveform",
    "limits",
    "mitigations",
    "size_storage_for",
    "published",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class SmoothScenario:
    name: str
    gpus: int
    sku: str
    other_w_per_gpu: float
    dt_s: float
    duration_s: float
    waveform: Mapping[str, Any]
    limits: GridLimits
    mitigations: tuple[Mitigation, ...]
    size_storage_for: str | None = None
    published: Mapping[str, Any] | None = None
    base_dir: Path = Path(".")
    source: str = "<python>"
    note: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.gpus, bool) or not isinstance(self.gpus, int) or self.gpus < 1:
            raise ConfigError("gpus must be an integer >= 1")
        if not (math.isfinite(self.dt_s) and self.dt_s > 0):
            raise ConfigError("dt_s must be > 0")
        if not (math.isfinite(self.duration_s) and self.duration_s >= 10 * self.dt_s):
            raise ConfigError("duration_s must be at least 10 steps")
        if not (math.isfinite(self.other_w_per_gpu) and self.other_w_per_gpu >= 0):
            raise ConfigError("other_w_per_gpu must be >= 0")
        names = [m.name for m in self.mitigations]
        if len(set(names)) != len(names) or not names:
            raise ConfigError("mitigations need unique names")
        if self.size_storage_for is not None:
            m = next((x for x in self.mitigations if x.name == self.size_storage_for), None)
            if m is None or m.storage is None:
                raise ConfigError("size_storage_for must name a mitigation with storage")


def _field(d: Mapping[str, Any], k: str, default: Any = None) -> Any:
    return d.get(k, default)


def _mitigation(d: Any, i: int) -> Mitigation:
    where = f"mitigations[{i}]"
    if not isinstance(d, Mapping) or not isinstance(d.get("name"), str):
        raise ConfigError(f"{where} must be an object with a name")
    extra = sorted(set(d) - {"name", "gpu_smoothing", "filler_w", "storage", "storage_control"})
    if extra:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(extra)}")
    gs = (
        profiles_from(d["gpu_smoothing"], f"{where}.gpu_smoothing")
        if "gpu_smoothing" in d
        else None
    )
    st = storage_from_dict(d["storage"], f"{where}.storage") if "storage" in d else None
    sc = d.get("storage_control", {})
    try:
        ctl = StorageControl(**sc)
        kw: dict[str, Any] = {"name": d["name"], "storage": st, "control": ctl}
        if gs is not None:
            kw["gpu"] = gs
        if "filler_w" in d:
            kw["filler_w"] = float(d["filler_w"])
        return Mitigation(**kw)
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from None


def load_smooth_scenario(path: str | Path) -> SmoothScenario:
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such scenario file") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataFormatError(f"{p}: cannot read scenario: {e}") from None
    try:
        if not isinstance(doc, Mapping) or doc.get("schema") != SCHEMA:
            raise ConfigError(f'expected a JSON object with "schema": "{SCHEMA}"')
        extra = sorted(set(doc) - _KEYS)
        if extra:
            raise ConfigError(f"unknown field(s) {', '.join(extra)}")
        lim = doc.get("limits", {})
        if not isinstance(lim, Mapping):
            raise ConfigError("limits must be an object")
        lk = dict(lim)
        if "band_hz" in lk:
            lk["band_hz"] = tuple(lk["band_hz"])
        try:
            limits = GridLimits(**lk)
        except TypeError as e:
            raise ConfigError(f"limits: {e}") from None
        mits = tuple(_mitigation(m, i) for i, m in enumerate(doc.get("mitigations", [])))
        wf = doc.get("waveform")
        if not isinstance(wf, Mapping):
            raise ConfigError("waveform must be an object")
        return SmoothScenario(
            name=str(doc.get("name", p.stem)),
            gpus=doc.get("gpus", 0),
            sku=str(doc.get("sku", "GB300")),
            other_w_per_gpu=float(doc.get("other_w_per_gpu", 0.0)),
            dt_s=float(doc.get("dt_s", 0.01)),
            duration_s=float(doc.get("duration_s", 600.0)),
            waveform=wf,
            limits=limits,
            mitigations=mits,
            size_storage_for=doc.get("size_storage_for"),
            published=doc.get("published"),
            base_dir=p.parent,
            source=str(p),
            note=str(doc.get("note", "")),
        )
    except ConfigError as e:
        msg = str(e)
        raise DataFormatError(msg if msg.startswith(str(p)) else f"{p}: {msg}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class SmoothResult:
    scenario: SmoothScenario
    waveform: str
    dt_s: float
    baseline_w: F64
    outcomes: tuple[SmoothOutcome, ...]
    smallest_storage_j: float | None
    smallest_storage_for: str | None

    def to_dict(self, points: int = 3000) -> dict[str, Any]:
        base_peak = float(self.baseline_w.max())
        sc = self.scenario
        k = max(1, math.ceil(len(self.baseline_w) / points))
        m = len(self.baseline_w) // k

        def ds(a: F64) -> list[float]:
            return [float(x) for x in a[: m * k].reshape(m, k).mean(axis=1)]

        # the first 60 s at full resolution show the per-iteration swing
        zoom = min(len(self.baseline_w), round(60.0 / self.dt_s))
        zk = max(1, math.ceil(zoom / 3000))
        f, s = spectrum(self.baseline_w, self.dt_s)
        spec = {"frequency_hz": [], "baseline": []}  # type: dict[str, list[float]]
        sel = np.unique(np.geomspace(1, max(2, len(f) - 1), 400).astype(int))
        spec["frequency_hz"] = [float(x) for x in f[sel]]
        spec["baseline"] = [float(x) for x in s[sel]]
        for o in self.outcomes:
            spec[o.mitigation] = [float(x) for x in spectrum(o.grid_w, self.dt_s)[1][sel]]
        return {
            "schema": RESULT_SCHEMA,
            "scenario": sc.name,
            "source": "simulated",
            "gpus": sc.gpus,
            "sku": sc.sku,
            "waveform": self.waveform,
            "dt_s": self.dt_s,
            "duration_s": sc.duration_s,
            "limits_from": "user (scenario file); perwatt ships no grid limits",
            "mitigations": [o.to_dict(base_peak) for o in self.outcomes],
            "smallest_storage": {
                "for": self.smallest_storage_for,
                "capacity_j": self.smallest_storage_j,
                "capacity_kwh": None
                if self.smallest_storage_j is None
                else self.smallest_storage_j / 3.6e6,
                "source": "simulated",
                "note": "None: no capacity up to one hour of mean site power meets the limits",
            },
            "published": dict(sc.published or {}),
            "timeline": {
                "source": "simulated",
                "time_s": [float(i * k * self.dt_s) for i in range(m)],
                "baseline_w": ds(self.baseline_w),
                **{o.mitigation + "_w": ds(o.grid_w) for o in self.outcomes},
                **{o.mitigation + "_soc": ds(o.soc) for o in self.outcomes if o.soc.any()},
            },
            "zoom": {
                "source": "simulated",
                "time_s": [float(i * self.dt_s) for i in range(0, zoom, zk)],
                "baseline_w": [float(x) for x in self.baseline_w[:zoom:zk]],
                **{
                    o.mitigation + "_w": [float(x) for x in o.grid_w[:zoom:zk]]
                    for o in self.outcomes
                },
            },
            "spectrum": {"source": "simulated", **spec},
        }


def run_smooth(sc: SmoothScenario, *, size_storage: bool = True) -> SmoothResult:
    """Build the waveform, apply each mitigation, size the storage (module docstring)."""
    mdl = gpu_model(sc.sku)
    tmp = mdl.sku.tdp_w
    n = math.ceil(sc.duration_s / sc.dt_s)
    wave, desc = waveform_from(
        sc.waveform,
        dt=sc.dt_s,
        n=n,
        tmp_w=tmp,
        low_w=mdl.curve("comm").natural_w,
        base_dir=sc.base_dir,
    )
    S = wave.shape[0]
    counts = np.full(S, sc.gpus / S)
    other = sc.other_w_per_gpu * sc.gpus
    outs = tuple(
        mitigate(wave, counts, sc.dt_s, m, tmp_w=tmp, other_w=other, limits=sc.limits)
        for m in sc.mitigations
    )
    base = counts @ wave + other
    small = None
    if size_storage and sc.size_storage_for is not None and not sc.limits.empty:
        m = next(x for x in sc.mitigations if x.name == sc.size_storage_for)
        small = smallest_storage(wave, counts, sc.dt_s, m, sc.limits, tmp_w=tmp, other_w=other)
    return SmoothResult(
        scenario=sc,
        waveform=desc,
        dt_s=sc.dt_s,
        baseline_w=base,
        outcomes=outs,
        smallest_storage_j=small,
        smallest_storage_for=sc.size_storage_for if size_storage else None,
    )


__all__ = [
    "RESULT_SCHEMA",
    "SCHEMA",
    "SmoothResult",
    "SmoothScenario",
    "load_smooth_scenario",
    "run_smooth",
]
