"""RAPL through a fake powercap sysfs tree: discovery, units, wraparound, permissions."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

import perwatt.meter.rapl as rapl_mod
from perwatt.errors import RAPLUnavailableError
from perwatt.meter import Meter
from perwatt.meter.rapl import RAPLSource

MAX_UJ = 262_143_328_850  # a typical Intel server max_energy_range_uj


def zone(root: Path, dirname: str, name: str, energy_uj: int, max_uj: int = MAX_UJ) -> Path:
    d = root / dirname
    d.mkdir(parents=True)
    (d / "name").write_text(name + "\n")
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_uj}\n")
    (d / "enabled").write_text("1\n")
    return d


def set_energy(d: Path, uj: int) -> None:
    # Atomic, as a sysfs read never sees a half-written value.
    tmp = d / "energy_uj.tmp"
    tmp.write_text(f"{uj}\n")
    os.replace(tmp, d / "energy_uj")


@pytest.fixture
def two_socket(tmp_path: Path) -> dict[str, Path]:
    """Flat layout as in /sys/class/powercap: two packages with core and dram, plus psys."""
    root = tmp_path / "powercap"
    root.mkdir()
    return {
        "root": root,
        "pkg0": zone(root, "intel-rapl:0", "package-0", 1_000_000),
        "core0": zone(root, "intel-rapl:0:0", "core", 500_000),
        "dram0": zone(root, "intel-rapl:0:1", "dram", 2_000_000),
        "pkg1": zone(root, "intel-rapl:1", "package-1", 3_000_000),
        "dram1": zone(root, "intel-rapl:1:0", "dram", 4_000_000),
        "psys": zone(root, "intel-rapl:2", "psys", 9_000_000),
        "mmio": zone(root, "intel-rapl-mmio:0", "package-0", 1),
    }


def test_discovers_package_and_dram_skips_core_psys_mmio(two_socket: dict[str, Path]) -> None:
    src = RAPLSource(two_socket["root"])
    assert src.devices == ("cpu0-package", "cpu0-dram", "cpu1-package", "cpu1-dram")
    assert src.name == "rapl" and src.energy_label == "rapl" and src.power_label == "rapl"
    assert src.counter_period_s == pytest.approx(0.001)
    assert src.has_energy_counter
    assert src.read_power_w() is None
    assert "cpu0-package" in src.describe()


def test_energy_is_joules_since_creation(two_socket: dict[str, Path]) -> None:
    src = RAPLSource(two_socket["root"])
    assert src.read_energy_j() == dict.fromkeys(src.devices, 0.0)
    set_energy(two_socket["pkg0"], 1_000_000 + 12_500_000)  # +12.5 J
    set_energy(two_socket["dram1"], 4_000_000 + 250_000)  # +0.25 J
    e = src.read_energy_j()
    assert e["cpu0-package"] == pytest.approx(12.5)
    assert e["cpu1-dram"] == pytest.approx(0.25)
    assert e["cpu0-dram"] == 0.0


def test_wraparound_uses_max_energy_range(tmp_path: Path) -> None:
    max_uj = 1_000_000_000  # 1 kJ range, small so the test reads well
    d = zone(tmp_path, "intel-rapl:0", "package-0", max_uj - 3_000_000, max_uj)
    src = RAPLSource(tmp_path)
    set_energy(d, max_uj - 1_000_000)  # +2 J
    assert src.read_energy_j() == {"cpu0-package": pytest.approx(2.0)}
    set_energy(d, 4_000_000)  # wrapped: +1 J to the top, +4 J after
    assert src.read_energy_j() == {"cpu0-package": pytest.approx(7.0)}
    set_energy(d, 4_000_000)  # unchanged
    assert src.read_energy_j() == {"cpu0-package": pytest.approx(7.0)}
    set_energy(d, 10_000_000)
    assert src.read_energy_j() == {"cpu0-package": pytest.approx(13.0)}


def test_meter_over_rapl_with_wrap_in_the_window(tmp_path: Path) -> None:
    max_uj = 100_000_000
    d = zone(tmp_path, "intel-rapl:0", "package-0", 90_000_000, max_uj)
    now = [0.0]
    meter = Meter(RAPLSource(tmp_path), sampler=False, sync_cuda=False, clock=lambda: now[0])
    with meter:
        meter.begin("w")
        for _ in range(4):  # 4 s at 5 W (5 J per second); wraps between the 2nd and 3rd reading
            now[0] += 1.0
            raw = int((tmp_path / "intel-rapl:0" / "energy_uj").read_text())
            set_energy(d, (raw + 5_000_000) % max_uj)
            s = meter.sample_now()
            assert s.power_w["cpu0-package"] == pytest.approx(5.0)
        m = meter.end("w")
    assert m.energy_j == {"cpu0-package": pytest.approx(20.0)}
    assert m.sources == {"cpu0-package": "rapl"}
    assert m.measured
    assert m.peak_power_w == pytest.approx(5.0)


def test_concurrent_reads_count_each_microjoule_once(tmp_path: Path) -> None:
    d = zone(tmp_path, "intel-rapl:0", "package-0", 0, 1_000_000)
    src = RAPLSource(tmp_path)
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.wait(0.0002):
                src.read_energy_j()
        except BaseException as e:  # pragma: no cover - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    value = 0
    for _ in range(300):  # 300 x 0.7 J, wrapping every ~1.4 steps
        value = (value + 700_000) % 1_000_000
        set_energy(d, value)
        src.read_energy_j()
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    # Each step is less than one range, so no reader can miss a wrap: the total is exact.
    assert src.read_energy_j()["cpu0-package"] == pytest.approx(300 * 0.7)


def test_nested_layout_under_devices_virtual(tmp_path: Path) -> None:
    top = tmp_path / "intel-rapl"
    top.mkdir()
    pkg = zone(top, "intel-rapl:0", "package-0", 10)
    zone(pkg, "intel-rapl:0:0", "dram", 20)
    src = RAPLSource(tmp_path)
    assert src.devices == ("cpu0-package", "cpu0-dram")


def test_amd_package_only_and_multi_die_names(tmp_path: Path) -> None:
    zone(tmp_path, "intel-rapl:0", "package-0-die-0", 1)
    zone(tmp_path, "intel-rapl:1", "package-0-die-1", 1)
    assert RAPLSource(tmp_path).devices == ("cpu0-die0-package", "cpu0-die1-package")


def test_absent_powercap(tmp_path: Path) -> None:
    with pytest.raises(RAPLUnavailableError, match="not Linux or no RAPL driver"):
        RAPLSource(tmp_path / "nope")


def test_powercap_without_rapl_zones(tmp_path: Path) -> None:
    zone(tmp_path, "intel-rapl:0", "psys", 1)
    with pytest.raises(RAPLUnavailableError, match="no RAPL package zones"):
        RAPLSource(tmp_path)


def test_root_only_energy_file_says_what_to_do(
    two_socket: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = rapl_mod._read_text

    def deny(path: Path) -> str:
        if path.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(rapl_mod, "_read_text", deny)
    with pytest.raises(RAPLUnavailableError) as ei:
        RAPLSource(two_socket["root"])
    msg = str(ei.value)
    assert "permission denied" in msg and "run as root or" in msg and "chmod o+r" in msg
    assert "CVE-2020-8694" in msg


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file regardless of mode")
def test_root_only_energy_file_real_chmod(two_socket: dict[str, Path]) -> None:
    (two_socket["pkg0"] / "energy_uj").chmod(0o000)
    with pytest.raises(RAPLUnavailableError, match="run as root"):
        RAPLSource(two_socket["root"])


def test_garbage_in_sysfs_file(tmp_path: Path) -> None:
    d = zone(tmp_path, "intel-rapl:0", "package-0", 1)
    src = RAPLSource(tmp_path)
    (d / "energy_uj").write_text("not-a-number\n")
    with pytest.raises(RAPLUnavailableError, match="expected an integer"):
        src.read_energy_j()
    (d / "max_energy_range_uj").write_text("0\n")
    (d / "energy_uj").write_text("1\n")
    with pytest.raises(RAPLUnavailableError, match="max_energy_range_uj is 0"):
        RAPLSource(tmp_path)


def test_zone_vanishing_is_a_clear_error(tmp_path: Path) -> None:
    d = zone(tmp_path, "intel-rapl:0", "package-0", 1)
    src = RAPLSource(tmp_path)
    (d / "energy_uj").unlink()
    with pytest.raises(RAPLUnavailableError, match="cannot read"):
        src.read_energy_j()
