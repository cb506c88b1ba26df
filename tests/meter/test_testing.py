"""The fake NVML itself: same names and codes as pynvml, a deterministic model, injectable faults."""

from __future__ import annotations

import re
from pathlib import Path

import pynvml
import pytest

import perwatt.meter.nvml as nvml_mod
from perwatt.errors import ConfigError
from perwatt.meter.testing import PRESETS, FakeClock, FakeNVML, fake_from_env


def _fake(*keys: str, **kw: object) -> tuple[FakeNVML, FakeClock]:
    clock = FakeClock()
    fake = FakeNVML.with_gpus(list(keys), clock=clock, **kw)  # type: ignore[arg-type]
    fake.nvmlInit()
    return fake, clock


def test_every_nvml_function_perwatt_calls_exists_in_fake_and_in_pynvml() -> None:
    # perwatt names NVML functions as strings in nvml.py; the fake must offer each one, and each
    # must be a real pynvml function (so the fake cannot drift into inventing API).
    source = Path(nvml_mod.__file__).read_text()
    used = set(re.findall(r'"(nvml[A-Z]\w+)"', source))
    assert "nvmlDeviceGetTotalEnergyConsumption" in used
    fake = FakeNVML.with_gpus(["H100"])
    for name in sorted(used):
        assert callable(getattr(fake, name, None)), f"fake lacks {name}"
        assert callable(getattr(pynvml, name, None)), f"pynvml lacks {name}"


def test_constants_and_error_classes_match_pynvml() -> None:
    fake = FakeNVML.with_gpus(["A100"])
    for name in dir(fake):
        if name.startswith("NVML_") and hasattr(pynvml, name):
            assert getattr(fake, name) == getattr(pynvml, name), name
    for cls_name in ("NVMLError_GpuIsLost", "NVMLError_NoPermission", "NVMLError_NotSupported"):
        fake_cls = getattr(fake, cls_name)
        real_cls = getattr(pynvml, cls_name)
        assert fake_cls().value == real_cls().value
    err = fake.NVMLError(fake.NVML_ERROR_GPU_IS_LOST)
    assert isinstance(err, fake.NVMLError_GpuIsLost)
    assert str(err) == str(pynvml.NVMLError_GpuIsLost())


def test_with_gpus_rejects_unknown_preset() -> None:
    with pytest.raises(ConfigError, match="unknown fake GPU 'X9000'"):
        FakeNVML.with_gpus(["H100", "X9000"])


def test_calls_before_init_raise_uninitialized() -> None:
    fake = FakeNVML.with_gpus(["H100"])
    with pytest.raises(fake.NVMLError_Uninitialized):
        fake.nvmlDeviceGetCount()


def test_counter_updates_only_every_period_and_integrates_the_model() -> None:
    fake, clock = _fake("H100")
    h = fake.nvmlDeviceGetHandleByIndex(0)
    e0 = fake.nvmlDeviceGetTotalEnergyConsumption(h)
    fake.set_load(0, 1.0)
    clock.advance(0.05)
    assert fake.nvmlDeviceGetTotalEnergyConsumption(h) == e0  # not yet published
    clock.advance(0.05)
    e1 = fake.nvmlDeviceGetTotalEnergyConsumption(h)
    assert e1 - e0 == pytest.approx(700.0 * 0.1 * 1000, abs=1)  # mJ at 700 W for 100 ms
    assert fake.energy_j(0) == pytest.approx(70.0)


def test_counterless_generations_raise_not_supported() -> None:
    fake, _ = _fake("K80", "P100")
    for i in range(2):
        h = fake.nvmlDeviceGetHandleByIndex(i)
        with pytest.raises(fake.NVMLError_NotSupported):
            fake.nvmlDeviceGetTotalEnergyConsumption(h)
        assert fake.nvmlDeviceGetPowerUsage(h) > 0


def test_power_falls_with_locked_clocks_and_is_capped_by_the_limit() -> None:
    fake, _ = _fake("A100")
    h = fake.nvmlDeviceGetHandleByIndex(0)
    fake.set_load(0, 1.0)
    full = fake.nvmlDeviceGetPowerUsage(h)
    assert full == 400_000
    fake.nvmlDeviceSetGpuLockedClocks(h, 210, 1005)
    locked = fake.nvmlDeviceGetPowerUsage(h)
    assert 55_000 < locked < full
    fake.nvmlDeviceResetGpuLockedClocks(h)
    fake.nvmlDeviceSetPowerManagementLimit(h, 250_000)
    assert fake.nvmlDeviceGetPowerUsage(h) == 250_000
    kinds = [c.kind for c in fake.changes]
    assert kinds == ["lock_clocks", "reset_clocks", "power_limit"]
    assert not fake.state_restored()
    fake.nvmlDeviceSetPowerManagementLimit(h, 400_000)
    assert fake.state_restored()


def test_power_instant_field_only_where_the_preset_has_it() -> None:
    fake, _ = _fake("H100", "V100")
    fid = fake.NVML_FI_DEV_POWER_INSTANT
    h100 = fake.nvmlDeviceGetFieldValues(fake.nvmlDeviceGetHandleByIndex(0), [fid])[0]
    v100 = fake.nvmlDeviceGetFieldValues(fake.nvmlDeviceGetHandleByIndex(1), [fid])[0]
    assert h100.nvmlReturn == fake.NVML_SUCCESS and h100.value.uiVal == 70_000
    assert v100.nvmlReturn == fake.NVML_ERROR_NOT_SUPPORTED


def test_fail_after_calls_for_a_number_of_times() -> None:
    fake, _ = _fake("H100")
    h = fake.nvmlDeviceGetHandleByIndex(0)
    fake.fail("nvmlDeviceGetPowerUsage", fake.NVML_ERROR_NO_PERMISSION, after_calls=1, times=2)
    fake.nvmlDeviceGetPowerUsage(h)
    for _ in range(2):
        with pytest.raises(fake.NVMLError_NoPermission):
            fake.nvmlDeviceGetPowerUsage(h)
    fake.nvmlDeviceGetPowerUsage(h)


def test_lose_gpu_after_calls() -> None:
    fake, _ = _fake("H100", "A100")
    h0, h1 = fake.nvmlDeviceGetHandleByIndex(0), fake.nvmlDeviceGetHandleByIndex(1)
    fake.lose_gpu(0, after_calls=2)
    fake.nvmlDeviceGetPowerUsage(h0)
    fake.nvmlDeviceGetPowerUsage(h0)
    with pytest.raises(fake.NVMLError_GpuIsLost):
        fake.nvmlDeviceGetPowerUsage(h0)
    fake.nvmlDeviceGetPowerUsage(h1)  # the other GPU is fine


def test_unprivileged_fake_refuses_setters() -> None:
    fake, _ = _fake("H100", privileged=False)
    h = fake.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(fake.NVMLError_NoPermission):
        fake.nvmlDeviceSetGpuLockedClocks(h, 345, 1000)
    assert fake.changes == []


def test_uuids_look_real_and_are_distinct() -> None:
    fake, _ = _fake("H100", "H100")
    uuids = [fake.nvmlDeviceGetUUID(fake.nvmlDeviceGetHandleByIndex(i)) for i in range(2)]
    assert len(set(uuids)) == 2
    for u in uuids:
        assert re.fullmatch(r"GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", u)
    assert fake.nvmlDeviceGetHandleByUUID(uuids[1]).gpu.index == 1


def test_presets_cover_generations_with_and_without_counter() -> None:
    with_counter = {k for k, p in PRESETS.items() if p.has_energy_counter}
    assert {"V100", "A100", "H100"} <= with_counter
    assert {"K80", "P100"}.isdisjoint(with_counter)


def test_fake_from_env() -> None:
    fake = fake_from_env("h100, a100")
    assert [g.preset.key for g in fake.gpus] == ["H100", "A100"]
    assert fake.perwatt_label_simulated
    missing = fake_from_env("missing")
    with pytest.raises(missing.NVMLError_LibraryNotFound):
        missing.nvmlInit()
    with pytest.raises(ConfigError, match="PERWATT_FAKE_NVML"):
        fake_from_env(" , ")
