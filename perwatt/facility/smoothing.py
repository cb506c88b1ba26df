"""Training power smoothing: what a synchronous job shows the grid, and what taming it costs.

Synchronous training swings every iteration between compute near TDP and communication near
idle; summed over 100k GPUs in lockstep that is tens to hundreds of MW with its energy at
0.2–3 Hz (Choukse et al., "Power Stabilization for AI Training Datacenters", arXiv 2508.14318,
Microsoft/OpenAI/NVIDIA). Three mitigations, modelled as hardware and software implement them:

* **GPU power smoothing** with exactly the parameters of NVML's
  ``nvmlPowerSmoothingProfile_v1_t`` (Blackwell Ultra / GB300; NVML ``nvmlDevicePowerSmoothing*``):
  a floor as a percent of total module power (TMP), a ramp-up rate (W/s), a ramp-down rate
  (W/s), a ramp-down hysteresis (ms) and a secondary floor (W); up to 5 preset profiles and a
  state on/off. perwatt's reading of their effect, per GPU, every step: power never falls below
  ``max(percent_tmp_floor x TMP, secondary_floor_w)`` (the difference from what the work needs
  is burned: *wasted*); it rises at most at the ramp-up rate (work that wanted more waits:
  *deferred*); it starts falling only after demand has been lower for the hysteresis time and
  then at most at the ramp-down rate (burned, too). The secondary floor is read as an absolute
  floor in watts beside the percent floor (NVML's documentation does not say more).
* **Software filler work** in communication lulls: keeps each GPU at ``filler_w`` while the
  job would draw less (wasted energy, as the paper's "firmware/software burn").
* **Energy storage** at the rack or the site (:mod:`.storage`) with its own controller: the grid
  sees a low-pass (exponential moving average, time constant ``smoothing_s``) of the load; the
  store supplies the difference within its power and state-of-charge limits, and a slow term
  pulls its SoC back to the middle of its band. N rack stores with identical waveforms behave
  as one site store of N times the capacity (they are lumped here; their location only changes
  which breakers see the swing).

Grid-side figures (:func:`grid_figures`): ramp rates in MW/s (the largest max-min swing inside
any 1-s window of the trace) and MW/min (inside any 1-min window of the 1-s means), the dynamic
range (max - min of the trace), peak demand, and the **spectral fraction**: the share of the swing's energy (the
one-sided power spectrum of the trace minus its mean, by ``numpy.fft.rfft``) inside a band, 0.1–20
Hz by default — and that band's RMS swing in MW (Parseval). Limits are **user inputs** (:class:`GridLimits`): no grid publishes one number for
these, so perwatt ships none. Every figure is simulated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from perwatt.errors import ConfigError
from perwatt.facility.storage import Storage

F64 = npt.NDArray[np.float64]
MAX_PROFILES: Final = 5  # NVML keeps up to 5 preset power-smoothing profiles per GPU
# NVML_POWER_SMOOTHING_PROFILE_PARAM_* ids, in the order nvml.h lists them (perwatt's reading)
NVML_PARAM_IDS: Final = {
    "percent_tmp_floor": 0,
    "ramp_up_rate_w_s": 1,
    "ramp_down_rate_w_s": 2,
    "ramp_down_hysteresis_ms": 3,
    "secondary_floor_w": 4,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class SmoothingProfile:
    """One NVML power-smoothing profile (``nvmlPowerSmoothingProfile_v1_t`` parameters)."""

    profile_id: int = 0
    percent_tmp_floor: float = 0.0
    ramp_up_rate_w_s: float = math.inf
    ramp_down_rate_w_s: float = math.inf
    ramp_down_hysteresis_ms: float = 0.0
    secondary_floor_w: float = 0.0

    def __post_init__(self) -> None:
        pid = self.profile_id
        if isinstance(pid, bool) or not isinstance(pid, int) or not 0 <= pid < MAX_PROFILES:
            raise ConfigError(f"smoothing profile_id must be 0..{MAX_PROFILES - 1}")
        if not 0 <= self.percent_tmp_floor <= 100:
            raise ConfigError(
                f"smoothing percent_tmp_floor must be in [0, 100], got {self.percent_tmp_floor!r}"
            )
        for k in ("ramp_up_rate_w_s", "ramp_down_rate_w_s"):
            v = getattr(self, k)
            if not v > 0:
                raise ConfigError(f"smoothing {k} must be > 0, got {v!r}")
        if not (math.isfinite(self.ramp_down_hysteresis_ms) and self.ramp_down_hysteresis_ms >= 0):
            raise ConfigError("smoothing ramp_down_hysteresis_ms must be >= 0")
        if not (math.isfinite(self.secondary_floor_w) and self.secondary_floor_w >= 0):
            raise ConfigError("smoothing secondary_floor_w must be >= 0")

    def floor_w(self, tmp_w: float) -> float:
        return max(self.percent_tmp_floor / 100.0 * tmp_w, self.secondary_floor_w)

    def nvml_params(self) -> list[tuple[int, int, float]]:
        """(profileId, paramId, value) triples, as ``nvmlDevicePowerSmoothingUpdatePresetProfileParam`` takes them."""
        return [
            (self.profile_id, pid, float(getattr(self, name)))
            for name, pid in NVML_PARAM_IDS.items()
            if math.isfinite(getattr(self, name))
        ]


@dataclass(frozen=True, slots=True, kw_only=True)
class GPUSmoothing:
    """Up to 5 preset profiles, the one in use, and the state (on/off)."""

    profiles: tuple[SmoothingProfile, ...] = ()
    active: int = 0
    enabled: bool = False

    def __post_init__(self) -> None:
        if len(self.profiles) > MAX_PROFILES:
            raise ConfigError(f"at most {MAX_PROFILES} smoothing profiles (NVML)")
        ids = [p.profile_id for p in self.profiles]
        if len(set(ids)) != len(ids):
            raise ConfigError("smoothing profile ids must be unique")
        if self.enabled and self.active not in ids:
            raise ConfigError(f"smoothing active profile {self.active} is not defined")

    @property
    def profile(self) -> SmoothingProfile | None:
        if not self.enabled:
            return None
        return next(p for p in self.profiles if p.profile_id == self.active)


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageControl:
    """The store's own controller: grid = EMA(load, ``smoothing_s``) + SoC correction."""

    smoothing_s: float = 30.0
    soc_gain_per_s: float = 1.0 / 600.0  # pulls SoC back to mid-band over ~10 min (assumption)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.smoothing_s) and self.smoothing_s > 0):
            raise ConfigError("storage smoothing_s must be > 0")
        if not self.soc_gain_per_s >= 0:
            raise ConfigError("storage soc_gain_per_s must be >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class Mitigation:
    """Which mitigations are on: GPU smoothing, filler, storage (any combination)."""

    name: str = "none"
    gpu: GPUSmoothing = field(default_factory=GPUSmoothing)
    filler_w: float = 0.0  # per GPU; 0 = no filler work
    storage: Storage | None = None  # site total (racks lumped)
    control: StorageControl = field(default_factory=StorageControl)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.filler_w) and self.filler_w >= 0):
            raise ConfigError("filler_w must be >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class GridLimits:
    """Limits the *user* supplies (no defaults: no grid code fixes these numbers)."""

    ramp_mw_per_s: float | None = None
    ramp_mw_per_min: float | None = None
    dynamic_range_mw: float | None = None
    band_fraction: float | None = None  # most of the swing energy allowed in the band
    band_rms_mw: float | None = None  # largest RMS of the in-band swing
    band_hz: tuple[float, float] = (0.1, 20.0)

    def __post_init__(self) -> None:
        for k in ("ramp_mw_per_s", "ramp_mw_per_min", "dynamic_range_mw", "band_rms_mw"):
            v = getattr(self, k)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ConfigError(f"limit {k} must be > 0")
        if self.band_fraction is not None and not 0 <= self.band_fraction <= 1:
            raise ConfigError("limit band_fraction must be in [0, 1]")
        lo, hi = self.band_hz
        if not 0 <= lo < hi:
            raise ConfigError("limit band_hz must be (low, high) with 0 <= low < high")

    @property
    def empty(self) -> bool:
        return all(getattr(self, k) is None for k in _LIMITS)


_LIMITS: Final = (
    "ramp_mw_per_s",
    "ramp_mw_per_min",
    "dynamic_range_mw",
    "band_fraction",
    "band_rms_mw",
)


def _means(p: F64, dt: float, window_s: float) -> F64:
    k = max(1, round(window_s / dt))
    m = len(p) // k
    if m == 0:
        return np.array([float(p.mean())])
    out: F64 = p[: m * k].reshape(m, k).mean(axis=1)
    return out


def _swing(p: F64, dt: float, window_s: float) -> float:
    """Largest max-min inside any window of ``window_s`` (within a factor covered below).

    Windows are taken at two offsets, 0 and half a window: any change that happens within half
    a window lies wholly inside one of them, so the figure is exact for edges shorter than half
    a window and never overstates.
    """
    k = max(1, round(window_s / dt))
    best = 0.0
    for off in (0, k // 2):
        q = p[off:]
        m = len(q) // k
        if m == 0:
            continue
        b = q[: m * k].reshape(m, k)
        best = max(best, float((b.max(axis=1) - b.min(axis=1)).max()))
    if best == 0.0 and len(p) > 1:
        best = float(p.max() - p.min())
    return best


def spectrum(p: F64, dt: float) -> tuple[F64, F64]:
    """One-sided power spectrum of ``p`` minus its mean: (frequency Hz, power)."""
    x = p - p.mean()
    s: F64 = (np.abs(np.fft.rfft(x)) ** 2).astype(np.float64)
    f: F64 = np.fft.rfftfreq(len(x), dt).astype(np.float64)
    return f, s


def grid_figures(p_w: F64, dt: float, limits: GridLimits | None = None) -> dict[str, Any]:
    """Ramp rates, dynamic range, peak and band fraction of a site trace (module docstring)."""
    lim = limits or GridLimits()
    s1 = _means(p_w, dt, 1.0)
    f, s = spectrum(p_w, dt)
    lo, hi = lim.band_hz
    tot = float(s[1:].sum())
    band = float(s[(f >= lo) & (f <= hi)].sum())
    frac = band / tot if tot > 0 else 0.0
    # Parseval: a one-sided bin k (0 < k < N/2) holds 2|X_k|^2 / N^2 of the variance
    band_rms = math.sqrt(2.0 * band) / len(p_w) if len(p_w) else 0.0
    out: dict[str, Any] = {
        "peak_mw": float(p_w.max()) / 1e6,
        "mean_mw": float(p_w.mean()) / 1e6,
        "min_mw": float(p_w.min()) / 1e6,
        "ramp_mw_per_s": _swing(p_w, dt, 1.0) / 1e6,
        "ramp_mw_per_min": _swing(s1, 1.0, 60.0) / 1e6,
        "dynamic_range_mw": float(p_w.max() - p_w.min()) / 1e6,
        "band_hz": [lo, hi],
        "band_fraction": frac,
        "band_rms_mw": band_rms / 1e6,
        "dominant_hz": float(f[1:][np.argmax(s[1:])]) if len(f) > 1 else 0.0,
        "source": "simulated",
    }
    checks: dict[str, bool] = {}
    for k in _LIMITS:
        v = getattr(lim, k)
        if v is not None:
            checks[k] = out[k] <= v * (1 + 1e-9)
    out["limits"] = {k: getattr(lim, k) for k in _LIMITS}
    out["checks"] = checks
    out["meets_limits"] = all(checks.values()) if checks else None
    return out


def gpu_smooth(demand_w: F64, dt: float, prof: SmoothingProfile, tmp_w: float) -> F64:
    """One GPU's power under an NVML smoothing profile (module docstring); vectorized by run.

    ``demand_w`` is what the work would draw. Sequential by nature (ramps and hysteresis), so
    it runs once per cohort — all GPUs of a cohort follow the same waveform.
    """
    fl = prof.floor_w(tmp_w)
    up = prof.ramp_up_rate_w_s * dt
    dn = prof.ramp_down_rate_w_s * dt
    hyst = prof.ramp_down_hysteresis_ms / 1000.0
    d = np.maximum(demand_w, fl)
    out = np.empty_like(d)
    p = float(d[0])
    low_for = 0.0
    dl = d.tolist()
    for i, x in enumerate(dl):
        if x >= p:
            low_for = 0.0
            p = min(x, p + up)
        else:
            low_for += dt
            if low_for > hyst:
                p = max(x, p - dn)
        out[i] = p
    return out


def storage_smooth(
    load_w: F64, dt: float, st: Storage, ctl: StorageControl
) -> tuple[F64, F64, F64, float]:
    """Grid power, storage power (+ discharge) and SoC per step, and the energy lost."""
    a = min(1.0, dt / ctl.smoothing_s)
    mid = 0.5 * (st.soc_min + st.soc_max)
    e = st.one_way
    cap = st.capacity_j
    pmax = st.power_w
    grid = np.empty_like(load_w)
    sto = np.empty_like(load_w)
    soc_t = np.empty_like(load_w)
    soc = st.soc
    # the controller starts from the running average it would already hold (no start-up swing)
    ema = float(load_w[: max(1, round(ctl.smoothing_s / dt))].mean())
    lost = 0.0
    k = ctl.soc_gain_per_s * cap  # W per unit of SoC error
    for i, x in enumerate(load_w.tolist()):
        ema += a * (x - ema)
        want = x - (ema + k * (mid - soc))  # > 0: discharge
        if cap <= 0:
            out = 0.0
        elif want > 0:
            out = min(want, pmax, max(soc - st.soc_min, 0.0) * cap * e / dt)
        else:
            out = max(want, -pmax, -max(st.soc_max - soc, 0.0) * cap / e / dt)
        internal = out / e if out > 0 else out * e
        soc -= internal * dt / cap if cap > 0 else 0.0
        lost += abs(internal - out) * dt
        grid[i] = x - out
        sto[i] = out
        soc_t[i] = soc
    return grid, sto, soc_t, lost


@dataclass(frozen=True, slots=True, kw_only=True)
class SmoothOutcome:
    """One mitigation applied to one waveform."""

    mitigation: str
    grid_w: F64
    storage_w: F64
    soc: F64
    figures: Mapping[str, Any]
    wasted_floor_j: float
    wasted_filler_j: float
    deferred_j: float
    storage_cycled_j: float
    storage_loss_j: float
    energy_j: float
    baseline_energy_j: float

    def to_dict(self, base_peak_w: float) -> dict[str, Any]:
        return {
            "mitigation": self.mitigation,
            "grid": dict(self.figures),
            "peak_reduction": 1 - self.figures["peak_mw"] * 1e6 / base_peak_w,
            "cost": {
                "source": "simulated",
                "wasted_floor_j": self.wasted_floor_j,
                "wasted_filler_j": self.wasted_filler_j,
                "deferred_work_j": self.deferred_j,
                "storage_discharged_j": self.storage_cycled_j,
                "storage_loss_j": self.storage_loss_j,
                "energy_j": self.energy_j,
                "extra_energy_fraction": self.energy_j / self.baseline_energy_j - 1,
            },
        }


def mitigate(
    demand_w: F64,
    gpus: F64 | float,
    dt: float,
    m: Mitigation,
    *,
    tmp_w: float,
    other_w: float = 0.0,
    limits: GridLimits | None = None,
) -> SmoothOutcome:
    """Apply ``m`` to per-GPU waveforms ``demand_w`` ([C, T], one row per cohort of ``gpus[c]``
    GPUs alike, or [T] for one cohort). Site power = Σ gpus x GPU power + ``other_w``.
    """
    d = np.atleast_2d(np.asarray(demand_w, dtype=np.float64))
    n = np.atleast_1d(np.asarray(gpus, dtype=np.float64))
    if n.shape[0] != d.shape[0]:
        raise ConfigError("one GPU count per waveform row")
    base_site = n @ d + other_w
    g = d
    wasted_filler = 0.0
    if m.filler_w > 0:
        g2 = np.maximum(g, m.filler_w)
        wasted_filler = float(n @ (g2 - g).sum(axis=1)) * dt
        g = g2
    deferred = 0.0
    wasted_floor = 0.0
    prof = m.gpu.profile
    if prof is not None:
        g2 = np.stack([gpu_smooth(row, dt, prof, tmp_w) for row in g])
        wasted_floor = float(n @ np.maximum(g2 - g, 0.0).sum(axis=1)) * dt
        deferred = float(n @ np.maximum(g - g2, 0.0).sum(axis=1)) * dt
        g = g2
    site = n @ g + other_w
    if m.storage is not None:
        grid, sto, soc, lost = storage_smooth(site, dt, m.storage, m.control)
    else:
        grid, sto, soc, lost = site, np.zeros_like(site), np.zeros_like(site), 0.0
    return SmoothOutcome(
        mitigation=m.name,
        grid_w=grid,
        storage_w=sto,
        soc=soc,
        figures=grid_figures(grid, dt, limits),
        wasted_floor_j=wasted_floor,
        wasted_filler_j=wasted_filler,
        deferred_j=deferred,
        storage_cycled_j=float(np.maximum(sto, 0.0).sum() * dt),
        storage_loss_j=lost,
        energy_j=float(grid.sum() * dt),
        baseline_energy_j=float(base_site.sum() * dt),
    )


def smallest_storage(
    demand_w: F64,
    gpus: F64 | float,
    dt: float,
    m: Mitigation,
    limits: GridLimits,
    *,
    tmp_w: float,
    other_w: float = 0.0,
    hi_j: float | None = None,
    rel_tol: float = 0.02,
) -> float | None:
    """Least storage capacity (J, same C-rate/efficiency as ``m.storage``) meeting ``limits``.

    Bisection on capacity; None when even ``hi_j`` (default: one hour of the mean site power)
    does not meet the limits.
    """
    if limits.empty:
        raise ConfigError("smallest storage needs at least one limit")
    tmpl = m.storage or Storage(capacity_j=1.0)

    def ok(cap_j: float) -> bool:
        st = Storage(
            capacity_j=cap_j,
            c_rate=tmpl.c_rate,
            round_trip_efficiency=tmpl.round_trip_efficiency,
            soc=tmpl.soc,
            soc_min=tmpl.soc_min,
            soc_max=tmpl.soc_max,
        )
        mm = Mitigation(name="probe", gpu=m.gpu, filler_w=m.filler_w, storage=st, control=m.control)
        r = mitigate(demand_w, gpus, dt, mm, tmp_w=tmp_w, other_w=other_w, limits=limits)
        return bool(r.figures["meets_limits"])

    if ok(0.0):
        return 0.0
    n = np.atleast_1d(np.asarray(gpus, dtype=np.float64))
    mean_w = float((n @ np.atleast_2d(demand_w)).mean()) + other_w
    hi = hi_j if hi_j is not None else mean_w * 3600.0
    if not ok(hi):
        return None
    lo = 0.0
    while hi - lo > rel_tol * hi:
        mid = 0.5 * (lo + hi)
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def profiles_from(d: Mapping[str, Any], where: str = "gpu_smoothing") -> GPUSmoothing:
    """A :class:`GPUSmoothing` from JSON (``profiles``, ``active``, ``enabled``)."""
    known = {"profiles", "active", "enabled"}
    extra = sorted(set(d) - known)
    if extra:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(extra)}")
    profs = []
    for i, p in enumerate(d.get("profiles", [])):
        if not isinstance(p, Mapping):
            raise ConfigError(f"{where}.profiles[{i}] is not an object")
        bad = sorted(set(p) - set(SmoothingProfile.__dataclass_fields__))
        if bad:
            raise ConfigError(f"{where}.profiles[{i}]: unknown field(s) {', '.join(bad)}")
        try:
            kw: dict[str, Any] = {k: v if k == "profile_id" else _f(v) for k, v in p.items()}
            profs.append(SmoothingProfile(**kw))
        except ConfigError as e:
            raise ConfigError(f"{where}.profiles[{i}]: {e}") from None
    try:
        return GPUSmoothing(
            profiles=tuple(profs),
            active=int(d.get("active", 0)),
            enabled=bool(d.get("enabled", True)),
        )
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _f(v: Any) -> float:
    if v == "inf":
        return math.inf
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ConfigError(f"expected a number, got {v!r}")
    return float(v)


__all__ = [
    "MAX_PROFILES",
    "NVML_PARAM_IDS",
    "GPUSmoothing",
    "GridLimits",
    "Mitigation",
    "SmoothOutcome",
    "SmoothingProfile",
    "StorageControl",
    "gpu_smooth",
    "grid_figures",
    "mitigate",
    "profiles_from",
    "smallest_storage",
    "spectrum",
    "storage_smooth",
]
