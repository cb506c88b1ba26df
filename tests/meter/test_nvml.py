"""NVMLSource and the GPU info/clock API, over the fake NVML (no GPU needed)."""

from __future__ import annotations

import sys
import time

import pynvml
import pytest

from perwatt.errors import (
    ConfigError,
    DeviceError,
    DeviceLostError,
    NoPermissionError,
    NotSupportedError,
    NVMLNotFoundError,
    SourceUnavailableError,
    UnknownDeviceError,
)
from perwatt.meter import Meter
from perwatt.meter.nvml import (
    NVMLSession,
    NVMLSource,
    gpu_inventory,
    load_nvml,
    map_nvml_error,
    open_nvml_sources,
    resolve_visible_devices,
)
from perwatt.meter.testing import FakeClock, FakeNVML

COUNTER_GPUS = ["V100", "A100", "A40", "H100"]
COUNTERLESS_GPUS = ["K80", "P100"]


@pytest.fixture(autouse=True)
def _no_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def fake_gpus(*keys: str, **kw: object) -> tuple[FakeNVML, FakeClock]:
    clock = FakeClock()
    return FakeNVML.with_gpus(list(keys), clock=clock, **kw), clock  # type: ignore[arg-type]


def meter_on(src: NVMLSource | tuple[NVMLSource, ...], clock: FakeClock) -> Meter:
    return Meter(src, clock=clock, sampler=False, sync_cuda=False)


# ----------------------------------------------------------------------------- counter path


@pytest.mark.parametrize("gpu", COUNTER_GPUS)
def test_counter_path_matches_model_energy(gpu: str) -> None:
    fake, clock = fake_gpus(gpu)
    src = NVMLSource(nvml=fake)
    assert src.has_energy_counter and src.counter_period_s == pytest.approx(0.1)
    meter = meter_on(src, clock)
    e0 = fake.energy_j(0)
    meter.begin("w")
    fake.set_load(0, 1.0)
    clock.advance(3.0)
    fake.set_load(0, 0.5)
    clock.advance(2.0)
    m = meter.end("w")
    assert m.sources == {"gpu0": "nvml-counter"}
    assert m.measured
    exact = fake.energy_j(0) - e0
    # Counter edges are quantized to the 100 ms period; both edges sit on a tick here.
    assert m.energy_j["gpu0"] == pytest.approx(exact, abs=1e-3)
    assert m.duration_s == pytest.approx(5.0)
    meter.close()
    assert fake.init_count == 0


def test_counter_is_converted_from_millijoules() -> None:
    fake, _clock = fake_gpus("H100")
    src = NVMLSource(nvml=fake)
    raw_mj = fake.gpus[0].counter_mj(0.1)
    assert src.read_energy_j() == {"gpu0": pytest.approx(raw_mj / 1000.0)}
    assert src.read_power_w() == {"gpu0": pytest.approx(70.0)}  # idle, mW -> W
    src.close()


def test_short_window_is_flagged_against_the_counter_period() -> None:
    fake, clock = fake_gpus("H100")
    src = NVMLSource(nvml=fake)
    meter = meter_on(src, clock)
    meter.begin("short")
    clock.advance(0.03)
    m = meter.end("short")
    assert any("shorter than the nvml counter update period" in w for w in m.warnings)
    assert m.sources["gpu0"] == "nvml-power-integral"
    meter.close()


# ----------------------------------------------------------------------------- polling path


@pytest.mark.parametrize("gpu", COUNTERLESS_GPUS)
def test_polling_path_integrates_instant_power(gpu: str) -> None:
    fake, clock = fake_gpus(gpu)
    src = NVMLSource(nvml=fake)
    assert not src.has_energy_counter and src.counter_period_s is None
    assert src.read_energy_j() is None
    meter = meter_on(src, clock)
    meter.begin("w")
    fake.set_load(0, 1.0)
    for _ in range(20):  # the background sampler's job, done by hand on the fake clock
        clock.advance(0.1)
        meter.sample_now()
    m = meter.end("w")
    assert m.sources == {"gpu0": "nvml-power-integral"}
    tdp = fake.gpus[0].preset.tdp_w
    # 2 s at TDP, except the first sample interval, which ramps linearly from idle (trapezoid).
    idle = fake.gpus[0].preset.idle_w
    assert m.energy_j["gpu0"] == pytest.approx(tdp * 1.9 + 0.1 * (idle + tdp) / 2)
    meter.close()


def test_power_method_prefers_the_instant_field() -> None:
    fake, _ = fake_gpus("H100", "V100")
    src = NVMLSource(nvml=fake)
    assert [g.power_method for g in src.gpus] == ["field-instant", "power-usage"]
    before = fake.calls.get("nvmlDeviceGetPowerUsage", 0)
    src.read_power_w()
    # The H100 is read through the field; only the V100 uses nvmlDeviceGetPowerUsage.
    assert fake.calls["nvmlDeviceGetPowerUsage"] == before + 1
    src.close()


def test_use_counter_false_forces_power_integration_and_true_requires_it() -> None:
    fake, _ = fake_gpus("H100")
    src = NVMLSource(nvml=fake, use_counter=False)
    assert not src.has_energy_counter
    src.close()
    fake2, _ = fake_gpus("H100", "P100")
    with pytest.raises(NotSupportedError, match=r"gpu1 \(Tesla P100"):
        NVMLSource(nvml=fake2, use_counter=True)
    assert fake2.init_count == 0


def test_mixed_generations_split_into_one_source_per_capability() -> None:
    fake, clock = fake_gpus("P100", "H100", "A100")
    sources = open_nvml_sources(nvml=fake)
    assert [s.devices for s in sources] == [("gpu1", "gpu2"), ("gpu0",)]
    assert [s.has_energy_counter for s in sources] == [True, False]
    meter = meter_on(sources, clock)
    meter.begin("w")
    for _ in range(10):
        clock.advance(0.1)
        meter.sample_now()
    m = meter.end("w")
    assert m.sources == {
        "gpu0": "nvml-power-integral",
        "gpu1": "nvml-counter",
        "gpu2": "nvml-counter",
    }
    assert m.energy_j["gpu1"] == pytest.approx(70.0, abs=1e-3)  # H100 idle 70 W for 1 s
    assert m.energy_j["gpu0"] == pytest.approx(30.0)  # P100 idle 30 W for 1 s
    meter.close()
    assert fake.init_count == 0


def test_fake_for_demos_labels_everything_simulated() -> None:
    fake, _ = fake_gpus("H100", label_simulated=True)
    src = NVMLSource(nvml=fake)
    assert (src.energy_label, src.power_label) == ("simulated", "simulated")
    assert "FAKE NVML" in src.describe()
    src.close()


# ----------------------------------------------------------------------------- errors


def test_missing_library_maps_to_nvml_not_found() -> None:
    fake, _ = fake_gpus("H100", library_missing=True)
    with pytest.raises(NVMLNotFoundError, match="no usable NVIDIA driver") as ei:
        NVMLSource(nvml=fake)
    assert isinstance(ei.value.__cause__, fake.NVMLError_LibraryNotFound)
    assert "--source" in str(ei.value)


def test_missing_bindings_map_to_nvml_not_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with pytest.raises(NVMLNotFoundError, match="pip install nvidia-ml-py"):
        load_nvml()


@pytest.mark.parametrize(
    ("error", "expected", "hint"),
    [
        (pynvml.NVMLError_LibraryNotFound, NVMLNotFoundError, "nvidia-smi"),
        (pynvml.NVMLError_DriverNotLoaded, NVMLNotFoundError, "nvidia-smi"),
        (pynvml.NVMLError_Uninitialized, NVMLNotFoundError, "nvidia-smi"),
        (pynvml.NVMLError_NotSupported, NotSupportedError, "not supported"),
        (pynvml.NVMLError_NoPermission, NoPermissionError, "root"),
        (pynvml.NVMLError_GpuIsLost, DeviceLostError, "Xid"),
        (pynvml.NVMLError_Unknown, DeviceLostError, "reset"),
        (pynvml.NVMLError_Timeout, DeviceError, "code 10"),
    ],
)
def test_real_pynvml_errors_are_mapped(error: type, expected: type, hint: str) -> None:
    mapped = map_nvml_error(error(), "reading power", "gpu3")
    assert type(mapped) is expected
    assert hint in str(mapped)
    if expected is not NVMLNotFoundError:
        assert str(mapped).startswith("gpu3: ")


def test_several_gpus_are_read_concurrently_with_the_same_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    fake, _ = fake_gpus("H100", "H100", "A100", "H100")
    src = NVMLSource(nvml=fake, concurrent_reads=True)
    serial = {g.label: g.energy_j() for g in src.gpus}  # one after another
    threads: set[str] = set()
    real_read = fake.nvmlDeviceGetTotalEnergyConsumption

    def slow_read(handle: object) -> int:
        threads.add(threading.current_thread().name)
        time.sleep(0.02)  # long enough that the four reads overlap
        return int(real_read(handle))

    monkeypatch.setattr(fake, "nvmlDeviceGetTotalEnergyConsumption", slow_read)
    got = src.read_energy_j()
    assert got is not None and list(got) == ["gpu0", "gpu1", "gpu2", "gpu3"]
    assert got == pytest.approx(serial, abs=1e-3)
    assert len(threads) > 1 and all(t.startswith("perwatt-nvml") for t in threads)
    src.close()
    assert fake.init_count == 0


def test_concurrent_reads_only_when_serial_reads_are_slow(monkeypatch: pytest.MonkeyPatch) -> None:
    import perwatt.meter.nvml as nvml_mod

    fake, _ = fake_gpus("H100", "H100")
    # Thresholds far from both sides so a loaded CI machine cannot flip the decision.
    monkeypatch.setattr(nvml_mod, "_CONCURRENT_READ_THRESHOLD_S", 10.0)
    fast = NVMLSource(nvml=fake)
    assert fast._pool is None
    fast.close()
    real_read = fake.nvmlDeviceGetTotalEnergyConsumption

    def slow_read(handle: object) -> int:
        time.sleep(0.002)  # like a real driver (~4 ms on an H100, GUIDE.md)
        return int(real_read(handle))

    monkeypatch.setattr(fake, "nvmlDeviceGetTotalEnergyConsumption", slow_read)
    monkeypatch.setattr(nvml_mod, "_CONCURRENT_READ_THRESHOLD_S", 1e-3)  # 2 reads >= 4 ms
    slow = NVMLSource(nvml=fake)
    assert slow._pool is not None
    slow.close()
    assert NVMLSource(nvml=fake, concurrent_reads=False)._pool is None


def test_a_lost_gpu_in_a_concurrent_read_is_still_mapped() -> None:
    fake, _ = fake_gpus("H100", "H100")
    src = NVMLSource(nvml=fake, concurrent_reads=True)
    fake.lose_gpu(1, after_calls=1)
    src.read_energy_j()
    with pytest.raises(DeviceLostError, match="gpu1"):
        src.read_energy_j()
    src.close()


def test_gpu_lost_during_reads() -> None:
    fake, _ = fake_gpus("H100")
    src = NVMLSource(nvml=fake)
    fake.lose_gpu(0, after_calls=1)
    src.read_energy_j()
    with pytest.raises(DeviceLostError, match="gpu0: GPU stopped answering"):
        src.read_energy_j()
    src.close()
    assert fake.init_count == 0


def test_unknown_error_on_read_is_device_lost() -> None:
    fake, _ = fake_gpus("A100")
    src = NVMLSource(nvml=fake)
    fake.fail("nvmlDeviceGetPowerUsage", fake.NVML_ERROR_UNKNOWN, times=1)
    fake.fail("nvmlDeviceGetFieldValues", fake.NVML_ERROR_UNKNOWN, times=1)
    with pytest.raises(DeviceLostError):
        src.read_power_w()
    src.close()


def test_unknown_index_is_a_user_error_and_releases_nvml() -> None:
    fake, _ = fake_gpus("H100", "A100")
    with pytest.raises(UnknownDeviceError, match=r"GPU index 5 does not exist: 2 GPU\(s\) visible"):
        NVMLSource([5], nvml=fake)
    assert fake.init_count == 0
    with pytest.raises(UnknownDeviceError):
        NVMLSource([True], nvml=fake)  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="given twice"):
        NVMLSource([0, 0], nvml=fake)


def test_selected_indices_keep_their_labels() -> None:
    fake, _ = fake_gpus("H100", "A100", "A40")
    src = NVMLSource([2, 0], nvml=fake)
    assert src.devices == ("gpu2", "gpu0")
    assert [g.physical_index for g in src.gpus] == [2, 0]
    src.close()


# ----------------------------------------------------------------------------- CUDA_VISIBLE_DEVICES

UUIDS = [
    "GPU-11111111-aaaa-4e56-8a3b-000000000000",
    "GPU-22222222-bbbb-4e56-8a3b-000000000000",
    "GPU-22223333-cccc-4e56-8a3b-000000000000",
]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (None, [0, 1, 2]),
        ("", []),
        ("2,0", [2, 0]),
        (" 1 ", [1]),
        ("-1", []),
        ("0,-1,2", [0]),
        ("GPU-1111", [0]),
        ("GPU-22223333-cccc,0", [2, 0]),
        ("gpu-11111111-AAAA", [0]),
    ],
)
def test_resolve_visible_devices(env: str | None, expected: list[int]) -> None:
    assert resolve_visible_devices(env, UUIDS) == expected


@pytest.mark.parametrize(
    ("env", "error", "match"),
    [
        ("3", UnknownDeviceError, "has 3 GPU"),
        ("GPU-9999", UnknownDeviceError, "matches no GPU UUID"),
        ("GPU-2222", ConfigError, "matches 2 GPUs"),
        ("MIG-abcd", ConfigError, "MIG instance"),
        ("zero", ConfigError, "neither an index"),
        ("0,,1", ConfigError, "empty entry"),
        ("1,1", ConfigError, "twice"),
    ],
)
def test_resolve_visible_devices_rejects(env: str, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        resolve_visible_devices(env, UUIDS)


def test_cuda_visible_devices_relabels_by_visible_index(monkeypatch: pytest.MonkeyPatch) -> None:
    fake, _ = fake_gpus("H100", "A100", "A40")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,1")
    src = NVMLSource(nvml=fake)
    assert src.devices == ("gpu0", "gpu1")
    assert [g.physical_index for g in src.gpus] == [2, 1]
    assert [g.name for g in src.gpus] == ["NVIDIA A40", "NVIDIA A100-SXM4-40GB"]
    src.close()
    with pytest.raises(UnknownDeviceError, match="2 GPU"):
        NVMLSource([2], nvml=fake)


def test_cuda_visible_devices_by_uuid(monkeypatch: pytest.MonkeyPatch) -> None:
    fake, _ = fake_gpus("H100", "A100")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", fake.gpus[1].uuid[:12])
    src = NVMLSource(nvml=fake)
    assert src.devices == ("gpu0",) and src.gpus[0].physical_index == 1
    src.close()


def test_cuda_visible_devices_empty_hides_all(monkeypatch: pytest.MonkeyPatch) -> None:
    fake, _ = fake_gpus("H100")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(SourceUnavailableError, match="hides every GPU"):
        NVMLSource(nvml=fake)
    assert fake.init_count == 0


def test_cuda_visible_devices_invalid_is_one_line_user_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake, _ = fake_gpus("H100")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4")
    with pytest.raises(UnknownDeviceError, match="fix or unset CUDA_VISIBLE_DEVICES"):
        NVMLSource(nvml=fake)
    assert fake.init_count == 0


# ----------------------------------------------------------------------------- info and control


def test_gpu_inventory_reports_limits_clocks_and_counter() -> None:
    fake, _ = fake_gpus("H100", "P100")
    h100, p100 = gpu_inventory(nvml=fake)
    assert h100.name == "NVIDIA H100 80GB HBM3" and h100.architecture == "Hopper"
    assert h100.driver_version == "550.54.15"
    assert (h100.power_limit_w, h100.min_power_limit_w, h100.max_power_limit_w) == (700, 200, 700)
    assert h100.default_power_limit_w == 700
    assert h100.supported_mem_clocks_mhz == (2619,)
    assert h100.supported_sm_clocks_mhz[0] == 1980 and h100.supported_sm_clocks_mhz[-1] == 345
    assert h100.has_energy_counter and not p100.has_energy_counter
    assert h100.fake and h100.to_dict()["can_set_clocks"] is True
    assert p100.clock_control.allowed is False and "Volta" in p100.clock_control.reason
    assert fake.init_count == 0


def test_gpu_inventory_marks_unsupported_fields() -> None:
    fake, _ = fake_gpus("H100")
    fake.fail("nvmlDeviceGetPowerManagementLimitConstraints", fake.NVML_ERROR_NOT_SUPPORTED)
    (info,) = gpu_inventory(nvml=fake)
    assert info.min_power_limit_w is None and info.max_power_limit_w is None
    assert "power limit range: not supported" in info.notes


def test_can_set_clocks_is_read_only() -> None:
    fake, _ = fake_gpus("H100", privileged=False)
    with NVMLSession(nvml=fake) as s:
        check = s.gpus[0].can_set_clocks()
    assert not check.allowed
    assert "CAP_SYS_ADMIN" in check.reason and "restricted to root" in check.reason
    assert fake.changes == []
    assert not any(name.startswith("nvmlDeviceSet") for name in fake.calls)


def test_can_set_clocks_without_fake_flag_checks_the_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake, _ = fake_gpus("H100")
    del fake.perwatt_privileged
    import perwatt.meter.nvml as nvml_mod

    monkeypatch.setattr(nvml_mod, "_process_privileged", lambda: False)
    with NVMLSession(nvml=fake) as s:
        assert not s.gpus[0].can_set_clocks().allowed
    monkeypatch.setattr(nvml_mod, "_process_privileged", lambda: True)
    with NVMLSession(nvml=fake) as s:
        check = s.gpus[0].can_set_clocks()
    assert check.allowed and "root" in check.reason


def test_lock_and_reset_clocks_within_bounds_are_recorded() -> None:
    fake, _ = fake_gpus("A100")
    with NVMLSession(nvml=fake) as s:
        gpu = s.gpus[0]
        gpu.lock_sm_clocks(210, 1200)
        assert fake.gpus[0].locked_sm_clocks_mhz == (210, 1200)
        gpu.reset_sm_clocks()
    assert [(c.kind, c.value) for c in fake.changes] == [
        ("lock_clocks", (210, 1200)),
        ("reset_clocks", None),
    ]
    assert fake.state_restored()


@pytest.mark.parametrize(
    ("lo", "hi", "match"),
    [
        (100, 1200, "outside the supported 210-1410 MHz"),
        (210, 1500, "outside the supported 210-1410 MHz"),
        (1200, 900, "reversed"),
    ],
)
def test_lock_clocks_out_of_bounds_changes_nothing(lo: int, hi: int, match: str) -> None:
    fake, _ = fake_gpus("A100")
    with NVMLSession(nvml=fake) as s, pytest.raises(ConfigError, match=match):
        s.gpus[0].lock_sm_clocks(lo, hi)
    assert fake.changes == []


def test_lock_clocks_rejects_fractional_mhz() -> None:
    fake, _ = fake_gpus("A100")
    with NVMLSession(nvml=fake) as s, pytest.raises(ConfigError, match="whole MHz"):
        s.gpus[0].lock_sm_clocks(210.5, 1200)  # type: ignore[arg-type]


def test_lock_clocks_errors_map() -> None:
    fake, _ = fake_gpus("H100", "P100", privileged=False)
    with NVMLSession(nvml=fake) as s:
        with pytest.raises(NoPermissionError, match="gpu0: locking SM clocks needs root"):
            s.gpus[0].lock_sm_clocks(345, 1500)
        with pytest.raises(NotSupportedError, match="gpu1: locking SM clocks is not supported"):
            s.gpus[1].lock_sm_clocks(600, 1000)
    assert fake.changes == []


def test_set_power_limit_bounds_and_units() -> None:
    fake, _ = fake_gpus("H100")
    with NVMLSession(nvml=fake) as s:
        gpu = s.gpus[0]
        with pytest.raises(ConfigError, match="outside the allowed 200-700 W"):
            gpu.set_power_limit_w(150)
        with pytest.raises(ConfigError, match="outside the allowed"):
            gpu.set_power_limit_w(701)
        gpu.set_power_limit_w(450.5)
        assert gpu.power_limit_w() == pytest.approx(450.5)
        gpu.set_power_limit_w(gpu.default_power_limit_w())
    assert [c.value for c in fake.changes] == [450_500, 700_000]
    assert fake.state_restored()


def test_driver_rejecting_the_power_field_falls_back_to_power_usage() -> None:
    fake, _ = fake_gpus("H100")
    fake.fail("nvmlDeviceGetFieldValues", fake.NVML_ERROR_INVALID_ARGUMENT)
    src = NVMLSource(nvml=fake)
    assert src.gpus[0].power_method == "power-usage"
    assert src.read_power_w() == {"gpu0": pytest.approx(70.0)}
    src.close()


def test_counter_gpu_without_power_readings_still_meters() -> None:
    fake, clock = fake_gpus("H100")
    fake.fail("nvmlDeviceGetFieldValues", fake.NVML_ERROR_NOT_SUPPORTED)
    fake.fail("nvmlDeviceGetPowerUsage", fake.NVML_ERROR_NOT_SUPPORTED)
    src = NVMLSource(nvml=fake)
    assert src.gpus[0].power_method == "none" and src.read_power_w() is None
    meter = meter_on(src, clock)
    meter.begin("w")
    clock.advance(1.0)
    meter.sample_now()
    m = meter.end("w")
    assert m.energy_j["gpu0"] == pytest.approx(70.0, abs=1e-3)
    meter.close()


def test_gpu_with_neither_counter_nor_power_is_refused() -> None:
    fake, _ = fake_gpus("P100")
    fake.fail("nvmlDeviceGetPowerUsage", fake.NVML_ERROR_NOT_SUPPORTED)
    with pytest.raises(NotSupportedError, match="neither an energy counter nor power"):
        NVMLSource(nvml=fake)
    assert fake.init_count == 0


@pytest.mark.gpu
def test_real_h100_counter_agrees_with_integrated_power() -> None:
    """On a GPU host: 10 s of bf16 matmuls, counter vs integrated instant power within 3%."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU with CUDA")
    counter = NVMLSource([0])
    integral = NVMLSource([0], use_counter=False)
    meter_c = Meter(counter, sample_interval_s=0.05)
    meter_i = Meter(integral, sample_interval_s=0.05)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    with meter_c, meter_i:
        meter_c.begin("load")
        meter_i.begin("load")
        t_end = time.monotonic() + 10.0
        while time.monotonic() < t_end:
            for _ in range(10):
                a = (a @ a).clamp_(-1, 1)
            torch.cuda.synchronize()
        mi = meter_i.end("load")
        mc = meter_c.end("load")
    assert mc.sources["gpu0"] == "nvml-counter" and mi.sources["gpu0"] == "nvml-power-integral"
    assert mi.energy_j["gpu0"] == pytest.approx(mc.energy_j["gpu0"], rel=0.03)
