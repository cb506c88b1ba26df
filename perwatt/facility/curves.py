"""GPU power–performance per phase: what a power cap does to throughput and power draw.

Each phase of work has a *natural* power (what the GPU draws uncapped while doing it) and a
throughput curve under a cap ``c`` below that::

    throughput(c) / throughput(uncapped) = ((c - P0) / (P_natural - P0)) ** gamma    (c < P_natural)
    power(c) = min(c, P_natural)

* **Compute-bound** work (prefill, training forward/backward, batch jobs): ``gamma`` = 0.40 with
  ``P0`` = the GPU's idle power. Calibrated once from the Perseus stage profiles (Chung et al.,
  SOSP '24 artifact, ``stage_profile/gpt3-175b+a100_sxm_bf16.csv`` and
  ``bloom+a100_sxm_bf16.csv``, stage 0 forward and backward, 38 SM clocks each): fitting
  ``log(1/time)`` against ``log(power - 83.64 W)`` gives exponents 0.424, 0.412 (GPT-3) and
  0.391, 0.385 (BLOOM); at half the max-clock power the measured throughput is still 0.65. So
  throughput falls much *less* than linearly with the cap — a finding against the common
  "linear in cap" assumption; perwatt uses the mean of the four fits, 0.403, as 0.40.
* **Memory-bound** decode: natural power 600 W on H100 at batch 128 and ≈ 300 W at batch 1
  (ML.ENERGY benchmark, Chung et al. 2025, H100 LLM decode); throughput flat until low caps:
  ``gamma`` = 0.15 (*assumption*: no public per-cap decode curve was found; calibrate from your
  own ``perwatt bench`` runs at several power limits with :func:`calibrate_from_bench`, which is
  preferred whenever such documents exist).
* **Prefill** natural power ≈ 700 W on H100 (SplitwiseSim constants; decode ≈ 380 W there, which
  lies inside ML.ENERGY's 300–600 W range at moderate batch).
* **Communication / blocking**: the GPU waits; power is the Perseus blocking power where the
  catalog has it (83.64 W on A100 SXM), else 1.1 x idle (*assumption*); a cap above it changes
  nothing.

Other SKUs scale the H100 natural powers by TDP / 700 W (*assumption*).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from perwatt.errors import ConfigError, DataFormatError
from perwatt.facility.skus import SKUPower, require_sku
from perwatt.hardware import GPUS

F64 = npt.NDArray[np.float64]

PHASES: Final = ("prefill", "decode", "train", "comm")
COMPUTE_GAMMA: Final = 0.40
DECODE_GAMMA: Final = 0.15
_PERSEUS_FIT: Final = (
    "Perseus SOSP'24 stage profiles (A100 SXM, GPT-3 175B and BLOOM, stage 0 fwd/bwd): "
    "fitted exponent 0.385-0.424"
)
_MLENERGY: Final = "ML.ENERGY benchmark (H100 decode: ≈300 W at batch 1, ≈600 W at batch 128)"
_SPLITWISE: Final = "SplitwiseSim H100 constants (prefill ≈700 W, decode ≈380 W, idle ≈75 W)"


@dataclass(frozen=True, slots=True, kw_only=True)
class PhaseCurve:
    """Throughput and power of one phase under a power cap (see the module docstring)."""

    phase: str
    natural_w: float
    p0_w: float
    gamma: float
    source: str

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ConfigError(f"unknown phase {self.phase!r}; choose one of {', '.join(PHASES)}")
        if not 0 <= self.p0_w < self.natural_w:
            raise ConfigError(f"phase {self.phase}: need 0 <= P0 < natural power")
        if not 0 < self.gamma <= 3:
            raise ConfigError(f"phase {self.phase}: gamma must be in (0, 3]")

    def throughput(self, cap_w: F64 | float) -> F64:
        """Throughput relative to uncapped, for caps in watts (vectorized)."""
        c = np.asarray(cap_w, dtype=np.float64)
        x = np.clip((c - self.p0_w) / (self.natural_w - self.p0_w), 1e-9, 1.0)
        out: F64 = x**self.gamma
        return out

    def power(self, cap_w: F64 | float) -> F64:
        return np.minimum(np.asarray(cap_w, dtype=np.float64), self.natural_w)

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "natural_w": self.natural_w,
            "p0_w": self.p0_w,
            "gamma": self.gamma,
            "source": self.source,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class GPUModel:
    """The phase curves of one SKU plus its power envelope."""

    sku: SKUPower
    curves: Mapping[str, PhaseCurve]

    def __post_init__(self) -> None:
        missing = [p for p in PHASES if p not in self.curves]
        if missing:
            raise ConfigError(f"GPU model {self.sku.key}: no curve for {', '.join(missing)}")

    @property
    def idle_w(self) -> float:
        return self.sku.idle_w

    def curve(self, phase: str) -> PhaseCurve:
        return self.curves[phase]

    def with_curve(self, curve: PhaseCurve) -> GPUModel:
        return GPUModel(sku=self.sku, curves={**self.curves, curve.phase: curve})


def gpu_model(key: str) -> GPUModel:
    """The default (published-figure) model for a SKU."""
    sku = require_sku(key)
    s = sku.tdp_w / 700.0
    blocking = None
    hw = GPUS.get(key)
    if hw is not None and hw.blocking_power_w is not None:
        blocking = hw.blocking_power_w
    comm_w = blocking if blocking is not None else 1.1 * sku.idle_w
    comm_src = "Perseus blocking power" if blocking is not None else "assumption: 1.1 x idle"
    scaled = "" if key == "H100-SXM" else " (scaled by TDP/700 W: assumption)"
    return GPUModel(
        sku=sku,
        curves={
            "prefill": PhaseCurve(
                phase="prefill",
                natural_w=min(700.0 * s, sku.tdp_w),
                p0_w=sku.idle_w,
                gamma=COMPUTE_GAMMA,
                source=_SPLITWISE + "; " + _PERSEUS_FIT + scaled,
            ),
            "decode": PhaseCurve(
                phase="decode",
                natural_w=600.0 * s,
                p0_w=sku.idle_w,
                gamma=DECODE_GAMMA,
                source=_MLENERGY + "; gamma 0.15 is an assumption" + scaled,
            ),
            "train": PhaseCurve(
                phase="train",
                natural_w=sku.tdp_w,
                p0_w=sku.idle_w,
                gamma=COMPUTE_GAMMA,
                source=_PERSEUS_FIT + "; natural power = TDP (compute-bound at max clock)",
            ),
            "comm": PhaseCurve(
                phase="comm",
                natural_w=max(comm_w, sku.idle_w * 1.01),
                p0_w=0.0,
                gamma=1e-6,  # waiting: a cap above the blocking power changes nothing
                source=comm_src,
            ),
        },
    )


def fit_gamma(
    cap_w: Sequence[float], rel_throughput: Sequence[float], p0_w: float, natural_w: float
) -> float:
    """Least-squares exponent in log space for points below the natural power."""
    c = np.asarray(cap_w, dtype=np.float64)
    y = np.asarray(rel_throughput, dtype=np.float64)
    m = (c < natural_w) & (c > p0_w) & (y > 0) & (y < 1)
    if m.sum() < 1:
        raise ConfigError("need at least one point below the natural power to fit a curve")
    lx = np.log((c[m] - p0_w) / (natural_w - p0_w))
    ly = np.log(y[m])
    g = float(np.sum(lx * ly) / np.sum(lx * lx))
    return min(max(g, 1e-3), 3.0)


def calibrate_from_bench(model: GPUModel, paths: Sequence[str | Path]) -> GPUModel:
    """Refit the decode curve from ``perwatt bench`` result documents at several power limits.

    Each document gives the power limit (``conditions.gpus[0].power_limit_w``), the output
    tokens/s and the average power per GPU; the highest-throughput run defines "uncapped".
    """

    limits, tps, power = [], [], []
    for p in paths:
        try:
            doc = json.loads(Path(p).read_text())
            gpus = doc["conditions"]["gpus"]
            lim = gpus[0]["power_limit_w"]
            rate = doc["metrics"]["output_throughput_tok_s"]
            avg = doc["energy"]["avg_power_w"] / max(1, len(gpus))
        except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
            raise DataFormatError(
                f"{p}: not a perwatt bench result with a power limit ({e})"
            ) from e
        if lim is None or not math.isfinite(float(lim)):
            raise DataFormatError(f"{p}: the result records no power limit")
        limits.append(float(lim))
        tps.append(float(rate))
        power.append(float(avg))
    if len(limits) < 2:
        raise ConfigError("calibration needs bench results at two or more power limits")
    best = max(tps)
    natural = max(power)
    g = fit_gamma(limits, [t / best for t in tps], model.idle_w, natural)
    names = ", ".join(Path(p).name for p in paths)
    return model.with_curve(
        PhaseCurve(
            phase="decode",
            natural_w=natural,
            p0_w=model.idle_w,
            gamma=g,
            source=f"perwatt bench result documents ({names}): measured tokens/s vs power limit",
        )
    )


__all__ = [
    "COMPUTE_GAMMA",
    "DECODE_GAMMA",
    "PHASES",
    "GPUModel",
    "PhaseCurve",
    "calibrate_from_bench",
    "fit_gamma",
    "gpu_model",
]
