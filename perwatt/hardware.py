"""GPU catalog: rated power, memory bandwidth, peak tensor throughput and clock ranges, with sources.

Every constant names where it comes from (:attr:`GPUSpec.sources`, one citation per field). Peak
FLOP/s are **dense** figures: NVIDIA datasheets print the 2:4-sparsity number first and mark it
with an asterisk; the dense figure is half of it. ``None`` means the part has no such datatype in
its tensor cores (BF16 before Ampere, FP8 before Hopper/Ada) or NVIDIA publishes no figure.

Clock ranges are what the driver accepts for locked clocks (``nvidia-smi -q -d SUPPORTED_CLOCKS``).
Datasheets give only the maximum boost clock; the minimum is a driver listing, cited as such.
Always prefer what NVML reports on the host (``perwatt env``) over this table for control.

``blocking_power_w`` is the power a GPU draws while blocked on communication (stalled waiting for
a pipeline peer), from the Perseus artifact (Chung et al., "Reducing Energy Bloat in Large Model
Training", SOSP '24); perwatt.train uses it as the default ``p_block``.

Look a GPU up by the name NVML reports: ``lookup_gpu("NVIDIA H100 80GB HBM3")``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from perwatt.errors import ConfigError

# Sources, cited once and referenced per field.
_H100_DS: Final = (
    "NVIDIA H100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h100, "
    "H100 SXM / H100 PCIe columns; sparse figures halved)"
)
_H100_PCIE_PB: Final = (
    "NVIDIA H100 PCIe product brief PB-11133-001_v02 (Nov 2022): 350 W TDP, boost 1755 MHz"
)
_H200_DS: Final = (
    "NVIDIA H200 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h200, H200 SXM column)"
)
_A100_DS: Final = (
    "NVIDIA A100 Tensor Core GPU datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf), "
    "40GB/80GB PCIe/SXM columns"
)
_A100_WP: Final = (
    "NVIDIA A100 Tensor Core GPU Architecture whitepaper (2020), table 3: boost clock 1410 MHz"
)
_A40_DS: Final = (
    "NVIDIA A40 datasheet (nvidia-a40-datasheet.pdf); boost 1740 MHz per NVIDIA A40 product brief"
)
_L40S_DS: Final = "NVIDIA L40S datasheet (resources.nvidia.com/en-us-l40s/l40s-datasheet-28413)"
_V100_DS: Final = (
    "NVIDIA Tesla V100 datasheet (volta-v100-datasheet-update-us-1165301-r5.pdf), "
    "SXM2 / PCIe columns; boost clocks from the Volta architecture whitepaper, table 1"
)
_T4_DS: Final = (
    "NVIDIA T4 datasheet (t4-tensor-core-datasheet); boost 1590 MHz per the T4 product brief"
)
_B200_HGX: Final = (
    "NVIDIA HGX B200 specifications (nvidia.com/en-us/data-center/hgx): 8-GPU totals "
    "divided by 8, sparse figures halved"
)
_B200_TDP: Final = "NVIDIA DGX B200 / HGX B200 system documentation: 1000 W per B200 GPU"
_SMI_CLOCKS: Final = (
    "driver listing `nvidia-smi -q -d SUPPORTED_CLOCKS` on this SKU (not a datasheet figure; "
    "NVML on the host is authoritative)"
)
_SMI_MAX: Final = "driver-reported max SM clock (`nvidia-smi -q -d CLOCK`, Max Clocks)"
_PERSEUS: Final = (
    "Perseus SOSP'24 artifact (Chung et al., 'Reducing Energy Bloat in Large Model Training', "
    "SOSP 2024): measured blocking power P_blocking"
)
_ARCH: Final = (
    "NVML: the energy counter (nvmlDeviceGetTotalEnergyConsumption) exists on Volta and newer"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class GPUSpec:
    """Published figures for one GPU SKU. Units in the names; peaks are dense."""

    key: str
    name: str
    architecture: str
    tdp_w: float
    memory_gb: float
    hbm_bandwidth_gbs: float  # DRAM bandwidth: HBM, or GDDR on A40/L40S/T4 (GB/s, 1e9)
    peak_bf16_tflops: float | None
    peak_fp8_tflops: float | None
    peak_fp16_tflops: float | None
    min_sm_clock_mhz: int | None
    max_sm_clock_mhz: int | None
    has_energy_counter: bool
    blocking_power_w: float | None = None
    sources: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.tdp_w <= 0 or self.hbm_bandwidth_gbs <= 0 or self.memory_gb <= 0:
            raise ValueError(f"{self.key}: power, memory and bandwidth must be positive")
        for v in (self.peak_bf16_tflops, self.peak_fp8_tflops, self.peak_fp16_tflops):
            if v is not None and v <= 0:
                raise ValueError(f"{self.key}: peak throughput must be positive")
        if (
            self.min_sm_clock_mhz is not None
            and self.max_sm_clock_mhz is not None
            and not 0 < self.min_sm_clock_mhz < self.max_sm_clock_mhz
        ):
            raise ValueError(f"{self.key}: SM clock range must be increasing and positive")
        if self.blocking_power_w is not None and not 0 < self.blocking_power_w < self.tdp_w:
            raise ValueError(f"{self.key}: blocking power must lie between 0 and TDP")
        numeric = (
            "tdp_w",
            "memory_gb",
            "hbm_bandwidth_gbs",
            "peak_bf16_tflops",
            "peak_fp8_tflops",
            "peak_fp16_tflops",
            "min_sm_clock_mhz",
            "max_sm_clock_mhz",
            "has_energy_counter",
            "blocking_power_w",
        )
        missing = [f for f in numeric if getattr(self, f) is not None and f not in self.sources]
        if missing:
            raise ValueError(f"{self.key}: no source for {', '.join(missing)}")

    def peak_tflops(self, dtype: str) -> float | None:
        """Dense peak for ``bf16``, ``fp8`` or ``fp16``; ``None`` when the part has none."""
        table = {
            "bf16": self.peak_bf16_tflops,
            "fp8": self.peak_fp8_tflops,
            "fp16": self.peak_fp16_tflops,
        }
        if dtype not in table:
            raise ConfigError(f"unknown dtype {dtype!r}; choose bf16, fp8 or fp16")
        return table[dtype]

    def ridge_flop_per_byte(self, dtype: str = "bf16") -> float | None:
        """Roofline ridge point: arithmetic intensity where compute and bandwidth meet."""
        peak = self.peak_tflops(dtype)
        return None if peak is None else peak * 1e12 / (self.hbm_bandwidth_gbs * 1e9)


def _src(**fields: str) -> dict[str, str]:
    return fields


_CATALOG: Final = (
    GPUSpec(
        key="H100-SXM",
        name="NVIDIA H100 SXM5 80GB",
        architecture="Hopper",
        tdp_w=700.0,
        memory_gb=80.0,
        hbm_bandwidth_gbs=3350.0,
        peak_bf16_tflops=989.5,
        peak_fp8_tflops=1979.0,
        peak_fp16_tflops=989.5,
        min_sm_clock_mhz=345,
        max_sm_clock_mhz=1980,
        has_energy_counter=True,
        sources=_src(
            tdp_w=_H100_DS,
            memory_gb=_H100_DS,
            hbm_bandwidth_gbs=_H100_DS,
            peak_bf16_tflops=_H100_DS,
            peak_fp8_tflops=_H100_DS,
            peak_fp16_tflops=_H100_DS,
            min_sm_clock_mhz=_SMI_CLOCKS,
            max_sm_clock_mhz=_SMI_MAX,
            has_energy_counter=_ARCH,
        ),
    ),
    GPUSpec(
        key="H100-PCIE",
        name="NVIDIA H100 PCIe 80GB",
        architecture="Hopper",
        tdp_w=350.0,
        memory_gb=80.0,
        hbm_bandwidth_gbs=2000.0,
        peak_bf16_tflops=756.5,
        peak_fp8_tflops=1513.0,
        peak_fp16_tflops=756.5,
        min_sm_clock_mhz=None,
        max_sm_clock_mhz=1755,
        has_energy_counter=True,
        sources=_src(
            tdp_w=_H100_PCIE_PB,
            memory_gb=_H100_DS,
            hbm_bandwidth_gbs=_H100_DS,
            peak_bf16_tflops=_H100_DS,
            peak_fp8_tflops=_H100_DS,
            peak_fp16_tflops=_H100_DS,
            max_sm_clock_mhz=_H100_PCIE_PB,
            has_energy_counter=_ARCH,
        ),
    ),
    GPUSpec(
        key="H200-SXM",
        name="NVIDIA H200 SXM 141GB",
        architecture="Hopper",
        tdp_w=700.0,
        memory_gb=141.0,
        hbm_bandwidth_gbs=4800.0,
        peak_bf16_tflops=989.5,
        peak_fp8_tflops=1979.0,
        peak_fp16_tflops=989.5,
        min_sm_clock_mhz=None,
        max_sm_clock_mhz=1980,
        has_energy_counter=True,
        sources=_src(
            tdp_w=_H200_DS,
            memory_gb=_H200_DS,
            hbm_bandwidth_gbs=_H200_DS,
            peak_bf16_tflops=_H200_DS,
            peak_fp8_tflops=_H200_DS,
            peak_fp16_tflops=_H200_DS,
            max_sm_clock_mhz=_SMI_MAX,
            has_energy_counter=_ARCH,
        ),
    ),
    GPUSpec(
        key="A100-SXM4-40GB",
        name="NVIDIA A100-SXM4-40GB",
        architecture="Ampere",
        tdp_w=400.0,
        memory_gb=40.0,
        hbm_bandwidth_gbs=1555.0,
        peak_bf16_tflops=312.0,
        peak_fp8_tflops=None,
        peak_fp16_tflops=312.0,
        min_sm_clock_mhz=210,
        max_sm_clock_mhz=1410,
        has_energy_counter=True,
        blocking_power_w=83.64,
        sources=_src(
            tdp_w=_A100_DS,
            memory_gb=_A100_DS,
            hbm_bandwidth_gbs=_A100_DS,
            peak_bf16_tflops=_A100_DS,
            peak_fp16_tflops=_A100_DS,
            min_sm_clock_mhz=_SMI_CLOCKS,
            max_sm_clock_mhz=_A100_WP,
            has_energy_counter=_ARCH,
            blocking_power_w=_PERSEUS,
        ),
    ),
    GPUSpec(
        key="A100-SXM4-80GB",
        name="NVIDIA A100-SXM4-80GB",
        architecture="Ampere",
        tdp_w=400.0,
        memory_gb=80.0,
        hbm_bandwidth_gbs=2039.0,
        peak_bf16_tflops=312.0,
        peak_fp8_tflops=None,
        peak_fp16_tflops=312.0,
        min_sm_clock_mhz=210,
        max_sm_clock_mhz=1410,
        has_energy_counter=True,
        blocking_power_w=83.64,
        sources=_src(
            tdp_w=_A100_DS,
            memory_gb=_A100_DS,
            hbm_bandwidth_gbs=_A100_DS,
            peak_bf16_tflops=_A100_DS,
            peak_fp16_tflops=_A100_DS,
            min_sm_clock_mhz=_SMI_CLOCKS,
            max_sm_clock_mhz=_A100_WP,
            has_energy_counter=_ARCH,
            blocking_power_w=_PERSEUS + " (measured on A100; same die as the 40GB part)",
        ),
    ),
    GPUSpec(
        key="A100-PCIE-40GB",
        name="NVIDIA A100-PCIE-40GB",
        architecture="Ampere",
        tdp_w=250.0,
        memory_gb=40.0,
        hbm_bandwidth_gbs=1555.0,
        peak_bf16_tflops=312.0,
        peak_fp8_tflops=None,
        peak_fp16_tflops=312.0,
        min_sm_clock_mhz=210,
        max_sm_clock_mhz=1410,
        has_energy_counter=True,
        sources=_src(
            tdp_w=_A100_DS,
            memory_gb=_A100_DS,
            hbm_bandwidth_gbs=_A100_DS,
            peak_bf16_tflops=_A100_DS,
            peak_fp16_tflops=_A100_DS,
            min_sm_clock_mhz=_SMI_CLOCKS,
            max_sm_clock_mhz=_A100_WP,
            has_energy_counter=_ARCH,
        ),
    ),
    GPUSpec(
        key="A100-PCIE-80GB",
        name="NVIDIA A100 80GB PCIe",
        architecture="Ampere",
        tdp_w=300.0,
        memory_gb=80.0,
        hbm_bandwidth_gbs=1935.0,
        peak_bf16_tflops=312.0,
        peak_fp8_tflops=None,
        peak_fp16_tflops=312.0,
        min_sm_clock_mhz=210,
        max_sm_clock_mhz=1410,
        has_energy_counter=True,
        sources=_src(
            tdp_w=_A100_DS,
            memory_gb=_A100_DS,
            hbm_bandwidth_gbs=_A100_DS,
            peak_bf16_tflops=_A100_DS,
            peak_fp16_tflops=_A100_DS,
            min_sm_clock_mhz=_SMI_CLOCKS,
            max_sm_clock_mhz=_A100_WP,
            has_energy_counter=_ARCH,
        ),
    ),
    GPUSpec(
        key="A40",
        name="NVIDIA A40",
        architecture="Ampere",
        tdp_w=300.0,
        memory_gb=48.0,
        hbm_bandwidth_gbs=696.0,
        peak_bf16_tflops=149.7,
        peak_fp8_tflops=None,
        peak_fp16_tflops=149.7,
        min_sm_clock_mhz=210,
        max_sm_clock_mhz=1740,
        has_energy_counter=True,
        blocking_power_w=70.38,
        sources=_src(
            tdp_w=_A40_DS,
            memory_gb=_A40_DS,
            hbm_bandwidth_gbs=_A40_DS,
            peak_bf16_tflops=_A40_DS,
            peak_fp16_tflops=_A40_DS,
            min_sm_clock_mhz=_SMI_CLOCKS,
            max_sm_clock_mhz=_A40_DS,
            has_energy_counter=_ARCH,
            blocking_power_w=_PERSEUS,
        ),
    ),
    GPUSpec(
        key="L40S",
        name="NVIDIA L40S",
        architecture="Ada",
        tdp_w=350.0,
        memory_gb=48.0,
        hbm_bandwidth_gbs=864.0,
        peak_bf16_tflops=362.05,
        peak_fp8_tflops=733.0,
        peak_fp16_tflops=362.05,
        min_sm_clock_mhz=None,
        max_sm_clock_mhz=2520,
        has_energy_counter=True,
        sources=_src(
            tdp_w=_L40S_DS,
            memory_gb=_L40S_DS,
            hbm_bandwidth_gbs=_L40S_DS,
            peak_bf16_tflops=_L40S_DS,
            peak_fp8_tflops=_L40S_DS,
            peak_fp16_tflops=_L40S_DS,
            max_sm_clock_mhz=_L40S_DS,
            has_energy_counter=_ARCH,
        ),
    ),
    GPUSpec(
        key="V100-SXM2",
        name="Tesla V100-SXM2",
        architecture="Volta",
        tdp_w=300.0,
        memory_gb=32.0,
        hbm_bandwidth_gbs=900.0,
        peak_bf16_tflops=None,
        peak_fp8_tflops=None,
        peak_fp16_tflops=125.0,
        min_sm_clock_mhz=None,
        max_sm_clock_mhz=1530,
        has_energy_counter=True,
        sources=_src(
            tdp_w=_V100_DS,
            memory_gb=_V100_DS + " (16 GB variant also exists)",
            hbm_bandwidth_gbs=_V100_DS,
            peak_fp16_tflops=_V100_DS,
            max_sm_clock_mhz=_V100_DS,
            has_energy_counter=_ARCH,
        ),
    ),
    GPUSpec(
        key="V100-PCIE",
        name="Tesla V100-PCIE",
        architecture="Volta",
        tdp_w=250.0,
        memory_gb=32.0,
        hbm_bandwidth_gbs=900.0,
        peak_bf16_tflops=None,
        peak_fp8_tflops=None,
        peak_fp16_tflops=112.0,
        min_sm_clock_mhz=None,
        max_sm_clock_mhz=1380,
        has_energy_counter=True,
        sources=_src(
            tdp_w=_V100_DS,
            memory_gb=_V100_DS + " (16 GB variant also exists)",
            hbm_bandwidth_gbs=_V100_DS,
            peak_fp16_tflops=_V100_DS,
            max_sm_clock_mhz=_V100_DS,
            has_energy_counter=_ARCH,
        ),
    ),
    GPUSpec(
        key="T4",
        name="Tesla T4",
        architecture="Turing",
        tdp_w=70.0,
        memory_gb=16.0,
        hbm_bandwidth_gbs=320.0,
        peak_bf16_tflops=None,
        peak_fp8_tflops=None,
        peak_fp16_tflops=65.0,
        min_sm_clock_mhz=None,
        max_sm_clock_mhz=1590,
        has_energy_counter=True,
        sources=_src(
            tdp_w=_T4_DS,
            memory_gb=_T4_DS,
            hbm_bandwidth_gbs=_T4_DS,
            peak_fp16_tflops=_T4_DS,
            max_sm_clock_mhz=_T4_DS,
            has_energy_counter=_ARCH,
        ),
    ),
    GPUSpec(
        key="B200",
        name="NVIDIA B200",
        architecture="Blackwell",
        tdp_w=1000.0,
        memory_gb=180.0,
        hbm_bandwidth_gbs=8000.0,
        peak_bf16_tflops=2250.0,
        peak_fp8_tflops=4500.0,
        peak_fp16_tflops=2250.0,
        min_sm_clock_mhz=None,
        max_sm_clock_mhz=None,
        has_energy_counter=True,
        sources=_src(
            tdp_w=_B200_TDP,
            memory_gb=_B200_HGX,
            hbm_bandwidth_gbs=_B200_HGX,
            peak_bf16_tflops=_B200_HGX,
            peak_fp8_tflops=_B200_HGX,
            peak_fp16_tflops=_B200_HGX,
            has_energy_counter=_ARCH,
        ),
    ),
)

#: Every catalogued SKU by key.
GPUS: Final[Mapping[str, GPUSpec]] = {g.key: g for g in _CATALOG}

# NVML names → keys, most specific first. NVML spells SKUs inconsistently across drivers
# ("NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe", "NVIDIA H100 80GB HBM3" for the SXM part).
_PATTERNS: Final = (
    (r"(?<!g)h200", "H200-SXM"),  # not GH200 (Grace Hopper superchip)
    (r"h100.*(pcie|pci-e)", "H100-PCIE"),
    (r"(?<!g)h100", "H100-SXM"),
    (r"a100.*(pcie|pci-e).*80|a100.*80.*(pcie|pci-e)", "A100-PCIE-80GB"),
    (r"a100.*(pcie|pci-e)", "A100-PCIE-40GB"),
    (r"a100.*80", "A100-SXM4-80GB"),
    (r"a100", "A100-SXM4-40GB"),
    (r"l40s", "L40S"),
    (r"\ba40\b", "A40"),
    (r"v100.*(pcie|pci-e)", "V100-PCIE"),
    (r"v100", "V100-SXM2"),
    (r"\bt4\b", "T4"),
    (r"b200", "B200"),
)


def lookup_gpu(name: str) -> GPUSpec | None:
    """The catalog entry for a GPU name as NVML reports it (or a catalog key); ``None`` if absent."""
    key = name.strip().upper()
    if key in GPUS:
        return GPUS[key]
    low = name.lower()
    for pattern, k in _PATTERNS:
        if re.search(pattern, low):
            return GPUS[k]
    return None


def require_gpu(name: str) -> GPUSpec:
    """Like :func:`lookup_gpu` but raises a one-line error listing the known SKUs."""
    spec = lookup_gpu(name)
    if spec is None:
        raise ConfigError(f"GPU {name!r} is not in perwatt's catalog; known: {', '.join(GPUS)}")
    return spec
