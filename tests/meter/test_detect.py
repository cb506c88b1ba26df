"""Source specs (--source), auto-detection and the `perwatt env` report, on the fake NVML."""

from __future__ import annotations

from pathlib import Path

import pytest

from perwatt.errors import ConfigError, NVMLNotFoundError, UnknownDeviceError
from perwatt.meter.detect import (
    close_sources,
    describe_environment,
    detect_sources,
    format_environment,
    open_sources,
)
from perwatt.meter.nvml import NVMLSource
from perwatt.meter.replay import ReplaySource
from perwatt.meter.simulated import SimulatedSource


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CUDA_VISIBLE_DEVICES", "PERWATT_FAKE_NVML", "PERWATT_DCGM_URL"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def fake_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERWATT_FAKE_NVML", "H100,P100,A100")


@pytest.mark.usefixtures("fake_gpus")
def test_nvml_spec_opens_one_source_per_capability_class() -> None:
    sources = open_sources("nvml")
    try:
        assert all(isinstance(s, NVMLSource) for s in sources)
        assert [s.devices for s in sources] == [("gpu0", "gpu2"), ("gpu1",)]
        assert all(s.energy_label == "simulated" for s in sources)  # fake: never "measured"
        assert all("FAKE NVML" in s.describe() for s in sources)
    finally:
        close_sources(sources)


@pytest.mark.usefixtures("fake_gpus")
def test_nvml_spec_with_indices() -> None:
    sources = open_sources("nvml:2,1")
    try:
        assert sorted(d for s in sources for d in s.devices) == ["gpu1", "gpu2"]
    finally:
        close_sources(sources)


@pytest.mark.usefixtures("fake_gpus")
@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ("nvml:7", UnknownDeviceError, "GPU index 7 does not exist"),
        ("nvml:zero", ConfigError, "not a GPU index"),
        ("nvml:", ConfigError, "missing its argument"),
        ("replay", ConfigError, "replay:FILE"),
        ("dcgm", ConfigError, "dcgm:URL"),
        ("simulated:3", ConfigError, "unknown power source"),
        ("magic", ConfigError, "unknown power source 'magic'; use auto, nvml"),
    ],
)
def test_bad_specs_are_one_line_user_errors(spec: str, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        open_sources(spec)


def test_missing_nvml_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERWATT_FAKE_NVML", "missing")
    with pytest.raises(NVMLNotFoundError, match="no usable NVIDIA driver"):
        open_sources("nvml")


def test_simulated_and_replay_specs(tmp_path: Path) -> None:
    (sim,) = open_sources("simulated")
    assert isinstance(sim, SimulatedSource)
    trace = tmp_path / "t.csv"
    trace.write_text("time_s,device,power_w\n0,gpu0,100\n1,gpu0,200\n")
    (rep,) = open_sources(f"replay:{trace}")
    assert isinstance(rep, ReplaySource) and rep.devices == ("gpu0",)


def test_estimated_spec() -> None:
    (est,) = open_sources("estimated")
    assert est.energy_label == "estimated" or est.power_label == "estimated"


@pytest.mark.usefixtures("fake_gpus")
def test_auto_detect_prefers_gpus_and_says_they_are_fake() -> None:
    det = detect_sources()
    try:
        assert [type(s) for s in det.sources] == [NVMLSource, NVMLSource]
        assert "FAKE NVML" in det.description
    finally:
        close_sources(det.sources)


def test_auto_detect_without_gpus_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERWATT_FAKE_NVML", "missing")
    det = detect_sources()
    try:
        assert det.sources  # RAPL where present, else the estimated model
        assert any(s.startswith("nvml: ") and "driver" in s for s in det.skipped)
    finally:
        close_sources(det.sources)


def test_auto_detect_raises_on_bad_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERWATT_FAKE_NVML", "H100")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with pytest.raises(UnknownDeviceError):
        detect_sources()


@pytest.mark.usefixtures("fake_gpus")
def test_environment_report() -> None:
    env = describe_environment()
    assert env.fake_nvml and env.gpu_error is None
    assert [g.label for g in env.gpus] == ["gpu0", "gpu1", "gpu2"]
    assert env.gpu_catalog == ("H100-SXM", None, "A100-SXM4-40GB")
    assert len(env.auto_sources) == 2 and env.auto_labels == ("simulated", "simulated")
    text = format_environment(env)
    assert "FAKE" in text.splitlines()[0]
    assert "can set clocks/power limit: no — Pascal GPU" in text
    assert "energy counter (nvmlDeviceGetTotalEnergyConsumption)" in text
    d = env.to_dict()
    assert d["gpus"][0]["catalog"] == "H100-SXM" and d["fake_nvml"] is True


def test_environment_report_without_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERWATT_FAKE_NVML", "missing")
    env = describe_environment()
    assert env.gpus == () and env.gpu_error is not None and "driver" in env.gpu_error
    assert env.cpu_cores >= 1 and env.cpu_model
    assert "none usable" in format_environment(env)


def test_dead_exporter_named_by_env_is_an_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PERWATT_DCGM_URL names an exporter that does not answer: detection must not fall back to
    another source silently, and the error names the variable that chose the exporter."""
    import socket

    from perwatt.errors import RemoteSourceError
    from perwatt.meter.detect import detect_sources

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("PERWATT_DCGM_URL", f"http://127.0.0.1:{port}/metrics")
    with pytest.raises(RemoteSourceError, match=r"PERWATT_DCGM_URL=http://127\.0\.0\.1"):
        detect_sources()
