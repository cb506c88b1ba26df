"""The GPU catalog: lookups by NVML name, sourced constants, agreement with the fake presets."""

from __future__ import annotations

import dataclasses

import pytest

from perwatt.errors import ConfigError
from perwatt.hardware import GPUS, GPUSpec, lookup_gpu, require_gpu
from perwatt.meter.testing import PRESETS


@pytest.mark.parametrize(
    ("nvml_name", "key"),
    [
        ("NVIDIA H100 80GB HBM3", "H100-SXM"),
        ("NVIDIA H100 PCIe", "H100-PCIE"),
        ("NVIDIA H200", "H200-SXM"),
        ("NVIDIA A100-SXM4-40GB", "A100-SXM4-40GB"),
        ("NVIDIA A100-SXM4-80GB", "A100-SXM4-80GB"),
        ("NVIDIA A100-PCIE-40GB", "A100-PCIE-40GB"),
        ("NVIDIA A100 80GB PCIe", "A100-PCIE-80GB"),
        ("NVIDIA A40", "A40"),
        ("NVIDIA L40S", "L40S"),
        ("Tesla V100-SXM2-16GB", "V100-SXM2"),
        ("Tesla V100-PCIE-32GB", "V100-PCIE"),
        ("Tesla T4", "T4"),
        ("NVIDIA B200", "B200"),
        ("h100-sxm", "H100-SXM"),
    ],
)
def test_lookup_by_nvml_name(nvml_name: str, key: str) -> None:
    spec = lookup_gpu(nvml_name)
    assert spec is not None and spec.key == key


@pytest.mark.parametrize("name", ["NVIDIA GH200 480GB", "Tesla K80", "NVIDIA L40", "Radeon"])
def test_unknown_gpus_are_not_guessed(name: str) -> None:
    assert lookup_gpu(name) is None
    with pytest.raises(ConfigError, match="not in perwatt's catalog"):
        require_gpu(name)


def test_every_constant_has_a_source() -> None:
    for spec in GPUS.values():
        for f in dataclasses.fields(spec):
            value = getattr(spec, f.name)
            if isinstance(value, (int, float)) and f.name not in ("key",):
                assert spec.sources.get(f.name), f"{spec.key}.{f.name} has no source"


def test_spec_without_source_is_rejected() -> None:
    spec = GPUS["A40"]
    bad_sources = {k: v for k, v in spec.sources.items() if k != "tdp_w"}
    with pytest.raises(ValueError, match="no source for tdp_w"):
        dataclasses.replace(spec, sources=bad_sources)
    with pytest.raises(ValueError, match="blocking power"):
        dataclasses.replace(spec, blocking_power_w=400.0)


def test_perseus_blocking_power() -> None:
    assert GPUS["A100-SXM4-40GB"].blocking_power_w == 83.64
    assert GPUS["A40"].blocking_power_w == 70.38
    assert "Perseus" in GPUS["A40"].sources["blocking_power_w"]


def test_dense_peaks_and_ridge_point() -> None:
    h100 = GPUS["H100-SXM"]
    assert h100.peak_tflops("fp8") == 2 * h100.peak_tflops("bf16")  # type: ignore[operator]
    assert h100.ridge_flop_per_byte("bf16") == pytest.approx(989.5e12 / 3350e9)
    assert GPUS["A100-SXM4-40GB"].peak_tflops("fp8") is None
    assert GPUS["V100-SXM2"].ridge_flop_per_byte("bf16") is None
    with pytest.raises(ConfigError, match="unknown dtype"):
        h100.peak_tflops("int4")


def test_energy_counter_from_volta_on() -> None:
    assert all(s.has_energy_counter for s in GPUS.values())  # the catalog is Volta and newer


def test_fake_presets_agree_with_the_catalog() -> None:
    for preset in PRESETS.values():
        spec = lookup_gpu(preset.name)
        if spec is None:
            continue
        assert preset.tdp_w == spec.tdp_w, preset.key
        assert preset.has_energy_counter == spec.has_energy_counter, preset.key
        if spec.max_sm_clock_mhz is not None:
            assert preset.max_sm_clock_mhz == spec.max_sm_clock_mhz, preset.key
        if spec.min_sm_clock_mhz is not None:
            assert preset.min_sm_clock_mhz == spec.min_sm_clock_mhz, preset.key


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="positive"):
        GPUSpec(
            key="X",
            name="X",
            architecture="Hopper",
            tdp_w=0,
            memory_gb=1,
            hbm_bandwidth_gbs=1,
            peak_bf16_tflops=None,
            peak_fp8_tflops=None,
            peak_fp16_tflops=None,
            min_sm_clock_mhz=None,
            max_sm_clock_mhz=None,
            has_energy_counter=True,
        )
