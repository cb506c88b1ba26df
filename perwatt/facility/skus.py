"""Per-SKU power envelope for the site model: TDP, idle power and the power-limit range.

TDP comes from :mod:`perwatt.hardware` where the catalog has the part. The catalog has no idle
power and no power-limit range, and no GB200/GB300 entries, so those live here, each with its
source; figures marked *assumption* are perwatt's own choice where no public figure was found,
and a user with measured values should pass their own (``perwatt env`` reports the limits NVML
accepts on the host).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from perwatt.errors import ConfigError
from perwatt.hardware import GPUS

_SPLITWISE: Final = (
    "SplitwiseSim (Patel et al., 'Splitwise', ISCA '24; github.com/Mutinifni/splitwise-sim) "
    "H100 constants: idle 75 W, prefill ≈ 700 W, decode ≈ 380 W"
)
_SMI_POWER: Final = "driver listing `nvidia-smi -q -d POWER` (Min/Max Power Limit) on this SKU"
_GB200: Final = (
    "NVIDIA GB200 NVL72 material: up to 1,200 W per Blackwell GPU in the GB200 superchip "
    "(2,700 W per superchip incl. Grace); approximate, configurable per system"
)
_GB300: Final = (
    "NVIDIA GB300 NVL72 / Blackwell Ultra material: up to 1,400 W per B300 GPU; approximate"
)
_ASSUME: Final = "assumption: scaled from the H100 figure by TDP (no public figure found)"


@dataclass(frozen=True, slots=True, kw_only=True)
class SKUPower:
    """Power envelope of one GPU SKU, in watts."""

    key: str
    tdp_w: float
    idle_w: float
    min_limit_w: float
    max_limit_w: float
    sources: Mapping[str, str]

    def __post_init__(self) -> None:
        if not 0 < self.idle_w < self.min_limit_w <= self.max_limit_w:
            raise ConfigError(f"SKU {self.key}: need 0 < idle < min limit <= max limit")
        if self.max_limit_w > self.tdp_w * 1.5:
            raise ConfigError(f"SKU {self.key}: max limit far above TDP")


def _h(key: str) -> float:
    return GPUS[key].tdp_w


_TABLE: Final = (
    SKUPower(
        key="H100-SXM",
        tdp_w=_h("H100-SXM"),
        idle_w=75.0,
        min_limit_w=200.0,
        max_limit_w=_h("H100-SXM"),
        sources={"tdp_w": "perwatt.hardware", "idle_w": _SPLITWISE, "min_limit_w": _SMI_POWER},
    ),
    SKUPower(
        key="H200-SXM",
        tdp_w=_h("H200-SXM"),
        idle_w=75.0,
        min_limit_w=200.0,
        max_limit_w=_h("H200-SXM"),
        sources={
            "tdp_w": "perwatt.hardware",
            "idle_w": "assumption: same board power class as H100 SXM (" + _SPLITWISE + ")",
            "min_limit_w": "assumption: as H100 SXM",
        },
    ),
    SKUPower(
        key="A100-SXM4-80GB",
        tdp_w=_h("A100-SXM4-80GB"),
        idle_w=60.0,
        min_limit_w=100.0,
        max_limit_w=_h("A100-SXM4-80GB"),
        sources={"tdp_w": "perwatt.hardware", "idle_w": _ASSUME, "min_limit_w": _SMI_POWER},
    ),
    SKUPower(
        key="B200",
        tdp_w=_h("B200"),
        idle_w=110.0,
        min_limit_w=300.0,
        max_limit_w=_h("B200"),
        sources={"tdp_w": "perwatt.hardware", "idle_w": _ASSUME, "min_limit_w": _ASSUME},
    ),
    SKUPower(
        key="GB200",
        tdp_w=1200.0,
        idle_w=130.0,
        min_limit_w=350.0,
        max_limit_w=1200.0,
        sources={"tdp_w": _GB200, "idle_w": _ASSUME, "min_limit_w": _ASSUME},
    ),
    SKUPower(
        key="GB300",
        tdp_w=1400.0,
        idle_w=150.0,
        min_limit_w=400.0,
        max_limit_w=1400.0,
        sources={"tdp_w": _GB300, "idle_w": _ASSUME, "min_limit_w": _ASSUME},
    ),
)

#: Every SKU the site model knows, by key.
SKUS: Final[Mapping[str, SKUPower]] = {s.key: s for s in _TABLE}


def require_sku(key: str, *, where: str = "") -> SKUPower:
    """The envelope for ``key``; a one-line error listing the known keys otherwise."""
    s = SKUS.get(key) if isinstance(key, str) else None
    if s is None:
        pre = f"{where}: " if where else ""
        raise ConfigError(f"{pre}unknown GPU SKU {key!r}; known: {', '.join(SKUS)}")
    return s


__all__ = ["SKUS", "SKUPower", "require_sku"]
